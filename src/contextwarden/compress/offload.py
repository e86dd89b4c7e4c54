"""The compression stage's first-sight work, in a worker process: the proxy process's interpreter lock is
not held by it.

Compressing a large tool result the first time it is seen (choosing the compressor, running it, the first
line, redacting the whole text) is pure Python holding the interpreter lock the event
loop needs. :func:`first_sight` is that work as one pure function of its arguments; the stage calls it
in-line (tests, replay, evaluations: ``compression.process`` ``inline``) or, in the proxy (``separate``;
``auto`` is separate in a mitmdump process), in one of ``compression.workers`` worker processes
(:class:`Offload`), waiting at most until its own budget is spent.

Fails open (``workerpool.py``): a worker that gives no answer in time, has died, is still starting or
cannot be started leaves that result uncompressed, exactly what the result gets when the stage runs past
its budget (no record: it goes whole, now and on every later request). The answer itself is the same
text, byte for byte, as in-line (``tests/contextwarden/compress/test_offload.py``).
"""

from __future__ import annotations

from typing import Any

from contextwarden.core.workerpool import PARTS, Offload, Unavailable
from contextwarden.core.workerpool import process_mode as mode
from contextwarden.util.redact import redact_text

from . import Compressed, Limits, compress, render

__all__ = ["NAME", "PARTS", "Offload", "Unavailable", "dress", "first_sight", "mode"]

NAME = "compression.offload"  # the runtime memo holding the pool


def first_sight(text: str, tool: str, tool_input: Any, query: str, limits: Limits, mid: str,
                how: str) -> tuple[str, str] | None:
    """``(the text put in the result's place, the compressor's kind)``, or None when the result stays as it
    is. Its tokens are counted by the caller: the text is at most a few thousand tokens (``Limits``), a
    fraction of a millisecond, and a worker holding a tiktoken encoding held 42 MB more at rest."""
    got = compress(text, tool=tool, tool_input=tool_input, query=query, limits=limits)
    if got is None:
        return None
    return dress(got, tool, tool_input, len(text), mid, how), got.kind


def dress(got: Compressed, tool: str, tool_input: Any, chars: int, mid: str, how: str) -> str:
    """The compressed body with its first line, redacted: the record is stored with the session, so no
    secret in it (memory keeps the original redacted too); the first line names the tool's input (a
    command can hold a token): the whole text is redacted."""
    return redact_text(render(got, tool, tool_input, chars, mid, how))
