"""Tool-output compression: each compressor on real-looking outputs (what is kept, exact counts), and the
stage through the real pipeline (first sight, byte-for-byte re-application by clearing's records and by
``cw_reapply``, policy, every API, the original recoverable byte for byte)."""

from __future__ import annotations

import copy
import json
import re

import orjson
import pytest

from contextwarden.compress import MARK, PREFIX, Limits, compress
from contextwarden.compress.cleanup import cleanup
from contextwarden.memory import service as memory_service
from contextwarden.memory.ids import memory_id
from contextwarden.models.base import ApiKind
from contextwarden.plugins import compression
from contextwarden.request.context import Incoming
from contextwarden.request.pipeline import prepare
from tests.support import tool_outputs as T
from tests.support.stages import Harness, settings_overrides

MID = re.compile(r"Memory id (m-[0-9a-f]{16})")
NUM = re.compile(r"\d[\d,]*")


def accounted(body: str) -> int:
    """Lines the body stands for: every line shown, plus what each note says it left out."""
    n = 0
    for line in body.split("\n"):
        if not line.startswith(MARK):
            n += 1
            continue
        nums = [int(x.replace(",", "")) for x in NUM.findall(line)]
        if "lines above repeated" in line:
            n += nums[0] * nums[1]
        elif "listing is NOT complete" in line or "of this line left out" in line:
            continue
        else:
            n += nums[0]
    return n


# --- compressors ----------------------------------------------------------------------------------------
def test_failing_pytest_run_keeps_every_failure_and_the_summary():
    text, failed = T.failing_pytest()
    got = compress(text, tool="Bash", tool_input={"command": "pytest -v"})
    assert got is not None and got.kind == "log"
    assert len(got.body) < 0.1 * len(text)
    for name in failed:
        assert f"FAILED {name}" in got.body  # the short summary's line of every failing test
        assert f"_ {name.split('::')[1]} _" in got.body  # and its section header
    for line in text.split("\n"):
        if line.startswith("E   ") or line.endswith("AssertionError"):
            assert line in got.body  # every error line
    assert "4 failed, 1196 passed in 41.27s" in got.body
    assert accounted(got.body) == text.count("\n") + 1  # the counts add up exactly


def test_build_log_of_5000_lines_keeps_every_error_line_with_exact_counts():
    text, errors = T.build_log()
    assert text.count("\n") + 1 == 5003
    got = compress(text, tool="Bash", tool_input={"command": "make -j8"})
    assert got is not None and got.kind == "log"
    for e in errors:
        assert e in got.body
    for line in text.split("\n")[-3:]:
        assert line in got.body  # make's *** lines (the tail)
    assert "warning: unused variable" in got.body
    assert len(got.body) < 0.05 * len(text)
    assert accounted(got.body) == 5003
    assert got.facts["lines"] == 5003 and got.facts["errors"] >= len(errors)


def test_a_build_log_whose_lines_all_differ_keeps_every_error_line_with_exact_counts():
    """Nothing collapses here (every line names another crate): the log compressor's own scan finds the
    errors, the last line and the warnings among 1,500 distinct lines."""
    text, errors = T.cargo_build()
    got = compress(text, tool="Bash", tool_input={"command": "cargo build"})
    assert got is not None and got.kind == "log"
    assert errors and all(e in got.body for e in errors)
    assert text.rsplit("\n", 1)[1] in got.body  # "error: could not compile ..."
    assert "warning: unused variable" in got.body
    assert got.facts["errors"] == len(errors) + 1
    assert accounted(got.body) == text.count("\n") + 1
    assert len(got.body) < 0.1 * len(text)


def test_a_fetched_page_keeps_its_start_and_the_sections_about_the_task():
    text = T.docs_page()
    got = compress(text, tool="WebFetch", tool_input={"url": "https://docs.example.com/client"},
                   query="how does the upload client retry?")
    assert got is not None and got.kind == "relevant"
    assert got.body.startswith("## Section 0")
    kept = [x for x in got.body.split("\n") if x and not x.startswith(MARK)]
    assert all(x in text.split("\n") for x in kept)  # lines of the page, unchanged
    assert "The upload client retries with backoff." in got.body
    assert accounted(got.body) == text.count("\n") + 1


