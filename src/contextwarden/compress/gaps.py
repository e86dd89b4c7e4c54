"""Putting kept lines back together: the lines kept, in order, with an exact count where lines were left out."""

from __future__ import annotations


def gap_marker(n: int) -> str:
    return f"[… {n:,} line{'s' if n != 1 else ''} left out …]"


def join_kept(lines: list[str], keep: list[bool], weights: list[int]) -> tuple[str, int]:
    """The kept lines in order, each run left out replaced by one marker counting the lines it stands
    for (``weights``: how many lines of the original each line is); and how many lines were kept."""
    out: list[str] = []
    gap = kept = 0
    for line, k, w in zip(lines, keep, weights):
        if k:
            if gap:
                out.append(gap_marker(gap))
                gap = 0
            out.append(line)
            kept += 1
        else:
            gap += w
    if gap:
        out.append(gap_marker(gap))
    return "\n".join(out), kept


def mark_span(keep: list[bool], start: int, end: int) -> None:
    for i in range(max(0, start), min(len(keep), end)):
        keep[i] = True
