"""The working set: the files a coding agent is working with, as it last read them.

Claude Code's Edit needs the exact text it replaces, copied from a Read result (or an earlier Edit's
snippet); when clearing or compaction took that result out, the next edit fails or costs a re-read.
Per path: its latest Read or Write (a Write's input is the whole new content) and the Edits since;
ranked by the path's latest touch, kept while their results fit ``budget`` tokens. A pure function of
the history's tool calls (one list of :class:`Call`), so clearing and compaction see the same set."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# heads the working set's results a compaction summary keeps verbatim (automatic recall counts them as held)
WORKING_HEAD = "Files this conversation is working with, as last read and edited since (verbatim, from the compacted messages):"
READ_TOOLS = frozenset({"Read", "NotebookRead"})
EDIT_TOOLS = frozenset({"Edit", "MultiEdit", "NotebookEdit"})
WRITE_TOOLS = frozenset({"Write"})
PATH_KEYS = ("file_path", "notebook_path", "path")


# at most this share of the window goes to the working set: a budget in tokens that suits a 200K window
# would, in a small one, keep so much that clearing and compaction could free nothing
MAX_WINDOW_SHARE = 0.10


def budget_in(settings_tokens: int, window: int) -> int:
    """The working set's budget: the profile's ``working_set_tokens``, capped by the window's share."""
    return max(0, min(int(settings_tokens or 0), int(window * MAX_WINDOW_SHARE)))


