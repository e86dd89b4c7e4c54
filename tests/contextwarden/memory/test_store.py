"""The memory store on real Chroma (PersistentClient in a temp dir) with the real embedding model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from contextwarden.memory.ids import content_hash, memory_id
from contextwarden.memory.items import MemoryItem
from contextwarden.memory.store import MemoryStore, writer_lock_holder
from contextwarden.settings.memory import MemorySection
from tests.support.memstore import embedder, item, store
from tests.support.wait import wait_until

ROOT = str(Path(__file__).resolve().parents[3])


def test_ids_are_content_hashes():
    t = "the deploy failed: connection refused"
    assert content_hash(t) == __import__("hashlib").sha256(t.encode()).hexdigest()
    assert memory_id(t) == "m-" + content_hash(t)[:16]
    it = item(t, tenant="t-x")
    assert it.id == "t-x:" + content_hash(t)[:32]
    assert it.memory_id == memory_id(t)


def test_metadata_round_trip_keeps_every_field():
    it = MemoryItem(text="pytest -x failed in test_auth", session="s9", tenant="t-b", turn=7, role="tool",
                    kind="chunk", tool="Bash", tags=["pytest", "auth"], ts=1234.5, workspace="team",
                    source_id="m-0123456789abcdef")
    md = it.to_metadata()
    assert all(v is not None for v in md.values())
    assert MemoryItem.from_record(it.text, md) == it
    assert MemoryItem.from_record(orjson.loads(orjson.dumps(it.to_record()))) == it
    bare = item("x")  # None fields and empty tags are left out (Chroma rejects them)
    assert {"tool", "workspace", "source_id", "tags"}.isdisjoint(bare.to_metadata())


def test_identical_content_is_stored_once_per_tenant_across_agents(cw_home):
    s = store(cw_home)
    out = "src/auth.py:42: TokenExpired raised in refresh()"
    # two agents (different sessions) of one tenant read the same tool output, plus a duplicate in one batch
    a = item(out, session="agent-main", kind="tool_result", role="tool", tool="Bash")
    b = item(out, session="agent-sub", kind="tool_result", role="tool", tool="Bash", turn=3)
    assert s.add([a, a]) == 1
    assert s.add([b]) == 0
    assert s.count() == 1
    # another tenant's identical content is its own item (tenants never share a record)
    assert s.add([item(out, tenant="t-other")]) == 1
    assert s.count() == 2
    s.close()


def test_vector_query_finds_by_meaning_and_never_crosses_tenants(cw_home):
    s = store(cw_home)
    a = [item(t, tenant="t-a", turn=i) for i, t in enumerate([
        "The login endpoint returns 401 when the JWT has expired",
        "We moved the database to Postgres 16 last week",
        "Caroline adopted a dog named Max in June"])]
    b = [item(t, tenant="t-b", turn=i) for i, t in enumerate([
        "Authentication fails with 401 after the token expires",
        "The login endpoint returns 401 when the JWT has expired"])]  # same text as t-a's
    assert s.add(a + b) == 5
    hits = s.vector_query("why does auth return 401 for an expired token?", ["t-a"], n=10)
    assert hits and all(h.tenant == "t-a" for h, _ in hits)
    assert len(hits) == 3  # only t-a's three, although n=10 and t-b's are nearer
    assert hits[0][0].text.startswith("The login endpoint")
    assert all(0.0 <= sc <= 1.0 for _, sc in hits)
    assert hits[0][1] > hits[-1][1]
    cross = [h for q in ("401 expired token", "Caroline dog", "Postgres") for h, _ in s.vector_query(q, ["t-b"], 10)]
    assert cross and {h.tenant for h in cross} == {"t-b"}
    assert s.vector_query("anything", [], 5) == []
    assert s.vector_query("anything", ["t-never-stored"], 5) == []
    # isolation is structural: each tenant's vectors are a collection of their own
    assert s.stats()["partitions"] == 2
    # an extra where narrows within the tenant
    only1 = s.vector_query("database", ["t-a"], 5, where={"turn": 1})
    assert [h.turn for h, _ in only1] == [1]
    # a precomputed query vector gives the same ranking
    q = embedder()(["database migration"])[0]
    assert [h.id for h, _ in s.vector_query("", ["t-a"], 3, query_embedding=q)] == \
        [h.id for h, _ in s.vector_query("database migration", ["t-a"], 3)]
    s.close()


def test_shared_workspace_is_readable_by_every_tenant_that_names_it(cw_home):
    s = store(cw_home)
    s.add([item("runbook: restart the ingest worker with systemctl", tenant="t-a", workspace="ops"),
           item("private note of tenant a about restarts", tenant="t-a")])
    hits = s.vector_query("how to restart the worker", ["t-b"], 10, workspace="ops")
    assert [h.text for h, _ in hits] == ["runbook: restart the ingest worker with systemctl"]
    assert s.vector_query("how to restart the worker", ["t-b"], 10) == []
    assert len(list(s.iter_items(["t-b"], workspace="ops"))) == 1
    s.close()


def test_partition_names_are_valid_and_distinct(cw_home):
    from contextwarden.memory.store import partition_name

    names = {partition_name("t-0123456789abcdef"), partition_name("anonymous"), partition_name("x", "team ops/ü"),
             partition_name("x", "team-ops-"), partition_name("y", "team ops/ü")}
    assert len(names) == 4  # the workspace decides, not the tenant
    s = store(cw_home)
    s.add([item("note in an oddly named workspace", workspace="team ops/ü " + "z" * 80)])
    assert s.vector_query("note", ["t-other"], 3, workspace="team ops/ü " + "z" * 80)[0][0].text.startswith("note")
    s.close()


def test_iter_items_filters_tenants_and_pages(cw_home, monkeypatch):
    import contextwarden.memory.store as store_mod

    monkeypatch.setattr(store_mod, "PAGE", 7)  # several pages from a small store
    s = store(cw_home)
    s.add([item(f"fact number {i}", tenant="t-a" if i % 3 else "t-b", turn=i) for i in range(30)])
    a = list(s.iter_items(["t-a"]))
    assert len(a) == 20 and {x.tenant for x in a} == {"t-a"}
    assert len(list(s.iter_items())) == 30
    assert len({x.id for x in s.iter_items()}) == 30
    s.close()


def test_ttl_prune_deletes_only_old_items(cw_home):
    s = store(cw_home)
    now = time.time()
    s.add([item("old decision about caching", ts=now - 40 * 86400),
           item("older still: the first schema", ts=now - 90 * 86400),
           item("fresh: we use Redis now", ts=now - 3600)])
    assert s.prune(30) == 2
    assert [x.text for x in s.iter_items()] == ["fresh: we use Redis now"]
    assert s.prune(30) == 0
    s.close()


def test_delete_session_of_one_tenant_or_all(cw_home):
    s = store(cw_home)
    s.add([item(f"s1 fact {i}", session="s1") for i in range(4)] +
          [item("s1 of tenant b", session="s1", tenant="t-b"), item("s2 fact", session="s2")])
    assert s.delete_session("s1", tenant="t-a") == 4
    assert sorted(x.text for x in s.iter_items()) == ["s1 of tenant b", "s2 fact"]
    assert s.delete_session("s1") == 1
    assert s.delete_session("nope") == 0
    assert [r["session"] for r in s.sessions()] == ["s2"]
    s.close()


def test_sessions_and_stats(cw_home):
    s = store(cw_home)
    s.add([item("ask about flaky test", session="s1", turn=0, ts=100.0),
           item("pytest output ...", session="s1", turn=1, role="tool", kind="tool_result", tool="Bash", ts=200.0),
           item("other session", session="s2", tenant="t-b", turn=0, ts=300.0)])
    rows = s.sessions()
    assert [r["session"] for r in rows] == ["s2", "s1"]
    s1 = rows[1]
    assert (s1["items"], s1["turns"], s1["tools"], s1["first"], s1["last"]) == (2, 2, ["Bash"], 100.0, 200.0)
    st = s.stats()
    assert (st["items"], st["vectors"], st["text_only"], st["sessions"]) == (3, 3, 0, 2)
    assert st["tenants"] == {"t-a": 2, "t-b": 1} and st["kinds"] == {"message": 2, "tool_result": 1}
    assert st["disk_bytes"] > 0 and "tests" in st["embedder"]
    s.close()


def test_export_import_round_trip(cw_home, tmp_path):
    s = store(cw_home)
    items = [item("we chose sqlite for state", tags=["sqlite", "state"], turn=1),
             item("Traceback: KeyError 'model'", role="tool", kind="tool_result", tool="Bash", turn=2),
             item("team runbook", tenant="t-b", workspace="ops")]
    s.add(items)
    path = tmp_path / "mem.jsonl"
    assert s.export_jsonl(path) == 3
    recs = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert {r["id"] for r in recs} == {it.id for it in items}
    s.close()

    other = store(tmp_path / "home2")
    with open(path, "ab") as f:
        f.write(b"not json\n\n")  # a damaged line is skipped, not fatal
    assert other.import_jsonl(path) == 3
    assert other.import_jsonl(path) == 0  # deduplicated
    back = sorted(other.iter_items(), key=lambda x: x.text)
    want = sorted(items, key=lambda x: x.text)
    # every field, tags and workspace included (the time to within float noise of the storage round trip)
    assert [x.ts for x in back] == pytest.approx([x.ts for x in want], abs=1e-3)
    for x in back + want:
        x.ts = 0.0
    assert back == want
    # imported items are searchable by meaning: they were embedded again
    assert other.vector_query("which database for state?", ["t-a"], 1)[0][0].text == "we chose sqlite for state"
    other.close()


def test_without_a_model_text_is_stored_and_backfilled_later(cw_home):
    s = MemoryStore(cw_home, MemorySection(), None)
    assert s.available
    assert s.add([item("lexical only: grep finds ERR_CONN_RESET"), item("second")]) == 2
    assert s.vector_query("ERR_CONN_RESET", ["t-a"], 5) == []  # no vectors, no crash
    assert sorted(x.text for x in s.iter_items(["t-a"])) == ["lexical only: grep finds ERR_CONN_RESET", "second"]
    assert s.stats()["text_only"] == 2
    s.close()
    s = store(cw_home)  # the model is back: dedup spans both collections, backfill moves the text over
    assert s.add([item("second")]) == 0
    assert s.backfill() == 2
    st = s.stats()
    assert (st["vectors"], st["text_only"]) == (2, 0)
    assert s.vector_query("connection reset error", ["t-a"], 1)[0][0].text.startswith("lexical only")
    s.close()


def test_get_by_ids_finds_a_cleared_tool_result_and_its_chunks(cw_home):
    s = store(cw_home)
    original = "full tool output"
    src = memory_id(original)
    s.add([item("chunk one", kind="chunk", source_id=src, turn=4), item("chunk two", kind="chunk", source_id=src, turn=4),
           item("unrelated", turn=5)])
    assert sorted(x.text for x in s.get_by_ids([src], ["t-a"])) == ["chunk one", "chunk two"]
    assert s.get_by_ids([src], ["t-b"]) == []
    assert [x.text for x in s.get_by_ids([memory_id("unrelated")], ["t-a"])] == ["unrelated"]
    s.close()


def test_one_writer_process_per_local_store(cw_home):
    s = store(cw_home)
    assert writer_lock_holder(cw_home) is None  # held by this process: not "another"
    same_process = store(cw_home)  # a second store in the same process shares the lock (Chroma is thread-safe)
    same_process.close()
    code = textwrap.dedent(f"""
        from contextwarden.memory.store import MemoryStore, writer_lock_holder
        from contextwarden.settings.memory import MemorySection
        from pathlib import Path
        w = MemoryStore(Path({str(cw_home)!r}), MemorySection(), None)
        r = MemoryStore(Path({str(cw_home)!r}), MemorySection(), None, read_only=True)
        print(w.available, "|", w.error, "|", writer_lock_holder(Path({str(cw_home)!r})), "|", r.available)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    avail, err, holder, read_ok = [x.strip() for x in out.stdout.split("|")]
    assert avail == "False" and f"process {os.getpid()}" in err and "one" in err and "chroma_url" in err
    assert holder == str(os.getpid())
    assert read_ok == "True"
    s.close()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.split("|")[0].strip() == "True"  # released on close


