"""Recoverability on an eval trace: is everything clearing and compaction took out retrievable by the id
its stub or summary names, and what does automatic recall put back, at what cost?

    .venv/bin/python bench/recoverability.py [TRACE] [--profile claude-code] [--limit N]

Replays a Claude Code trace (default: the smallest of ../shared/eval/traces) through the real pipeline
with a kept cw_home, collects every id the ``clearing`` events (new stubs) and ``compaction`` events
(folded spans) name, and looks each one up in the originals afterwards: found, and found byte for byte
(the SHA-256 of the stored text is the id: nothing was redacted from it). Automatic recall: the
``recall`` events' injections (how many, why, tokens) against the tokens the replay sent.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared")).resolve()
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("CONTEXTWARDEN_MEMORY__MODEL_DIR", str(SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from contextwarden.memory.ids import memory_id  # noqa: E402
from contextwarden.memory.originals import OriginalStore  # noqa: E402
from contextwarden.replay import replay  # noqa: E402


def main() -> None:
    traces = sorted((SHARED / "eval" / "traces").glob("*.jsonl"), key=lambda p: p.stat().st_size)
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", nargs="?", default=str(traces[0]) if traces else None)
    ap.add_argument("--profile", default="claude-code")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ids: dict[str, str] = {}
        recalled: Counter = Counter()
        recall_tokens = 0
        errors: list[str] = []
        kept = [0]
        import contextwarden.runtime as runtime_mod

        orig_init = runtime_mod.Runtime.__init__

        def init(self, *a, **kw):  # listen to the replay's runtime
            orig_init(self, *a, **kw)

            def on(ev):
                nonlocal recall_tokens
                d = ev.data or {}
                if ev.type == "clearing":
                    ids.update({i: "cleared" for i in d.get("ids") or []})
                elif ev.type == "compaction" and d.get("folded"):
                    ids.update({i: "compacted" for i in d["folded"]})
                elif ev.type == "error" and str(d.get("where", "")).startswith(("recall", "memory")):
                    errors.append(f"{d.get('where')}: {str(d.get('message'))[:200]}")
                elif ev.type == "recall" and d.get("kept"):
                    kept[0] += int(d["kept"])
                    for i in d.get("kept_ids") or []:
                        ids.setdefault(i, "kept (compacted or cleared tool result)")
                if ev.type == "recall" and d.get("injected"):
                    recalled.update(d.get("why") or [])
                    recall_tokens += int(d.get("tokens") or 0)
            self.bus.subscribe(on)

        runtime_mod.Runtime.__init__ = init
        rep = replay(args.trace, args.profile, home=tmp, limit=args.limit, turn_hooks=False)
        store = OriginalStore(tmp, read_only=True)
        found = {it.source_id: it for it in store.get(list(ids), store.tenants())} if ids else {}
        exact = sum(1 for i, it in found.items() if memory_id(it.text) == i)
        sent = sum(r.tokens_sent for r in rep.results)
        kinds = Counter(ids.values())
        print(f"trace {Path(args.trace).name}: {len(rep.results)} requests, profile {args.profile}")
        print(f"ids named by stubs and summaries: {len(ids)} ({dict(kinds)})")
        print(f"retrievable by that id: {len(found)}/{len(ids)}"
              f" ({100 * len(found) / max(1, len(ids)):.1f}%); byte for byte: {exact} (the rest had secrets redacted)")
        st = Counter(f"{k}:{v}" for r in rep.results for k, v in r.stages.items() if k in ("recall", "compaction", "clearing"))
        print(f"stages not ok: {dict(st)}")
        print(f"kept whole before sending: {kept[0]} items; errors: {errors[:5]}")
        print(f"automatic recall: {sum(recalled.values())} items injected {dict(recalled)}, {recall_tokens:,} tokens"
              f" = {100 * recall_tokens / max(1, sent):.2f}% of the {sent:,} tokens sent")


if __name__ == "__main__":
    sys.exit(main())
