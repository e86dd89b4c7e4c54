"""What a clearing step costs under issue 19's load, without changing what it decides.

- A request whose candidates cannot free ``clear_at_least`` (compressed results count for what their
  compression left) computes no stub, and the bodies are byte for byte those of the unfiltered way.
- A stub's preview redacts a ~2 KB window, not 4 KB, and quotes the same text, secrets redacted.
- A decision's records and the session's version are one state transaction (``update_many``).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest

from contextwarden.memory.ids import memory_id
from contextwarden.models.base import ApiKind
from contextwarden.plugins import clearing
from contextwarden.sessionctl import ledger
from contextwarden.store.state import StateStore
from contextwarden.store.statecache import state_cache
from contextwarden.util.redact import redact_text
from contextwarden.wire.conversation import shorten
from contextwarden.wire.history import session_key
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides

ROOT = Path(__file__).resolve().parents[2]


def _compressed_records(h: Harness, body: dict, model: str) -> dict[str, dict]:
    """A compression record for every other Bash result of ``body`` (what first sight would store; the
    Reads are the working set's)."""
    recs, k = {}, 0
    tools = {b["id"]: b["name"] for m in body["messages"] if isinstance(m["content"], list)
             for b in m["content"] if b.get("type") == "tool_use"}
    for m in body["messages"]:
        for b in m["content"] if isinstance(m["content"], list) else ():
            if b.get("type") != "tool_result" or tools.get(b["tool_use_id"]) != "Bash":
                continue
            k += 1
            if k % 2:
                continue
            text = b["content"] if isinstance(b["content"], str) else "".join(p.get("text", "") for p in b["content"])
            stub = "[contextwarden compressed this result] " + " ".join(text.split()[:12])
            recs[b["tool_use_id"]] = {"h": clearing._digest(text), "stub": stub, "tool": "Bash", "mid": memory_id(text),
                                      "tokens": h.rt.tokens.count_text(text, model), "kind": clearing.COMPRESSED,
                                      "stub_tokens": h.rt.tokens.count_text(stub, model), "compressor": "test"}
    return recs


@pytest.mark.parametrize("seed", [0, 1])
def test_no_stub_is_computed_for_a_step_that_cannot_be_made(cw_home, monkeypatch, seed):
    ov = settings_overrides(window=40_000, stages=["strip", "clearing"],
                            clearing={"trigger_tokens": 2500, "clear_at_least": 1200, "keep_recent": 2, "min_result_tokens": 100})
    full = anthropic_tool_loop(9, result_words=260, seed=seed, session=f"cost-{seed}")
    msgs, top = full["messages"][:-1], {k: v for k, v in full.items() if k != "messages"}
    bodies = [{**top, "messages": msgs[:n]} for n in range(3, len(msgs) + 1, 2)]
    outs, computed = {}, {}
    for name in ("filtered", "unfiltered"):
        made = []
        at = [0]  # the request being sent

        def counting(ctx, *a, _real=clearing.result_stub, _made=made, _at=at):
            _made.append(_at[0])
            return _real(ctx, *a)
        monkeypatch.setattr(clearing, "result_stub", counting)
        if name == "unfiltered":  # every candidate's stub computed, as before the filter
            monkeypatch.setattr(clearing, "_may_step", lambda *a: True)
        h = Harness(cw_home / name, profile="claude-code", overrides=ov)
        try:
            first = h.send(ApiKind.ANTHROPIC, copy.deepcopy(bodies[0]))
            key = session_key(first.ctx)
            clearing.remember(state_cache(h.rt), key, _compressed_records(h, full, first.ctx.model))
            sent = []
            for i, b in enumerate(bodies[1:]):
                at[0] = i
                sent.append(h.send(ApiKind.ANTHROPIC, copy.deepcopy(b)))
            assert any(s.events("clearing") for s in sent)
            outs[name] = [s.outcome.body for s in sent]
            # stubs worked out on requests that made no step (a carried result keeps its stub, so each
            # is worked out once either way: what the filter saves is working them out for nothing)
            stepped = {i for i, s in enumerate(sent) if any(e.get("new") for e in s.events("clearing"))}
            computed[name] = sum(1 for i in made if i not in stepped)
        finally:
            h.close()
    assert outs["filtered"] == outs["unfiltered"]
    assert any(o is not None for o in outs["filtered"])
    assert computed["filtered"] < computed["unfiltered"], computed


def _old_preview(text: str) -> str:
    """The preview as it was: the redaction of the first 4 KB."""
    p = shorten(redact_text(text[:4096]), 80)
    return p + "…" if not p.endswith("…") and len(text.strip()) > len(p) else p


SECRETS = ["sk-ant-api03-" + "A" * 95, "ghp_" + "b" * 36, "AKIAABCDEFGHIJKLMNOP", 'password = "hunter2hunter2"',
           'api_key: "' + "z" * 300 + '"', "token=" + "q" * 600, "Authorization: Bearer " + "x" * 400,
           "-----BEGIN RSA PRIVATE KEY-----\n" + ("MIIEowIBAAKCAQEA" * 4 + "\n") * 30 + "-----END RSA PRIVATE KEY-----",
           'password = "' + "p" * 1500 + '"', '{"client_secret": "' + "s" * 64 + '"}']


def test_the_preview_is_the_same_from_a_smaller_window():
    code = "\n".join(p.read_text() for p in sorted((ROOT / "src" / "contextwarden" / "memory").glob("*.py")))
    rnd = random.Random(7)
    texts = []
    for _ in range(400):  # (and ~7,000 such texts checked once, with the traces)
        a = rnd.randrange(len(code))
        base = code[a:a + rnd.choice([300, 3000, 9000])]
        texts.append(base)
        sec, pos = rnd.choice(SECRETS), rnd.choice([0, 5, 40, 79, 150, rnd.randrange(400)])
        pad = " " * rnd.choice([0, 60, 700, 1800])
        texts.append(pad + base[:pos] + sec + base[pos:])
    for t in texts:
        assert clearing._preview(t) == _old_preview(t)
    for sec in SECRETS:  # a secret at the start is never quoted
        p = clearing._preview(sec + "\n" + code[:5000])
        assert sec[12:40] not in p and "[REDACTED" in p


def test_update_many_is_one_transaction(tmp_path):
    st = StateStore(tmp_path / "s.sqlite")
    st.put("a", "k", {"n": 1})
    got = st.update_many([("a", "k", lambda cur: {"n": cur["n"] + 1}), ("b", "k", lambda cur: {"seen": "later"}),
                          ("a", "k", lambda cur: {"n": cur["n"] * 10})])  # a later fn sees the earlier one's value
    assert got == [{"n": 2}, {"seen": "later"}, {"n": 20}]
    assert StateStore(tmp_path / "s.sqlite").get("a", "k") == {"n": 20}  # (another connection: committed)

    def boom(cur):
        raise RuntimeError("no")
    with pytest.raises(RuntimeError):
        st.update_many([("a", "k", lambda cur: {"n": -1}), ("c", "k", lambda cur: {"x": 1}), ("a", "k", boom)])
    other = StateStore(tmp_path / "s.sqlite")
    assert other.get("a", "k") == {"n": 20} and other.get("c", "k") is None  # nothing of it was stored
    assert st.get("a", "k") == {"n": 20}
    assert st.update("a", "k", lambda cur: {"n": cur["n"] + 1}) == {"n": 21}  # (not the rolled-back value)


def test_a_decision_and_its_records_are_stored_together(cw_home, monkeypatch):
    h = Harness(cw_home / "d", profile="claude-code", overrides=settings_overrides(window=40_000, stages=["clearing"]))
    try:
        s = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(2, session="together"))
        key = session_key(s.ctx)
        calls = []
        store = h.rt.state
        real = store.update_many
        monkeypatch.setattr(store, "update_many", lambda ups: calls.append([u[:2] for u in ups]) or real(ups))
        n = ledger.record_decision(s.ctx, clearing.NS, trigger="tokens", tokens_before=10, tokens_after=5, refs=["t1"],
                                   also=[clearing.remembering(key, {"t1": {"h": "x", "stub": "s", "tokens": 10, "stub_tokens": 5}})])
        assert calls == [[(clearing.NS, key), (ledger.NS, key), (ledger.NS_VERSIONS, key)]]
        rec = ledger.read(h.rt, key)
        assert rec["versions"][-1]["n"] == n and rec["versions"][-1]["refs"] == ["t1"]
        assert state_cache(h.rt).get(clearing.NS, key)["t1"]["stub"] == "s"
    finally:
        h.close()
