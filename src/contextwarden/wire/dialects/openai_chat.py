"""OpenAI Chat Completions (``/v1/chat/completions``): messages with ``tool_calls`` and ``role: tool`` answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ...models import openai_chat as oc
from ...models.base import ApiKind, WireModel
from ..conversation import Entry, ToolCall, maybe_json, side_of
from ..streams.openai_chat import ChatAssembler
from ..validate import Problem, digest, last_role_changed, same_bytes
from .base import MESSAGE_OVERHEAD, TOOL_CALL_OVERHEAD, Counter, Dialect, NotInjectable, history_dicts, rewrite_parts


class Chat(Dialect):
    kind = ApiKind.OPENAI_CHAT
    request_model: type[WireModel] = oc.ChatRequest
    message_model: type[WireModel] | None = oc.ChatMessage
    assembler: type = ChatAssembler
    endpoint = ("api.openai.com", "/v1/chat/completions")
    parts = True  # a message's content may be a list of parts (Ollama's is a string)

    def serves(self, path: str, ollama: bool) -> bool:
        return path.endswith("/v1/chat/completions")

    def object_entry(self, index: int, m: dict[str, Any], role: str) -> Entry:
        if role == "tool":
            tid = m.get("tool_call_id")
            return Entry(index, role, "user", results=(tid,) if isinstance(tid, str) else ())
        side = side_of(role)
        uses = tuple(str(tc.get("id", "")) for tc in (m.get("tool_calls") or []) if isinstance(tc, dict))
        return Entry(index, role, side, uses=uses, turn_start=side == "user")

    def tool_calls(self, msgs: list[Any]) -> dict[str, ToolCall]:
        out: dict[str, ToolCall] = {}
        for i, m in enumerate(msgs):
            for tc in (m.get("tool_calls") or []) if isinstance(m, dict) else ():
                if isinstance(tc, dict):
                    fn = tc.get("function") or {}
                    out.setdefault(str(tc.get("id", "")), ToolCall(str(tc.get("id", "")), str(fn.get("name", "")),
                                                                   maybe_json(fn.get("arguments")), i))
        return out

    def check(self, new: dict[str, Any], original: dict[str, Any], *_: Any) -> list[Problem]:
        """``tools`` unchanged; every assistant ``tool_calls`` id answered by a ``tool`` message in the run
        that follows it, every ``tool`` message's ``tool_call_id`` issued by that assistant message;
        ``content`` non-null unless the message is an assistant message with ``tool_calls``; the last
        message's role unchanged."""
        problems: list[Problem] = same_bytes("tools", new, original)
        msgs = new.get("messages")
        orig_msgs: list[Any] = original["messages"] if isinstance(original.get("messages"), list) else []
        if not isinstance(msgs, list) or not msgs:
            return problems + [(("no-messages",), "`messages` is missing or empty")]
        issued: set[str] = set()  # ids of the assistant message that opened the current run of tool messages
        waiting: set[str] = set()
        seen: set[str] = set()
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                problems.append((("not-object", i), f"messages[{i}] is not an object"))
                continue
            role = m.get("role")
            calls = m.get("tool_calls") or []
            if role != "tool" and waiting:
                problems += [(("unanswered", tid), f"tool call {tid} is not answered by a tool message before messages[{i}]")
                             for tid in sorted(waiting)]
                waiting = set()
            if role == "tool":
                tid = m.get("tool_call_id")
                if tid is not None:
                    tid = str(tid)
                    if tid not in issued:
                        problems.append((("orphan-result", tid), f"tool message {i} answers {tid}, which the assistant message before it did not call"))
                    waiting.discard(tid)
            else:
                issued = set()
            for tc in calls if role == "assistant" else ():
                tid = str(tc.get("id", "")) if isinstance(tc, dict) else ""
                if not tid:
                    continue  # Ollama tool calls carry no id
                if tid in seen:
                    problems.append((("dup-use", tid), f"tool call id {tid} appears twice"))
                seen.add(tid)
                issued.add(tid)
                waiting.add(tid)
            if m.get("content") is None and not (role == "assistant" and calls):
                problems.append((("null-content", digest(m)), f"messages[{i}] ({role}) has null content"))
        problems += [(("unanswered", tid), f"tool call {tid} in the last messages has no tool message") for tid in sorted(waiting)]
        return problems + last_role_changed(msgs, orig_msgs)

    def injectable(self, req: Any) -> None:
        if not req.messages or req.messages[-1].role != "user":
            raise NotInjectable("the last message is not the user's (tool loop or prefill)")

    def inject(self, req: Any, block: str) -> str:
        """The text appended to the last message when it is the user's (a string content gets it after a
        blank line, a list of parts gets a text part). In a tool loop the last message is a ``tool``
        message and nothing is injected: a user message earlier in the list would move the cached prefix."""
        self.injectable(req)
        msgs = req.messages
        i = len(msgs) - 1
        m = msgs[i]
        c = m.content
        if isinstance(c, list) and self.parts:
            msgs[i] = m.model_copy(update={"content": list(c) + [{"type": "text", "text": block}]})
            return f"messages[{i}] text part"
        if isinstance(c, str) or c is None:
            msgs[i] = m.model_copy(update={"content": (c.rstrip() + "\n\n" + block) if c and c.strip() else block})
            return f"messages[{i}] content"
        raise NotInjectable("the last user message's content has an unknown shape")

    def edited(self, m: oc.ChatMessage, edit: dict[tuple[Any, ...], Any]) -> oc.ChatMessage:
        update: dict[str, Any] = {"content": edit[("r", 0)]} if ("r", 0) in edit else {}
        if m.tool_calls is not None:
            update["tool_calls"] = [tc.model_copy(update={"function": tc.function.model_copy(update={"arguments": edit[("a", ti)]})
                                                          if tc.function is not None and ("a", ti) in edit else tc.function})
                                    for ti, tc in enumerate(m.tool_calls)]
        return m.model_copy(update=update)

    def text_of(self, m: Any) -> str:
        return oc.message_text(m)

    def summary_message(self, text: str, cache_control: dict[str, Any] | None = None) -> Any:
        return oc.ChatMessage.model_validate({"role": "user", "content": text})

    def error_answer(self, message: str, stream: bool, kind: str = "rate_limit") -> tuple[bytes, dict[str, str]]:
        """OpenAI's error object (chat and responses): the SDKs map a 429 to RateLimitError and expose
        type and code; ``kind`` "upstream": the provider could not be reached (a server error)."""
        err = {"message": message, "type": "tokens", "param": None, "code": "rate_limit_exceeded"} if kind == "rate_limit" \
            else {"message": message, "type": "server_error", "param": None, "code": "upstream_unreachable"}
        return orjson.dumps({"error": err}), {"content-type": "application/json"}

    def rewrite_text(self, m: oc.ChatMessage, fn: Callable[[str], str | None]) -> oc.ChatMessage | None:
        c = rewrite_parts(m.content, fn, ("text",)) if m.role == "user" else None
        return None if c is None else m.model_copy(update={"content": c})

    def item_texts(self, m: Any, out: list[Any]) -> None:
        if t := oc.message_text(m if isinstance(m, oc.ChatMessage) else oc.ChatMessage.model_validate(m)):
            out.append(t)

    def message_tokens(self, tc: Counter, m: dict[str, Any], enc: Any) -> int:
        """(name, tool calls, reasoning text and Ollama's base64 images besides the content)"""
        n = MESSAGE_OVERHEAD + tc._content(self, m.get("content"), enc)
        if m.get("name"):
            n += 1 + tc._text(m.get("name"), enc)
        for c in m.get("tool_calls") or []:
            fn = c.get("function") if isinstance(c, dict) else None
            n += TOOL_CALL_OVERHEAD + (tc._text(fn.get("name"), enc) + tc._text(fn.get("arguments"), enc)
                                       if isinstance(fn, dict) else tc._text(c, enc))
        if m.get("tool_call_id"):
            n += 2
        for key in ("thinking", "reasoning_content", "reasoning"):  # Ollama / OpenAI-compatible reasoning text
            if isinstance(m.get(key), str):
                n += tc._text(m[key], enc)
        images = m.get("images")  # Ollama: a list of base64 strings
        if isinstance(images, list):
            n += len(images) * tc.settings.image_tokens
        return n

    def memory_items(self, messages: Any, start_turn: int, clean_text: dict[int, str], add: Callable[..., None]) -> None:
        tool_names: dict[str, str] = {}
        for turn, raw, role in history_dicts(messages, start_turn):
            msg = oc.ChatMessage.model_validate(raw)
            for tc in msg.tool_calls or []:
                if tc.function is not None:
                    tool_names[tc.id] = tc.function.name
            text = clean_text.get(turn, oc.message_text(msg))
            if role in ("tool", "function"):
                add(text, turn, "tool", "tool_result", tool_names.get(msg.tool_call_id or "") or msg.name or raw.get("tool_name"))
            else:
                add(text, turn, role, "message")

    def summary_request(self, auth: dict[str, Any], model: str, prompt: str, text: str, max_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return ({"model": model, "max_tokens": max_tokens, "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": text}]},
                {**auth, "content-type": "application/json"})
