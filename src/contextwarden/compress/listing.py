"""Listings and search results (ls, find, glob, grep): grouped by file or directory, capped, with exact
counts; the last line always says the listing is incomplete (docs/compression.md)."""

from __future__ import annotations

import re

GREP_LINE = re.compile(r"([^:\s][^:\n]*):(\d+)[:\-]")
GREP_FILE = re.compile(r"([^:\s]+\.\w+):(?![\d:])")
PATHLIKE = re.compile(r"^\.{0,2}/?[\w.@+~-]+(?:/[\w .@+~-]+)+/?$|^[\w.@+~-]+\.[\w]+$")
LS_LONG = re.compile(r"^[dlcbps-][rwxsStT-]{9}[@+.]?\s+\d+")
LS_HEADER = re.compile(r"^(.+):$")


def kind_of(lines: list[str]) -> str | None:
    """"grep", "paths", "ls" or None, from most of the non-empty lines."""
    if len(lines) - lines.count("") < 10:
        return None
    sample = [x for x in lines[:: max(1, len(lines) // 200)] if x.strip()]
    if not sample:
        return None
    if _most(sample, 0.7, lambda x: ":" in x and bool(GREP_LINE.match(x) or GREP_FILE.match(x))):
        return "grep"
    if _most(sample, 0.6, lambda x: x.startswith("total ") or (x[0] in _LS_FIRST and bool(LS_LONG.match(x)))
             or (x.endswith(":") and bool(LS_HEADER.match(x)))):
        return "ls"
    if _most(sample, 0.8, _pathlike):
        return "paths"
    return None


_LS_FIRST = frozenset("dlcbps-")


def _pathlike(x: str) -> bool:
    s = x.strip()
    # (a path with a space in it has a "/"; a bare file name has none and a dot)
    return ("/" in s or (" " not in s and "." in s)) and bool(PATHLIKE.match(s))


def _most(sample: list[str], share: float, test) -> bool:
    """Do at least ``share`` of the lines pass ``test``? Stops as soon as the answer is known (a log's
    lines rule out a listing within the first few misses)."""
    need = share * len(sample)
    misses_allowed = len(sample) - need
    hits = misses = 0
    for x in sample:
        if test(x):
            hits += 1
            if hits >= need:
                return True
        else:
            misses += 1
            if misses > misses_allowed:
                return False
    return hits >= need


def _group_key(kind: str, line: str, current_dir: str) -> str:
    """The group of one line: its file (grep) or directory."""
    if kind == "grep":
        m = GREP_LINE.match(line) or GREP_FILE.match(line)
        return m.group(1) if m else line
    if kind == "ls":
        return current_dir
    p = line.strip().rstrip("/")
    return p.rsplit("/", 1)[0] if "/" in p else "."


def group(lines: list[str], kind: str) -> tuple[dict[str, list[str]], int]:
    """The listing's entries by group (file for grep, directory otherwise), in order; and their number."""
    groups: dict[str, list[str]] = {}
    current = "."
    total = 0
    for line in lines:
        if not line.strip():
            continue
        if kind == "ls":
            m = LS_HEADER.match(line)
            if m and not LS_LONG.match(line):
                current = m.group(1)
                groups.setdefault(current, [])
                continue
            if line.startswith("total "):
                continue
        groups.setdefault(_group_key(kind, line, current), []).append(line)
        total += 1
    return groups, total


def compress_listing(grouped: tuple[dict[str, list[str]], int], kind: str, per_group: int, max_groups: int,
                     terms: tuple[str, ...]) -> tuple[str, dict]:
    """The listing (``group``'s) capped. An entry past its group's cap that names one of ``terms`` (the
    task's words, lower case) is shown too, up to as many again: the file the task is about is the one
    the model asks for next."""
    groups, total = grouped
    noun, nouns, unit, units = (("match", "matches", "file", "files") if kind == "grep"
                                else ("entry", "entries", "directory", "directories"))
    out: list[str] = []
    shown = 0
    names = list(groups)
    for g in names[:max_groups]:
        items = groups[g]
        if kind == "ls":
            out.append(f"{g}:")
        pick = items[:per_group]
        if terms and len(items) > per_group:
            pick += [x for x in items[per_group:] if any(t in x.lower() for t in terms)][:per_group]
        out.extend(pick)
        shown += len(pick)
        more = len(items) - len(pick)
        if more > 0:
            out.append(f"[… {more:,} more {noun if more == 1 else nouns} in {g} left out …]")
    rest = names[max_groups:]
    if rest:
        n_rest = sum(len(groups[g]) for g in rest)
        out.append(f"[… {len(rest):,} more {unit if len(rest) == 1 else units} "
                   f"with {n_rest:,} {noun if n_rest == 1 else nouns} left out …]")
    out.append(f"[… this listing is NOT complete: {shown:,} of {total:,} {nouns} shown, "
               f"in {min(len(names), max_groups):,} of {len(names):,} {units} …]")
    return "\n".join(out), {"entries": total, "shown": shown, "groups": len(names)}
