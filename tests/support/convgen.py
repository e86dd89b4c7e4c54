"""Hypothesis strategies for realistic request bodies, and an independent checker of rewritten ones.

Used by tests/contextwarden/request/test_hypothesis_stages.py (CI, a few hundred examples) and bench/pipeline_bench.py
(10,000). The generated bodies are valid by construction: strictly alternating user/assistant
messages (role ``system`` messages may sit between a user message and the assistant's answer, or
between turns, as Claude Code sends them), tool loops with parallel calls answered in the next
message, thinking blocks with signatures, images, cache_control breakpoints (at most 4), long tool
results. The checker (:func:`check_anthropic`, :func:`check_chat`, :func:`check_responses`) is written
independently of :mod:`contextwarden.wire.validate`, so the two catch each other's blind spots.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

from .stages import words

TOOLS = ["Read", "Bash", "Grep", "Edit", "WebFetch"]
RESULT_SIZES = [3, 40, 300, 1200, 3000]  # words
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def _tool_input(name: str, seed: int) -> dict[str, Any]:
    if name == "Bash":
        return {"command": f"pytest tests/test_{seed % 13}.py -x", "description": "run tests"}
    if name == "Grep":
        return {"pattern": f"def handler_{seed % 7}", "path": "src"}
    if name == "WebFetch":
        return {"url": f"https://example.com/doc/{seed % 5}", "prompt": "summarise"}
    if name == "Edit":
        return {"file_path": f"src/mod{seed % 11}.py", "old_string": "a", "new_string": "b"}
    return {"file_path": f"src/mod{seed % 11}.py"}


def tool_text(name: str, n: int, seed: int) -> str:
    """About ``n`` words of what the tool would print: for the larger sizes, a test run (Bash), search
    results (Grep) or a JSON response (WebFetch), so that the compression stage's log, listing and JSON
    compressors meet generated bodies too (prose otherwise). A function of its arguments: no draw."""
    if n < 1000 or name not in ("Bash", "Grep", "WebFetch"):
        return words(n, seed)
    rows = n // 8
    if name == "Bash":
        out = [f"tests/test_{(i + seed) % 40}.py::test_{words(1, seed + i)} " + ("FAILED" if (i + seed) % 97 == 0 else "PASSED")
               + f" [{100 * i // rows:3d}%]" for i in range(rows)]
        out += ["=" * 20 + " FAILURES " + "=" * 20, f"E   AssertionError: {words(6, seed)}",
                f"{rows // 97} failed, {rows - rows // 97} passed in {seed % 60}.{seed % 100:02d}s"]
        return "\n".join(out)
    if name == "Grep":
        return "\n".join(f"src/mod{(i * 3 + seed) % 23}.py:{10 + i}:    def handler_{seed % 7}({words(3, seed + i)}):"
                         for i in range(rows))
    return orjson.dumps({"total": rows, "items": [{"id": i, "name": words(2, seed + i), "ok": (i + seed) % 50 != 0,
                                                   "note": words(3, i)} for i in range(rows)]},
                        option=orjson.OPT_INDENT_2).decode()


def _system_note(seed: int) -> str:
    return ["Available agent types: claude, Explore.", "The user switched to plan mode.",
            f"Reminder {seed}: keep answers short.", "Todo list was updated."][seed % 4]


# ---------------------------------------------------------------------------------------------------
# Anthropic


@st.composite
def anthropic_bodies(draw, session: str | None = None) -> dict[str, Any]:
    """An Anthropic Messages request body of a Claude-Code-like conversation."""
    seed = draw(st.integers(0, 10_000))
    n_turns = draw(st.integers(1, 7))
    ids = iter(range(1, 10_000))
    msgs: list[dict[str, Any]] = []
    for t in range(n_turns):
        last_turn = t == n_turns - 1
        if msgs and draw(st.integers(0, 9)) == 0:
            msgs.append({"role": "system", "content": _system_note(seed + t)})
        blocks: list[dict[str, Any]] = [{"type": "text", "text": f"Turn {t}: " + words(draw(st.sampled_from([4, 30, 200])), seed + t)}]
        if draw(st.integers(0, 7)) == 0:
            blocks.append({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}})
        msgs.append({"role": "user", "content": blocks if draw(st.integers(0, 4)) else blocks[0]["text"]})
        if draw(st.integers(0, 9)) == 0:
            msgs.append({"role": "system", "content": _system_note(seed + t + 1)})
        rounds = draw(st.integers(0, 3))
        ends_mid_loop = last_turn and rounds > 0 and draw(st.booleans())
        if last_turn and not ends_mid_loop:
            break  # the request ends with this user message
        for r in range(rounds):
            a: list[dict[str, Any]] = []
            if draw(st.integers(0, 2)) == 0:
                a.append({"type": "thinking", "thinking": f"Think {t}.{r}: " + words(20, seed + r),
                          "signature": f"EqQBCkYIBxgCKkB{seed}{t}{r}"})
            elif draw(st.integers(0, 14)) == 0:
                a.append({"type": "redacted_thinking", "data": f"EmwKAhgBEgy{seed}{t}{r}"})
            if draw(st.booleans()):
                a.append({"type": "text", "text": f"I'll check src/mod{t}.py next because the test fails."})
            uses = []
            for _ in range(draw(st.integers(1, 3))):
                name = draw(st.sampled_from(TOOLS))
                uses.append({"type": "tool_use", "id": f"toolu_{seed}_{next(ids)}", "name": name,
                             "input": _tool_input(name, seed + t + r)})
            msgs.append({"role": "assistant", "content": a + uses})
            results: list[dict[str, Any]] = []
            for j, u in enumerate(uses):
                size = draw(st.sampled_from(RESULT_SIZES))
                text = f"{u['name']} output {j}:\n" + tool_text(u["name"], size, seed + t * 7 + r * 3 + j)
                res: dict[str, Any] = {"type": "tool_result", "tool_use_id": u["id"], "content": text}
                kind = draw(st.integers(0, 9))
                if kind == 0:
                    res["content"] = [{"type": "text", "text": text},
                                      {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]
                elif kind == 1:
                    res["is_error"] = True
                    res["content"] = f"Error: exit code 1\n{text}"
                results.append(res)
            if draw(st.integers(0, 9)) == 0:
                results.append({"type": "text", "text": "(the user interrupted: keep going)"})
            msgs.append({"role": "user", "content": results})
        if ends_mid_loop:
            break
        final: list[dict[str, Any]] = []
        if draw(st.integers(0, 3)) == 0:
            final.append({"type": "thinking", "thinking": f"Done with turn {t}.", "signature": f"sigF{seed}{t}"})
        final.append({"type": "text", "text": f"Turn {t} done: fixed src/mod{t}.py. " + words(draw(st.sampled_from([5, 60])), seed - t)})
        msgs.append({"role": "assistant", "content": final})
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5", "max_tokens": 8192, "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code."}, {"type": "text", "text": "Tools: Read, Bash."}],
        "tools": [{"name": n, "description": f"the {n} tool", "input_schema": {"type": "object"}} for n in TOOLS],
        "metadata": {"user_id": f"user_u_account_a_session_{session or f'hyp-{seed}'}"},
        "messages": msgs,
    }
    # a model that drops the previous turn's thinking or one that keeps it, and the client's own context
    # edits: none, Claude Code's keep-all thinking edit, or the provider clearing tool uses itself
    body["model"] = draw(st.sampled_from(["claude-sonnet-4-5", "claude-sonnet-4-5", "claude-opus-4-5"]))
    edit = draw(st.sampled_from([None, None, None, "keep thinking", "clear tool uses"]))
    if edit == "keep thinking":
        body["context_management"] = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    elif edit == "clear tool uses":
        body["context_management"] = {"edits": [{"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens",
                                                 "value": 4000}, "keep": {"type": "tool_uses", "value": 2}}]}
    _breakpoints(draw, body)
    return body


def _breakpoints(draw, body: dict[str, Any]) -> None:
    """Up to 4 cache_control markers where clients put them (system, tools, recent and older messages)."""
    budget = 4
    if draw(st.booleans()):
        body["system"][-1]["cache_control"] = {"type": "ephemeral"}
        budget -= 1
    if draw(st.integers(0, 3)) == 0:
        body["tools"][-1]["cache_control"] = {"type": "ephemeral"}
        budget -= 1
    msgs = body["messages"]
    n = min(budget, draw(st.integers(0, 3)))
    picks = sorted(set(draw(st.lists(st.integers(0, len(msgs) - 1), min_size=n, max_size=n))))
    if draw(st.booleans()):
        picks = sorted(set(picks[: max(0, n - 1)] + [len(msgs) - 1]))  # the last message, as Claude Code does
    for i in picks[:budget]:
        m = msgs[i]
        if isinstance(m["content"], str):
            m["content"] = [{"type": "text", "text": m["content"]}]
        m["content"][-1]["cache_control"] = {"type": "ephemeral"}


# ---------------------------------------------------------------------------------------------------
# OpenAI chat and Responses


@st.composite
def chat_bodies(draw, session: str | None = None) -> dict[str, Any]:
    seed = draw(st.integers(0, 10_000))
    msgs: list[dict[str, Any]] = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": "You are a coding agent."})
    n_turns = draw(st.integers(1, 7))
    ids = iter(range(1, 10_000))
    for t in range(n_turns):
        if msgs and draw(st.integers(0, 9)) == 0:
            msgs.append({"role": draw(st.sampled_from(["system", "developer"])), "content": _system_note(seed + t)})
        content: Any = f"Turn {t}: " + words(draw(st.sampled_from([4, 30, 200])), seed + t)
        if draw(st.integers(0, 5)) == 0:
            content = [{"type": "text", "text": content},
                       {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
        msgs.append({"role": "user", "content": content})
        if t == n_turns - 1 and draw(st.booleans()):
            break
        for r in range(draw(st.integers(0, 3))):
            calls: list[dict[str, Any]] = []
            for _ in range(draw(st.integers(1, 3))):
                name = draw(st.sampled_from(TOOLS))
                calls.append({"id": f"call_{seed}_{next(ids)}", "type": "function",
                              "function": {"name": name, "arguments": orjson.dumps(_tool_input(name, seed + r)).decode()}})
            msgs.append({"role": "assistant", "content": draw(st.sampled_from([None, "Checking."])), "tool_calls": calls})
            for j, c in enumerate(calls):
                msgs.append({"role": "tool", "tool_call_id": c["id"],
                             "content": tool_text(c["function"]["name"], draw(st.sampled_from(RESULT_SIZES)), seed + t + r + j)})
        msgs.append({"role": "assistant", "content": f"Turn {t} done: " + words(draw(st.sampled_from([5, 60])), seed - t)})
    if msgs[-1]["role"] == "assistant":
        msgs.append({"role": "user", "content": "And next?"})
    return {"model": "gpt-4o", "messages": msgs, "prompt_cache_key": session or f"hyp-chat-{seed}"}


@st.composite
def responses_bodies(draw, session: str | None = None) -> dict[str, Any]:
    seed = draw(st.integers(0, 10_000))
    items: list[dict[str, Any]] = []
    if draw(st.booleans()):
        items.append({"role": "developer", "content": "Be brief."})
    ids = iter(range(1, 10_000))
    for t in range(draw(st.integers(1, 6))):
        items.append({"role": "user", "content": f"Turn {t}: " + words(draw(st.sampled_from([4, 30, 200])), seed + t)})
        for r in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                items.append({"type": "reasoning", "id": f"rs_{seed}_{next(ids)}", "summary": [], "encrypted_content": "gAAAA" + str(seed)})
            calls = []
            for _ in range(draw(st.integers(1, 2))):
                cid = f"call_{seed}_{next(ids)}"
                name = draw(st.sampled_from(TOOLS))
                calls.append((cid, name))
                items.append({"type": "function_call", "call_id": cid, "name": name,
                              "arguments": orjson.dumps(_tool_input(name, seed)).decode()})
            for cid, name in calls:
                items.append({"type": "function_call_output", "call_id": cid,
                              "output": tool_text(name, draw(st.sampled_from(RESULT_SIZES)), seed + r)})
        items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": f"Turn {t} done."}]})
    items.append({"role": "user", "content": "Continue."})
    return {"model": "gpt-4o", "input": items, "instructions": "Terse.", "prompt_cache_key": session or f"hyp-resp-{seed}"}


# ---------------------------------------------------------------------------------------------------
# the independent checker

STUB = ("[contextwarden cleared this ", "[contextwarden compressed this ")  # a clearing stub, a compressed output


def _blocks(c: Any) -> list:
    return c if isinstance(c, list) else []


def check_anthropic(new: dict, orig: dict) -> list[str]:
    """Problems of a rewritten Anthropic body (the original is valid by construction)."""
    p: list[str] = []
    if orjson.dumps(new.get("system")) != orjson.dumps(orig.get("system")):
        p.append("system changed")
    if orjson.dumps(new.get("tools")) != orjson.dumps(orig.get("tools")):
        p.append("tools changed")
    msgs = new.get("messages") or []
    if not msgs:
        return p + ["no messages"]
    conv = [m for m in msgs if m["role"] in ("user", "assistant")]
    if not conv or conv[0]["role"] != "user":
        p.append("conversation does not start with a user message")
    for a, b in zip(conv, conv[1:]):
        if a["role"] == b["role"]:
            p.append(f"two {a['role']} messages in a row")
    last = _uncompressed(msgs[-1], orig["messages"][-1])
    if last != orig["messages"][-1] and not _only_memory_added(last, orig["messages"][-1]):
        p.append(f"the last message changed: {orjson.dumps(msgs[-1])[:600]!r} vs {orjson.dumps(orig['messages'][-1])[:300]!r}")
    orig_uses = {b["id"]: b for m in orig["messages"] for b in _blocks(m["content"]) if b.get("type") == "tool_use"}
    orig_results = {b["tool_use_id"]: b for m in orig["messages"] for b in _blocks(m["content"]) if b.get("type") == "tool_result"}
    seen: set[str] = set()
    for i, m in enumerate(msgs):
        c = m["content"]
        if c in ("", [], None) or (isinstance(c, str) and not c.strip()):
            p.append(f"empty message {i}")
        for b in _blocks(c):
            if b.get("type") == "text" and not str(b.get("text", "")).strip():
                p.append(f"blank text block in {i}")
        uses = [b for b in _blocks(c) if b.get("type") == "tool_use"]
        for u in uses:
            if u["id"] in seen:
                p.append(f"tool_use {u['id']} twice")
            seen.add(u["id"])
            if u != orig_uses.get(u["id"]):
                p.append(f"tool_use {u['id']} changed")
        if uses:
            nxt = msgs[i + 1] if i + 1 < len(msgs) else None
            answered = [b["tool_use_id"] for b in _blocks(nxt["content"]) if b.get("type") == "tool_result"] if nxt else []
            if nxt is None or nxt["role"] != "user" or sorted(answered) != sorted(u["id"] for u in uses):
                p.append(f"tool_use in {i} not answered exactly by message {i + 1}")
        for b in _blocks(c):
            if b.get("type") == "tool_result":
                prev = msgs[i - 1] if i else None
                if prev is None or b["tool_use_id"] not in {x.get("id") for x in _blocks(prev["content"]) if x.get("type") == "tool_use"}:
                    p.append(f"orphan tool_result {b['tool_use_id']} in {i}")
                o = orig_results.get(b["tool_use_id"])
                if o is None:
                    p.append(f"invented tool_result {b['tool_use_id']}")
                elif b != o and not (isinstance(b.get("content"), str) and b["content"].startswith(STUB)):
                    p.append(f"tool_result {b['tool_use_id']} changed other than by a stub")
    last_a = [m for m in msgs if m["role"] == "assistant"]
    last_o = [m for m in orig["messages"] if m["role"] == "assistant"]
    th = lambda m: [b for b in _blocks(m["content"]) if b.get("type") in ("thinking", "redacted_thinking")]  # noqa: E731
    if last_o and (not last_a or th(last_a[-1]) != th(last_o[-1])):
        p.append("latest assistant thinking changed")
    bps = sum(1 for k in ("system", "tools") for b in _blocks(new.get(k)) if "cache_control" in b)
    bps += sum(1 for m in msgs for b in _blocks(m["content"]) if "cache_control" in b)
    bps += sum(1 for m in msgs for b in _blocks(m["content"]) if b.get("type") == "tool_result"
               for x in _blocks(b.get("content")) if isinstance(x, dict) and "cache_control" in x)
    if bps > 4:
        p.append(f"{bps} breakpoints")
    sys_new = [m["content"] for m in msgs if m["role"] == "system"]
    sys_orig = [m["content"] for m in orig["messages"] if m["role"] == "system"]
    it = iter(sys_orig)
    if not all(any(s == o for o in it) for s in sys_new):
        p.append("role system messages invented or reordered")
    return p


def _uncompressed(new: dict, orig: dict) -> dict:
    """``new`` with each tool result the compression stage rewrote (its content only: the text starts
    with the stage's first line) put back as the client sent it; anything else left as it is."""
    if not isinstance(new.get("content"), list) or not isinstance(orig.get("content"), list):
        return new
    sent = {b.get("tool_use_id"): b for b in orig["content"] if isinstance(b, dict) and b.get("type") == "tool_result"}
    out = []
    for b in new["content"]:
        o = sent.get(b.get("tool_use_id")) if isinstance(b, dict) and b.get("type") == "tool_result" else None
        if o is not None and isinstance(b.get("content"), str) and b["content"].startswith(STUB[1]) \
                and {k: v for k, v in b.items() if k != "content"} == {k: v for k, v in o.items() if k != "content"}:
            b = o
        out.append(b)
    return {**new, "content": out}


def _only_memory_added(new: dict, old: dict) -> bool:
    """The memory stage appends one block to the last user message; anything else is a change."""
    if new.get("role") != old.get("role"):
        return False
    nb: Any = new.get("content")
    ob: Any = old.get("content")
    if isinstance(ob, str):
        ob = [{"type": "text", "text": ob}]
    if isinstance(nb, str):
        return isinstance(old.get("content"), str) and nb.startswith(old["content"])
    return isinstance(nb, list) and len(nb) >= len(ob) and all(
        x == y or (x.get("type") == "text" and y.get("type") == "text" and x.get("text", "").startswith(y.get("text", "")))
        for x, y in zip(nb, ob))


def check_chat(new: dict, orig: dict) -> list[str]:
    p: list[str] = []
    if new.get("tools") != orig.get("tools"):
        p.append("tools changed")
    msgs = new.get("messages") or []
    lead = 0
    while lead < len(orig["messages"]) and orig["messages"][lead]["role"] in ("system", "developer"):
        lead += 1
    if msgs[:lead] != orig["messages"][:lead]:
        p.append("leading system messages changed")
    conv = [m for m in msgs if m["role"] not in ("system", "developer")]
    if not conv or conv[0]["role"] != "user":
        p.append("conversation does not start with a user message")
    waiting: list[str] = []
    for i, m in enumerate(msgs):
        if m["role"] == "tool":
            if m.get("tool_call_id") not in waiting:
                p.append(f"orphan tool message {i}")
            else:
                waiting.remove(m["tool_call_id"])
            continue
        if waiting:
            p.append(f"unanswered calls before {i}")
            waiting = []
        if m["role"] == "assistant" and m.get("tool_calls"):
            waiting = [c["id"] for c in m["tool_calls"]]
        elif m.get("content") in (None, "", []):
            p.append(f"empty message {i}")
    if waiting:
        p.append("unanswered calls at the end")
    if msgs[-1]["role"] != orig["messages"][-1]["role"]:
        p.append("last role changed")
    return p


def check_responses(new: dict, orig: dict) -> list[str]:
    p: list[str] = []
    if new.get("instructions") != orig.get("instructions") or new.get("tools") != orig.get("tools"):
        p.append("instructions/tools changed")
    items = new.get("input")
    if not isinstance(items, list) or not items:
        return p + ["no input"]
    calls, outputs = set(), set()
    for i, it in enumerate(items):
        t = it.get("type")
        if t == "function_call":
            calls.add(it["call_id"])
        elif t == "function_call_output":
            if it["call_id"] not in calls:
                p.append(f"orphan output {i}")
            outputs.add(it["call_id"])
        elif t == "reasoning":
            nxt = items[i + 1] if i + 1 < len(items) else {}
            if nxt.get("type") not in ("function_call", "message", "reasoning") and nxt.get("role") != "assistant":
                p.append(f"reasoning {i} not followed by its item")
        if it.get("role") and it.get("content") in (None, "", []):
            p.append(f"empty message {i}")
    if calls - outputs:
        p.append("calls without output")
    conv = [it for it in items if it.get("role") in ("user", "assistant") or it.get("type") not in (None, "message")]
    if conv and conv[0].get("role") != "user":
        p.append("input does not start with a user message")
    return p
