"""Memory shared whole: with a Chroma server, what one replica ingests reaches the other replica's
BM25 index (memory/lexical_refresh.py), so the lexical half of hybrid retrieval finds it there too."""

from __future__ import annotations

from types import SimpleNamespace

from contextwarden.memory.lexical import LexicalIndex
from contextwarden.memory.lexical_refresh import LexicalRefresh
from contextwarden.memory.store import MemoryStore
from contextwarden.settings.memory import MemorySection
from tests.support.chroma_server import ChromaServer
from tests.support.memstore import embedder, item


def test_items_another_replica_stored_reach_this_lexical_index(tmp_path):
    with ChromaServer(tmp_path) as chroma:
        a = MemoryStore(tmp_path / "a", MemorySection(chroma_url=chroma.url), embedder())
        b = MemoryStore(tmp_path / "b", MemorySection(chroma_url=chroma.url), embedder())
        assert a.available and b.available
        b_service = SimpleNamespace(store=b, lexical=LexicalIndex(), closed=False, bus=None)
        refresh = LexicalRefresh(b_service)
        a.add([item("ERR_QUOKKA_7731 came from the nginx upstream timeout", session="sa", turn=1),
               item("unrelated note about lunch", session="sa", turn=2)])
        assert b_service.lexical.query("ERR_QUOKKA_7731", ["t-a"], 5) == []  # replica B has not looked yet
        assert refresh.refresh_once() == 2
        hits = b_service.lexical.query("ERR_QUOKKA_7731", ["t-a"], 5)
        assert hits and "ERR_QUOKKA_7731" in hits[0].item.text
        assert refresh.refresh_once() == 0  # what it has is not indexed twice
        a.add([item("second fact: ERR_WOMBAT_12 in the cron job", session="sa", turn=3)])
        assert refresh.refresh_once() == 1
        a.close()
        b.close()
