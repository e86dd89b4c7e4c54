"""Reads Prometheus text-format output into ``{'name{labels}': value}`` (tests scrape /metrics)."""

from __future__ import annotations

import re


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out
