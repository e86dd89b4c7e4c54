"""Running request bodies through the real stage pipeline in-process (tests and bench/pipeline_bench.py).

``Harness`` owns a real :class:`~contextwarden.core.runtime.Runtime` on a cw_home; ``send`` does what the
Interceptor does for one request (lifecycle.send: prepare, count, the stages, the validator) and returns
the body that would go upstream. Plus small builders of Anthropic / OpenAI conversations.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from contextwarden.core.runtime import Runtime
from contextwarden.models.base import ApiKind
from contextwarden.request import lifecycle
from contextwarden.request.pipeline import Outcome
from contextwarden.settings import load_settings

HOSTS = {ApiKind.ANTHROPIC: ("api.anthropic.com", "/v1/messages"),
         ApiKind.OPENAI_CHAT: ("api.openai.com", "/v1/chat/completions"),
         ApiKind.OLLAMA_CHAT: ("localhost", "/api/chat"),
         ApiKind.OPENAI_RESPONSES: ("api.openai.com", "/v1/responses")}

_flow = itertools.count(1)


@dataclass
class Sent:
    body: dict[str, Any]  # what goes upstream (the original when nothing changed)
    ctx: Any
    outcome: Outcome

    @property
    def changed(self) -> bool:
        return self.outcome.body is not None

    def events(self, type: str) -> list[dict[str, Any]]:
        return [e.data for e in self.ctx.runtime.bus.recent if e.type == type and e.flow_id == self.ctx.flow_id]


def settings_overrides(window: int | None = None, stages: list[str] | None = None, **sections: dict) -> dict:
    """Profile overrides: a context window, which stages run, and any section values."""
    o: dict[str, Any] = {k: dict(v) for k, v in sections.items()}
    if window is not None:
        o.setdefault("tokens", {})["context_window"] = window
    if stages is not None:
        o.setdefault("pipeline", {})["order"] = stages
        o["pipeline"]["disabled"] = [s for s in ("budget", "strip", "tagging", "clearing", "compression", "compaction", "recall", "memory",
                                                 "breakpoints")
                                     if s not in stages]
        o["pipeline"].setdefault("stage_budget_ms", 20_000)  # tests run on a loaded 2-core box
        if "memory" not in stages:  # no Chroma and embedding model loading in the background
            o.setdefault("memory", {}).setdefault("enabled", False)
    return o


def stage_runtime(home: Path, plugins: list[tuple[str, Any]], profile: str = "claude-code", **pipeline: Any) -> Runtime:
    """A runtime whose only stages are ``plugins`` ((name, plugin), in that order); ``pipeline``: more
    pipeline settings."""
    o = settings_overrides(stages=[name for name, _ in plugins], pipeline=pipeline)
    return Runtime(load_settings(profile, home, overrides=o), home, profile=profile, log=False, extra_plugins=plugins)


class Harness:
    def __init__(self, home: Path, profile: str = "default", overrides: dict | None = None) -> None:
        self.home = Path(home)
        self.profile = profile
        self.overrides = overrides or {}
        self.rt = self._runtime()

    def _runtime(self) -> Runtime:
        rt = Runtime(load_settings(self.profile, self.home, overrides=self.overrides), self.home, profile=self.profile, log=False)
        rt.overrides = copy.deepcopy(self.overrides)  # so rt.apply_overrides() merges on top of ours
        return rt

    def apply(self, overrides: dict) -> None:
        """Change settings at run time (as the TUI does); kept across restart()."""
        self.rt.apply_overrides(overrides)
        self.overrides = copy.deepcopy(self.rt.overrides)

    def restart(self) -> Harness:
        """A new Runtime on the same cw_home (what a proxy restart is)."""
        self.rt.close()
        self.rt = self._runtime()
        return self

    def close(self) -> None:
        self.rt.close()

    def send(self, api: ApiKind, body: dict[str, Any], headers: dict[str, str] | None = None,
             notes: dict[str, Any] | None = None, count: bool = True, settings=None) -> Sent:
        """One request through prepare → stages → validator. ``settings`` replaces the request's settings
        snapshot (what a run-time change would give), without building a new Runtime."""
        host, path = HOSTS[api]
        hdrs = [("content-type", "application/json"), ("x-api-key", "sk-test-secret")]
        hdrs += list((headers or {}).items())
        raw = orjson.dumps(body)
        ctx, outcome = lifecycle.send(self.rt, api, host, path, hdrs, raw, f"flow-{next(_flow)}",
                                      settings=settings, notes=notes, count=count)
        sent = orjson.loads(outcome.body) if outcome.body is not None else ctx.original
        return Sent(sent, ctx, outcome)


# ---------------------------------------------------------------------------------------------------
# builders


def words(n: int, seed: int = 0) -> str:
    """``n`` words of varied filler text (tokenises to about n tokens)."""
    vocab = ["alpha", "beta", "gamma", "delta", "parser", "config", "value", "return", "function", "module",
             "error", "handler", "request", "token", "cache", "window", "build", "test", "file", "path"]
    return " ".join(f"{vocab[(i * 7 + seed) % len(vocab)]}{(i + seed) % 97}" for i in range(n))


def anthropic_tool_loop(turns: int, result_words: int = 600, tools_per_turn: int = 2, seed: int = 0,
                        thinking: bool = True, session: str = "sess-1") -> dict[str, Any]:
    """A Claude-Code-like body: system with a breakpoint, tools, and ``turns`` user turns each with a
    tool loop (parallel calls), ending with a user message."""
    msgs: list[dict[str, Any]] = []
    tid = itertools.count(1)
    for t in range(turns):
        msgs.append({"role": "user", "content": [{"type": "text", "text": f"Task {t}: please fix the bug in src/mod{t}.py and run the tests."}]})
        uses = []
        for k in range(tools_per_turn):
            i = next(tid)
            uses.append({"type": "tool_use", "id": f"toolu_{seed}_{i}", "name": "Read" if k % 2 == 0 else "Bash",
                         "input": {"file_path": f"src/mod{t}_{k}.py"} if k % 2 == 0 else {"command": f"pytest tests/test_{t}.py -x"}})
        first: list[dict[str, Any]] = []
        if thinking:
            first.append({"type": "thinking", "thinking": f"I should read the files of task {t}.", "signature": f"sig-{seed}-{t}"})
        first.append({"type": "text", "text": f"I'll read the files for task {t} first."})
        msgs.append({"role": "assistant", "content": first + uses})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": u["id"],
                                                  "content": f"def handler_{t}():\n    " + words(result_words, seed + t + j)}
                                                 for j, u in enumerate(uses)]})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"The root cause was in src/mod{t}.py: fixed. "
                                                                               f"Tests pass now for task {t}."}]})
    msgs.append({"role": "user", "content": [{"type": "text", "text": "Now summarise what changed.",
                                              "cache_control": {"type": "ephemeral"}}]})
    return {"model": "claude-sonnet-4-5", "max_tokens": 4096, "stream": True,
            "metadata": {"user_id": f"user_x_account_y_session_{session}"},
            "system": [{"type": "text", "text": "You are a coding agent."},
                       {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "Read", "description": "read a file", "input_schema": {"type": "object"}},
                      {"name": "Bash", "description": "run a command", "input_schema": {"type": "object"}}],
            "messages": msgs}


def chat_tool_loop(turns: int, result_words: int = 600, seed: int = 0, session: str = "chat-1") -> dict[str, Any]:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful agent."}]
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Task {t}: look at src/mod{t}.py"})
        msgs.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{seed}_{t}_a", "type": "function", "function": {"name": "read_file", "arguments": orjson.dumps({"path": f"src/mod{t}.py"}).decode()}},
            {"id": f"call_{seed}_{t}_b", "type": "function", "function": {"name": "shell", "arguments": orjson.dumps({"command": "ls"}).decode()}}]})
        msgs.append({"role": "tool", "tool_call_id": f"call_{seed}_{t}_a", "content": words(result_words, seed + t)})
        msgs.append({"role": "tool", "tool_call_id": f"call_{seed}_{t}_b", "content": words(result_words // 2, seed + t + 1)})
        msgs.append({"role": "assistant", "content": f"I decided to change src/mod{t}.py because the parser fails."})
    msgs.append({"role": "user", "content": "What next?"})
    return {"model": "gpt-4o", "messages": msgs, "prompt_cache_key": session}


def responses_tool_loop(turns: int, result_words: int = 600, seed: int = 0, session: str = "resp-1") -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"role": "developer", "content": "Be brief."}]
    for t in range(turns):
        items.append({"role": "user", "content": f"Task {t}: check src/mod{t}.py"})
        items.append({"type": "reasoning", "id": f"rs_{seed}_{t}", "summary": [], "encrypted_content": "enc" * 10})
        items.append({"type": "function_call", "call_id": f"fc_{seed}_{t}", "name": "read_file",
                      "arguments": orjson.dumps({"path": f"src/mod{t}.py"}).decode()})
        items.append({"type": "function_call_output", "call_id": f"fc_{seed}_{t}", "output": words(result_words, seed + t)})
        items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": f"Fixed src/mod{t}.py."}]})
    items.append({"role": "user", "content": "And now?"})
    return {"model": "gpt-4o", "input": items, "instructions": "You are terse.", "prompt_cache_key": session}
