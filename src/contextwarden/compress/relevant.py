"""Anything else: the first chunk and the chunks most relevant to the task (BM25 with memory's tokenizer)
that fit the budget, in their order (docs/compression.md)."""

from __future__ import annotations

import math

from contextwarden.memory.words import tokenize

from .gaps import gap_marker

CHUNK_LINES = 20
CHUNK_CHARS = 1_200
K1, B = 1.2, 0.75


def chunks_of(lines: list[str], size: int = CHUNK_LINES, chars: int = CHUNK_CHARS) -> list[tuple[int, int]]:
    """(start, end) line spans of at most ``size`` lines and about ``chars`` characters, ending after a
    blank line when one comes within the last third."""
    out, i, n = [], 0, len(lines)
    while i < n:
        j, used, blank = i, 0, -1
        while j < n and j - i < size and (used < chars or j == i):
            used += len(lines[j]) + 1
            if not lines[j].strip() and j > i:
                blank = j + 1
            j += 1
        if j < n and blank > i + (j - i) * 2 // 3:
            j = blank
        out.append((i, j))
        i = j
    return out


def bm25(docs: list[str], query: list[str]) -> list[float]:
    """BM25 of each (lower-cased) doc for the query's terms, a term's frequency being how often it occurs
    in the doc as a substring (memory's terms are stemmed: ``pars`` counts ``parser`` and ``parsing``),
    and a doc's length its characters: ``str.count`` is C speed, a tokenizer per chunk is not."""
    if not docs or not query:
        return [0.0] * len(docs)
    n = len(docs)
    terms = list(dict.fromkeys(t for t in query if len(t) > 1))
    tf = [[d.count(t) for t in terms] for d in docs]
    df = [sum(1 for row in tf if row[j]) for j in range(len(terms))]
    lens = [len(d) for d in docs]
    avg = sum(lens) / n or 1.0
    idf = [math.log(1 + (n - f + 0.5) / (f + 0.5)) for f in df]
    scores = []
    for row, ln in zip(tf, lens):
        norm = K1 * (1 - B + B * ln / avg)
        scores.append(sum(idf[j] * f * (K1 + 1) / (f + norm) for j, f in enumerate(row) if f))
    return scores


def compress_relevant(lines: list[str], query: str, budget_chars: int, weights: list[int]) -> tuple[str, dict]:
    spans = chunks_of(lines)
    texts = ["\n".join(lines[a:b]) for a, b in spans]
    scores = bm25([t.lower() for t in texts], tokenize(query)[:64])
    chosen = {0}
    used = len(texts[0])
    for i in sorted(range(len(spans)), key=lambda i: (-scores[i], i)):
        if i not in chosen and scores[i] > 0 and used + len(texts[i]) <= budget_chars:
            chosen.add(i)
            used += len(texts[i])
    out: list[str] = []
    prev_end = 0
    kept = 0
    for i in sorted(chosen):
        a, b = spans[i]
        if a > prev_end:
            out.append(gap_marker(sum(weights[prev_end:a])))
        out.append(texts[i])
        kept += b - a
        prev_end = b
    if prev_end < len(lines):
        out.append(gap_marker(sum(weights[prev_end:])))
    return "\n".join(out), {"lines": len(lines), "kept_lines": kept, "chunks": len(spans), "kept_chunks": len(chosen)}
