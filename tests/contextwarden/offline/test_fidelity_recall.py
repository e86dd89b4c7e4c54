"""Fidelity's view of recall: injected memory counts as present (quoted lines included), every lost
item is listed with where it came from, and what the next request of the conversation puts back."""

from __future__ import annotations

import copy

from contextwarden.memory.inject import render_block
from contextwarden.memory.items import MemoryItem
from contextwarden.models.anthropic import MessagesRequest
from contextwarden.offline.fidelity import FidelityCounter, totals
from contextwarden.wire.dialects import ANTHROPIC
from tests.contextwarden.offline.test_fidelity import EDIT, MODEL, READ_RESULT, cleared, session

LONG_EDIT = {"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "Edit", "input": {
    "file_path": "/repo/app/auth.py",
    "old_string": "def login(user, password):\n    token = make_session_token(user)\n    return token\n# filler line 4 of the module",
    "new_string": "x"}}]}


def _with_memory(body: dict, text: str) -> dict:
    req = MessagesRequest.model_validate(body)
    item = MemoryItem(text=text, session="s1", tenant="t", turn=2, role="tool", kind="tool_result", tool="Read")
    ANTHROPIC.inject(req, render_block([item]))
    return req.wire()


def test_a_multi_line_source_brought_back_quoted_by_memory_is_not_lost():
    """Every middle line of a source must be a whole line of the body: the memory block's '| ' quote
    marks (and Read's line numbers behind them) do not hide it."""
    body = session()
    assert FidelityCounter().request(body, body, LONG_EDIT, MODEL).sources == 1
    f = FidelityCounter().request(body, cleared(body), LONG_EDIT, MODEL)
    assert f.sources_lost == 1
    f = FidelityCounter().request(body, _with_memory(cleared(body), READ_RESULT), LONG_EDIT, MODEL)
    assert (f.sources, f.sources_lost) == (1, 0)


def test_every_lost_item_is_listed_with_its_tool_and_stage():
    body = session()
    f = FidelityCounter().request(body, cleared(body), EDIT, MODEL)
    src = [i for i in f.items if i["kind"] == "source"]
    assert src == [{"kind": "source", "what": EDIT["content"][0]["input"]["old_string"], "tool": "Read",
                    "tool_use_id": "t1", "stage": "cleared"}]
    assert len(f.items) == f.sources_lost + f.refs_lost
    assert f.to_dict()["items"] == f.items


def _next(body: dict) -> dict:
    """The conversation's next request: the Edit and its result added."""
    nxt = copy.deepcopy(body)
    nxt["messages"] += [EDIT, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t2", "content": "The file /repo/app/auth.py has been updated."}]}]
    return nxt


def test_what_the_next_request_puts_back_is_counted_once_per_lost_item():
    body = session()
    done = {"role": "assistant", "content": [{"type": "text", "text": "Done."}]}
    # recall brought the Read back into the next request
    fc = FidelityCounter()
    lost = fc.request(body, cleared(body), EDIT, MODEL)
    n = len(lost.items)
    nxt = _next(body)
    f = fc.request(nxt, _with_memory(cleared(nxt), READ_RESULT), done, MODEL, recalled=[READ_RESULT])
    assert (f.back, f.back_of, f.present) == (n, n, n)
    # nothing recalled: the next request does not hold the source either
    fc = FidelityCounter()
    fc.request(body, cleared(body), EDIT, MODEL)
    f = fc.request(nxt, cleared(nxt), done, MODEL)
    assert f.back == 0 and f.back_of == n and f.present < n
    # a re-read the model asked for (the new tool result) is not a put-back
    reread = copy.deepcopy(nxt)
    reread["messages"][-1]["content"][0]["content"] = READ_RESULT
    fc = FidelityCounter()
    fc.request(body, cleared(body), EDIT, MODEL)
    assert fc.request(reread, cleared(reread), done, MODEL).present == 0
    t = totals([lost, f])
    assert (t["back"], t["back_of"]) == (0, n)
    # another conversation's request in between does not take the count
    fc = FidelityCounter()
    fc.request(body, cleared(body), EDIT, MODEL)
    other = {"model": MODEL, "messages": [{"role": "user", "content": "a subagent's task"}]}
    assert fc.request(other, other, done, MODEL).back_of == 0
    assert fc.request(nxt, _with_memory(cleared(nxt), READ_RESULT), done, MODEL, recalled=[READ_RESULT]).back == n
