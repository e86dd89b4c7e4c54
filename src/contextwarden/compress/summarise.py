"""Summaries of compacted history (docs/compression.md, "Compaction"): an offline extractive summariser
(the default) and an optional LLM one.

The extractive summary keeps what an agent needs to carry on (the user's requests, ``system`` messages
verbatim, decisions, files, commands, errors, where long results are kept, salient sentences) as
*sections*, so compacting further merges sections instead of summarising a summary. It is
deterministic (same input, same bytes: a compacted prefix must be reproducible, or the provider's
prompt cache is re-written)."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..memory.envelopes import standing_context
from ..memory.ids import memory_id
from ..util.redact import redact_text
from ..util.scrub import scrub
from ..wire.conversation import Turn, input_hint, shorten
from ..wire.dialects import dialect

# (key, heading, share of the character budget). Order is the order in the text, and the priority
# in which unused budget is handed on.
SECTIONS: tuple[tuple[str, str, float], ...] = (
    ("context", "The client's standing context and system messages (verbatim)", 0.0),  # whole, outside the shares
    ("earlier", "Earlier summary", 0.30),  # an LLM-written summary being extended offline
    ("requests", "User requests", 0.24),
    ("decisions", "Decisions and conclusions", 0.16),
    ("errors", "Errors seen", 0.09),
    ("files", "Files", 0.08),
    ("commands", "Commands run", 0.08),
    ("memory", "Tool results in long-term memory", 0.10),
    ("notes", "Other notes", 0.11),
)

HEADER = ("[contextwarden: summary of the {messages} earlier messages of this conversation (about {tokens} tokens), "
          "compacted {how}. Tool results listed with a memory id are stored in long-term memory; re-run a tool "
          "if you need its output verbatim.]")

_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z`\"'(\[])|\n+")
# what was decided or found, not what is about to be done ("Let me check..." is narration)
_DECISION = re.compile(
    r"\b(decided|decision|instead of|rather than|the plan is|plan:|we should|should (?:use|not|be)|must|going with|"
    r"chose|will use|fixed|the (?:issue|problem|bug|cause|error|fix) (?:is|was)|root cause|because|turns out|"
    r"conclusion|works now|now works|resolved|agreed|confirmed|the answer is|in summary|so the)\b", re.I)
_NARRATION = re.compile(r"^(?:now |first,? |next,? |then )?(?:let me|let's|i'll|i will|i'm going to|i need to)\b", re.I)
# a line of command output that reports a failure (file contents mentioning "error" are not errors)
_ERROR = re.compile(r"^\s*(?:error\b|\w*error:|\w+exception\b|traceback \(most recent|fatal:|failed\b|failure\b|"
                    r"panic:|segmentation fault|.*\b(?:no such file or directory|command not found|permission denied|"
                    r"exit (?:code|status) [1-9]\d*|\d+ failed\b))", re.I)
_READERS = frozenset({"read", "grep", "glob", "ls", "webfetch", "websearch", "notebookread", "read_file", "view",
                      "cat", "search", "list_files", "file_search"})
_TRIVIAL = re.compile(r"^\s*(?:\[request interrupted[^\]]*\]|\(continue\)|continue|ok|okay|yes|no|thanks?|\.+)\s*$", re.I)
_PATH = re.compile(r"(?<![\w@/.-])(?:~?/(?:[\w.+-]+/)*[\w.+-]+|(?:[\w.+-]+/)+[\w.+-]+\.\w{1,6}|[\w+-]+\.(?:py|js|ts|tsx|jsx|"
                   r"md|json|ya?ml|toml|rs|go|java|kt|c|h|cc|cpp|hpp|rb|sh|sql|html|css|txt|cfg|ini|lock))(?![\w/])")
_CODEISH = re.compile(r"`[^`]+`|\w+\(\)|\w+\.\w+\(")

_MAX_ITEM = {"context": 100_000, "earlier": 100_000, "requests": 400, "decisions": 300, "errors": 220, "commands": 160, "notes": 260}


@dataclass
class Summary:
    """A summary's text and the sections it was rendered from (both persisted with a decision)."""

    text: str
    sections: dict[str, list[Any]] = field(default_factory=dict)
    messages: int = 0  # messages covered, counting those of earlier summaries merged in
    source_tokens: int = 0  # tokens of the messages covered
    summariser: str = "extractive"
    usage: dict[str, Any] | None = None  # the LLM summariser's token usage


