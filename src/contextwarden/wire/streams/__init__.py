"""Reading responses on the side: SSE / NDJSON / JSON framing, content decoding, and per-API
assembly of the assistant's turn. ``tap.ResponseTap`` is the entry point the proxy uses (not imported
here: it asks the dialects for an assembler, and the dialects import this package's assemblers)."""

from .turn import AssembledTurn, Usage

__all__ = ["AssembledTurn", "Usage"]
