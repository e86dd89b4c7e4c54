#!/usr/bin/env python3
"""Code lines of the request path at two commits, file by file (issue 13: "fewer lines in the request
path than today", today being b4461b9, the commit the issue was filed at).

    python scripts/request_path_lines.py                # b4461b9 against the worktree
    python scripts/request_path_lines.py OLD NEW        # any two commits (NEW may be 'worktree')
    python scripts/request_path_lines.py --product OLD NEW   # the whole product (issue 41's count)

The request path is the code the proxy process runs to handle one request and its response: the
addons that take the flow, the lifecycle and pipeline, what the pipeline calls (conversation state,
token counting, validation, typed models, dialects, the response assemblers), the built-in stages of
b4461b9 and what they call in the proxy process. It leaves out what runs elsewhere or on the side: the
memory process (memory/service, store, lexical, embedder ...), the event sinks (event server, log,
metrics, TUI), the CLI, settings loading, replay and evaluations.

A code line is a line holding a token other than a comment; docstrings and other bare string
statements do not count (``tokenize`` and ``ast``), nor blank lines.

``--product`` counts the same code lines in every ``.py`` file of the product: src/, addons/, plugins/, tui/.

A file renamed or split since b4461b9 is one row listing the old and new files (the same features
counted on both sides). Features added after b4461b9 (compression, the session-control ledger, the
working set, memory's project scope, auto-recall) are listed apart and not in the comparison; the
recall stage is among them (its auto-recall was added after b4461b9).
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
S = "src/contextwarden/"

# (row, why it is on the request path, files at b4461b9, files now). A row with several files is a
# rename or split: both sides count the same features.
ROWS: list[tuple[str, str, list[str], list[str]]] = [
    # the flow's entry and exit
    ("addons/interceptor.py", "takes the HTTP request, runs the lifecycle", ["addons/interceptor.py"], ["addons/interceptor.py"]),
    ("addons/observer.py", "the response tap and the turn", ["addons/observer.py"], ["addons/observer.py"]),
    ("addons/websocket.py", "Codex Responses WebSocket requests", ["addons/websocket.py"], ["addons/websocket.py"]),
    ("apis.py", "classifies the request's API", [S + "apis.py"], [S + "wire/apis.py"]),
    ("flowstate.py -> addons/routing.py", "what the addons keep on a flow (its route, request, state)",
     [S + "flowstate.py"], ["addons/routing.py"]),
    # one lifecycle (was hand-copied in the addons and replay, counted there on both sides)
    ("pipeline.py + lifecycle.py", "prepare, count, stages, validate, serialise; the lifecycle around it",
     # (lifecycle's send and turn_of serve the in-process callers only: replay, evaluations, benchmarks)
     [S + "pipeline.py"], [S + "request/pipeline.py", S + "request/lifecycle.py::admit,_admit_or_report,run,_count,observe,sent,complete"]),
    ("stagebudgets.py", "stage budgets and breaker", [S + "stagebudgets.py"], [S + "core/stagebudgets.py"]),
    ("context.py + notes.py", "RequestContext and its typed notes", [S + "context.py"], [S + "request/context.py", S + "request/notes.py"]),
    ("runtime.py", "the runtime every request reads", [S + "runtime.py"], [S + "core/runtime.py"]),
    ("boundedpool.py", "stage/core/turn executors", [S + "boundedpool.py"], [S + "core/boundedpool.py"]),
    ("hookspecs.py", "the stage hooks", [S + "hookspecs.py"], [S + "hookspecs.py"]),
    ("pluginmanager.py", "stage order", [S + "pluginmanager.py"], [S + "core/pluginmanager.py"]),
    # a conversation's state: typed pool and bytes memo became history and one LRU helper
    ("typedpool.py + bytesmemo.py -> history.py + lru.py", "what the proxy remembers of a conversation",
     [S + "typedpool.py", S + "bytesmemo.py"], [S + "wire/history.py", S + "util/lru.py"]),
    ("prefixparse.py", "a recent body's history is not decoded again", [S + "prefixparse.py"], [S + "wire/prefixparse.py"]),
    ("bodies.py", "recent bodies kept after finish", [S + "bodies.py"], [S + "store/bodies.py"]),
    ("statecache.py", "per-session decisions read by stages", [S + "statecache.py"], [S + "store/statecache.py"]),
    ("state.py", "the state store (SQLite)", [S + "state.py"], [S + "store/state.py"]),
    ("sessions.py", "session of a request", [S + "sessions.py"], [S + "request/sessions.py"]),
    ("agents.py", "agent of a request", [S + "agents.py"], [S + "request/agents.py"]),
    ("redact.py", "tenant of the credential, redacted headers", [S + "redact.py"], [S + "util/redact.py"]),
    ("events.py", "ctx.emit", [S + "events.py"], [S + "core/events.py"]),
    ("scrub.py", "every event and body scrubbed", [S + "scrub.py"], [S + "util/scrub.py"]),
    # per-API code: spread over these files at b4461b9, gathered in dialects/ since
    ("conversation.py", "the conversation walk", [S + "conversation.py"], [S + "wire/conversation.py"]),
    ("validate.py", "validates every rewrite", [S + "validate.py"], [S + "wire/validate.py"]),
    ("tokens.py", "tokens_in / tokens_out", [S + "tokens.py"], [S + "wire/tokens.py"]),
    ("dialects/", "one module per API", [], [S + "wire/dialects/" + f for f in ("__init__.py", "anthropic.py",
     "openai_chat.py", "responses.py", "ollama.py")]),
    ("models/", "typed requests", *([[S + "models/" + f for f in ("__init__.py", "base.py", "anthropic.py",
     "openai_chat.py", "openai_responses.py")]] * 2)),
    ("streams/", "response assembly on the side", *([[S + d + f for f in ("__init__.py", "anthropic.py",
     "assembler.py", "decoding.py", "ndjson.py", "ollama.py", "openai_chat.py", "openai_responses.py",
     "sse.py", "tap.py", "turn.py")] for d in ("streams/", "wire/streams/")])),
    ("cost.py", "compaction's cost model (prices moved here from the event server)", [S + "cost.py"], [S + "wire/cost.py"]),
    ("summarise.py", "compaction's summaries", [S + "summarise.py"], [S + "compress/summarise.py"]),
    # memory as the proxy process runs it (the memory process itself is elsewhere)
    ("memory/client.py", "the proxy's client of the memory process", [S + "memory/client.py"], [S + "memory/client.py"]),
    ("memory/inject.py", "where memory goes in a request", [S + "memory/inject.py"], [S + "memory/inject.py"]),
    ("memory/retrieve.py", "the memory stage's query and selection", [S + "memory/retrieve.py"], [S + "memory/retrieve.py"]),
    ("memory/produced.py", "what the proxy produced (not remembered)", [S + "memory/produced.py"], [S + "memory/produced.py"]),
    ("memory/ingest.py (items_from_messages)", "turn hook: a turn's memory items (the rest runs in the memory process)",
     # (the per-API readers, _responses_items among them, are the dialects' memory_items since: in dialects/)
     *([[S + "memory/ingest.py::items_from_messages,_responses_items,_as_dict"]] * 2)),
    ("memory/items.py", "memory items", [S + "memory/items.py"], [S + "memory/items.py"]),
    ("memory/ids.py", "stable ids of cleared items", [S + "memory/ids.py"], [S + "memory/ids.py"]),
    ("memory/secrets.py", "redact_text of stubs and summaries", [S + "memory/secrets.py"], [S + "memory/secrets.py"]),
    ("memory/tagger.py", "the tagging stage's tagger", [S + "memory/tagger.py"], [S + "memory/tagger.py"]),
    ("memory/wayback.py", "the way back wording of stubs", [S + "memory/wayback.py"], [S + "memory/wayback.py"]),
    # the built-in stages of b4461b9
    ("plugins/budget.py", "stage", ["plugins/budget.py"], ["plugins/budget.py"]),
    ("plugins/strip.py", "stage", ["plugins/strip.py"], ["plugins/strip.py"]),
    ("plugins/tagging.py", "stage", ["plugins/tagging.py"], ["plugins/tagging.py"]),
    ("plugins/clearing.py", "stage", ["plugins/clearing.py"], ["plugins/clearing.py"]),
    ("plugins/compaction.py", "stage", ["plugins/compaction.py"], ["plugins/compaction.py"]),
    ("plugins/memory.py", "stage", ["plugins/memory.py"], ["plugins/memory.py"]),
]

STAGES = {"plugins/budget.py", "plugins/strip.py", "plugins/tagging.py", "plugins/clearing.py",
          "plugins/compaction.py", "plugins/memory.py"}

# Added after b4461b9 (or grown into a new feature since): on the request path now, not compared.
LATER: list[tuple[str, str, list[str]]] = [
    ("compression", "stage and its compressors", ["plugins/compression.py"] + [
        S + "compress/" + f for f in ("__init__.py", "cleanup.py", "gaps.py", "jsonshape.py", "listing.py",
                                      "logs.py", "relevant.py", "scan.py")]),
    ("recall", "stage and auto-recall (auto-recall added after b4461b9)", ["plugins/recall.py", S + "memory/autorecall.py", S + "memory/prefilter.py",
                                                                         S + "memory/client.py::keep"]),
    ("session control", "ledger, pins, count_tokens for the decided state", [
        S + "sessionctl/" + f for f in ("__init__.py", "ledger.py", "pins.py")]),
    ("stage watchdog", "stageclock.py: one thread trip per request (issue 19)", [S + "request/stageclock.py"]),
    ("working set", "kept by clearing, verbatim in summaries", [S + "wire/workingset.py",
     "plugins/clearing.py::_working_set", "plugins/compaction.py::working_appendix"]),
    ("compression in clearing", "its records re-applied by step 1", ["plugins/clearing.py::_compressed_gain"]),
    ("memory project scope", "the memory stage's project", [S + "memory/project.py"]),
]


# Functions inside compared files that exist only for a feature added after b4461b9: counted with that
# feature (LATER), not in the comparison. (Lines such features added inside shared functions stay in.)
FEATURE_CODE: dict[str, set[str]] = {
    "plugins/clearing.py": {"_compressed_gain", "_working_set"},  # compression records, working set
    "plugins/compaction.py": {"working_appendix"},  # working set
    S + "memory/client.py": {"keep"},  # the recall stage's originals
}
# Code in a file of the request path that runs in another process: left out on both sides.
ELSEWHERE: dict[str, set[str]] = {
    S + "memory/retrieve.py": {"Retriever", "rrf"},  # the memory process's search (memory/service.py)
}


# Lines inside compared functions that name a later feature (session control's controls and pins,
# compression records, the working set): still counted in the comparison, shown for information.
FEATURE_WORDS = re.compile(r"\bctl\b|pinned|pin_at|session_ledger|COMPRESSED|compressed|working|ws_budget|compact_now"
                           r"|first_pinned_index|budget_in")


def source(commit: str, path: str) -> str | None:
    if commit == "worktree":
        p = ROOT / path
        return p.read_text() if p.exists() else None
    r = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def _spans(tree: ast.AST, names: set[str]) -> set[int]:
    """Lines of the functions and classes named ``names`` (at any depth, decorators included)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in names:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out.update(range(first, node.end_lineno + 1))
    return out


