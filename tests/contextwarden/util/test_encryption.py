"""Encryption at rest (AES-256-GCM, ``CONTEXTWARDEN_KEY``): stored memory documents, the lexical
snapshot and state values are unreadable in the files, vector search still works, export / import
round-trips, and a wrong or missing key is an error that says so."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from contextwarden.cli import main
from contextwarden.memory.lexical import LexicalIndex, load_snapshot, save_snapshot
from contextwarden.memory.store import MemoryStore
from contextwarden.models.base import ApiKind
from contextwarden.settings.memory import MemorySection
from contextwarden.util.sealing import Sealer, SealError, new_key, parse_key
from tests.support.memstore import item, store
from tests.support.proxy import files_holding
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides

SECRET = "quokka-zebra-launch-codes"


@pytest.fixture
def key(monkeypatch):
    k = new_key()
    monkeypatch.setenv("CONTEXTWARDEN_KEY", k)
    yield k
    monkeypatch.delenv("CONTEXTWARDEN_KEY", raising=False)


def readable(home: Path, needle: str) -> list[str]:
    return files_holding(home, needle.encode())


def test_memory_documents_are_sealed_and_still_found_by_meaning(cw_home, tmp_path, key, monkeypatch, capsys):
    s = store(cw_home)
    items = [item(f"the {SECRET} are kept in the vault under the stairs", turn=1),
             item("we chose sqlite for the state database", turn=2, tags=["sqlite"])]
    assert s.add(items) == 2
    hit = s.vector_query("which database did we choose?", ["t-a"], 1)[0][0]
    assert hit.text == "we chose sqlite for the state database"  # embeddings stay searchable
    snap = cw_home / "memory-lexical.npz"
    lex = LexicalIndex()
    lex.add(items)
    save_snapshot(lex, snap, {"k": 1}, s.sealer)
    assert load_snapshot(snap, {"k": 1}, s.sealer) is not None
    s.close()
    assert readable(cw_home, SECRET) == [] and readable(cw_home, "sqlite for the state") == []

    # export (plain: the owner's explicit copy) and import into another home: sealed again there
    f = tmp_path / "m.jsonl"
    assert main(["memory", "export", str(f), "--home", str(cw_home)]) == 0
    assert SECRET in f.read_text()
    other = tmp_path / "other"
    assert main(["memory", "import", str(f), "--home", str(other)]) == 0
    assert "imported 2 new items" in capsys.readouterr().out
    assert readable(other, SECRET) == []
    s2 = store(other)
    assert sorted(x.text for x in s2.iter_items()) == sorted(x.text for x in items)
    s2.close()

    # a wrong key, or none: a clear error, never garbage
    monkeypatch.setenv("CONTEXTWARDEN_KEY", new_key())
    s3 = store(cw_home)  # each store reads its key when it opens
    with pytest.raises(SealError, match="wrong key"):
        list(s3.iter_items())
    assert load_snapshot(snap, {"k": 1}, s3.sealer) is None  # (rebuilt from the store, which says what is wrong)
    s3.close()
    monkeypatch.delenv("CONTEXTWARDEN_KEY")
    s4 = store(cw_home)
    with pytest.raises(SealError, match="no key is set"):
        list(s4.iter_items())
    s4.close()


def test_session_decisions_are_sealed_in_the_state_file(cw_home, key):
    h = Harness(cw_home, overrides=settings_overrides(window=50_000, stages=["clearing"],
                                                      clearing={"trigger_tokens": 3000, "keep_recent": 1,
                                                                "clear_at_least": 500, "min_result_tokens": 100,
                                                                "working_set_tokens": 0}))  # (the Reads cleared)
    body = anthropic_tool_loop(6, result_words=300)
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed and sent.events("clearing")
    assert h.send(ApiKind.ANTHROPIC, body).body == sent.body  # re-applied from the sealed record
    stub = sent.body["messages"][2]["content"][0]["content"]
    h.close()
    assert stub.startswith("[") and readable(cw_home, stub[:40]) == []
    assert readable(cw_home, "toolu_0_1") == []  # not even the ids a record is keyed by


def test_each_store_seals_with_its_own_key(cw_home):
    """No process-wide key: a second store of the same process, given another key, cannot read the
    first one's documents, and the first still can."""
    mine = MemoryStore(cw_home, MemorySection(), None, sealer=Sealer(parse_key(new_key())))
    assert mine.add([item(f"the {SECRET} are in the vault")]) == 1
    other = MemoryStore(cw_home, MemorySection(), None, read_only=True, sealer=Sealer(parse_key(new_key())))
    with pytest.raises(SealError, match="wrong key"):
        list(other.iter_items())
    assert [x.text for x in mine.iter_items()] == [f"the {SECRET} are in the vault"]
    other.close()
    mine.close()
    assert readable(cw_home, SECRET) == []


def test_the_memory_cli_seals_with_the_key_file_of_the_settings(cw_home, tmp_path, monkeypatch):
    kf = tmp_path / "cw.key"
    kf.write_text(new_key())
    monkeypatch.setenv("CONTEXTWARDEN_STATE__KEY_FILE", str(kf))
    records = tmp_path / "in.jsonl"
    records.write_text(orjson.dumps(item(f"the {SECRET} are in the vault").to_record()).decode() + "\n")
    assert main(["memory", "import", str(records), "--home", str(cw_home)]) == 0
    assert readable(cw_home, SECRET) == []
    out = tmp_path / "out.jsonl"
    assert main(["memory", "export", str(out), "--home", str(cw_home)]) == 0
    assert SECRET in out.read_text()
    s = store(cw_home)  # given no key: the environment's, none
    with pytest.raises(SealError, match="no key is set"):
        list(s.iter_items())
    s.close()
