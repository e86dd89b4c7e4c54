"""Tool-output compression on the eval traces: what it saves, what the model loses, what it bills.

    .venv/bin/python bench/compression_eval.py                  # per-tool table + replay with / without, 3 traces
    .venv/bin/python bench/compression_eval.py --no-replay      # the per-tool table only (seconds)
    .venv/bin/python bench/compression_eval.py --set compression.tools='[Bash]'   # another policy

1. **Per tool** (every tool result at first sight, i.e. the newest results of each request, as the stage
   sees them): outputs compressed, their tokens before and after (cl100k), the share saved on outputs
   over 5 KB, and the references and edit sources the model used in its **next three answers** that
   the original output held and the request would no longer hold anywhere (pessimistic: counted per
   answer, against the compressed text, the call's input and the rest of the client's body).
2. **Replay** (``contextwarden replay``'s machinery and fidelity measure, generous stage budgets) of each
   trace with the profile as it is and with ``compression.enabled`` flipped: cost under caching, lost
   references and edit sources, for both.

The per-tool policy (``compression.*``) comes from the profile (default: ``default``) and ``--set``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("CONTEXTWARDEN_MEMORY__MODEL_DIR", str(SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import tempfile  # noqa: E402

from contextwarden.cli.replay_run import parse_sets  # noqa: E402
from contextwarden.compress import compress  # noqa: E402
from contextwarden.memory.retrieve import human_text, role_of  # noqa: E402
from contextwarden.models.base import ApiKind  # noqa: E402
from contextwarden.offline.fidelity import Indexer, answer_items, body_texts, has_source  # noqa: E402
from contextwarden.offline.replay import load_trace, replay  # noqa: E402
from contextwarden.plugins.clearing import EDIT_TOOLS, _path_of  # noqa: E402
from contextwarden.plugins.compression import allowed, limits_of  # noqa: E402
from contextwarden.settings import load_settings  # noqa: E402
from contextwarden.wire.conversation import result_text  # noqa: E402
from contextwarden.wire.tokens import TokenCounter  # noqa: E402

BIG = 5 * 1024
NEXT = 3


def _newest_results(body: dict) -> tuple[dict[str, tuple[str, object]], list[tuple[str, object, bool]]]:
    """The calls of the last assistant message, and the tool results after it: (id, content, is_error)."""
    msgs = body.get("messages") or []
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=-1)
    calls = {}
    if last >= 0 and isinstance(msgs[last].get("content"), list):
        calls = {b["id"]: (b.get("name", ""), b.get("input")) for b in msgs[last]["content"] if b.get("type") == "tool_use"}
    out = []
    for m in msgs[last + 1:]:
        for b in m.get("content") if isinstance(m.get("content"), list) else ():
            if b.get("type") == "tool_result":
                out.append((b.get("tool_use_id"), b.get("content"), bool(b.get("is_error"))))
    return calls, out


def _last_human(body: dict) -> str:
    """What the person last wrote (the stage's query for the relevant-chunks compressor)."""
    for m in reversed(body.get("messages") or []):
        if role_of(m) == "user" and (t := human_text(ApiKind.ANTHROPIC, m)).strip():
            return t[-2000:]
    return ""


def _edited(body: dict) -> set[str]:
    out = set()
    for m in body.get("messages") or []:
        if m.get("role") == "assistant" and isinstance(m.get("content"), list):
            for b in m["content"]:
                if b.get("type") == "tool_use" and b.get("name") in EDIT_TOOLS and (p := _path_of(b.get("input"))):
                    out.add(p)
    return out


def per_tool(trace_path: str, settings, counter: TokenCounter, by: str = "tool") -> dict[str, dict]:
    """Rows by tool (``by="kind"``: by tool and the compressor the content called for, which is how a
    policy by content type would decide)."""
    cfg = settings.compression
    limits = limits_of(cfg)
    trace = load_trace(trace_path, counter)
    reqs = trace.requests
    ix = Indexer()
    rows: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    seen: set[str] = set()
    for k, req in enumerate(reqs):
        if req.kind == "client-compaction":
            continue
        calls, results = _newest_results(req.body)
        for tid, content, is_error in results:
            if tid in seen:
                continue
            seen.add(tid)
            name, inp = calls.get(tid, ("?", None))
            text = result_text(content)
            got = None
            if by == "kind" and isinstance(content, (str, list)) and len(text) >= limits.medium_chars:
                got = compress(text, tool=name, tool_input=inp, query=_last_human(req.body), limits=limits)
            row = rows[f"{name} / {got.kind if got else '-'}" if by == "kind" else name]
            row["results"] += 1
            toks = counter.count_text(text)
            row["tokens"] += toks
            big = len(text.encode()) > BIG
            if big:
                row["big"] += 1
                row["big_tokens"] += toks
            if not allowed(cfg, name, inp, is_error, _edited(req.body)) or not isinstance(content, (str, list)):
                row["big_after"] += toks if big else 0
                row["after"] += toks
                continue
            if by != "kind":
                got = compress(text, tool=name, tool_input=inp, query=_last_human(req.body), limits=limits)
            if got is None:
                row["big_after"] += toks if big else 0
                row["after"] += toks
                continue
            new = got.body
            ntoks = counter.count_text(new) + 60  # + the first line (about 60 tokens)
            row["compressed"] += 1
            row["after"] += ntoks
            row["big_after"] += ntoks if big else 0
            row["kinds:" + got.kind] += 1
            # what the next answers of the same agent used from this output, and whether ours still has it
            full = ix.text(text)
            mine = ix.text(new)
            rest = None
            for later in [r for r in reqs[k:] if r.kind == req.kind][:NEXT]:
                ans = answer_items(later.response)
                refs = [r for r in ans.refs if r in full.tokens]
                srcs = [ls for ls, _ in ans.sources if has_source(full, ls)]
                if not refs and not srcs:
                    continue
                if rest is None:
                    texts, _ = body_texts(req.body)
                    others = [t for t in texts if t != text]
                    rest = ix.text("\n".join(others))
                row["refs"] += len(refs)
                row["sources"] += len(srcs)
                row["refs_lost"] += sum(1 for r in refs if r not in mine.tokens and r not in rest.tokens)
                row["sources_lost"] += sum(1 for ls in srcs if not has_source(mine, ls) and not has_source(rest, ls))
    return rows


def _table(all_rows: dict[str, dict[str, dict]]) -> str:
    tot: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for rows in all_rows.values():
        for tool, r in rows.items():
            for k, v in r.items():
                tot[tool][k] += v
    head = ("tool", "results", "> 5 KB", "compressed", "tokens before", "after", "saved", "> 5 KB before", "after", "saved",
            "refs next 3", "lost", "edit src", "lost", "compressors")
    out = [head]
    sums: dict[str, int] = defaultdict(int)
    for tool, r in sorted(tot.items(), key=lambda kv: -kv[1]["tokens"]):
        for k, v in r.items():
            sums[k] += v
        out.append(_row(tool, r))
    out.append(_row("all", sums))
    w = [max(len(str(row[i])) for row in out) for i in range(len(head))]
    return "\n".join("  ".join(str(c).rjust(w[i]) if i else str(c).ljust(w[i]) for i, c in enumerate(row)) for row in out)


def _row(tool: str, r: dict) -> tuple:
    def pct(a: int, b: int) -> str:
        return f"{100 * (1 - a / b):.0f}%" if b else "-"

    kinds = ",".join(f"{k[6:]}:{v}" for k, v in sorted(r.items()) if k.startswith("kinds:"))
    return (tool, r["results"], r["big"], r["compressed"], f"{r['tokens']:,}", f"{r['after']:,}", pct(r["after"], r["tokens"]),
            f"{r['big_tokens']:,}", f"{r['big_after']:,}", pct(r["big_after"], r["big_tokens"]),
            r["refs"], r["refs_lost"], r["sources"], r["sources_lost"], kinds or "-")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--by", choices=("tool", "kind"), default="tool",
                    help="rows by tool, or by tool and the compressor its content called for")
    ap.add_argument("--per-tool-cost", action="store_true",
                    help="also replay each trace with compression on for one tool at a time (the tools it compressed)")
    ap.add_argument("--stage-budget-ms", type=float, default=20_000)
    ap.add_argument("--replay-only", action="store_true", help="skip the per-tool table")
    ap.add_argument("--fast", action="store_true",
                    help="replay without turn hooks and memory injection, on both sides (memory's ingestion is most of "
                         "a replay's time; compression does not change what memory injects, so the difference holds)")
    ap.add_argument("traces", nargs="*", default=sorted(str(p) for p in (SHARED / "eval" / "traces").glob("*.jsonl")))
    a = ap.parse_args(argv)
    ov = parse_sets(a.sets)
    on = {**ov, "compression": {**ov.get("compression", {}), "enabled": True}}
    with tempfile.TemporaryDirectory(prefix="cw-compress-eval-") as home:
        settings = load_settings(a.profile, Path(home), overrides=on)
        counter = TokenCounter(settings.tokens)
        rows = {t: per_tool(t, settings, counter, a.by) for t in a.traces} if not a.replay_only else {}
    if rows:
        _print_rows(a, settings, rows)
    if a.no_replay:
        return 0
    per_tool_sets = None
    if a.per_tool_cost:
        per_tool_sets = {t: sorted(k for k, r in (rows.get(t) or {}).items() if r.get("compressed")) for t in a.traces}
    _replays(a, ov, on, per_tool_sets)
    return 0


