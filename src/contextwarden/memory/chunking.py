"""Cut long tool outputs into retrievable pieces along their structure.

A 40 KB file dump retrieved whole would blow the memory budget, and cut every 1,600 characters it would
split functions and sentences. :func:`chunk_text` cuts at markdown headings first, then around code
fences, then at blank lines, then between lines: never inside a line, and never inside a code fence
unless the fence alone is larger than a chunk (then it is cut between lines and each piece re-opens and
closes the fence, so every chunk is valid markdown). A single line longer than a chunk stays whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def approx_tokens(s: str) -> int:
    """The default size measure: ~4 characters a token."""
    return len(s) // 4


@dataclass
class _Unit:
    lines: list[str]
    fence: str | None = None  # the opening fence marker when this unit is a fenced block
    heading: bool = False  # starts with a heading: a preferred place to cut

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _units(text: str) -> list[_Unit]:
    """Paragraphs (with their trailing blank lines), fenced blocks and heading-led paragraphs."""
    lines = text.splitlines(keepends=True)
    units: list[_Unit] = []
    cur: list[str] = []
    cur_heading = False

    def close() -> None:
        nonlocal cur, cur_heading
        if cur:
            units.append(_Unit(cur, heading=cur_heading))
        cur, cur_heading = [], False

    i = 0
    while i < len(lines):
        line = lines[i]
        m = _FENCE.match(line)
        if m:
            close()
            marker = m.group(1)
            block = [line]
            i += 1
            while i < len(lines):
                block.append(lines[i])
                stripped = lines[i].strip()
                i += 1
                if stripped.startswith(marker[0] * len(marker)) and not stripped.strip(marker[0]):
                    break
            while i < len(lines) and not lines[i].strip():  # blank lines after the fence belong to it
                block.append(lines[i])
                i += 1
            units.append(_Unit(block, fence=marker))
            continue
        if _HEADING.match(line):
            close()
            cur, cur_heading = [line], True
        elif not line.strip():
            cur.append(line)
            # a blank line ends a paragraph (it stays attached to the paragraph it ends)
            if i + 1 < len(lines) and lines[i + 1].strip():
                close()
        else:
            cur.append(line)
        i += 1
    close()
    return units


def _split_fence(u: _Unit, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """A fenced block too big for one chunk: cut between lines, re-opening the fence in each piece."""
    opening = u.lines[0]
    body = u.lines[1:]
    closing = None
    # the closing fence line (and blank lines after it) are not part of the body
    while body and not body[-1].strip():
        body = body[:-1]
    if body and body[-1].strip().startswith(u.fence) and not body[-1].strip().strip(u.fence[0]):
        closing = body[-1]
        body = body[:-1]
    indent = opening[:len(opening) - len(opening.lstrip())]
    close_line = closing if closing is not None else f"{indent}{u.fence}\n"
    if not close_line.endswith("\n"):
        close_line += "\n"
    if not opening.endswith("\n"):
        opening += "\n"
    pieces: list[str] = []
    cur: list[str] = []
    for line in body:
        if not line.endswith("\n"):
            line += "\n"
        if cur and count(opening + "".join(cur) + line + close_line) > max_tokens:
            pieces.append(opening + "".join(cur) + close_line)
            cur = []
        cur.append(line)
    if cur or not pieces:
        pieces.append(opening + "".join(cur) + close_line)
    return pieces


def _split_lines(u: _Unit, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    pieces: list[str] = []
    cur = ""
    for line in u.lines:
        if cur and count(cur + line) > max_tokens:
            pieces.append(cur)
            cur = ""
        cur += line
    if cur:
        pieces.append(cur)
    return pieces


def _heading_only(u: _Unit) -> bool:
    return u.heading and all(_HEADING.match(x) or not x.strip() for x in u.lines)


def chunk_text(text: str, max_tokens: int, count: Callable[[str], int] = approx_tokens) -> list[str]:
    """Pieces of ``text`` of at most ``max_tokens`` (by ``count``) each, cut at structure, never
    mid-line. A text that fits is returned whole; whitespace-only pieces are dropped."""
    if not text or not text.strip():
        return []
    max_tokens = max(1, int(max_tokens))
    if count(text) <= max_tokens:
        return [text]
    out: list[str] = []
    cur = ""
    tail = ""  # a heading with nothing under it yet at the end of cur: it moves with what follows

    def flush(keep_tail: bool = False) -> str:
        nonlocal cur, tail
        carry = ""
        if keep_tail and tail and cur.endswith(tail):
            cur, carry = cur[:-len(tail)], tail
        if cur.strip():
            out.append(cur.strip("\n"))
        cur, tail = "", ""
        return carry

    for u in _units(text):
        t = u.text
        # a heading starts a new chunk once the current one is half full: sections stay together
        if u.heading and cur and count(cur) >= max_tokens // 2:
            flush()
        if count(cur + t) <= max_tokens:
            cur += t
            tail = t if _heading_only(u) else ""
            continue
        carry = flush(keep_tail=True)
        if count(carry + t) <= max_tokens:
            cur = carry + t
            tail = t if _heading_only(u) else ""
            continue
        # the unit alone is too big: cut it between lines (the carried heading leads the first piece
        # when it fits there)
        pieces = _split_fence(u, max_tokens, count) if u.fence else _split_lines(u, max_tokens, count)
        if carry and count(carry + pieces[0]) <= max_tokens:
            pieces[0] = carry + pieces[0]
        elif carry:
            out.append(carry.strip("\n"))
        for p in pieces[:-1]:
            cur = p
            flush()
        cur = pieces[-1]
        if u.fence:  # never append to a re-opened fence piece
            flush()
    flush()
    return [c for c in out if c.strip()]
