"""The event path's cheap scrub (issue 19): remembering texts and header pairs, skipping what cannot hold
text, writing the log from a queue, sharing the JSON with the event server. None of it may let a secret
through or change a byte of what is written: every result equals a plain pass that redacts each string
and checks each header afresh."""

from __future__ import annotations

import secrets as rnd
import string
import threading

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from contextwarden.core.events import Event, EventBus, JsonlLog, read_log
from contextwarden.util import scrub as scrub_module
from contextwarden.util.redact import REDACTED, is_secret_header, redact_text
from contextwarden.util.scrub import scrub, scrub_headers, scrub_text
from tests.support.wait import wait_until


def _alnum(n: int) -> str:
    return "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(n))


def _fresh(s: str) -> str:
    """An equal text that is another object (as each request's parsed strings are)."""
    return "".join(list(s))


def _plain(obj, key=None):
    """The reference: every string redacted, every header checked, nothing remembered."""
    if key == "headers" and isinstance(obj, (list, tuple)):
        return [_plain_header(p) for p in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: _plain(v, k) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _plain_header(pair):
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
        return _plain(pair)
    k, v = pair
    if is_secret_header(str(k), v):
        return [k, REDACTED]
    return [k, v if isinstance(v, str) else _plain(v)]


SECRETS = ["sk-ant-api03-" + _alnum(40), "ghp_" + _alnum(36), "AKIA" + "ABCDEFGHIJKLMNOP",
           "Bearer " + _alnum(30), f"/v1/messages?api_key={_alnum(24)}", f"DATABASE_PASSWORD={_alnum(12)}",
           f"postgres://admin:{_alnum(14)}@db:5432/app"]
WORDS = ["anthropic", "claude-opus-4-8", "ok", "compression", "x-stainless-lang", "application/json", "1f0c-uuid-like-id",
         "cat part_3.py", ""]
text = st.sampled_from(SECRETS + WORDS) | st.builds(lambda a, b: f"{a} then {b}", st.sampled_from(WORDS), st.sampled_from(SECRETS))
scalar = text | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans() | st.none()
header = st.tuples(st.sampled_from(["x-api-key", "x-custom", "authorization", "user-agent", "x-trace"]),
                   text | st.lists(text, max_size=2))
data = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                    | st.dictionaries(st.sampled_from(["a", "tags", "model", "nested", "path"]), inner, max_size=4),
                    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(d=st.dictionaries(st.sampled_from(["a", "model", "nested", "tags"]), data, max_size=4),
       headers=st.lists(header, max_size=4))
def test_scrub_writes_what_a_plain_pass_writes(d, headers):
    d = {**d, "headers": headers}
    expected = orjson.dumps(_plain(d))
    for _ in range(2):  # the second time from the memo, with equal texts that are other objects
        assert orjson.dumps(scrub(d)) == expected
        d = orjson.loads(orjson.dumps(d))
    out = orjson.dumps(scrub(d))
    assert not [s for s in SECRETS if s.encode() in out]


def test_the_memo_never_answers_for_another_text_even_across_generations():
    key = "sk-ant-api03-" + _alnum(40)
    assert key not in scrub_text(key) and key not in scrub_text(_fresh(key))
    # more distinct texts than two generations hold: the key is forgotten, then redacted afresh
    for i in range(scrub_module._memo.max_size + 10):
        scrub_text(f"harmless text number {i}")
    assert key not in scrub_text(_fresh(key))
    assert scrub_text(_fresh("harmless text number 3")) == "harmless text number 3"


def test_a_header_pair_is_remembered_with_its_name():
    value = "v-" + _alnum(10).lower()  # harmless under a harmless name, a credential under a secret one
    for _ in range(2):
        assert scrub_headers([("x-custom", value)]) == [("x-custom", value)]
        assert scrub_headers([("x-acme-token", _fresh(value))]) == [["x-acme-token", REDACTED]]
        assert scrub_headers({"x-acme-token": value}) == {"x-acme-token": REDACTED}


def test_headers_that_are_not_name_value_strings_are_scrubbed_as_data():
    key = "ghp_" + _alnum(36)
    assert key not in orjson.dumps(scrub({"headers": [("x-list", [f"token {key}"])]})).decode()
    assert key not in orjson.dumps(scrub({"headers": [f"x-foo: {key}"]})).decode()
    assert key not in orjson.dumps(scrub({"headers": f"Authorization: token {key}"})).decode()
    assert key not in orjson.dumps(scrub({"headers": {"x-n": {"deep": key}}})).decode()


def test_nothing_is_copied_when_nothing_changed():
    headers = [("user-agent", "claude-cli/2.1.197"), ("content-type", "application/json")]
    d = {"headers": headers, "stages": [{"stage": "compression", "ms": 1.5, "status": "ok"}], "n": 3,
         "tags": ("session", "repository")}
    for _ in range(2):
        out = scrub(d)
        assert out is d and out["headers"] is headers


def test_the_log_writes_the_same_json_the_event_server_sends(tmp_path):
    key = "sk-ant-api03-" + _alnum(40)
    bus = EventBus()
    log = JsonlLog(tmp_path)
    bus.subscribe(log)
    evs = [bus.emit("request", {"path": "/v1/messages", "n": i, "note": f"key {key}",
                                "headers": [["x-api-key", key], ["accept", "application/json"]]},
                    flow_id=f"f{i}", session="s") for i in range(50)]
    log.close()
    raw = (tmp_path / "events.jsonl").read_bytes()
    assert raw == b"".join(orjson.dumps(ev.to_dict(), default=str) + b"\n" for ev in evs)  # the JSONL format
    assert key.encode() not in raw and len(read_log(tmp_path / "events.jsonl")) == 50
    batch = orjson.dumps({"kind": "events", "events": [orjson.Fragment(ev.to_json()) for ev in evs]})
    assert orjson.loads(batch)["events"] == [orjson.loads(orjson.dumps(ev.to_dict(), default=str)) for ev in evs]


def test_an_event_that_cannot_be_written_does_not_stop_the_log(tmp_path):
    bus = EventBus()
    log = JsonlLog(tmp_path)
    bus.subscribe(log)
    bus.emit("bad", {"by_number": {1: "one"}})  # orjson refuses keys that are not strings
    bus.emit("good", {"n": 1})
    log.close()
    assert [e.type for e in read_log(tmp_path / "events.jsonl")] == ["good"]


def test_a_subscriber_added_or_removed_while_publishing_is_safe():
    bus = EventBus()
    seen: list[str] = []
    unsubscribe = None

    def first(ev: Event) -> None:
        seen.append("first")
        unsubscribe()  # removes itself while the bus iterates its subscribers

    unsubscribe = bus.subscribe(first)
    bus.subscribe(lambda ev: seen.append("second"))
    bus.emit("x")
    bus.emit("x")
    assert seen == ["first", "second", "second"]


def _publish_from(thread_name: str, bus: EventBus, *types: str) -> None:
    t = threading.Thread(target=lambda: [bus.emit(ty, {"by": thread_name}) for ty in types], name=thread_name)
    t.start()
    t.join()


def _types_written(path, timeout: float) -> list[str]:
    return wait_until(lambda: [e.type for e in read_log(path)] if path.exists() else [], timeout, interval=0.01)


def test_a_requests_stage_events_are_written_with_its_forward_in_order(tmp_path):
    bus = EventBus()
    log = JsonlLog(tmp_path, straggler_s=30.0)  # only the forward can have them written in this test
    bus.subscribe(log)
    _publish_from("cw-core_0", bus, "request")
    _publish_from("cw-stage_0", bus, "stage", "compression", "stage")
    assert _types_written(tmp_path / "events.jsonl", 0.2) == []  # nobody woke the writer for them
    bus.emit("forward", {"changed": False})  # the event loop's, before the request goes upstream
    assert _types_written(tmp_path / "events.jsonl", 10.0) == ["request", "stage", "compression", "stage", "forward"]
    log.close()


def test_a_stage_event_with_none_after_it_is_written_within_the_straggler_wait(tmp_path):
    bus = EventBus()
    log = JsonlLog(tmp_path, straggler_s=0.05)
    bus.subscribe(log)
    _publish_from("cw-stage_1", bus, "stage")  # a stage abandoned past its budget, reporting late
    assert _types_written(tmp_path / "events.jsonl", 10.0) == ["stage"]
    _publish_from("cw-core_1", bus, "forward")  # an observed request's forward, from its core thread: not held
    wait_until(lambda: len(_types_written(tmp_path / "events.jsonl", 0.0)) >= 2, 10, interval=0.01)
    log.close()
    assert [e.type for e in read_log(tmp_path / "events.jsonl")] == ["stage", "forward"]


def test_terminal_lines_are_redacted_and_not_remembered():
    import io

    from addons.outputguard import _Redacting

    key = "sk-ant-api03-" + _alnum(40)
    out = io.StringIO()
    term = _Redacting(out)
    before = len(scrub_module._memo)
    for i in range(50):
        print(f"[03:21:10.{i:03d}][127.0.0.1:34346] GET https://host/v1?key={key} Streaming response", file=term)
    assert key not in out.getvalue() and out.getvalue().count("\n") == 50
    assert len(scrub_module._memo) == before  # each line is new: none kept
