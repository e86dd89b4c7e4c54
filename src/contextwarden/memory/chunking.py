"""Cut long tool outputs into retrievable pieces along their structure.

A 40 KB file dump retrieved whole would blow the memory budget, and cut every 1,600 characters it would
split functions and sentences. :func:`chunk_text` cuts at markdown headings first, then around code
fences, then at blank lines, then between lines: never inside a line, and never inside a code fence
unless the fence alone is larger than a chunk (then it is cut between lines and each piece re-opens and
closes the fence, so every chunk is valid markdown). Only a single line longer than a whole chunk (a
minified file, a long log line) is cut, at a space or punctuation where there is one: a piece the model
cannot see is a piece that is never found.

Sizes are the embedding model's word pieces when the caller passes its counter
(:meth:`~contextwarden.memory.embedder.Embedder.token_counter`: each line is measured once and sums are
added up), else :func:`proxy_tokens`, an over-estimate of them that needs no model.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def approx_tokens(s: str) -> int:
    """The default size measure: ~4 characters a token."""
    return len(s) // 4


_PRE = re.compile(r"[^\W_]+|\S", re.UNICODE)
_RUNS = re.compile(r"[A-Za-z]+|\d+")


def proxy_tokens(s: str) -> int:
    """A model-free upper estimate of all-MiniLM-L6-v2's word pieces: every punctuation mark is a piece,
    a word is one piece per 4 characters (short words are one), a non-ASCII letter is one. Used to size
    chunks when no model is loaded (over the Claude Code traces it is ~1.6x the real count)."""
    n = 0
    for m in _PRE.finditer(s):
        w = m.group(0)
        if not w.isascii():
            n += len(w)
        elif len(w) > 3 and not w.isalpha():  # 0x7ffe12ab: letters and digits split apart
            n += len(_RUNS.findall(w)) + (len(w) - 1) // 3
        else:
            n += 1 + (len(w) - 1) // 3
    return n


proxy_tokens.additive = True  # type: ignore[attr-defined]  # regex matches never cross a newline


class _Additive:
    """A measure that counts each line once (``count`` must be additive over lines)."""

    def __init__(self, count: Callable[[str], int]) -> None:
        self.count = count
        self.cache: dict[str, int] = {}
        self.ends = getattr(count, "ends", None)

    def __call__(self, s: str) -> int:
        total = 0
        cache = self.cache
        for line in s.splitlines():
            n = cache.get(line)
            if n is None:
                n = cache[line] = self.count(line)
            total += n
        return total


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
    # the closing fence line (and blank lines after it) are not part of the body
    while body and not body[-1].strip():
        body = body[:-1]
    fence = u.fence or "```"
    indent = opening[:len(opening) - len(opening.lstrip())]
    close_line = f"{indent}{u.fence}\n"
    if body and body[-1].strip().startswith(fence) and not body[-1].strip().strip(fence[0]):
        close_line = body[-1]
        body = body[:-1]
    if not close_line.endswith("\n"):
        close_line += "\n"
    if not opening.endswith("\n"):
        opening += "\n"
    pieces: list[str] = []
    cur: list[str] = []
    room = max(1, max_tokens - count(opening + close_line))
    for line in body:
        if not line.endswith("\n"):
            line += "\n"
        # only a line longer than a whole chunk is cut (to fit between the fence lines)
        parts = _cut_line(line, room, count) if count(line) > max_tokens else [line]
        for part in parts:
            if cur and count(opening + "".join(cur) + part + close_line) > max_tokens:
                pieces.append(opening + "".join(cur) + close_line)
                cur = []
            cur.append(part)
    if cur or not pieces:
        pieces.append(opening + "".join(cur) + close_line)
    return pieces


def _split_lines(u: _Unit, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    pieces: list[str] = []
    cur = ""
    for line in u.lines:
        if count(line) > max_tokens:  # a line longer than a chunk: its own pieces
            if cur:
                pieces.append(cur)
                cur = ""
            pieces += _cut_line(line, max_tokens, count)
            continue
        if cur and count(cur + line) > max_tokens:
            pieces.append(cur)
            cur = ""
        cur += line
    if cur:
        pieces.append(cur)
    return pieces


_CUT_AT = re.compile(r"[\s,;:.)\]}>|]+")


def _cut_line(line: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """One line too long for a chunk, cut into pieces that fit: after a space or punctuation where
    possible (the longest prefix that fits, found by bisection), between characters otherwise."""
    end_nl = line.endswith("\n")
    rest = line[:-1] if end_nl else line
    out: list[str] = []
    piece_ends = getattr(count, "ends", None)
    ends = piece_ends(rest) if piece_ends is not None else None  # the model's pieces: one tokenisation a line
    at = 0  # where ``rest`` starts in the line
    while rest:
        if ends is not None:
            i = bisect_right(ends, at) + max_tokens - 1  # the max_tokens-th piece ending after ``at``
            if i >= len(ends):
                out.append(rest)
                break
            end = ends[i] - at
            cuts = [m.end() for m in _CUT_AT.finditer(rest, 0, end) if end // 2 < m.end() <= end]
            k = cuts[-1] if cuts else max(1, end)
        else:
            if count(rest) <= max_tokens:
                out.append(rest)
                break
            window = rest[:max(64, max_tokens * 16)]  # no piece of a chunk is longer than 16 characters
            cuts = [m.end() for m in _CUT_AT.finditer(window) if 0 < m.end() < len(rest)]
            k = _longest_fit(rest, cuts, max_tokens, count) if cuts else 0
            if k <= 0:
                k = _longest_fit(rest, list(range(1, len(window) + 1)), max_tokens, count) or 1
        out.append(rest[:k])
        rest = rest[k:]
        at += k
    if end_nl and out:
        out[-1] += "\n"
    return [p if p.endswith("\n") else p + "\n" for p in out[:-1]] + out[-1:]


def _longest_fit(s: str, cuts: list[int], max_tokens: int, count: Callable[[str], int]) -> int:
    lo, hi, best = 0, len(cuts) - 1, 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if count(s[:cuts[mid]]) <= max_tokens:
            best, lo = cuts[mid], mid + 1
        else:
            hi = mid - 1
    return best


def _heading_only(u: _Unit) -> bool:
    return u.heading and all(_HEADING.match(x) or not x.strip() for x in u.lines)


def chunk_text(text: str, max_tokens: int, count: Callable[[str], int] = approx_tokens) -> list[str]:
    """Pieces of ``text`` of at most ``max_tokens`` (by ``count``) each, cut at structure, never
    mid-line unless one line alone is longer than ``max_tokens``. A text that fits is returned whole;
    whitespace-only pieces are dropped. A ``count`` with ``additive = True`` is called once per line."""
    if not text or not text.strip():
        return []
    max_tokens = max(1, int(max_tokens))
    if getattr(count, "additive", False):
        count = _Additive(count)
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
