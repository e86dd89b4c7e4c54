"""The providers' own context management, through real mitmdump processes and the real SDKs.

    .venv/bin/python bench/provider_cm_bench.py

Two proxies in reverse mode (the claude-code profile; clearing from 1,500 tokens, compaction above 15%
of a 200K window) sit in front of the strict stand-in upstream (tests/support/provider_cm.py). One is
the default, which steps back from what the client delegated; the other has
``pipeline.provider_take_over: [clear_tool_uses, compaction]``. The same requests go through each:

- a tool loop with Anthropic's ``clear_tool_uses_20250919`` edit (6 results of 400 words; provider
  trigger 1,000 tokens, keep 2), and the same loop without the edit;
- a 61-message chat with ``compact_20260112`` (trigger 50,000), streamed; then the next request, which
  carries the compaction block back;
- a Responses history with ``context_management`` compaction (threshold 2,000), streamed.

Printed for each: whether the upstream got the client's bytes, what the provider cleared or compacted
(``applied_edits``, ``usage.iterations``), the proxy's own count (``tokens_in - tokens_sent``), the input
the provider reported, and the turn's billed input at 1x (compaction included). Last, the cost of the
decision on an 801-message history: its first sight and a repeat request.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))

import anthropic  # noqa: E402
import openai  # noqa: E402

from contextwarden.wire.cost import billed_units  # noqa: E402
from contextwarden.wire.dialects import dialect  # noqa: E402
from tests.e2e.test_provider_cm import BETA, CLEAR, SETTINGS, TOOLS, Sent, chat, sdk, tool_loop, words  # noqa: E402
from tests.support.proxy import ProxyProcess  # noqa: E402
from tests.support.stages import anthropic_tool_loop  # noqa: E402
from tests.support.upstream import StandIn  # noqa: E402

TAKE_OVER = {"CONTEXTWARDEN_PIPELINE__PROVIDER_TAKE_OVER": '["clear_tool_uses", "compaction"]'}
COMPACT = {"edits": [{"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 50000}}]}


def row(si: StandIn, proxy: ProxyProcess, sent: Sent, mark: int, route: str, case: str) -> list:
    rec = si.wait_for(1, route)[-1]
    turn = proxy.wait_events(lambda e: e["type"] == "turn", since=mark, timeout=30)[-1]["data"]
    u = turn.get("usage") or {}
    its = [i for i in u.get("iterations") or [] if i.get("type") == "compaction"]
    return [case, "yes" if rec.decoded_body() == sent.bodies[-1] else "no", u.get("provider_cleared_tokens") or 0,
            its[0]["input_tokens"] if its else 0, (turn.get("tokens_in") or 0) - (turn.get("tokens_sent") or 0),
            u.get("input_tokens"), round(billed_units(u))]


def scenario(si: StandIn, proxy: ProxyProcess, label: str) -> list[list]:
    out = []
    a_sent, o_sent = Sent(), Sent()
    a, o = sdk(anthropic.Anthropic, proxy, a_sent), sdk(openai.OpenAI, proxy, o_sent)
    tag = f"{label}-{time.monotonic_ns()}"
    for case, kw in (("clear_tool_uses delegated", {"betas": [BETA], "context_management": CLEAR}), ("no edit", {})):
        si.reset(), setattr(si, "strict", True)
        mark = proxy.mark()
        with a.beta.messages.stream(model="claude-sonnet-4-6", max_tokens=256, messages=tool_loop(tag + case[:2]),
                                    tools=TOOLS, **kw) as s:
            s.get_final_message()
        out.append(row(si, proxy, a_sent, mark, "/v1/messages", case))
    betas = [BETA, "compact-2026-01-12"]
    msgs = chat(tag, 30, 1100) + [{"role": "user", "content": "And now?"}]
    si.reset(), setattr(si, "strict", True)
    mark = proxy.mark()
    with a.beta.messages.stream(model="claude-sonnet-4-6", max_tokens=256, messages=msgs, betas=betas,
                                context_management=COMPACT) as s:
        final = s.get_final_message()
    out.append(row(si, proxy, a_sent, mark, "/v1/messages", "compact_20260112 delegated"))
    si.reset(), setattr(si, "strict", True)
    mark = proxy.mark()
    history = msgs + [{"role": "assistant", "content": [b.to_dict() for b in final.content]},
                      {"role": "user", "content": "Go on."}]
    a.beta.messages.create(model="claude-sonnet-4-6", max_tokens=256, messages=history, betas=betas,
                           context_management=COMPACT)
    out.append(row(si, proxy, a_sent, mark, "/v1/messages", "  next request (block back)"))
    items = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{tag} {i}: " + words(900, i)} for i in range(30)]
    si.reset(), setattr(si, "strict", True)
    mark = proxy.mark()
    for _ in o.responses.create(model="gpt-5.1", input=items + [{"role": "user", "content": "so?"}], stream=True, store=False,
                                context_management=[{"type": "compaction", "compact_threshold": 2000}]):
        pass
    out.append(row(si, proxy, o_sent, mark, "/v1/responses", "Responses compaction delegated"))
    return out


def decision_cost() -> tuple[float, float]:
    body = anthropic_tool_loop(200, result_words=200)
    d = dialect("anthropic")

    def med(fn, n=300) -> float:
        xs = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            xs.append(time.perf_counter() - t0)
        return statistics.median(xs) * 1e6

    return med(lambda: d.provider_context(body)), med(lambda: d.provider_context(body, (len(body["messages"]) - 2, 0)))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cw-provider-cm-"))
    with StandIn() as si:
        ps = {"default (steps back)": ProxyProcess(tmp / "a", name="pcm", profile="claude-code", reverse=si.url, env=SETTINGS),
              "take over": ProxyProcess(tmp / "b", name="pcm-take", profile="claude-code", reverse=si.url,
                                        env={**SETTINGS, **TAKE_OVER})}
        for p in ps.values():
            p.launch()
        try:
            for p in ps.values():
                p.wait_ready()
            head = ["case", "client's bytes", "provider cleared", "provider compacted (in)", "proxy freed",
                    "reported input", "billed in at 1x"]
            for label, p in ps.items():
                print(f"\n{label}")
                print(" | ".join(head))
                for r in scenario(si, p, label[:4]):
                    print(" | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in r))
        finally:
            for p in ps.values():
                p.stop()
    cold, warm = decision_cost()
    print(f"\ndecision on an 801-message history: first sight {cold:.0f} us, a repeat request {warm:.1f} us")


if __name__ == "__main__":
    main()