# ---------------------------------------------------------------------------------------------------
# extraction


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s and len(s.strip()) >= 12]


def _clean_user(text: str) -> str:
    return _REMINDER.sub("", text).strip()


def _cut(text: str, limit: int) -> str:
    """``text`` as it is, or cut to ``limit`` characters with an ellipsis (never reflowed)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _score(sentence: str, last: bool) -> int:
    s = 0
    if _DECISION.search(sentence):
        s += 3
    if _NARRATION.search(sentence):
        s -= 3
    if _PATH.search(sentence) or _CODEISH.search(sentence):
        s += 2
    if _ERROR.search(sentence):
        s += 2
    if last:
        s += 1
    if len(sentence) > 300:
        s -= 1
    return s


def extract(turns: list[Turn]) -> dict[str, list[Any]]:
    """Sections of items from a transcript. ``notes`` items are ``[score, position, text]`` until
    rendering ranks them; ``files`` items are ``[path, [tools...]]``."""
    sec: dict[str, list[Any]] = {k: [] for k, _, _ in SECTIONS}
    files: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    pos = 0

    def add(key: str, item: str) -> None:
        limit = _MAX_ITEM.get(key, 240)
        # (the context is quoted as written: only cut, never reflowed)
        item = _cut(item.strip(), limit) if key == "context" else shorten(item, limit)
        if item and (key, item) not in seen:
            seen.add((key, item))
            sec[key].append(item)

    def add_file(path: str, tool: str) -> None:
        path = path.strip().rstrip(".,:;)")
        if len(path) < 3 or len(path) > 200:
            return
        if tool == "mentioned" and "." not in path.rsplit("/", 1)[-1]:
            return  # a directory or a fragment of prose: only files are worth listing
        tools = files.setdefault(path, [])
        if tool not in tools:
            tools.append(tool)

    for turn in turns:
        # secrets are redacted in whole texts, before any is cut or reflowed (a key's lines joined by
        # spaces, or one line of it, no longer looks like a key: scrub(sections) after would miss it)
        texts = [redact_text(p.text) for p in turn.parts if p.kind == "text" and p.text]
        if turn.role in ("system", "developer"):
            for t in texts:
                add("context", t)
            continue
        if turn.role == "user":
            for t in texts:
                for block in standing_context(t):
                    add("context", block)
                    t = t.replace(block, "")
                t = _clean_user(t)
                if len(t) >= 3 and not _TRIVIAL.match(t):
                    add("requests", t)
                    for m in _PATH.findall(t):
                        add_file(m, "mentioned")
        if turn.role == "assistant":
            sents = [s for t in texts for s in _sentences(t)]
            for i, s in enumerate(sents):
                pos += 1
                for m in _PATH.findall(s):
                    add_file(m, "mentioned")
                if _DECISION.search(s) and not _NARRATION.search(s):
                    add("decisions", s)
                else:
                    sc = _score(s, i == len(sents) - 1)
                    if sc > 0:
                        sec["notes"].append([sc, pos, shorten(s, _MAX_ITEM["notes"])])
        _from_tools(turn.parts, add, add_file)
    sec["files"] = [[path, tools] for path, tools in files.items()]
    return sec


def _from_tools(parts, add: Callable[[str, str], None], add_file: Callable[[str, str], None]) -> None:
    """What a turn's tool calls and results add: the files and commands they touched, the errors they
    met, and where each long result is kept."""
    for p in parts:
        if p.kind == "tool_use":
            name = p.tool or "tool"
            inp = p.tool_input if isinstance(p.tool_input, dict) else {}
            for key in ("file_path", "path", "notebook_path"):
                v = inp.get(key)
                if isinstance(v, str) and v:
                    add_file(v, name)
            cmd = inp.get("command") or inp.get("cmd")
            if isinstance(cmd, list):
                cmd = " ".join(str(c) for c in cmd)
            if isinstance(cmd, str) and cmd.strip():
                add("commands", "`" + shorten(redact_text(cmd), _MAX_ITEM["commands"] - 2) + "`")
        elif p.kind == "tool_result":
            text = p.text or ""
            name = p.tool or "tool"
            lines = [ln.strip() for ln in redact_text(text).splitlines() if ln.strip()]
            if p.is_error and lines:
                if not _TRIVIAL.match(lines[0]):
                    add("errors", f"{name}: {lines[0]}")
            elif name.lower() not in _READERS:
                for ln in [ln for ln in lines if _ERROR.match(ln)][:2]:
                    add("errors", f"{name}: {ln}")
            if len(text) >= 200:
                label = f"{name} {input_hint(p.tool_input, 60)}".strip()
                add("memory", f"{label} → {memory_id(text)}")


def merge(prior: dict[str, list[Any]] | None, new: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Earlier sections followed by the new ones, without duplicates (files merge their tool lists)."""
    if not prior:
        return new
    out: dict[str, list[Any]] = {}
    for key, _, _ in SECTIONS:
        a, b = list(prior.get(key) or []), list(new.get(key) or [])
        if key == "context":  # (summaries stored before kept system messages apart)
            a += prior.get("system") or []
        if key == "files":
            files: dict[str, list[str]] = {}
            for path, tools in a + b:
                cur = files.setdefault(path, [])
                cur.extend(t for t in tools if t not in cur)
            out[key] = [[p, t] for p, t in files.items()]
        elif key == "notes":
            # positions of the new notes come after every earlier one
            base = max((n[1] for n in a), default=0)
            out[key] = a + [[n[0], n[1] + base, n[2]] for n in b]
        else:
            out[key] = list(dict.fromkeys(a + b))
    return out


