"""The learned clearing policy (contextwarden.compress.policy): learns from re-fetched results, per tenant,
bounded, resettable, shown by ``contextwarden policy show`` against a running proxy."""

from __future__ import annotations

import copy
import time

import httpx
import pytest
import yaml

from contextwarden.cli import main as cli_main
from contextwarden.compress import policy
from contextwarden.compress.policy import NS_SEEN
from contextwarden.models.base import ApiKind
from contextwarden.offline import replay as replay_mod
from contextwarden.offline.fidelity import Fidelity
from contextwarden.store.statecache import state_cache
from contextwarden.wire.history import session_key
from tests.contextwarden.store.test_state import prefix, redis_server  # noqa: F401 (fixtures: a real redis-server)
from tests.support.proxy import ProxyProcess
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides, words
from tests.support.upstream import StandIn

CLEARING = {"trigger_tokens": 4000, "clear_at_least": 500, "keep_recent": 2, "keep_edited_reads": 0,
            "working_set_tokens": 0, "min_result_tokens": 100}


def harness(home, mode: str, **clearing) -> Harness:
    return Harness(home, overrides=settings_overrides(window=200_000, stages=["strip", "clearing"],
                                                      clearing={**CLEARING, "policy": mode, **clearing}))


def reread(body: dict, path: str, n: int = 1) -> dict:
    """The body one tool round later: the model Reads ``path`` again (its earlier result was cleared)."""
    b = copy.deepcopy(body)
    for m in b["messages"]:
        for blk in m["content"] if isinstance(m["content"], list) else []:
            blk.pop("cache_control", None)
    b["messages"].append({"role": "assistant", "content": [
        {"type": "tool_use", "id": f"toolu_again_{n}", "name": "Read", "input": {"file_path": path}}]})
    b["messages"].append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": f"toolu_again_{n}", "content": "def handler_0():\n    return 1"},
        {"type": "text", "text": "go on", "cache_control": {"type": "ephemeral"}}]})
    return b


def key(n: int) -> dict[str, str]:
    return {"x-api-key": f"sk-ant-tenant-{n}"}


def test_bounded_and_keeps_a_tool_whose_results_come_back():
    p = policy.LearnedPolicy()
    p = p.learned({"Bash": 8}, [("Bash", None)], 1.0)
    assert not p.keeps_tool("Bash")  # once: not yet
    p = p.learned({}, [("Bash", None)], 2.0)
    assert p.keeps_tool("Bash") and not p.keeps_tool("Read")
    p = p.learned({}, [("Read", "a.py")], 3.0)
    assert not p.keeps_tool("Read") and p.keeps_path("a.py")  # a path that came back keeps its Reads whole
    for i in range(policy.MAX_TOOLS * 3):
        p = p.learned({f"tool{i}": 1}, [("Read", f"f{i}.py")], 4.0 + i)
    assert len(p.tools) == policy.MAX_TOOLS and len(p.paths) == policy.MAX_PATHS
    assert p.keeps_tool("Bash")  # the most active stay; the oldest paths went first
    assert f"f{policy.MAX_TOOLS * 3 - 1}.py" in p.paths and "a.py" not in p.paths
    assert policy.LearnedPolicy.from_dict(p.to_dict()) == p


def test_a_reread_of_a_cleared_result_is_learned_for_its_tenant_only(cw_home):
    h = harness(cw_home, "learn")
    body = anthropic_tool_loop(8, result_words=500)
    first = h.send(ApiKind.ANTHROPIC, body, headers=key(1))
    assert first.changed  # a clearing step took the old Reads (src/mod0_0.py among them)
    tenant = first.ctx.tenant
    learned = policy.load(state_cache(h.rt), tenant)
    assert learned.tools["Read"].cleared > 0 and learned.tools["Read"].refetched == 0
    h.send(ApiKind.ANTHROPIC, reread(body, "src/mod0_0.py"), headers=key(1))
    learned = policy.load(state_cache(h.rt), tenant)
    assert learned.tools["Read"].refetched == 1 and learned.keeps_path("src/mod0_0.py")
    # another tenant's sessions taught nothing, and learn nothing from tenant 1's
    other = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=500, session="sess-2"), headers=key(2))
    assert other.ctx.tenant != tenant
    assert policy.load(state_cache(h.rt), other.ctx.tenant).paths == {}
    h.close()


