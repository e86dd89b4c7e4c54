"""A privacy stage placed before memory (examples/plugins/redact_emails.py, loaded from a plugins folder)
through the real pipeline in-process: memory stores and tags what the stages produced, also once
compaction has moved the messages, and a later injection never brings an address back."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from contextwarden.core.runtime import Runtime
from contextwarden.models import ApiKind
from contextwarden.offline.memory.replay import Replayer

ROOT = Path(__file__).resolve().parents[3]
PLUGIN = ROOT / "examples" / "plugins" / "redact_emails.py"
FILLER = ("Turn {i}: the weekly grocery list again, the usual vegetables, bread and coffee, nothing special, "
          "and the weather stayed grey and rainy all week long. ")


def _replayer(tmp_path) -> Replayer:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(PLUGIN, plugins / "redact_emails.py")
    profile = tmp_path / "privacy.yaml"
    profile.write_text(yaml.safe_dump({
        "extends": "claude-code",
        "tokens": {"context_window": 2048, "calibrate": False},
        "compaction": {"soft_threshold": 0.45, "hard_threshold": 0.55, "target": 0.3, "protect_recent_turns": 2,
                       "summary_max_tokens": 300, "min_span_tokens": 300},
        "memory": {"budget_fraction": 0.35, "top_k": 8, "timeout_ms": 20000, "min_score": 0.0},
        "pipeline": {"stage_budget_ms": 60000,
                     "order": ["redact_emails", "budget", "strip", "tagging", "clearing", "compaction", "memory"]}}))
    rp = Replayer(Runtime.from_profile(profile, tmp_path / "home", plugins), ApiKind.ANTHROPIC)
    assert rp.memory() is not None
    return rp


def test_memory_keeps_what_the_privacy_stage_produced(tmp_path):
    rp = _replayer(tmp_path)
    addresses = [f"person{i}.lastname@example.org" for i in range(16)]
    try:
        msgs: list[dict] = []
        compacted = False
        for i, addr in enumerate(addresses):
            msgs.append({"role": "user", "content": f"{FILLER.format(i=i) * 2} Write to {addr} about the Lisbon order {i}."})
            sent = rp.send(msgs, api_key="sk-privacy", session="s1")
            assert addr not in str(sent.wire)  # the stage's work went upstream
            compacted |= bool(sent.ctx.notes.get("compaction"))
            reply = f"Noted order {i}; I will write to them."
            rp.complete(sent, reply)
            msgs.append({"role": "assistant", "content": reply})
        rp.flush()
        assert compacted, "the conversation never compacted: the mapping after compaction went untested"
        svc = rp.memory()
        items = list(svc.store.iter_items([sent.ctx.tenant]))
        stored = " ".join(it.text + " " + " ".join(it.tags) for it in items)
        assert "Lisbon order" in stored and "[email]" in stored
        assert not [a for a in addresses if a in stored]
        # another session of the same user: memory is injected, and it holds no address
        later = rp.send([{"role": "user", "content": "Whom did I write to about the Lisbon orders?"}],
                        api_key="sk-privacy", session="s2")
        text = str(later.wire)
        assert "Lisbon order" in text and not [a for a in addresses if a in text]
        events = [e.to_dict() for e in rp.runtime.bus.recent]
        assert not [a for a in addresses if a in str(events)]
    finally:
        rp.close()