def test_large_json_api_response_keeps_its_structure_and_the_items_that_differ():
    text, doc = T.api_json()
    got = compress(text, tool="WebFetch", tool_input={"url": "https://api.example.com/issues"})
    assert got is not None and got.kind == "json"
    out = json.loads(got.body)  # still JSON
    assert list(out) == list(doc)  # every key, in order
    assert out["total_count"] == 400 and out["incomplete_results"] is False
    items = out["items"]
    notes = [x for x in items if isinstance(x, str)]
    assert len(notes) == 1
    kept = [x for x in items if isinstance(x, dict)]
    left = int(NUM.findall(notes[0])[0].replace(",", ""))
    assert left + len(kept) == 400 and "of 400 items left out" in notes[0]
    ids = [x["id"] for x in kept]
    assert ids[:2] == [1000, 1001] and ids[-1] == 1399  # first and last
    assert 1123 in ids and 1321 in ids  # the two items that carry an error
    assert kept[ids.index(1123)] == doc["items"][123]  # kept items whole
    assert len(got.body) < 0.1 * len(text)


def test_recursive_grep_is_grouped_capped_and_never_presented_as_complete():
    text, counts = T.recursive_grep()
    total = sum(counts.values())
    got = compress(text, tool="Bash", tool_input={"command": "grep -rn parse_config src"})
    assert got is not None and got.kind == "listing"
    lines = got.body.split("\n")
    assert "NOT complete" in lines[-1]
    shown = [x for x in lines if not x.startswith(MARK)]
    m = re.search(r"([\d,]+) of ([\d,]+) matches shown, in ([\d,]+) of ([\d,]+) files", lines[-1])
    assert int(m.group(1).replace(",", "")) == len(shown)
    assert int(m.group(2).replace(",", "")) == total
    assert int(m.group(4)) == len(counts)
    # per file: the matches shown plus "N more matches in FILE" is exactly that file's count
    per_file: dict[str, int] = {}
    for x in shown:
        per_file[x.split(":", 1)[0]] = per_file.get(x.split(":", 1)[0], 0) + 1
    for x in lines:
        mm = re.match(r"\[… ([\d,]+) more match(?:es)? in (\S+) left out …\]", x)
        if mm:
            per_file[mm.group(2)] += int(mm.group(1).replace(",", ""))
    rest = re.search(r"\[… ([\d,]+) more files? with ([\d,]+) match(?:es)? left out …\]", got.body)
    assert all(per_file[f] == counts[f] for f in per_file)
    assert len(per_file) + (int(rest.group(1)) if rest else 0) == len(counts)
    assert sum(per_file.values()) + (int(rest.group(2).replace(",", "")) if rest else 0) == total
    assert every_line_is_real(shown, text)


def every_line_is_real(shown: list[str], text: str) -> bool:
    src = set(text.split("\n"))
    return all(x in src for x in shown)


def test_medium_outputs_get_the_clean_up_only():
    bar = "".join(f"\rDownloading {i}%" for i in range(0, 101, 5))
    text = "\x1b[32mcollecting\x1b[0m\n" + bar + "\n" + "\n".join(["same line"] * 40) + "\n" + "\n".join(
        f"step {i} done" for i in range(30)) + "\nfinished\n"
    assert 1024 <= len(text) < 5120
    got = compress(text, tool="Bash", tool_input={"command": "pip install x"})
    assert got is not None and got.kind == "cleanup"
    assert got.body == cleanup(text)
    assert "\x1b" not in got.body and "\r" not in got.body
    assert "Downloading 100%" in got.body and "Downloading 50%" not in got.body
    assert "[… the line above repeated 39 more times …]" in got.body
    assert "step 0 done" in got.body and "step 29 done" in got.body
    assert "[… 28 similar lines (differing only in numbers) left out …]" in got.body
    assert compress("x" * 1000) is None  # small: untouched