# ---------------------------------------------------------------------------------------------------
# rendering within a budget


def _render_items(key: str, items: list[Any], cap: int) -> tuple[list[str], int]:
    """Lines for one section within ``cap`` characters: the most recent items win (the first user
    request is always kept: it is usually the task); notes go by score, then shown in order."""
    if not items or cap <= 0:
        return [], 0
    if key == "earlier":
        text = _cut("\n".join(items), cap)
        return [text], len(text)
    if key == "files":
        lines = [f"- {p}" + (f" ({', '.join(t)})" if t else "") for p, t in items]
    elif key == "notes":
        chosen, used = [], 0
        for n in sorted(items, key=lambda n: (-n[0], -n[1])):
            if used + len(n[2]) + 3 <= cap:  # (3: its line's "- " and line break)
                chosen.append(n)
                used += len(n[2]) + 3
        chosen.sort(key=lambda n: n[1])
        return [f"- {n[2]}" for n in chosen], used
    else:
        lines = [f"- {x}" for x in items]
    keep_first = key == "requests"
    if sum(len(ln) + 1 for ln in lines) > cap:
        cap -= 40  # room for the "(n earlier items omitted)" line
    chosen_idx: list[int] = []
    used = 0
    if keep_first and len(lines[0]) + 1 <= cap:
        chosen_idx.append(0)
        used += len(lines[0]) + 1
    for i in range(len(lines) - 1, 0 if keep_first else -1, -1):
        if used + len(lines[i]) + 1 > cap:
            break  # older items than one that did not fit are dropped too: the list stays contiguous
        chosen_idx.append(i)
        used += len(lines[i]) + 1
    chosen_idx.sort()
    out = [lines[i] for i in chosen_idx]
    skipped = len(lines) - len(chosen_idx)
    if skipped and chosen_idx:
        at = 1 if keep_first and chosen_idx[0] == 0 else 0
        omitted = f"- ({skipped} earlier item{'s' if skipped != 1 else ''} omitted)"
        out.insert(at, omitted)
        used += len(omitted) + 1
    return out, used