def test_unreachable_chroma_server_is_reported_not_raised(cw_home):
    s = MemoryStore(cw_home, MemorySection(chroma_url="http://127.0.0.1:9"), None)
    assert not s.available and "127.0.0.1:9" in s.error
    assert s.vector_query("x", ["t-a"], 3) == [] and s.count() == 0 and list(s.iter_items()) == []
    with pytest.raises(RuntimeError):
        s.add([item("x")])
    s.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_chroma_server_shared_by_two_proxies_and_reconnects(cw_home, tmp_path):
    import urllib.request
    from pathlib import Path

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    a = MemoryStore(cw_home, MemorySection(chroma_url=url), embedder())
    assert not a.available and url.split("//")[1] in a.error  # the server is not up yet
    chroma = Path(sys.executable).with_name("chroma")
    proc = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path / "srv"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    try:
        def up() -> bool:
            try:
                return bool(urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1).read())
            except OSError:
                return False
        assert wait_until(up, 60, interval=0.2), "chroma server did not start"
        # the server came up: the next write reconnects, no restart needed
        assert a.add([item("shared runbook: rotate the TLS cert with certbot", tenant="t-a"),
                      item("tenant b private notes on certs", tenant="t-b")]) == 2
        assert a.available
        b = MemoryStore(tmp_path / "other-proxy-home", MemorySection(chroma_url=url), embedder())
        assert b.available and b.count() == 2
        assert b.add([item("shared runbook: rotate the TLS cert with certbot", tenant="t-a")]) == 0  # dedup across proxies
        hits = b.vector_query("how do I renew the certificate", ["t-a"], 10)
        assert [h.tenant for h, _ in hits] == ["t-a"]
        assert not (cw_home / "memory.lock").exists() and not (cw_home / "chroma").exists()
        b.close()
    finally:
        proc.terminate()
        proc.wait(30)
        a.close()