def test_a_learned_path_is_kept_whole_by_the_next_step_and_frozen_learns_nothing(cw_home):
    h = harness(cw_home, "frozen")
    body = anthropic_tool_loop(8, result_words=500)
    sent = h.send(ApiKind.ANTHROPIC, body, headers=key(1))
    cleared = {c["input"]["file_path"] for c in sent.ctx.notes["cleared"] if c["tool"] == "Read"}
    assert "src/mod0_0.py" in cleared
    h.send(ApiKind.ANTHROPIC, reread(body, "src/mod0_0.py"), headers=key(1))
    assert state_cache(h.rt).get(policy.NS_POLICY, sent.ctx.tenant) is None  # frozen: nothing learned
    state_cache(h.rt).put(policy.NS_POLICY, sent.ctx.tenant,
                          policy.LearnedPolicy().learned({}, [("Read", "src/mod0_0.py")], 1.0).to_dict())
    again = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=500, seed=5), headers=key(1))
    kept = {c["input"]["file_path"] for c in again.ctx.notes["cleared"] if c["tool"] == "Read"}
    assert "src/mod0_0.py" not in kept and kept  # the others are cleared as before
    h.close()


def test_reads_learned_per_path_left_or_used_late_bounded():
    p = policy.LearnedPolicy().learned({}, [], 1.0, read=("GUIDE.md", "core.py"), session="s1")
    assert p.leaves("GUIDE.md", "s2") and p.leaves("core.py", "s2") and not p.leaves("other.py", "s2")
    assert not p.leaves("GUIDE.md", "s1")  # a session's own Reads are no evidence for itself
    p = p.learned({}, [], 2.0, read=("GUIDE.md",), late=("core.py",), session="s2")
    assert p.reads == {"GUIDE.md": (2, 0, policy.MANY), "core.py": (1, 1, policy.MANY)}  # the latest last
    assert p.leaves("GUIDE.md", "s1") and p.leaves("GUIDE.md", "s2") and not p.leaves("core.py", "s3")
    assert not p.learned({}, [("Read", "GUIDE.md")], 3.0).leaves("GUIDE.md")  # it came back after a clearing
    # an agent's instruction files are followed, not quoted: never left, whatever the sessions showed
    files = ("proj/CLAUDE.md", "AGENTS.md", "docs/AI_README_FIRST.md", "C:\\proj\\agents.md", "proj/CLAUDE.local.md",
             "AGENT.md", "proj/GEMINI.md", "CONVENTIONS.md", ".github/copilot-instructions.md", "proj/.cursorrules",
             "proj/.cursor/rules/style.mdc", ".windsurfrules", ".clinerules")
    rules = p.learned({}, [], 2.5, read=files, session="s1")
    assert not any(rules.leaves(f, "s2") for f in files)
    assert rules.leaves("GUIDE.md", "s3") and "CLAUDE.md" not in policy.describe("t", rules)
    assert not any(policy.INSTRUCTION_FILE.search(f) for f in ("README.md", "proj/CLAUDE.md.bak", "src/gemini.py", "rules.md"))
    assert policy.LearnedPolicy.from_dict(p.to_dict()) == p
    for i in range(policy.MAX_READS + 5):
        p = p.learned({}, [], 4.0, read=(f"f{i}.py",))
    assert len(p.reads) == policy.MAX_READS and "GUIDE.md" not in p.reads and f"f{policy.MAX_READS + 4}.py" in p.reads
    assert f"left (their Reads go at a free moment in another session): {policy.MAX_READS}" in policy.describe("t", p)


def test_a_tool_whose_results_no_session_used_late_is_left_once_enough_were_seen():
    """Another tool than Read is followed by its name: left once LEFT_TOOL_MIN of its results were counted
    and none used late, unless its cleared results came back."""
    bash, ls = policy.subject("Bash", None), policy.subject("LS", "src")
    assert (bash, ls) == ("tool:Bash", "tool:LS") and policy.subject("Read", "a.py") == "a.py"
    assert policy.subject("Read", None) is None and policy.subject("", None) is None
    p = policy.LearnedPolicy()
    for _ in range(policy.LEFT_TOOL_MIN - 1):
        p = p.learned({}, [], 1.0, read=(bash, ls), session="s1")
    assert not p.leaves(ls, "s2")  # too few seen to tell
    p = p.learned({}, [], 2.0, read=(bash, ls), late=(bash,), session="s1")
    assert p.leaves(ls, "s2") and not p.leaves(bash, "s2") and not p.leaves(ls, "s1")
    out = policy.describe("t", p)
    assert "LS" in out and "left" in out and "paths read" not in out
    p = p.learned({"LS": 2}, [("LS", None), ("LS", None)], 3.0)  # its cleared results came back
    assert p.keeps_tool("LS") and not p.leaves(ls, "s2")


