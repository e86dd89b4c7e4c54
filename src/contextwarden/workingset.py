"""The working set: the files a coding agent is working with, as it last read them.

Claude Code's Edit needs the exact text it replaces, and the model copies that text from a Read result
(or from the snippet an earlier Edit returned). When clearing or compaction has taken that result out,
the model's next edit of the file fails or costs a re-read: the replay's fidelity measure counted most
of the default profile's lost edit sources there (documents read at the start of a session and edited
dozens of calls later). Which file will be edited next is not knowable live; which files were read and
are still current is:

- per path, the latest Read or Write of it (a later one supersedes it; a Write's input holds the whole
  new content), and the results of the Edits made to the file since (their snippets show the text as it
  now is; of a file edited but neither read nor written in this conversation, its Edits' results are
  all the model saw of it);
- ranked by the path's latest touch (a Read, Edit or Write naming it): the files most recently worked
  on first; kept while their results fit ``budget`` tokens (older files fall out of the set first).

A pure function of the tool calls and results in the history (one list of :class:`Call`), so clearing
(which leaves the set's results alone) and compaction (which keeps them verbatim beside its summary) see
the same set for the same history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

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


def working_set(calls: Iterable[Call], budget: int, tokens: Callable[[Call], int], edited_only: bool = False) -> list[Call]:
    """The results the working set keeps, newest file first, within ``budget`` tokens (0: none);
    ``edited_only``: only the files an Edit changed (the set a compaction keeps: the files being
    changed, not every document read for context)."""
    if budget <= 0:
        return []
    latest_read: dict[str, Call] = {}
    edits_since: dict[str, list[Call]] = {}  # (of a file never read here, its edits: all the model saw of it)
    touched: dict[str, int] = {}
    for c in sorted(calls, key=lambda c: c.order):
        p = path_of(c.tool_input)
        if p is None:
            continue
        if c.tool in READ_TOOLS:
            latest_read[p] = c
            edits_since[p] = []
        elif c.tool in EDIT_TOOLS:
            edits_since.setdefault(p, []).append(c)
        elif c.tool in WRITE_TOOLS:
            latest_read[p] = c  # the Write's input is the file now (the caller gives its content as text)
            edits_since[p] = []
        else:
            continue
        touched[p] = c.order
    out: list[Call] = []
    used = 0
    for p in sorted(set(latest_read) | set(edits_since), key=lambda p: -touched[p]):
        group = ([latest_read[p]] if p in latest_read else []) + edits_since.get(p, [])
        if not group or (edited_only and not edits_since.get(p)):
            continue
        n = sum(tokens(c) for c in group)
        if used + n > budget:
            continue  # a smaller, older file may still fit
        used += n
        out.extend(group)
    return out