CURRENT_HEADING = "The user's current request (verbatim; the work below continues it)"
CURRENT_MAX = 4000
CONTEXT_MAX = 24_000  # the client's standing context, carried whole up to this many characters


def _context_part(blocks: list[str]) -> str:
    context = "\n\n".join(blocks)
    return f"{SECTIONS[0][1]}:\n" + _cut(context, CONTEXT_MAX)


def render(sections: dict[str, list[Any]], messages: int, tokens: int, max_chars: int) -> str:
    """The summary text: a header, then each non-empty section within its share of ``max_chars``
    (the current request, when there is one, last and outside the shares)."""
    parts = [HEADER.format(messages=messages, tokens=f"{tokens:,}", how="offline by extracting its key lines")]
    current = (sections.get("current") or [None])[0]
    tail = f"{CURRENT_HEADING}:\n{_cut(current, CURRENT_MAX)}" if current else ""
    budget = max(400, max_chars - len(parts[0]) - len(tail))
    if sections.get("context"):  # (carried, not summarised: on top of the budget)
        parts.append(_context_part(sections["context"]))
    shares = sum(share for _, _, share in SECTIONS)
    carry = 0
    for key, heading, share in SECTIONS[1:]:
        cap = int(budget * share / shares) + carry - 2  # 2: the blank line before the section
        lines, used = _render_items(key, sections.get(key) or [], cap - len(heading) - 2)
        if lines:
            parts.append(f"{heading}:\n" + "\n".join(lines))
            used += len(heading) + 2
        carry = max(0, cap - used)
    if tail:
        parts.append(tail)
    return "\n\n".join(parts)


def carry_context(summary: Summary, turns: list[Turn], prior: Summary | None) -> Summary:
    """An LLM-written summary with the client's standing context carried verbatim in front of it, as the
    extractive summary carries it (the LLM's transcript leaves the client's reminders out). Its sections then
    hold the context and the LLM's text, so a later compaction extends both."""
    found = [b for t in turns if t.role == "user" for p in t.parts if p.kind == "text" and p.text
             for b in standing_context(redact_text(p.text))]
    blocks = list(dict.fromkeys([*((prior.sections.get("context") or []) if prior else []), *found]))
    if not blocks:
        return summary
    head, _, body = summary.text.partition("\n\n")
    return dataclasses.replace(summary, text=f"{head}\n\n{_context_part(blocks)}\n\n{body}",
                               sections={"context": blocks, "earlier": [body]})


def extractive_summary(turns: list[Turn], *, messages: int, tokens: int, max_chars: int,
                       prior: Summary | None = None, current_request: str | None = None) -> Summary:
    """Summarise ``turns`` (merged with ``prior``'s sections when compacting further).

    ``current_request``: when the cut falls inside the turn the assistant is still working on, that
    turn's user request, quoted verbatim at the end (it is what the agent is doing now)."""
    # (an LLM summary has no sections: its text is carried as one item)
    prior_sections = (prior.sections or {"earlier": [prior.text.split("\n\n", 1)[-1]]}) if prior is not None else None
    sections = merge(prior_sections, extract(turns))
    sections.pop("current", None)
    current = current_request or ""
    for block in standing_context(current):  # (carried in its own section)
        current = current.replace(block, "")
    if current.strip():
        sections["current"] = [current.strip()]
    # the summary is stored with the session's state (and its sections merged into later summaries):
    # no secret of the conversation goes into it
    sections = scrub(sections)
    total_msgs = messages + (prior.messages if prior else 0)
    total_tokens = tokens + (prior.source_tokens if prior else 0)
    text = render(sections, total_msgs, total_tokens, max_chars)
    return Summary(text=text, sections=sections, messages=total_msgs, source_tokens=total_tokens)