def guide_session(session: str, after: int, answer: str | list, upto: int | None = None) -> dict:
    """A session that Reads docs/GUIDE.md and src/core.py, then makes ``after`` Bash calls, then answers
    ``answer`` (a text, or blocks; the body through message ``upto``, when given: what an earlier request held)."""
    body = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "metadata": {"user_id": f"user_x_account_y_session_{session}"},
            "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}]}
    msgs: list[dict] = [
        {"role": "user", "content": f"Read the guide and src/core.py, then fix the parser: guide_check_alpha must pass ({session})."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{session}_g", "name": "Read", "input": {"file_path": "docs/GUIDE.md"}},
                                          {"type": "tool_use", "id": f"toolu_{session}_c", "name": "Read", "input": {"file_path": "src/core.py"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{session}_g", "content": "Run guide_check_alpha before a commit.\n" + words(600)},
            {"type": "tool_result", "tool_use_id": f"toolu_{session}_c", "content": "def compute_total_v2(x):\n    return parse_header_v1(x)\n" + words(600, 3)}]}]
    for i in range(after):
        msgs += [{"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{session}_b{i}", "name": "Bash", "input": {"command": f"pytest -k case{i}"}}]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{session}_b{i}",
                                               "content": f"case{i} passed" + (" (parse_header_v1 ok)" if i == after - 1 else "")}]}]
    msgs += [{"role": "assistant", "content": answer if isinstance(answer, list) else [{"type": "text", "text": answer}]},
             {"role": "user", "content": "go on"}]
    body["messages"] = msgs[:upto] if upto else msgs
    body["messages"][-1] = {**body["messages"][-1], "content": [*(body["messages"][-1]["content"] if isinstance(
        body["messages"][-1]["content"], list) else [{"type": "text", "text": body["messages"][-1]["content"]}])]}
    body["messages"][-1]["content"][-1] = {**body["messages"][-1]["content"][-1], "cache_control": {"type": "ephemeral"}}
    return body


def test_a_read_the_model_used_late_is_told_from_one_it_left(cw_home):
    """``learn`` follows each path's Reads: a Read is counted when it is new to the model; the newest answer
    used one late when, more than LATE_ANSWERS answers after it, it names what only that Read holds (not a
    text the person wrote or the model called with, not a later result). A path read and never used late is
    left."""
    h = harness(cw_home, "learn", trigger_tokens=1_000_000)
    late = policy.LATE_ANSWERS + 1
    h.send(ApiKind.ANTHROPIC, guide_session("s1", late, "", upto=3), headers=key(1))  # the two Reads, new
    answer = "compute_total_v2 calls parse_header_v1; guide_check_alpha passes."
    sent = h.send(ApiKind.ANTHROPIC, guide_session("s1", late, answer), headers=key(1))
    p = policy.load(state_cache(h.rt), sent.ctx.tenant)
    # compute_total_v2: only core.py holds it; parse_header_v1: a later result too; guide_check_alpha: the person's text
    assert {k: v[:2] for k, v in p.reads.items()} == {"docs/GUIDE.md": (1, 0), "src/core.py": (1, 1)}
    assert p.leaves("docs/GUIDE.md", "another") and not p.leaves("src/core.py", "another")
    assert not p.leaves("docs/GUIDE.md", p.reads["docs/GUIDE.md"][2])  # (not in the session that read it)
    # the same answer, LATE_ANSWERS answers after the Reads: not late
    h.send(ApiKind.ANTHROPIC, guide_session("s2", late - 1, "", upto=3), headers=key(1))
    h.send(ApiKind.ANTHROPIC, guide_session("s2", late - 2, answer), headers=key(1))
    p = policy.load(state_cache(h.rt), sent.ctx.tenant)
    assert p.reads == {"docs/GUIDE.md": (2, 0, policy.MANY), "src/core.py": (2, 1, policy.MANY)}
    # an Edit whose old_string is a line of the guide: used late too (the Edit's path is in no text: not the Read's)
    edit = [{"type": "tool_use", "id": "toolu_s5_e", "name": "Edit", "input": {
        "file_path": "docs/OTHER.md", "old_string": "Run guide_check_alpha before a commit.", "new_string": "Run it."}}]
    h.send(ApiKind.ANTHROPIC, guide_session("s5", late, "", upto=3), headers=key(1))
    h.send(ApiKind.ANTHROPIC, guide_session("s5", late, edit), headers=key(1))
    assert policy.load(state_cache(h.rt), sent.ctx.tenant).reads["docs/GUIDE.md"][:2] == (3, 1)
    h.close()


