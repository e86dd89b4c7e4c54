"""Reading responses on the side: SSE / NDJSON / JSON framing, content decoding, and per-API
assembly of the assistant's turn. ``ResponseTap`` is the entry point the proxy uses."""

from .tap import ResponseTap
from .turn import AssembledTurn, Usage

__all__ = ["AssembledTurn", "ResponseTap", "Usage"]
