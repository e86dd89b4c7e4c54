"""JSON: every key kept in order, long arrays cut to first / last / differing items, long strings cut,
with counts (docs/compression.md)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

import orjson

HEAD, TAIL, MAX_ODD = 2, 1, 5
MAX_ITEMS = 6
MAX_STRING = 400


def parse(text: str) -> Any:
    s = text.strip()
    if not s or s[0] not in "[{":
        return None
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return None


ODD_WORDS = ("error", "fail", "exception", "invalid", "denied", "fatal", "critical", "timeout", "timed out")


def _is_odd_value(v: Any) -> bool:
    """An item that carries an error-looking key or value (one dump and substring checks: C speed)."""
    if isinstance(v, (dict, list, str)):
        s = orjson.dumps(v).lower().decode("utf-8", "replace") if not isinstance(v, str) else v[:2000].lower()
        return any(w in s for w in ODD_WORDS)
    return False


def _outliers(vals: list[float]) -> set[int]:
    """Indices of the values more than 8 median absolute deviations from the median."""
    med = statistics.median(vals)
    mad = statistics.median(abs(v - med) for v in vals)
    return {i for i, v in enumerate(vals) if abs(v - med) > 8 * mad} if mad else set()


def _odd_items(items: list, lo: int, hi: int) -> list[int]:
    """Indices in [lo, hi) of items that differ from the rest."""
    dicts = [x for x in items if isinstance(x, dict)]
    odd: list[int] = []
    common: frozenset | None = None
    outliers: set[int] = set()
    if dicts and len(dicts) == len(items):
        common = Counter(frozenset(x) for x in items).most_common(1)[0][0]
        # numeric outliers per field
        fields = [k for k in common if all(isinstance(x.get(k), (int, float)) and not isinstance(x.get(k), bool) for x in items)]
        for f in fields[:8]:
            outliers |= _outliers([float(x[f]) for x in items])
    elif items and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
        outliers = _outliers([float(x) for x in items])
    for i in range(lo, hi):
        x = items[i]
        if (common is not None and frozenset(x) != common) or _is_odd_value(x) or i in outliers:
            odd.append(i)
            if len(odd) >= MAX_ODD:
                break
    return odd


class Shrinker:
    def __init__(self, max_items: int, max_string: int) -> None:
        self.max_items, self.max_string = max_items, max_string
        self.items_left = self.arrays_cut = self.chars_left = 0

    def shrink(self, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: self.shrink(x) for k, x in v.items()}
        if isinstance(v, list):
            n = len(v)
            if n <= self.max_items:
                return [self.shrink(x) for x in v]
            odd = _odd_items(v, HEAD, n - TAIL)
            left = n - HEAD - len(odd) - TAIL
            self.items_left += left
            self.arrays_cut += 1
            out = [self.shrink(v[i]) for i in [*range(HEAD), *odd]]
            differ = f"; the {len(odd)} above this note after the first {HEAD} differ from the rest" if odd else ""
            out.append(f"[… {left:,} of {n:,} items left out{differ} …]")
            return out + [self.shrink(v[i]) for i in range(n - TAIL, n)]
        if isinstance(v, str) and len(v) > self.max_string:
            cut = len(v) - self.max_string
            self.chars_left += cut
            return v[: self.max_string] + f"[… {cut:,} more characters …]"
        return v


def compress_json(text: str, value: Any, budget_chars: int) -> tuple[str, dict] | None:
    pretty = "\n " in text[:2000] or "\n\t" in text[:2000]
    for max_items, max_string in ((MAX_ITEMS, MAX_STRING), (4, 200), (3, 120)):
        sh = Shrinker(max_items, max_string)
        out = orjson.dumps(sh.shrink(value), option=orjson.OPT_INDENT_2 if pretty else 0).decode()
        if len(out) <= budget_chars:
            break
    if not sh.arrays_cut and not sh.chars_left:
        return None
    return out, {"items_left": sh.items_left, "arrays_cut": sh.arrays_cut, "chars_left": sh.chars_left}