def test_the_reads_of_a_left_path_go_at_a_free_moment(cw_home):
    """``frozen``, with docs/GUIDE.md learned as left and src/core.py used late: below the trigger, nothing
    is cleared while the prompt is cached; at a free moment (the cached prefix expired) the guide's Read
    goes, whatever the step's size, and core.py's stays. A Read fewer than LATE_ANSWERS answers old stays too."""
    h = harness(cw_home, "frozen", trigger_tokens=1_000_000)
    body = guide_session("s3", policy.LATE_ANSWERS + 1, "Done.")
    warm = h.send(ApiKind.ANTHROPIC, body, headers=key(1))
    state_cache(h.rt).put(policy.NS_POLICY, warm.ctx.tenant, policy.LearnedPolicy().learned(
        {}, [], 1.0, read=("docs/GUIDE.md",), late=("src/core.py",), session="an earlier session").to_dict())
    assert not h.send(ApiKind.ANTHROPIC, body, headers=key(1)).changed  # cached: not a free moment
    seen = state_cache(h.rt)
    seen.put(NS_SEEN, session_key(warm.ctx), {"last": time.time() - 3600, "model": warm.ctx.model})
    cold = h.send(ApiKind.ANTHROPIC, body, headers=key(1))
    assert {c["input"]["file_path"] for c in cold.ctx.notes["cleared"]} == {"docs/GUIDE.md"}
    young = guide_session("s4", policy.LATE_ANSWERS - 2, "Done.")  # its Reads LATE_ANSWERS - 1 answers old
    h.send(ApiKind.ANTHROPIC, young, headers=key(1))
    seen.put(NS_SEEN, session_key(h.send(ApiKind.ANTHROPIC, young, headers=key(1)).ctx), {"last": time.time() - 3600, "model": warm.ctx.model})
    assert not h.send(ApiKind.ANTHROPIC, young, headers=key(1)).changed
    h.close()


def test_the_results_of_a_left_tool_go_at_a_free_moment(cw_home):
    """``frozen``, with Bash learned as left by another session: at a free moment a Bash result LATE_ANSWERS
    answers old or more goes, a younger one stays, and the Reads (their paths not learned) stay."""
    h = harness(cw_home, "frozen", trigger_tokens=1_000_000)
    body = guide_session("s6", policy.LATE_ANSWERS + 1, "Done.")
    for m in body["messages"]:
        for blk in m["content"] if isinstance(m["content"], list) else []:
            if blk.get("tool_use_id") in ("toolu_s6_b0", f"toolu_s6_b{policy.LATE_ANSWERS}"):
                blk["content"] = words(400, 7)
    warm = h.send(ApiKind.ANTHROPIC, body, headers=key(1))
    state_cache(h.rt).put(policy.NS_POLICY, warm.ctx.tenant, policy.LearnedPolicy().learned(
        {}, [], 1.0, read=(policy.subject("Bash", None),) * policy.LEFT_TOOL_MIN, session="an earlier session").to_dict())
    assert not h.send(ApiKind.ANTHROPIC, body, headers=key(1)).changed  # cached: not a free moment
    state_cache(h.rt).put(NS_SEEN, session_key(warm.ctx), {"last": time.time() - 3600, "model": warm.ctx.model})
    cold = h.send(ApiKind.ANTHROPIC, body, headers=key(1))
    assert [c["tool_use_id"] for c in cold.ctx.notes["cleared"]] == ["toolu_s6_b0"]
    h.close()


def test_learn_counts_the_results_of_other_tools_by_tool(cw_home):
    h = harness(cw_home, "learn", trigger_tokens=1_000_000)
    sent = h.send(ApiKind.ANTHROPIC, guide_session("s7", 2, "", upto=5), headers=key(1))  # a Bash result, new
    assert {k: v[:2] for k, v in policy.load(state_cache(h.rt), sent.ctx.tenant).reads.items()} == {"tool:Bash": (1, 0)}
    h.close()


