"""Lossless-looking clean-up of a tool output (docs/compression.md, the medium tier): ANSI codes,
carriage-return overwrites, and runs of lines that say the same thing, each collapsed run counted."""

from __future__ import annotations

import re
from bisect import bisect_left

from .scan import repeat_starts, shapes

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_DIGITS = re.compile(r"\d+(?:[.,:]\d+)*")
MIN_RUN = 4  # near-identical lines: shorter runs are kept as they are
MAX_BLOCK = 4  # repeated blocks of up to this many lines are collapsed ...
MIN_REPEAT = 3  # ... when they come at least this many times in a row
LONG_LINE = 1_500  # in a large output, a line longer than this keeps its start and end
LONG_HEAD, LONG_TAIL = 1_000, 300


def overwrite_cr(line: str) -> str:
    """What a terminal shows of a line rewritten with carriage returns (a trailing ``\\r`` of a CRLF
    line end is kept)."""
    body, crlf = (line[:-1], "\r") if line.endswith("\r") else (line, "")
    if "\r" not in body:
        return line
    parts = [p for p in body.split("\r") if p]
    return (parts[-1] if parts else "") + crlf


def shape(line: str) -> str:
    """A line with its numbers blanked: lines of the same shape differ only in numbers."""
    return _DIGITS.sub("#", line)


def identical_marker(n: int) -> str:
    return f"[… the line above repeated {n:,} more time{'s' if n != 1 else ''} …]"


def similar_marker(n: int) -> str:
    return f"[… {n:,} similar line{'s' if n != 1 else ''} (differing only in numbers) left out …]"


# a line that reports a problem: lines like it that differ in numbers (which test, which file, which
# line) are each worth keeping, so they are never collapsed as near-identical
_TELLING = ("error", "fail", "fatal", "exception", "panic", "warn", "assert", "denied", "traceback")


def _telling(line: str) -> bool:
    low = line.lower()
    return any(w in low for w in _TELLING)


def block_marker(k: int, n: int) -> str:
    return f"[… the {k} lines above repeated {n:,} more time{'s' if n != 1 else ''} …]"


def _block_run(lines: list[str], i: int) -> tuple[int, int]:
    """(block size, repetitions) of a block of 2 to ``MAX_BLOCK`` lines that starts at ``i`` and repeats
    right after itself at least ``MIN_REPEAT`` times in all; (0, 0) if none (a retry loop's output)."""
    n = len(lines)
    for k in range(2, MAX_BLOCK + 1):
        if i + k * MIN_REPEAT > n or lines[i + k] != lines[i]:
            continue
        block = lines[i:i + k]
        r = 1
        while i + (r + 1) * k <= n and lines[i + r * k:i + (r + 1) * k] == block:
            r += 1
        if r >= MIN_REPEAT:
            return k, r
    return 0, 0


def collapse_weighted(lines: list[str]) -> tuple[list[str], list[int]]:
    """Runs of identical lines → one line and a count; runs of at least ``MIN_RUN`` lines of the same
    shape (digits left out) → the first and the last, and a count of those between; a block of lines
    repeated in a row → once, and a count. With how many lines of the input each output line stands
    for (a note: those it counts; any other line: 1), so that what is left out later is counted in
    lines of the output as it came."""
    out: list[str] = []
    w: list[int] = []
    i, n = 0, len(lines)
    keys = shapes(lines)
    # Where a run can start: a line whose shape comes again within MAX_BLOCK lines (identical lines,
    # a repeated block and a run of the same shape all need that), found at C speed, so that the loop
    # below copies the stretches between them at once: most lines of a 100 KB output differ.
    starts = repeat_starts(keys, MAX_BLOCK)
    nxt = 0  # index into starts of the first start >= i
    run_end = 0  # the end of the run of lines of the same shape that line i is in, once scanned
    while i < n:
        nxt = bisect_left(starts, i, nxt)
        stop = starts[nxt] if nxt < len(starts) else n
        if stop > i:  # no run starts before stop: those lines stay as they are
            out.extend(lines[i:stop])
            w.extend([1] * (stop - i))
            i = stop
            continue
        line = lines[i]
        j = i + 1
        while j < n and lines[j] == line:
            j += 1
        if j - i > 1 and line.strip():
            out += [line, identical_marker(j - i - 1)]
            w += [1, j - i - 1]
            i = j
            continue
        # (a block run needs the line again 2 to MAX_BLOCK lines on: checked here, without a call)
        if i + 2 < n and line in lines[i + 2:i + MAX_BLOCK + 1] and line.strip():
            k, r = _block_run(lines, i)
            if k:
                out.extend(lines[i:i + k])
                out.append(block_marker(k, r - 1))
                w += [1] * k + [k * (r - 1)]
                i += k * r
                continue
        key = keys[i]
        if len(key) != len(line) and line.strip():
            k = run_end if i < run_end else i + 1
            while k < n and keys[k] == key:
                k += 1
            run_end = k
            # (a telling line is tested only where a run would take it: one line, not the whole text)
            if k - i >= MIN_RUN and not _telling(line):
                out += [line, similar_marker(k - i - 2), lines[k - 1]]
                w += [1, k - i - 2, 1]
                i = k
                continue
        out.append(line)
        w.append(1)
        i += 1
    return out, w


def cap_line(line: str) -> str:
    if len(line) <= LONG_LINE:
        return line
    cut = len(line) - LONG_HEAD - LONG_TAIL
    return f"{line[:LONG_HEAD]}[… {cut:,} characters of this line left out …]{line[-LONG_TAIL:]}"


def cap_long_lines(lines: list[str]) -> list[str]:
    """Very long lines (a minified file, a JSONL record a grep matched) keep their start and end."""
    if max(map(len, lines), default=0) <= LONG_LINE:
        return lines
    return [cap_line(x) if len(x) > LONG_LINE else x for x in lines]


def clean_lines(text: str) -> list[str]:
    """The output's lines after ANSI codes and carriage-return overwrites are gone (not collapsed)."""
    if "\x1b" in text:
        text = ANSI.sub("", text)
    lines = text.split("\n")
    if "\r" in text:
        lines = [overwrite_cr(x) for x in lines]
    return lines


def cleanup(text: str) -> str:
    """The clean-up of the medium tier: ANSI codes, overwritten lines, repeated lines."""
    return "\n".join(collapse_weighted(clean_lines(text))[0])