def test_anything_else_keeps_the_chunks_relevant_to_the_task_in_order():
    paras = [f"Section {i}: " + " ".join(f"filler{j} text about gardening and weather" for j in range(20)) for i in range(60)]
    paras[37] = "Section 37: the retry_policy of the upload client backs off exponentially up to 30 seconds."
    text = "\n\n".join(paras)
    got = compress(text, tool="WebFetch", tool_input={"url": "https://docs.example.com", "prompt": "retry_policy upload"},
                   query="how does the upload client retry?")
    assert got is not None and got.kind == "relevant"
    assert paras[37] in got.body and got.body.startswith("Section 0:")
    assert accounted(got.body) == text.count("\n") + 1


def test_compression_is_deterministic():
    text, _ = T.build_log()
    a = compress(text, tool="Bash", tool_input={"command": "make"}, query="fix the build")
    b = compress(text, tool="Bash", tool_input={"command": "make"}, query="fix the build")
    assert a == b


# --- the stage --------------------------------------------------------------------------------------
def harness(home, memory: bool = False, **compression_cfg) -> Harness:
    stages = ["clearing", "compression", "recall"] + (["memory"] if memory else [])
    o = settings_overrides(window=200_000, stages=stages, clearing={"trigger_tokens": 150_000},
                           compression={"enabled": True, **compression_cfg},
                           memory={"inject": False, "enabled": True, "process": "inline"} if memory else {})
    o["memory"]["enabled"] = True
    if not memory:
        o["memory"]["process"] = "inline"
    h = Harness(home, overrides=o)
    if memory:
        assert memory_service.get_service(h.rt).wait_ready(120)
    return h


def anthropic_body(results: list[tuple[str, dict, str, bool]], session: str = "cmp-1") -> dict:
    """A task, one assistant message calling the tools, then their results (the newest results)."""
    uses = [{"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": inp} for i, (name, inp, _, _) in enumerate(results)]
    res = [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": text, **({"is_error": True} if err else {})}
           for i, (_, _, text, err) in enumerate(results)]
    res[-1]["cache_control"] = {"type": "ephemeral"}
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "metadata": {"user_id": f"user_x_account_y_session_{session}"},
            "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "The build fails: find out why and fix it."}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "Running the build."}] + uses},
                         {"role": "user", "content": res, "x_unknown": {"kept": True}}]}


def next_body(body: dict, text: str = "Found it.") -> dict:
    """The next request of the tool loop: the model's answer and another small tool result."""
    b = copy.deepcopy(body)
    for blk in b["messages"][-1]["content"]:
        blk.pop("cache_control", None)
    b["messages"].append({"role": "assistant", "content": [{"type": "text", "text": text},
                                                         {"type": "tool_use", "id": "toolu_next", "name": "Bash", "input": {"command": "ls"}}]})
    b["messages"].append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_next", "content": "a.txt",
                                                       "cache_control": {"type": "ephemeral"}}]})
    return b


def results_of(body: dict) -> dict[str, dict]:
    return {b["tool_use_id"]: b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]
            if b.get("type") == "tool_result"}


def test_the_stage_compresses_at_first_sight_and_clearing_reapplies_it_byte_for_byte(cw_home):
    h = harness(cw_home)
    log, errors = T.build_log()
    small = "ok\n" * 10
    body = anthropic_body([("Bash", {"command": "make -j8"}, log, False), ("Bash", {"command": "echo hi"}, small, False)])
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed
    res = results_of(sent.body)
    first = res["toolu_0"]["content"]
    head = first.split("\n", 1)[0]
    assert head.startswith(PREFIX + "Bash result for make -j8 (") and "kept 1% of 373,270 characters" in head
    mid = MID.search(head).group(1)
    assert mid == memory_id(log)
    assert head.endswith(f"; the whole output is kept. Memory id {mid}: `contextwarden recall {mid}` prints it verbatim, "
                         "or re-run the tool.]")  # the clearing stubs' wording
    assert all(e in first for e in errors)
    assert res["toolu_1"]["content"] == small  # small: untouched
    assert res["toolu_1"]["cache_control"] == {"type": "ephemeral"}  # fields kept
    assert sent.body["messages"][-1]["x_unknown"] == {"kept": True}
    [ev] = sent.events("compression")
    assert ev["compressed"] == 1 and ev["ids"] == [mid] and ev["tokens_after"] < ev["tokens_before"] // 10
    kept = [c for c in sent.ctx.notes["cleared"] if c.get("compressed")]
    assert [(c["memory_id"], c["text"]) for c in kept] == [(mid, log)]  # for automatic recall
    assert ev["kept"] == 1  # handed to memory's originals by the stage itself
    # the next request: the model has read it; clearing's records put the same text back, byte for byte
    sent2 = h.send(ApiKind.ANTHROPIC, next_body(body))
    assert results_of(sent2.body)["toolu_0"]["content"] == first
    assert not sent2.events("compression")  # (clearing's step 1 did it: no second mechanism)
    # and the same again, with the client retrying the first request (the result still unseen)
    sent3 = h.send(ApiKind.ANTHROPIC, body)
    assert results_of(sent3.body)["toolu_0"]["content"] == first
    assert sent3.events("compression")[0]["reapplied"] == 1
    h.close()


