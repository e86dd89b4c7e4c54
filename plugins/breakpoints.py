"""Built-in stage ``breakpoints``: a cache breakpoint on the messages that start the last turns.

Anthropic reads a cached prefix only at a breakpoint or within the 20 blocks before one, and Claude Code
marks its system prompt and the newest message only. When the prompt changes from a point further back
than that, everything after the system prompt is written again (1.25x instead of 0.1x): a new user
message to a model that drops the previous turn's thinking (before Opus 4.5, unless the client keeps it)
changes it from that turn's first thinking block, and a turn of tool calls is soon longer than 20 blocks.
A breakpoint on the user message that started each of the last ``TURNS`` turns keeps an entry there,
which such a request reads (and so does one of ours that changes the history after a turn's start). For a
model that keeps the thinking the stage does nothing.

Marking costs nothing: the same tokens are written, in more entries. The provider allows 4 breakpoints in
a request; the stage adds none past that, none on the newest message (the client's, and memory's block
goes after it), none where the prefix is shorter than the provider caches (``Price.min_cache``: a short
request goes as the client sent it), none on a message whose content is a string (it would have to be
written as blocks: only a marker is ever added), and none when the provider edits the prompt itself (its
context management: clearing, compaction). The dialect finds the messages (``turn_breakpoints``; an API that
caches without breakpoints has none). docs/REPLAY.md, "Breakpoints at turn starts".
"""

from __future__ import annotations

from operator import itemgetter

from contextwarden import hookimpl
from contextwarden.wire.cost import price_for
from contextwarden.wire.dialects import NO_PROVIDER, dialect
from contextwarden.wire.tokens import marks

_TOKENS = itemgetter(0)  # (of a message's count entry: its tokens)
TURNS = 2  # the current turn's start and the previous one's (a new user message drops the previous turn's thinking)


@hookimpl
def cw_request(ctx) -> None:
    _mark(ctx)


@hookimpl
def cw_reapply(ctx) -> None:
    """The same breakpoints: they depend on the request alone."""
    _mark(ctx)


def _mark(ctx) -> None:
    d = dialect(ctx.api)
    pc = ctx.notes.get("provider", NO_PROVIDER)
    if not marks(d, ctx.model, pc):
        return
    edits = d.turn_breakpoints(ctx.request, ctx.history, TURNS, pc.boundary)
    kept = ctx.history.tokens_kept  # (the request's count: each message's tokens, and its tools' and system's)
    if edits and kept is not None and len(kept[1]) == len(ctx.request.messages):
        floor = price_for(ctx.model, ctx.settings.prices).min_cache
        edits = {i: e for i, e in edits.items() if kept[2][3] + sum(map(_TOKENS, kept[1][: i + 1])) >= floor}
    if not edits:
        return
    ctx.history.edit(ctx.request, edits, d.edited)  # (the same edit: the very same copy next request)
    ctx.emit("breakpoints", messages=sorted(edits))