# ---------------------------------------------------------------------------------------------------
# the LLM summariser

LLM_PROMPT = (
    "You compress the earlier part of a conversation between a user and an AI coding agent so the agent can "
    "continue without it. Write a dense summary: the user's requests and constraints, decisions made and why, "
    "files and commands involved, errors and how they were resolved, open tasks, and any system instructions "
    "(quote those verbatim). Keep memory ids like m-0123abcd… exactly as written. No preamble.")


def transcript_text(turns: list[Turn], max_chars: int = 150_000, result_chars: int = 1_500) -> str:
    """The transcript as plain text for the LLM; long tool results cut, the middle dropped if too long."""
    lines: list[str] = []
    for t in turns:
        for p in t.parts:
            if p.kind == "text" and p.text:  # (redacted whole, before anything is cut: as in extract)
                lines.append(f"{t.role.upper()}: {redact_text(_clean_user(p.text) if t.role == 'user' else p.text)}")
            elif p.kind == "tool_use":
                lines.append(f"ASSISTANT called {p.tool}: {input_hint(p.tool_input, 200)}")
            elif p.kind == "tool_result":
                body = redact_text(p.text[:result_chars + 4096])  # (a margin: a secret across the cut is read whole)
                body = body if len(body) <= result_chars else body[:result_chars] + " […]"
                mid = f" ({memory_id(p.text)})" if len(p.text) >= 200 else ""
                lines.append(f"RESULT of {p.tool or 'tool'}{mid}{' [error]' if p.is_error else ''}:\n{body}")
    text = "\n".join(lines)
    if len(text) > max_chars:
        head = max_chars // 5
        text = text[:head] + "\n[…]\n" + text[-(max_chars - head):]
    return text


def llm_summary(api: str, url: str, auth: dict[str, str], model: str, turns: list[Turn], *, prior_text: str | None,
                messages: int, tokens: int, max_tokens: int, timeout: float) -> Summary:
    """Ask the upstream for a summary with the user's credentials. Raises on any failure.

    ``api`` is the :class:`~contextwarden.models.base.ApiKind` value of the endpoint at ``url``.
    """
    import httpx  # (0.7 s to import: only when an LLM summary is asked for)

    body_text = transcript_text(turns)
    if prior_text:
        body_text = f"EARLIER SUMMARY:\n{prior_text}\n\nCONVERSATION SINCE:\n{body_text}"
    d = dialect(api)
    payload, headers = d.summary_request(auth, model, LLM_PROMPT, body_text, max_tokens)
    t0 = time.perf_counter()
    r = httpx.post(url, json=payload, headers=headers, timeout=timeout)
    r.raise_for_status()
    answer = d.new_assembler()  # the answer read as a whole response body of the API is
    answer.body(r.json())
    text = answer.assemble()[1].strip()
    if not text:
        raise ValueError("the upstream returned an empty summary")
    u = answer.usage
    # the whole prompt (OpenAI's prompt_tokens: Usage.input_tokens leaves its cached part out)
    usage = {"input_tokens": (u.total_input if u else None) or 0, "output_tokens": (u.output_tokens if u else None) or 0,
             "model": model, "ms": round((time.perf_counter() - t0) * 1000, 1)}
    header = HEADER.format(messages=messages, tokens=f"{tokens:,}", how=f"by {model}")
    # (stored with the session: no secret in it)
    return Summary(text=f"{header}\n\n{redact_text(text)}", messages=messages, source_tokens=tokens,
                   summariser="llm", usage=usage)
