"""The keyword tagger, the tagging stage through the real pipeline, and the optional embedding tagger."""

from __future__ import annotations

import pytest

from contextwarden.memory.tagger import EmbeddingTagger, KeywordTagger, Tagger, tag_key
from contextwarden.memory.words import stem
from contextwarden.offline.memory.replay import Replayer
from contextwarden.settings.memory import TaggingSection
from tests.support.memstore import embedder, events


def test_code_identifiers_and_paths_are_tags_and_stopwords_are_not():
    tags = KeywordTagger(8).tag("Fix the bug in src/contextwarden/memory/store.py where load_embedder returns None; "
                                "see MemoryStore and vector_query in README.md. It is the thing we should do now.")
    assert {"src/contextwarden/memory/store.py", "load_embedder", "MemoryStore", "vector_query", "README.md"} <= set(tags)
    assert not {"the", "it", "is", "we", "should", "thing", "now"} & {t.lower() for t in tags}
    assert "readme" not in tags  # the parts of a path are not counted again as words


def test_max_tags_and_most_frequent_first():
    text = ("Kubernetes upgrade: the kubernetes cluster needs the upgrade. Helm charts too. Kubernetes nodes drain. "
            "Grafana dashboards, Prometheus alerts, Loki logs, Tempo traces, Mimir metrics.")
    tags = KeywordTagger(max_tags=3).tag(text)
    assert len(tags) == 3
    assert tags[0] == "kubernetes"


def test_near_duplicates_merge_by_stem_and_by_rapidfuzz_ratio():
    t = KeywordTagger(max_tags=10, merge_similarity=88)
    tags = t.tag("Adoption agencies were slow. The adoption agency called back. Adoption agencies again. "
                 "Colour palettes and color palettes; colour palettes.")
    keys = [tag_key(x) for x in tags]
    assert keys.count(tag_key("adoption agencies")) == 1
    assert sum(1 for x in tags if x.startswith(("colour", "color"))) <= 2  # "colour palettes"/"color palettes" merged
    assert len([x for x in tags if "palette" in x]) == 1
    # a strict threshold keeps spelling variants apart
    strict = KeywordTagger(max_tags=10, merge_similarity=100).tag("colour palettes, color palettes. colour palettes; color palettes")
    assert sorted(x for x in strict if "palette" in x) == ["color palettes", "colour palettes"]


def test_stemmer_folds_common_suffixes():
    assert stem("agencies") == stem("agency") == "agency"
    assert stem("researching") == stem("researched") == stem("research") == "research"
    assert stem("running") == "run"


def _profile(tmp_path, extra: str = "") -> str:
    p = tmp_path / "profile.yaml"
    p.write_text("extends: claude-code\nmemory: {enabled: false}\n" + extra)
    return str(p)


def test_tagging_stage_sets_notes_and_emits_event_with_active_tags(tmp_path):
    rp = Replayer.from_profile(_profile(tmp_path, "tagging: {active_turns: 2, max_tags: 5}\n"), tmp_path / "home")
    try:
        msgs = [
            {"role": "user", "content": "The Postgres migration failed on the orders table."},
            {"role": "assistant", "content": "The orders table migration needs a Postgres lock timeout."},
            {"role": "user", "content": "Now rename parse_invoice in billing/invoices.py please."},
        ]
        sent = rp.send(msgs)
        tags = sent.ctx.notes["tags"]
        assert "parse_invoice" in tags and "billing/invoices.py" in tags
        active = set(sent.ctx.notes["active_tags"])
        assert {tag_key("postgres"), tag_key("orders table")} & active
        assert tag_key("parse_invoice") not in active  # the turn's own topics are not the history's
        ev = events(rp.runtime.bus, "tags")[-1]
        assert ev["tags"] == tags and set(ev["active"]) == active and ev["ms"] >= 0
    finally:
        rp.close()


def test_tags_are_taken_from_the_text_without_channel_envelopes(tmp_path):
    rp = Replayer.from_profile(_profile(tmp_path), tmp_path / "home")
    try:
        text = ("[Telegram Alice (@alice) id:4242 +5m 2026-01-02 10:00 UTC]\nCan you compare the Lisbon and Porto "
                "apartment listings?\n[message_id: 991]")
        sent = rp.send([{"role": "user", "content": text}])
        tags = {t.lower() for t in sent.ctx.notes["tags"]}
        assert {"lisbon", "porto"} <= tags
        assert not {"telegram", "alice", "message_id", "utc"} & tags
    finally:
        rp.close()


def test_tagging_can_be_disabled(tmp_path):
    rp = Replayer.from_profile(_profile(tmp_path, "tagging: {enabled: false}\n"), tmp_path / "home")
    try:
        sent = rp.send([{"role": "user", "content": "Kubernetes helm charts"}])
        assert "tags" not in sent.ctx.notes
        assert not events(rp.runtime.bus, "tags")
    finally:
        rp.close()


def test_embedding_tagger_adds_the_nearest_known_tag():
    et = EmbeddingTagger(embedder(), threshold=0.3)
    et.learn(["authentication", "database migration", "holiday photos"])
    got = et.tag("the login flow rejects valid passwords", n=1)
    assert got == ["authentication"]
    tagger = Tagger(TaggingSection(embedding_tagger=True, max_tags=4), embedder())
    tagger.embedding.learn(["database migration", "holiday photos"])
    tags = tagger.tag("Before the release we have to migrate the schema of our Postgres DB and move old rows.")
    assert "database migration" in tags and "holiday photos" not in tags
    assert len(tags) <= 4
    # what the keyword tagger found is learnt as a known topic for later turns
    assert tagger.embedding._known.peek("postgres") is not None


@pytest.mark.parametrize("text", ["", "   ", "ok", "thanks!"])
def test_trivial_texts_have_no_or_few_tags(text):
    assert len(KeywordTagger(6).tag(text)) <= 1