def test_a_failure_to_learn_leaves_the_clearing_step_in_place(cw_home, monkeypatch):
    """Learning is an extra: when its state cannot be updated (replicas contending on one tenant's record, a
    backend down), the request is still cleared as decided and an error event says what was not learned."""
    h = harness(cw_home, "learn")

    def busy(*a, **k):
        raise RuntimeError("state update of several keys: too many concurrent writers")

    monkeypatch.setattr(policy, "learn", busy)
    sent = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=500), headers=key(1))
    assert sent.changed and sent.ctx.notes["cleared"]
    errors = [e for e in sent.events("error") if e.get("where") == "clearing"]
    assert errors and errors[0]["action"] == "not learned" and "concurrent writers" in errors[0]["message"]
    h.close()


@pytest.fixture()
def learning_proxy(tmp_path):
    profile = tmp_path / "learn.yaml"
    profile.write_text(yaml.safe_dump({
        "extends": "claude-code", "name": "policy-e2e", "memory": {"enabled": False},
        "pipeline": {"disabled": ["compaction", "memory", "recall", "compression"]},
        "clearing": {**CLEARING, "policy": "learn"}}))
    with StandIn() as upstream, ProxyProcess(tmp_path, profile=str(profile), reverse=upstream.url) as proxy:
        yield proxy, profile


def test_policy_show_and_reset_on_a_running_proxy(learning_proxy, capsys):
    proxy, profile = learning_proxy
    body = anthropic_tool_loop(8, result_words=500)
    with httpx.Client(base_url=proxy.url, timeout=60) as c:
        for b in (body, reread(body, "src/mod0_0.py"), reread(reread(body, "src/mod0_0.py"), "src/mod1_0.py", 2)):
            r = c.post("/v1/messages", json=b, headers={**key(7), "anthropic-version": "2023-06-01"})
            assert r.status_code == 200, r.text
    home = ["--home", str(proxy.home), "--profile", str(profile)]
    assert cli_main(["policy", "show", *home]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "Read" in out and "src/mod0_0.py  (1x)" in out and "src/mod1_0.py  (1x)" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("Read"))
    assert line.split()[2] == "2" and "keeps its results whole" in line  # fetched again twice
    assert cli_main(["policy", "reset", *home]) == 0
    assert "reset the learned policy of 1 tenant" in capsys.readouterr().out
    assert cli_main(["policy", "show", *home]) == 0
    assert "nothing learned yet" in capsys.readouterr().out


def test_a_replay_learns_from_the_cleared_results_the_recorded_answers_used(cw_home):
    """In a replay the recorded answers were written against the client's history: a cleared result an
    answer used (the fidelity measure's loss) stands for the re-read the model would have made live."""
    h = harness(cw_home, "learn")
    sent = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=500), headers=key(1))
    item = {"kind": "ref", "what": "handler_0", "tool": "Read", "tool_use_id": "toolu_0_1", "stage": "cleared"}
    taught: set[str] = set()
    for _ in range(2):  # the same loss counted again on a later request teaches once
        replay_mod._learn_losses(h.rt, sent.ctx, Fidelity(items=[item, {**item, "stage": "dropped", "tool_use_id": "x"}]), taught)
    learned = policy.load(state_cache(h.rt), sent.ctx.tenant)
    assert learned.tools["Read"].refetched == 1 and learned.keeps_path("src/mod0_0.py")
    h.close()


def test_replicas_on_one_redis_learn_into_the_same_policy(tmp_path, redis_server, prefix):
    """Two proxies on one Redis: what replica A learned is applied by B, and B's learning adds to it."""
    def replica(name: str) -> Harness:
        return Harness(tmp_path / name, overrides=settings_overrides(
            window=200_000, stages=["strip", "clearing"], state={"url": redis_server.url, "prefix": prefix},
            clearing={**CLEARING, "policy": "learn"}))

    a, b = replica("a"), replica("b")
    body = anthropic_tool_loop(8, result_words=500)
    first = a.send(ApiKind.ANTHROPIC, body, headers=key(1))
    a.send(ApiKind.ANTHROPIC, reread(body, "src/mod0_0.py"), headers=key(1))
    on_b = b.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=500, seed=9), headers=key(1))
    assert on_b.ctx.tenant == first.ctx.tenant  # (the replicas share the tenant salt)
    kept = {c["input"]["file_path"] for c in on_b.ctx.notes["cleared"] if c["tool"] == "Read"}
    assert kept and "src/mod0_0.py" not in kept  # B keeps the path A saw come back
    learned = policy.load(state_cache(a.rt), first.ctx.tenant)
    assert learned.tools["Read"].refetched == 1 and learned.tools["Read"].cleared > 4  # both replicas' steps
    for r in (a, b):
        r.close()
