"""Short, fixed-width renderings of numbers, times and ids for narrow terminals."""

from __future__ import annotations

import re
import time
from typing import Any

#: a time-ordered UUID (v7, Codex's session ids): sessions started minutes apart share their first 8 digits
_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)

STAGE_ABBREV = {"budget": "bu", "strip": "st", "tagging": "tg", "clearing": "cl", "compaction": "cp", "memory": "me"}


def num(v: Any) -> str:
    """12, 1,234, 12.3k, 1.23M; '–' when unknown."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "–"
    a = abs(v)
    if a < 10_000:
        return f"{v:,.0f}"
    if a < 1_000_000:
        return f"{v / 1000:.1f}k"
    return f"{v / 1_000_000:.2f}M"


def usd(v: float) -> str:
    """$1,234.56, -$0.42: the sign before the dollar, and no "-$0.00" for a cost that rounds to nothing."""
    r = round(v, 2)
    return f"{'-' if r < 0 else ''}${abs(r):,.2f}"


def share(v: float) -> str:
    """A percentage: 12%, 4.2%, -0.3%; 0% (never -0%) for what rounds to nothing."""
    r = round(v, 0 if abs(v) >= 10 else 1) + 0.0  # (+ 0.0 turns -0.0 into 0.0)
    return f"{r:.0f}%" if abs(v) >= 10 or r == 0 else f"{r:.1f}%"


def ms(v: Any) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "–"
    return f"{v:.1f}" if v < 10 else f"{v:,.0f}"


def clock(ts: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, (int, float)) and ts else "--:--:--"


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "–"
    d, s = divmod(int(seconds), 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:d}:{m:02d}:{s:02d}"


def short_id(s: Any, n: int = 8) -> str:
    """The first ``n`` characters of an id; of a time-ordered UUID, its last ``n`` (random) hex digits."""
    if not s:
        return "–"
    s = str(s)
    if s.startswith("h-"):  # first-turn hash sessions
        s = s[2:]
    if len(s) <= n:
        return s
    return s.replace("-", "")[-n:] if _UUID7.fullmatch(s) else s[:n]


def abbrev(stage: str) -> str:
    return STAGE_ABBREV.get(stage, stage[:2])


def pct(v: Any) -> str:
    return f"{v * 100:.0f}%" if isinstance(v, (int, float)) else "–"
