"""The memory service's own wiring (memory/service.py)."""

from __future__ import annotations

from types import SimpleNamespace

from contextwarden.memory import tagger as tagger_mod
from contextwarden.memory.service import MemoryService
from contextwarden.memory.tagger import Tagger
from contextwarden.settings import load_settings


def test_the_storer_tags_what_the_pending_table_holds_without_redacting_it_again(monkeypatch):
    settings = load_settings("default")
    calls: list[str] = []
    monkeypatch.setattr(tagger_mod, "redact_text", lambda t: calls.append(t) or t)
    svc = SimpleNamespace(tagger=Tagger(settings.tagging), settings=settings)
    text = "[REDACTED:api_key] the deploy_script reads STAGING_HOST from deploy/config.yaml"
    tags = MemoryService._tag(svc, text)  # type: ignore[arg-type]
    assert calls == []  # redacted when it was submitted: not again (1.2 ms of a 12 KB result)
    assert "deploy_script" in tags and not any("redacted" in t.lower() or "api_key" in t for t in tags)
    assert Tagger(settings.tagging).tag(text) == tags and calls  # a text from elsewhere is redacted first