def code_lines(text: str, only: set[str] | None = None, without: set[str] = frozenset(),
               words: re.Pattern | None = None) -> int:
    """Lines holding code: a token other than a comment, not inside a bare string statement; only in
    the functions/classes ``only`` names when given, never in those ``without`` names."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER, tokenize.ENCODING}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    tree = ast.parse(text)
    if only is not None:
        lines &= _spans(tree, only)
    lines -= _spans(tree, set(without))
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            lines.difference_update(range(node.lineno, node.end_lineno + 1))
    if words is not None:
        src = text.splitlines()
        return sum(1 for n in lines if words.search(src[n - 1]))
    return len(lines)


def count(commit: str, paths: list[str], words: re.Pattern | None = None) -> int:
    """``path`` counts the whole file, ``path::a,b`` only the functions/classes a and b; the names
    FEATURE_CODE lists in a file are left out (counted with their feature)."""
    total = 0
    for p in paths:
        path, _, names = p.partition("::")
        text = source(commit, path)
        if text is not None:
            total += code_lines(text, set(names.split(",")) if names else None,
                                (FEATURE_CODE.get(path, set()) | ELSEWHERE.get(path, set())) if not names else set(),
                                words)
    return total


PRODUCT = ("src", "addons", "plugins", "tui")


def product_files(commit: str) -> list[str]:
    if commit == "worktree":
        return sorted(str(p.relative_to(ROOT)) for d in PRODUCT for p in (ROOT / d).rglob("*.py"))
    r = subprocess.run(["git", "ls-tree", "-r", "--name-only", commit, *PRODUCT], cwd=ROOT, capture_output=True, text=True)
    return [p for p in r.stdout.split() if p.endswith(".py")]


def product(old: str, new: str) -> None:
    for commit in (old, new):
        files = product_files(commit)
        texts = [t for t in (source(commit, f) for f in files) if t is not None]
        raw = sum(len(t.splitlines()) for t in texts)
        print(f"product code at {commit}: {len(files)} files, {raw:,} lines, {sum(map(code_lines, texts)):,} code lines")


def main() -> None:
    if sys.argv[1:2] == ["--product"]:
        return product(*(sys.argv[2:4] + ["HEAD", "worktree"][len(sys.argv[2:4]):])[:2])
    old, new = (sys.argv[1:3] + ["b4461b9", "worktree"][len(sys.argv[1:3]):])[:2]
    print(f"code lines of the request path: {old} -> {new}\n")
    print(f"{'row':58} {old:>9} {new:>9} {'diff':>6}")
    sums = {"core": [0, 0], "stages": [0, 0]}
    for name, _why, o, n in ROWS:
        if all(source(old, p.partition("::")[0]) is not None for p in n):
            o = n  # the old commit has the new layout already (a commit after the renames)
        a, b = count(old, o), count(new, n)
        sums["stages" if name in STAGES else "core"][0] += a
        sums["stages" if name in STAGES else "core"][1] += b
        print(f"{name:58} {a:9} {b:9} {b - a:+6}")
    print()
    for k, (a, b) in sums.items():
        print(f"{'total ' + k:58} {a:9} {b:9} {b - a:+6}")
    a, b = sum(v[0] for v in sums.values()), sum(v[1] for v in sums.values())
    print(f"{'TOTAL (compared)':58} {a:9} {b:9} {b - a:+6}")
    both = [p for _n, _w, o, n in ROWS for p in (n if all(source(old, q.partition("::")[0]) is not None for q in n) else o)]
    wa, wb = count(old, both, FEATURE_WORDS), count(new, [p for *_x, n in ROWS for p in n], FEATURE_WORDS)
    print(f"{'  of which lines naming a later feature (FEATURE_WORDS)':58} {wa:9} {wb:9} {wb - wa:+6}")
    print("\nadded after b4461b9 (not compared):")
    for name, why, paths in LATER:
        print(f"{name + ' (' + why + ')':58} {count(old, paths):9} {count(new, paths):9}")


if __name__ == "__main__":
    main()
