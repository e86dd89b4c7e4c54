"""Added latency of contextwarden over plain mitmdump, on the same requests of ~1K, 50K and 150K tokens.

    .venv/bin/python bench/proxy_latency.py                 # 200 requests per body size and proxy
    .venv/bin/python bench/proxy_latency.py -n 50 --sizes 150000
    .venv/bin/python bench/proxy_latency.py -n 60 --sizes 150000 --active --json both   # compact and spaced side by side

Three real mitmdump processes in reverse mode in front of one local stand-in upstream:
- ``mitmdump``: no script (the baseline),
- ``observe-only``: ``-s addons/contextwarden.py --set cw_profile=observe-only``,
- ``stages off``: the default profile with every built-in stage in ``pipeline.disabled``,
- ``claude-code`` (with ``--active``): the claude-code profile, every stage running.
Bodies are real Claude Code 2.1.197 requests (../shared/eval/requests, with their headers), grown to
the target size by repeating realistic tool-use turns made of Claude Code's own prompt text.
Responses are small non-streamed JSON. Requests go round-robin over the three proxies (so machine
load hits all alike) on keep-alive connections, after a warm-up; times are client-side wall clock
from sending the request to reading the whole response.
"Added" is the percentile of the proxy minus the same percentile of plain mitmdump; "paired added" is
the median over rounds of (this proxy's time - plain mitmdump's time in the same round), which cancels
most of the load other processes put on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("CONTEXTWARDEN_MEMORY__MODEL_DIR", str(SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import httpx  # noqa: E402
import tiktoken  # noqa: E402

from tests.support.proxy import ProxyProcess  # noqa: E402
from tests.support.upstream import StandIn  # noqa: E402

REQUESTS = SHARED / "eval" / "requests"
TARGETS = {"observe-only": 2.0, "stages off": 3.0, "claude-code": 10.0}  # ms, p50 added at 150K tokens (issue 41)
BUILTIN_STAGES = ["budget", "strip", "tagging", "clearing", "compression", "compaction", "recall", "memory", "breakpoints"]


def stages_off(stages: list[str]) -> str:
    """The default profile with ``stages`` disabled."""
    return "name: stages-off\nextends: default\npipeline:\n  disabled: [" + ", ".join(stages) + "]\n"


def _tokens(enc, body: dict) -> int:
    return len(enc.encode_ordinary(json.dumps(body)))


def build_body(target: int, enc, model: str | None = None) -> dict:
    """A Claude Code request of about ``target`` tokens (``model``: instead of the captured one's, without
    the client's ``clear_thinking`` edit, which keeps the thinking a model before Opus 4.5 drops)."""
    base = json.loads((REQUESTS / "claude-code-2.1.197-turn2.json").read_text())
    base["stream"] = False  # small non-streamed answers: the request path is what is measured
    if model is not None:
        base["model"] = model
        base.pop("context_management", None)
    if target <= 5000:
        # a short conversation: the first user message and a trimmed system prompt
        body = {k: base[k] for k in ("model", "max_tokens", "metadata", "thinking")}
        body["system"] = [dict(base["system"][0])]
        body["messages"] = [copy.deepcopy(base["messages"][0])]
        text = "\n".join(b.get("text", "") for b in base["system"] if isinstance(b, dict))
        filler = {"type": "text", "text": ""}
        body["messages"][0]["content"].append(filler)
        while _tokens(enc, body) < target:
            filler["text"] = text[: len(filler["text"]) + 400]
        return body
    # real prompt text (system blocks and tool descriptions) as the content of file reads
    corpus = [b["text"] for b in base["system"] if isinstance(b, dict) and b.get("text")]
    corpus += [t.get("description", "") for t in base.get("tools", []) if t.get("description")]
    corpus = [c for c in corpus if len(c) > 500]
    body = copy.deepcopy(base)
    msgs = body["messages"]
    i = 0
    while _tokens(enc, body) < target:
        content = corpus[i % len(corpus)]
        tid = f"toolu_bench{i:05d}"
        msgs.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Let me read part {i} of the notes."},
            {"type": "tool_use", "id": tid, "name": "Read", "input": {"file_path": f"/work/notes/part-{i}.md"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": content}]})
        i += 1
    return body


# compact: as Claude Code writes it (JSON.stringify: no spaces, UTF-8 as is); spaced: as Python's json.dumps
SEPARATORS = {"compact": (",", ":"), "spaced": (", ", ": ")}


def wire(body: dict, form: str) -> bytes:
    return json.dumps(body, separators=SEPARATORS[form], ensure_ascii=False).encode()


def headers() -> dict[str, str]:
    captured = json.loads((REQUESTS / "claude-code-2.1.197-headers.json").read_text())["headers"]
    h = {k: v for k, v in captured.items() if k.lower() not in ("host", "content-length", "connection")}
    h["x-api-key"] = "sk-ant-bench-not-a-real-key"
    return h


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def cpu_s(pid: int) -> float:
    """CPU seconds ``pid`` and its children (the engine, the memory process) have used so far (Linux)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kids = [int(k) for t in Path(f"/proc/{pid}/task").iterdir() for k in (t / "children").read_text().split()]
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") + sum(cpu_s(k) for k in kids)


def where(p: ProxyProcess) -> str:
    """Where an active proxy's requests spent their time (the ``forward`` events, p50 ms): the request
    hook, the pipeline and its parts, each stage."""
    fw = [e["data"] for e in p._read_events() if e["type"] == "forward" and "timings" in e["data"]]
    if not fw:
        return ""
    med = statistics.median
    parts = {k: med(f["timings"][k] for f in fw if k in f["timings"]) for k in sorted({k for f in fw for k in f["timings"]})}
    stages: dict[str, list[float]] = {}
    for f in fw:
        for s in f.get("stages") or []:
            stages.setdefault(s["stage"], []).append(s["ms"])
    return (f"hook {med(f['hook_ms'] for f in fw if 'hook_ms' in f):.2f}, pipeline "
            f"{med(f['pipeline_ms'] for f in fw if 'pipeline_ms' in f):.2f} ("
            + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) + "); stages: "
            + ", ".join(f"{k} {med(v):.2f}" for k, v in stages.items() if med(v) >= 0.05))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200, help="measured requests per body size and proxy")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--sizes", default="1000,50000,150000", help="target token counts")
    ap.add_argument("--active", action="store_true",
                    help="also measure a proxy with the claude-code profile (every stage active)")
    ap.add_argument("--json", choices=[*SEPARATORS, "both"], default="compact",
                    help="how the body's JSON is written: compact (Claude Code's), spaced (Python's json.dumps), or "
                         "both, each proxy getting both in every round")
    ap.add_argument("--base", type=Path, metavar="DIR",
                    help="also measure each contextwarden proxy from another tree, side by side: DIR holds its "
                         "package as installed (DIR/contextwarden, with addons/, plugins/, tui/, profiles/ inside)")
    ap.add_argument("--model", help="the bodies' model instead of the captured one's (claude-opus-4-8); one that drops "
                                    "the previous turn's thinking (e.g. claude-sonnet-4-5) has the breakpoints stage mark "
                                    "the turn's start")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the contextwarden proxies, e.g. CONTEXTWARDEN_MEMORY__ENABLED=false")
    args = ap.parse_args()
    cw_env = dict(kv.split("=", 1) for kv in args.env)
    memory_on = cw_env.get("CONTEXTWARDEN_MEMORY__ENABLED", "true").lower() not in ("false", "0", "no")
    # ready = warmed up: the memory service loads Chroma and the ONNX model in the background first
    ready = ("startup", "memory_status") if memory_on else ("startup",)

    rng = random.Random(7)
    enc = tiktoken.get_encoding("cl100k_base")
    sizes = [int(s) for s in args.sizes.split(",")]
    forms = list(SEPARATORS) if args.json == "both" else [args.json]
    bodies = {(s, f): wire(b, f) for s in sizes for b in [build_body(s, enc, args.model)] for f in forms}
    hdrs = headers()
    work = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    (work / "stages-off.yaml").write_text(stages_off(BUILTIN_STAGES))

    with StandIn() as upstream:
        procs = {
            "mitmdump": ProxyProcess(work / "plain", script=None, reverse=upstream.url, name="plain"),
            "observe-only": ProxyProcess(work / "observe", profile="observe-only", reverse=upstream.url, name="observe",
                                         ready_events=ready, env=cw_env),
            "stages off": ProxyProcess(work / "off", profile=work / "stages-off.yaml", reverse=upstream.url, name="off",
                                       ready_events=ready, env=cw_env),
        }
        if args.active:
            procs["claude-code"] = ProxyProcess(work / "active", profile="claude-code", reverse=upstream.url,
                                                name="active", ready_events=ready, env=cw_env)
        if args.base is not None:  # the same proxies from the other tree, named "<proxy> @base"
            script = args.base / "contextwarden" / "addons" / "contextwarden.py"
            # (an older tree knows fewer stages: its stages-off profile disables those it has)
            have = [s for s in BUILTIN_STAGES if (args.base / "contextwarden" / "plugins" / f"{s}.py").exists()]
            (work / "stages-off-base.yaml").write_text(stages_off(have))
            for name in [n for n in procs if n != "mitmdump"]:
                p = procs[name]
                profile = work / "stages-off-base.yaml" if name == "stages off" else p.profile
                procs[f"{name} @base"] = ProxyProcess(work / f"{p.name}-base", profile=profile, reverse=upstream.url,
                                                      name=f"{p.name}-base", ready_events=ready, script=script,
                                                      env={**cw_env, "PYTHONPATH": str(args.base)})
        for p in procs.values():
            p.launch()
        try:
            for p in procs.values():
                p.wait_ready()
            clients = {name: httpx.Client(base_url=p.url, timeout=120, trust_env=False) for name, p in procs.items()}
            rows = []
            for size in sizes:
                times: dict[tuple[str, str], list[float]] = {(name, f): [] for name in procs for f in forms}
                cpu: dict[str, float] = {}
                order = list(times)
                for i in range(args.warmup + args.n):
                    rng.shuffle(order)  # no proxy (or form) always goes first (or last) in a round
                    if i == args.warmup:
                        cpu = {name: cpu_s(p.proc.pid) for name, p in procs.items()}
                    for name, form in order:
                        c = clients[name]
                        t0 = time.perf_counter()
                        r = c.post("/v1/messages?beta=true", content=bodies[size, form], headers=hdrs)
                        r.read()
                        dt = (time.perf_counter() - t0) * 1000
                        if r.status_code != 200:
                            raise SystemExit(f"{name}: HTTP {r.status_code}: {r.text[:300]}")
                        if i >= args.warmup:
                            times[name, form].append(dt)
                cpu = {name: (cpu_s(p.proc.pid) - cpu[name]) * 1000 / (args.n * len(forms)) for name, p in procs.items()}
                print(f"  CPU a request (ms, the proxy and its children), ~{size} tokens: "
                      + ", ".join(f"{name} {c:.2f}" for name, c in cpu.items()), file=sys.stderr, flush=True)
                for f in forms:
                    body = bodies[size, f]
                    rows.append((size, f, len(body), _tokens(enc, json.loads(body)), {n: times[n, f] for n in procs}))
                print(f"  done: ~{size} tokens", file=sys.stderr, flush=True)
            for name, p in procs.items():
                if p.script is not None and where(p):
                    print(f"  {name}: {where(p)}", file=sys.stderr, flush=True)
        finally:
            for p in procs.values():
                p.interrupt()
            for p in procs.values():
                p.wait_stopped()

    print(f"\nProxy latency, n={args.n} per cell after {args.warmup} warm-up, reverse mode, "
          f"non-streamed responses (ms, client wall clock)" + (f"; env: {' '.join(args.env)}" if args.env else "") + "\n")
    print("| body | proxy | p50 | p95 | p99 | p50 added | p95 added | p99 added | p50 ratio | paired added (median) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    verdicts = {}
    for size, form, nbytes, ntok, times in rows:
        b50, b95, b99 = (pct(times["mitmdump"], p) for p in (50, 95, 99))
        for name in procs:
            p50, p95, p99 = (pct(times[name], p) for p in (50, 95, 99))
            label = f"~{ntok // 1000}K tokens ({nbytes // 1000} KB, {form})" if name == "mitmdump" else ""
            if name == "mitmdump":
                print(f"| {label} | {name} | {p50:.2f} | {p95:.2f} | {p99:.2f} | | | | | |")
                continue
            # the same round's baseline request ran next to this one: load both saw cancels out
            paired = statistics.median(t - b for t, b in zip(times[name], times["mitmdump"]))
            print(f"| {label} | {name} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {p50 - b50:+.2f} | {p95 - b95:+.2f} "
                  f"| {p99 - b99:+.2f} | {p50 / b50:.2f} "
                  f"| {paired:+.2f} |")
            if name in TARGETS and size == max(sizes) and form == forms[0]:
                verdicts[name] = (p50 - b50, paired)
    if max(sizes) >= 150000:
        print()
        for name, (added, paired) in verdicts.items():
            ok = "met" if added <= TARGETS[name] else "MISSED"
            print(f"Target (<= {TARGETS[name]:g} ms p50 added at 150K tokens, {name}): {ok} "
                  f"({added:+.2f} ms; paired {paired:+.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