def path_of(tool_input: Any) -> str | None:
    if isinstance(tool_input, dict):
        for k in PATH_KEYS:
            p = tool_input.get(k)
            if isinstance(p, str) and p:
                return p
    return None


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call of the history and its result (``key``: what the caller finds it by)."""

    order: int  # position among the calls
    tool: str
    tool_input: Any
    key: Any
    text: str  # the result's text as the client sends it


@dataclass(frozen=True, slots=True)
class Files:
    """working_set's first pass over ``calls`` (in order; ``upto``: the last order read): per path its
    latest Read or Write, the Edits made since and the order of its latest touch. Never changed once
    made (a conversation's next request extends a copy: :func:`files`)."""

    calls: tuple
    latest_read: dict
    edits_since: dict  # path -> tuple of its Edits since its latest Read or Write
    touched: dict
    upto: int = -1


def files(calls: Iterable[Call], known: Files | None = None) -> Files:
    """``files(known.calls + calls)``, reading only ``calls`` when they all come after ``known``'s (a
    coding agent's next request: the same calls and a few more)."""
    calls = list(calls)
    if known is not None and not calls:
        return known
    if known is not None and any(c.order <= known.upto for c in calls):
        calls, known = [*known.calls, *calls], None  # (one comes before: read them all in order)
    if any(a.order > b.order for a, b in zip(calls, calls[1:])):  # (usually in order already: no sort)
        calls.sort(key=lambda c: c.order)
    k = known if known is not None else Files((), {}, {}, {})
    latest_read, edits_since, touched = dict(k.latest_read), dict(k.edits_since), dict(k.touched)
    for c in calls:
        p = path_of(c.tool_input)
        if p is None:
            continue
        if c.tool in READ_TOOLS or c.tool in WRITE_TOOLS:
            latest_read[p] = c  # (a Write's input is the file now: the caller gives its content as text)
            edits_since[p] = ()
        elif c.tool in EDIT_TOOLS:
            edits_since[p] = edits_since.get(p, ()) + (c,)  # (of a file never read here: all the model saw of it)
        else:
            continue
        touched[p] = c.order
    return Files(k.calls + tuple(calls), latest_read, edits_since, touched, calls[-1].order if calls else k.upto)


def working_set(calls: Iterable[Call] | Files, budget: int, tokens: Callable[[Call], int], edited_only: bool = False,
                mentioned: dict[str, int] | None = None, written: bool = False, latest_edits: float = 0.0) -> list[Call]:
    """The results the working set keeps, newest file first, within ``budget`` tokens (0: none) (a call:
    a :class:`Call`, or any object with its ``order``, ``tool`` and ``tool_input``, e.g. clearing's slot;
    ``calls`` may be their :func:`files` already);
    ``edited_only``: only the files an Edit changed (the set a compaction keeps: the files being
    changed, not every document read for context), and, with ``written``, the files a Write made (the
    agent writes a file, then edits it: its next ``old_string`` is in the Write's content);
    ``mentioned``: path -> order of the latest tool call or message that names the file without reading
    or editing it (:func:`mentions`: the model runs the script, talks about the document): a touch, and
    with ``edited_only`` a file being worked on (the next Edit of a file read for context comes after the
    model starts talking about it). A file whose Read does not fit any more keeps its Edits' results
    when they fit (each shows the text around what it changed, as the file is now).

    ``latest_edits`` (a share of the budget, 0: off): first, within that share, the latest Edit result of
    every file being changed, newest file first; then the files whole as above with what is left (an
    agent editing a dozen documents in turn finds its next ``old_string`` next to what it last changed
    in each: a snippet of a few hundred tokens, where the file's Read is thousands)."""
    if budget <= 0:
        return []
    mentioned = mentioned or {}
    seen = calls if isinstance(calls, Files) else files(calls)
    latest_read, edits_since = seen.latest_read, seen.edits_since
    touched = dict(seen.touched) if mentioned else seen.touched  # (``seen`` may be shared: not changed)
    for p, order in mentioned.items():
        if p in touched and order > touched[p]:
            touched[p] = order
    # newest touch first; files touched by the same call keep the order they were first seen in (never
    # a set's order: it changes with the interpreter's string hashes, and the summary's bytes with it)
    ranked = sorted(dict.fromkeys([*latest_read, *edits_since]), key=touched.__getitem__, reverse=True)
    used = 0
    first: dict[str, Call] = {}  # path -> its latest Edit's result, kept ahead of the files whole
    if latest_edits > 0:
        for p in ranked:
            if edits := edits_since.get(p):
                n = tokens(edits[-1])
                if used + n <= budget * latest_edits:
                    first[p] = edits[-1]
                    used += n
    out: list[Call] = []
    for p in ranked:
        edits = edits_since.get(p, ())
        base = latest_read.get(p)
        if edited_only and not (edits or (written and base is not None and base.tool in WRITE_TOOLS)
                                or (p in mentioned and (base is None or mentioned[p] > base.order))):
            continue
        if base is not None and not edits:  # (most files: one Read or Write, kept whole when it fits)
            if used + (n := tokens(base)) <= budget:
                used += n
                out.append(base)
            continue
        kept = first.get(p)
        group = [base, *edits] if base is not None else edits
        add = sum(tokens(c) for c in group if c is not kept)  # (what the group adds: each call counted once)
        if used + add > budget:
            # its Read is too big: the snippets of its Edits; else its latest snippet if kept ahead, else
            # nothing of it (a smaller, older file may still fit)
            fit = edits and base is not None and used + sum(tokens(c) for c in edits if c is not kept) <= budget
            group = edits if fit else [kept] if kept else []
            add = sum(tokens(c) for c in group if c is not kept)
        used += add
        out.extend(group)
    return out


def _names(path: str, basenames: dict[str, int]) -> tuple[str, ...]:
    """How a text names ``path``: the path, its last two parts (``scripts/run.sh``), and its file name
    when no other file of the set has it and it looks like a file name (``run.sh``, not ``README``)."""
    parts = [x for x in path.split("/") if x]
    out = [path]
    if len(parts) >= 2:
        out.append("/".join(parts[-2:]))
    if parts:
        base = parts[-1]
        if basenames.get(base, 0) == 1 and len(base) >= 6 and "." in base.strip("."):
            out.append(base)
    return tuple(out)


def mentions(paths: Iterable[str], texts: Iterable[tuple[int, str]]) -> dict[str, int]:
    """Of ``paths``, those the texts name (``texts``: (order, text), e.g. the strings of the recent tool
    calls' inputs and the assistant's words): path -> the largest order that names it. Names are matched
    as substrings (a path inside a shell command, a file name in a sentence): linear in the texts times
    the number of files, so the caller passes the recent texts only."""
    paths = list(dict.fromkeys(paths))
    basenames: dict[str, int] = {}
    for p in paths:
        b = p.rstrip("/").rsplit("/", 1)[-1]
        basenames[b] = basenames.get(b, 0) + 1
    names = [(p, _names(p, basenames)) for p in paths]
    out: dict[str, int] = {}
    for order, text in texts:
        if not text:
            continue
        for p, ns in names:
            if order > out.get(p, -1) and any(n in text for n in ns):
                out[p] = order
    return out


def said(parts: Iterable[Any]) -> Iterable[str]:
    """The texts of one assistant message that may name a file: its words and the string values of its
    tool calls' inputs (``conversation.transcript`` parts)."""
    for p in parts:
        if p.kind == "text" and p.text:
            yield p.text
        elif p.kind == "tool_use" and isinstance(p.tool_input, dict):
            yield from (v for v in p.tool_input.values() if isinstance(v, str))