def test_reapply_is_the_same_code_path_and_decides_nothing(cw_home):
    h = harness(cw_home)
    log, _ = T.build_log()
    body = anthropic_body([("Bash", {"command": "make"}, log, False)], session="cmp-reapply")
    raw = orjson.dumps(body)
    hdrs = [("content-type", "application/json"), ("x-api-key", "sk-test-secret")]
    fresh = prepare(h.rt, Incoming(ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages", hdrs, raw, "f-0"))
    compression.cw_reapply(fresh)  # nothing decided yet: nothing put in
    assert fresh.request.messages[-1].content[0].content == log
    sent = h.send(ApiKind.ANTHROPIC, body)
    ctx = prepare(h.rt, Incoming(ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages", hdrs, raw, "f-1"))
    compression.cw_reapply(ctx)
    assert ctx.request.messages[-1].content[0].content == results_of(sent.body)["toolu_0"]["content"]
    assert ctx.original["messages"][-1]["content"][0]["content"] == log  # the client's body untouched
    h.close()


@pytest.mark.parametrize("name,inp,err", [("Edit", {"file_path": "a.py"}, False), ("Read", {"file_path": "b.log"}, False),
                                          ("Bash", {"command": "make"}, True)])
def test_policy_never_compresses_edits_reads_or_errors_by_default(cw_home, name, inp, err):
    h = harness(cw_home)
    log, _ = T.build_log()
    sent = h.send(ApiKind.ANTHROPIC, anthropic_body([(name, inp, log, err)], session=f"cmp-{name}-{err}"))
    r = results_of(sent.body)["toolu_0"]
    assert r["content"] == log and not sent.events("compression")
    assert r.get("is_error") is (True if err else None)
    h.close()


def test_a_result_with_a_breakpoint_or_an_image_inside_stays_whole(cw_home):
    h = harness(cw_home)
    log, _ = T.build_log()
    body = anthropic_body([("Bash", {"command": "make"}, log, False), ("Bash", {"command": "make"}, log + "\n", False)],
                          session="cmp-parts")
    body["messages"][-1]["content"][0]["content"] = [{"type": "text", "text": log, "cache_control": {"type": "ephemeral"}}]
    body["messages"][-1]["content"][1]["content"] = [{"type": "text", "text": log},
                                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert [b["content"] for b in sent.body["messages"][-1]["content"]] == [b["content"] for b in body["messages"][-1]["content"]]
    h.close()


def test_a_read_of_a_file_the_session_edited_stays_whole_when_reads_are_allowed(cw_home):
    h = harness(cw_home, never_tools=["Edit", "Write"])
    log, _ = T.build_log()
    body = anthropic_body([("Read", {"file_path": "/r/build.log"}, log, False)], session="cmp-edited")
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.events("compression")  # Read allowed, file not edited: compressed
    edited = copy.deepcopy(body)
    edited["messages"][0]["content"][0]["text"] = "Another session: the build log is wrong, fix it."
    edited["messages"][1]["content"].insert(1, {"type": "tool_use", "id": "toolu_e", "name": "Edit",
                                               "input": {"file_path": "/r/build.log", "old_string": "a", "new_string": "b"}})
    edited["messages"][2]["content"].insert(0, {"type": "tool_result", "tool_use_id": "toolu_e", "content": "ok"})
    sent = h.send(ApiKind.ANTHROPIC, edited)
    assert results_of(sent.body)["toolu_0"]["content"] == log
    h.close()


def test_clearing_may_still_stub_a_compressed_result_later(cw_home):
    h = harness(cw_home)
    log, _ = T.build_log()
    body = anthropic_body([("Bash", {"command": "make"}, log, False)], session="cmp-later")
    h.send(ApiKind.ANTHROPIC, body)
    nb = next_body(body)
    nb["messages"][-1]["content"][0]["content"] = "z " * 30_000  # the history grows past clearing's trigger
    h.apply({"clearing": {"trigger_tokens": 1000, "keep_recent": 0, "clear_at_least": 100}})
    sent = h.send(ApiKind.ANTHROPIC, next_body(nb))
    r = results_of(sent.body)["toolu_0"]["content"]
    assert r.startswith("[contextwarden cleared this Bash result") and memory_id(log) in r
    h.close()


def test_chat_and_responses_results_are_compressed_and_reapplied(cw_home):
    h = harness(cw_home)
    log, errors = T.build_log()
    chat = {"model": "gpt-4o", "prompt_cache_key": "cmp-chat", "messages": [
        {"role": "user", "content": "fix the build"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                               "function": {"name": "shell", "arguments": '{"command": "make"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": log}]}
    sent = h.send(ApiKind.OPENAI_CHAT, chat)
    out = sent.body["messages"][-1]["content"]
    assert out.startswith(PREFIX + "shell result for make") and all(e in out for e in errors)
    chat2 = copy.deepcopy(chat)
    chat2["messages"] += [{"role": "assistant", "content": "Found the error."}, {"role": "user", "content": "go on"}]
    assert h.send(ApiKind.OPENAI_CHAT, chat2).body["messages"][2]["content"] == out
    resp = {"model": "gpt-5", "prompt_cache_key": "cmp-resp", "input": [
        {"role": "user", "content": "fix the build"},
        {"type": "function_call", "call_id": "fc_1", "name": "shell", "arguments": '{"command": "make"}'},
        {"type": "function_call_output", "call_id": "fc_1", "output": log}]}
    sent = h.send(ApiKind.OPENAI_RESPONSES, resp)
    out = sent.body["input"][-1]["output"]
    assert out.startswith(PREFIX + "shell result for make")
    resp2 = copy.deepcopy(resp)
    resp2["input"] += [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Found it."}]},
                       {"role": "user", "content": "go on"}]
    assert h.send(ApiKind.OPENAI_RESPONSES, resp2).body["input"][2]["output"] == out
    h.close()


def test_the_whole_output_is_kept_before_sending_and_recalled_byte_for_byte(cw_home):
    h = harness(cw_home, memory=True)
    outputs = [T.failing_pytest()[0], T.build_log()[0], T.api_json()[0], T.recursive_grep()[0], T.cargo_build()[0],
               T.docs_page()]
    body = anthropic_body([("Bash", {"command": f"job {i}"}, t, False) for i, t in enumerate(outputs)], session="cmp-recall")
    sent = h.send(ApiKind.ANTHROPIC, body)
    res = results_of(sent.body)
    ids = [MID.search(res[f"toolu_{i}"]["content"].split("\n", 1)[0]).group(1) for i in range(len(outputs))]
    assert sent.events("compression")[0]["kept"] == len(outputs)
    svc = memory_service.get_service(h.rt)
    got = svc.recall(ids, [sent.ctx.tenant])
    assert [it.text for it in got] == outputs  # verbatim
    h.close()


def test_limits_come_from_the_profile(cw_home):
    h = harness(cw_home, large_chars=500_000, medium=False)
    log, _ = T.build_log()
    sent = h.send(ApiKind.ANTHROPIC, anthropic_body([("Bash", {"command": "make"}, log, False)], session="cmp-lim"))
    assert results_of(sent.body)["toolu_0"]["content"] == log  # under large_chars and no clean-up tier
    assert compression.limits_of(h.rt.settings.compression) == Limits(medium_chars=500_000, large_chars=500_000)
    h.close()


def test_a_pinned_result_is_not_compressed_and_each_compression_is_a_version_rollback_undoes(cw_home):
    """The user's controls reach the compression stage as they reach clearing: a pinned result stays
    whole, a compression is a numbered version of the session, and rolling it back sends the whole
    output again (the record lives in clearing's namespace, which rollback turns off)."""
    from contextwarden.sessionctl import commands
    from contextwarden.wire.history import session_key

    h = harness(cw_home)
    log, errors = T.build_log()
    other = log[:60_000].replace("error", "failure")  # (with it whole, the restored request still fits the window)
    body = anthropic_body([("Bash", {"command": "make -j8"}, log, False)], session="cmp-ctl")
    sent = h.send(ApiKind.ANTHROPIC, copy.deepcopy(body))
    key = session_key(sent.ctx)
    first = results_of(sent.body)["toolu_0"]["content"]
    assert first.startswith(PREFIX)
    [v] = [v for v in commands.show(h.rt, key)["version_list"] if v.get("trigger") == "compression"]
    assert v["tool_ids"] == ["toolu_0"] and v["tokens_after"] < v["tokens_before"]
    from contextwarden.sessionctl.render import what

    assert what(v) == "compression"  # how `session show` and the TUI's session view name it
    # a pin before the next large output arrives: it stays whole
    commands.pin(h.rt, key, "toolu_9")
    nxt = next_body(body)
    nxt["messages"][-2]["content"][-1] = {"type": "tool_use", "id": "toolu_9", "name": "Bash", "input": {"command": "make check"}}
    nxt["messages"][-1]["content"][0] = {"type": "tool_result", "tool_use_id": "toolu_9", "content": other,
                                         "cache_control": {"type": "ephemeral"}}
    sent2 = h.send(ApiKind.ANTHROPIC, copy.deepcopy(nxt))
    res = results_of(sent2.body)
    assert res["toolu_9"]["content"] == other  # pinned: whole
    assert res["toolu_0"]["content"] == first  # re-applied byte for byte
    # rolled back to before the compression: the whole output goes again
    out = commands.rollback(h.rt, key, v["n"] - 1)
    assert out["applied"], out
    back = h.send(ApiKind.ANTHROPIC, copy.deepcopy(nxt))
    assert results_of(back.body)["toolu_0"]["content"] == log
    h.close()


# a summary line in one regex: what the log classifier's two (is_summary) must agree with
SUMMARY = re.compile(
    r"(?i)^={3,}.*={3,}$|^_{3,} .* _{3,}$|^-{3,} .* -{3,}$|short test summary|\b\d+ (?:passed|failed|errors?|skipped|"
    r"xfailed|xpassed|warnings?|deselected|tests?|examples?|specs?|suites?)\b|^Ran \d+ tests?|^(?:OK|FAILED)\b"
    r"|\bBUILD (?:SUCCESS|SUCCESSFUL|FAILED|FAILURE)\b|^Tests?:|^Test Suites:|\btest result:|^Finished\b|^Compiling\b.*\berror"
    r"|^\s*(?:PASS|FAIL|ERROR)\s|\bexit code\b|\breturn(?:ed)? code\b|^Done in\b|^real\s+\d")


def test_the_split_summary_regex_agrees_with_the_whole_one():
    """The log classifier tries SUMMARY's start-anchored half at the start only (for speed): it must find
    exactly the lines SUMMARY finds."""
    from contextwarden.compress import logs

    lines = {x.strip() for t in (T.failing_pytest()[0], T.build_log()[0], T.cargo_build()[0]) for x in t.split("\n")}
    lines |= {"====== 3 failed ======", "OK", "OK (skipped=1)", "FAILED (failures=2)", "Ran 12 tests in 0.3s", "Tests: 3 passed",
              "Test Suites: 1 failed", "Finished dev [unoptimized]", "Compiling foo: error", "PASS src/a.test.js", "FAIL x",
              "Done in 3.2s", "real 0m1.2s", "test result: ok. 3 passed", "exit code 2", "returned code 1",
              "BUILD SUCCESSFUL in 3s", "short test summary info", "____ test_x ____", "---- a ----", "okay then",
              "Finishedx", "realx 1", "ran out of memory"}
    assert sum(bool(SUMMARY.search(x)) for x in lines) > 20
    assert all(bool(SUMMARY.search(x)) == logs.is_summary(x) for x in lines)
