"""mitmproxy's type check without reference cycles (contextwarden.core.typecheckfix): the same verdicts,
and a flow rebuilt from its state (the engine's mirror of every request) is freed by reference counting
instead of waiting, with its body, for a full collection."""

import copy
import gc
import typing

import pytest
from mitmproxy import http
from mitmproxy.test import tflow
from mitmproxy.utils import typecheck

from contextwarden.core import typecheckfix

CASES = [
    ("a", None, typing.Optional[int]), ("a", 3, typing.Optional[int]), ("a", "x", typing.Optional[int]),
    ("a", 1.0, int | None), ("a", 1, float | None), ("a", True, str | bytes | None),
    ("t", (1, "x"), tuple[int, str]), ("t", (1, None), tuple[int, str | None]), ("t", (1, 2), tuple[int, str | None]),
    ("t", (1,), tuple[int, str]), ("s", ["a", None], typing.Sequence[str | None]), ("s", ["a", 2], typing.Sequence[str | None]),
    ("b", b"x", bytes | None), ("h", None, http.Headers | None), ("h", http.Headers(), http.Headers | None),
    ("x", object(), typing.Any), ("f", 2, float),
]


def _verdict(fn, case) -> str:
    try:
        fn(*case)
        return "ok"
    except TypeError as e:
        return str(e)


def _original():
    return typecheckfix._ORIGINAL or typecheck.check_option_type


def _garbage_of(make) -> list:
    """What a full collection finds unreachable after ``make()``'s result is dropped."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        obj = make()
        del obj
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()


def test_the_same_verdicts_and_messages_as_mitmproxys_own_check():
    original = _original()
    assert typecheckfix.install()
    assert typecheck.check_option_type is not original
    assert [_verdict(typecheck.check_option_type, c) for c in CASES] == [_verdict(original, c) for c in CASES]
    assert typecheckfix.install()  # twice: still the one wrapper around mitmproxy's
    assert typecheckfix._ORIGINAL is original


def test_a_flow_rebuilt_from_its_state_is_freed_without_a_collection():
    assert typecheckfix.install()
    state = tflow.tflow(resp=True).get_state()
    state["request"]["content"] = b"x" * 200_000  # the engine's mirror holds the whole request body
    garbage = _garbage_of(lambda: http.HTTPFlow.from_state(copy.deepcopy(state)))
    assert garbage == []


def test_mitmproxys_own_check_leaves_a_cycle_holding_the_object_being_built():
    """What the fix is for (and that the test above could fail): with the original check, a Response
    whose optional fields are None is cyclic garbage once dropped."""
    original = _original()
    fixed = typecheck.check_option_type
    typecheck.check_option_type = original
    try:
        resp_state = tflow.tflow(resp=True).response.get_state()
        garbage = _garbage_of(lambda: http.Response.from_state(copy.deepcopy(resp_state)))
    finally:
        typecheck.check_option_type = fixed
    kinds = {type(o).__name__ for o in garbage}
    assert {"TypeError", "traceback", "frame"} <= kinds
    assert "Response" in kinds or "ResponseData" in kinds


@pytest.mark.parametrize("case", [c for c in CASES if _verdict(_original(), c) == "ok"])
def test_a_check_that_passes_leaves_no_garbage(case):
    """Valid values (every flow mitmproxy builds): no cycle. A check that fails outside a union still
    raises mitmproxy's own exception, cycle and all (an error: rare, and reported as before)."""
    assert typecheckfix.install()

    def check():
        _verdict(typecheck.check_option_type, case)

    assert not any(type(o).__name__ == "TypeError" for o in _garbage_of(check))