def _print_rows(a, settings, rows) -> None:
    print(f"Per tool, every tool result at first sight (policy: profile {a.profile}, tools {settings.compression.tools}, "
          f"never {settings.compression.never_tools}, keep_errors {settings.compression.keep_errors}, "
          f"keep_edited_reads {settings.compression.keep_edited_reads}):\n")
    print(_table(rows))


def _replays(a, ov: dict, on: dict, per_tool_sets: dict[str, list[str]] | None = None) -> None:
    off = {**ov, "compression": {**ov.get("compression", {}), "enabled": False}}
    if a.fast:
        on = {**on, "memory": {**on.get("memory", {}), "inject": False}}
        off = {**off, "memory": {**off.get("memory", {}), "inject": False}}
    print("\nReplay (cost under caching, fidelity over every request's answer):\n")
    print(f"{'trace':14} {'cost without $':>14} {'cost with $':>11} {'Δ':>7} {'refs lost without':>18} {'with':>14} "
          f"{'edit src lost without':>22} {'with':>10} {'compressions':>12}")
    for t in a.traces:
        runs = [("with", on)]
        for tool in (per_tool_sets or {}).get(t, []):
            # compression on for this tool only: what it alone changes in the bill and the references
            runs.append((f"  {tool} only", {**on, "compression": {**on["compression"], "tools": [tool]}}))
        w0 = _totals(replay(t, a.profile, stage_budget_ms=a.stage_budget_ms, overrides=off, turn_hooks=not a.fast))
        for label, o in runs:
            w1 = _totals(replay(t, a.profile, stage_budget_ms=a.stage_budget_ms, overrides=o, turn_hooks=not a.fast))
            f0, f1 = w0["fidelity"], w1["fidelity"]
            comp = w1.get("stage_events", {}).get("compression", 0)
            name = Path(t).name[12:20] if label == "with" else label
            print(f"{name:14} {w0['cost_ours']:>14.2f} {w1['cost_ours']:>11.2f} "
                  f"{100 * (w1['cost_ours'] / w0['cost_ours'] - 1):>+6.1f}% {f0['refs_lost']:>8}/{f0['refs']:<9} {f1['refs_lost']:>6}/{f1['refs']:<7} "
                  f"{f0['sources_lost']:>12}/{f0['sources']:<9} {f1['sources_lost']:>4}/{f1['sources']:<5} {comp:>12}")
            sys.stdout.flush()


def _totals(rep) -> dict:
    return rep.totals() if callable(getattr(rep, "totals", None)) else rep.to_dict()["totals"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
