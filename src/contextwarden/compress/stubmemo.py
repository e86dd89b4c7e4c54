"""A cleared result's stub and its token count, worked out once per result: pure functions of what the
client re-sends unchanged, kept in the runtime's memo and keyed by everything they are computed from
(a candidate below ``clear_at_least`` is looked at again on every request above the trigger)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contextwarden.memory.ids import memory_id
from contextwarden.util.lru import LRU
from contextwarden.wire.conversation import input_hint

MEMO = "clearing.result_stubs"
MEMO_CHARS = 4_000_000  # bounded by the characters of the results it holds (their texts are its keys)


def result_stub(ctx, tool: str, tool_input: Any, text: str, tokens: int, images: int, how: str,
                stub_text: Callable[..., str]) -> tuple[str, int, str | None]:
    """(the stub, its tokens with ``ctx.model``, the memory id of ``text`` or None for a blank text):
    ``stub_text(tool, tool_input, text, tokens, images, how)`` and its count, computed once."""
    def compute() -> tuple[str, int, str | None]:
        stub = stub_text(tool, tool_input, text, tokens, images, how)
        return stub, ctx.runtime.tokens.count_text(stub, ctx.model), memory_id(text) if text.strip() else None

    memo = ctx.runtime.memo(MEMO, lambda: LRU(MEMO_CHARS, size=lambda k: len(k[3]) + 64))
    # the stub reads the input only through its hint (stub_text's input_hint(tool_input, 60))
    return memo.get((ctx.model, tool, input_hint(tool_input, 60), text, tokens, images, how), compute)
