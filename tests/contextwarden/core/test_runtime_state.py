"""No process-wide mutable state on the request path: what the proxy remembers belongs to a Runtime.

Two runtimes in one process (the tests, a replay beside a live proxy) must share nothing: every cache
of the request path is a runtime's (``Runtime.memo``, ``Runtime.conversations``). The check is a scan
of every module of the package and the built-in stages before and after sending a conversation
through a runtime with every stage that needs no model: no module-level container, bounded memo or
``functools.lru_cache`` grew. The only exceptions are memos of pure functions of a string (the same
input always gives the same output, so sharing them cannot carry anything from one runtime to another),
listed here by name.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections import OrderedDict

import orjson

from contextwarden.models.base import ApiKind
from contextwarden.store.statecache import state_cache
from contextwarden.util.lru import LRU
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides

# memos of pure functions of their string arguments, shared on purpose (a deterministic result of the
# text alone: secret scrubbing and header redaction, an encoding's loader, a text's digest, a stub's text)
PURE = {
    "contextwarden.util.scrub._memo", "contextwarden.util.scrub._long",  # a text, its secrets redacted
    "contextwarden.util.redact.is_secret_name", "contextwarden.util.redact._known_secret",  # a header name / value
    "contextwarden.wire.tokens.encoding_name_for", "contextwarden.request.agents._agent_suffix",  # a model / a system prompt
    "contextwarden.plugins.clearing._digest_of",  # a text
    "contextwarden.plugins.clearing._stub_text_memo",  # a stub's text from its arguments
    "contextwarden.util.redact._secret_key",  # a variable's name: does it name a secret
}


def _state() -> dict[str, int]:
    """Size of every module-level container, bounded memo and lru_cache of the package."""
    out: dict[str, int] = {}
    for name, mod in list(sys.modules.items()):
        if not name.startswith("contextwarden") or mod is None:
            continue
        for attr, v in list(vars(mod).items()):
            key = f"{name}.{attr}"
            if isinstance(v, functools._lru_cache_wrapper):
                out[key] = v.cache_info().currsize
            elif isinstance(v, LRU):
                out[key] = len(v)
            elif isinstance(getattr(v, "memo", None), LRU):  # lru.memoized
                out[key] = len(v.memo)
            elif type(v) in (dict, list, set, OrderedDict):
                out[key] = len(v)
    return out


def test_a_runtime_leaves_no_state_in_any_module(cw_home):
    stages = ["budget", "strip", "tagging", "clearing", "compaction", "recall"]
    ov = settings_overrides(window=9_000, stages=stages,
                            clearing={"trigger_tokens": 3000, "clear_at_least": 500, "keep_recent": 2})
    # a first runtime warms every module (imports, compiled tables that are built once and never change)
    warm = Harness(cw_home / "warm", profile="claude-code", overrides=ov)
    full = anthropic_tool_loop(7, result_words=250, session="state-1")
    msgs, top = full["messages"][:-1], {k: v for k, v in full.items() if k != "messages"}
    bodies = [{**top, "messages": msgs[:n]} for n in range(3, len(msgs) + 1, 2)]
    try:
        for b in bodies:
            warm.send(ApiKind.ANTHROPIC, copy.deepcopy(b))
    finally:
        warm.close()
    before = _state()
    # another conversation (other texts, another session): a cache keyed by content or session would grow
    full = anthropic_tool_loop(7, result_words=250, session="state-2", seed=1)
    msgs, top = full["messages"][:-1], {k: v for k, v in full.items() if k != "messages"}
    h = Harness(cw_home / "one", profile="claude-code", overrides=ov)
    try:
        sent = [h.send(ApiKind.ANTHROPIC, {**top, "messages": msgs[:n]}) for n in range(3, len(msgs) + 1, 2)]
        assert any(s.events("clearing") for s in sent) and any(s.events("compaction") for s in sent), \
            "the conversation no longer reaches clearing and compaction: the scan would miss their caches"
        assert len(h.rt.conversations) >= 1 and h.rt._memos, "the runtime's own caches were not used"
    finally:
        h.close()
    after = _state()
    grew = sorted(k for k in after if after[k] > before.get(k, 0) and k not in PURE)
    assert not grew, f"module-level state changed by a runtime's requests (move it onto the Runtime): {grew}"


def test_two_runtimes_share_no_conversation_or_cache(cw_home):
    ov = settings_overrides(window=9_000, stages=["strip", "tagging", "clearing", "compaction"],
                            clearing={"trigger_tokens": 3000, "clear_at_least": 500, "keep_recent": 2})
    a = Harness(cw_home / "a", profile="claude-code", overrides=ov)
    b = Harness(cw_home / "b", profile="claude-code", overrides=ov)
    try:
        full = anthropic_tool_loop(5, result_words=250, session="shared-id")
        body = {**full, "messages": full["messages"][:-1]}
        sa = a.send(ApiKind.ANTHROPIC, copy.deepcopy(body))
        sb = b.send(ApiKind.ANTHROPIC, copy.deepcopy(body))
        assert sa.outcome.body == sb.outcome.body or (sa.outcome.body is None and sb.outcome.body is None)
        # the same session id in both: two conversations, two sets of typed messages, two sets of caches
        ea, eb = sa.ctx.history.entries, sb.ctx.history.entries
        assert ea and all(x.obj is not y.obj for x, y in zip(ea, eb))
        assert sa.ctx.history.conv is not sb.ctx.history.conv
        for name, memo in a.rt._memos.items():
            assert b.rt._memos.get(name) is not memo, f"runtime caches {name!r} are shared"
        assert orjson.dumps(sa.ctx.original) == orjson.dumps(sb.ctx.original)
    finally:
        a.close()
        b.close()


def test_the_whole_lifecycle_leaves_no_state_in_any_module(cw_home):
    """The same scan over the response's side too (lifecycle.complete: calibration, the turn hooks, the
    turn event) and the live protocol's totals, with the compression stage among the stages."""
    from contextwarden.core.liveprotocol import Totals
    from contextwarden.request import lifecycle
    from contextwarden.wire.streams.turn import Usage

    stages = ["budget", "strip", "tagging", "clearing", "compression", "compaction", "recall"]
    ov = settings_overrides(window=9_000, stages=stages, tokens={"calibrate": True},
                            clearing={"trigger_tokens": 3000, "clear_at_least": 500, "keep_recent": 2})

    def run(home, session, seed):
        h = Harness(home, profile="claude-code", overrides=ov)
        full = anthropic_tool_loop(7, result_words=250, session=session, seed=seed)
        msgs, top = full["messages"][:-1], {k: v for k, v in full.items() if k != "messages"}
        totals = Totals()
        try:
            for n in range(3, len(msgs) + 1, 2):
                s = h.send(ApiKind.ANTHROPIC, {**top, "messages": msgs[:n]})
                usage = Usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=s.ctx.tokens_in or 0)
                lifecycle.complete(h.rt, s.ctx, lifecycle.turn_of(ApiKind.ANTHROPIC, s.ctx.model, msgs[n - 1], usage))
            for e in h.rt.bus.recent:
                totals.add(e.to_dict())
            state_cache(h.rt).flush()  # (calibration is written with the state put soon)
            assert totals.turns and h.rt.state.get("calibration", top["model"])
        finally:
            h.close()

    run(cw_home / "warm", "life-1", 0)  # imports and tables built once
    before = _state()
    run(cw_home / "one", "life-2", 1)
    after = _state()
    grew = sorted(k for k in after if after[k] > before.get(k, 0) and k not in PURE)
    assert not grew, f"module-level state changed by a runtime's lifecycle (move it onto the Runtime): {grew}"
