"""Settings of the ``compression`` stage (plugins/compression.py, src/contextwarden/compress/)."""

from __future__ import annotations

from .base import Section


class CompressionSection(Section):
    enabled: bool = False
    """Compress large tool results the first time the proxy sees them (the result stays compressed, byte
    for byte, on every later request; the whole output is kept under the memory id its first line names)."""

    medium_chars: int = 1_024
    """Results shorter than this pass untouched."""

    large_chars: int = 5_120
    """Results from ``medium_chars`` up to this get the clean-up only (terminal codes, overwritten and
    repeated lines); from this size on, the compressor their content calls for (log, JSON, listing,
    relevant chunks)."""

    medium: bool = True
    """Apply the clean-up tier at all."""

    keep_ratio: float = 0.25
    """A large result keeps about this share of its characters ..."""

    min_keep_chars: int = 2_000
    """... but at least this many ..."""

    max_keep_chars: int = 8_000
    """... and at most this many (a log keeps every error line even past it)."""

    min_gain: float = 0.2
    """A result whose compressed form (first line included) saves less than this share stays whole."""

    tools: list[str] = ["*"]
    """Tools whose results are compressed (``*``: every tool not in ``never_tools``)."""

    never_tools: list[str] = ["Edit", "MultiEdit", "Write", "NotebookEdit", "Read", "NotebookRead"]
    """Tools whose results are never compressed (Read: the model copies its edits from them)."""

    keep_edited_reads: bool = True
    """Never compress a Read result of a file the session has edited (an Edit, MultiEdit or Write of
    its path in the request): the model copies its next edit's ``old_string`` from it."""

    keep_errors: bool = True
    """Never compress a result flagged as an error (``is_error``): the model is about to fix what it says."""

    process: str = "auto"
    """Where a result's first-sight work runs: ``separate`` (worker processes; no answer by 80% of the
    stage's budget leaves the result uncompressed), ``inline`` (the stage's thread), ``auto`` (separate
    in the proxy)."""

    workers: int = 2
    """Worker processes when ``process`` is separate (~90 MB each)."""
