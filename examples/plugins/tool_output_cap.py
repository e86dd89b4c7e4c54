"""Example contextwarden plugin: caps very long tool results and reports on every turn.

Drop this file in a folder and start the proxy with ``--set cw_plugins=<folder>`` (or
``contextwarden run --plugins <folder>``). Settings come from the profile::

    plugins:
      tool_output_cap:
        max_chars: 20000

It implements every hook, so it doubles as the reference for writing your own stage.
"""

from __future__ import annotations

from contextwarden import hookimpl
from contextwarden.models import anthropic as am

name = "tool_output_cap"  # the stage name used in pipeline.order / pipeline.disabled

MAX_CHARS = 20_000
streamed_events = 0


@hookimpl
def cw_configure(runtime):
    """Read this plugin's settings once, not per request."""
    global MAX_CHARS
    MAX_CHARS = int(runtime.settings.plugins.get(name, {}).get("max_chars", 20_000))


@hookimpl
def cw_request(ctx):
    """Trim string tool results longer than MAX_CHARS (Anthropic Messages only).

    The pipeline notices the change, validates the new body and sends the original if it is invalid.
    """
    if ctx.api.value != "anthropic":
        return
    trimmed = 0
    msgs = ctx.request.messages
    for i, msg in enumerate(msgs):
        if not isinstance(msg.content, list):
            continue
        blocks = list(msg.content)
        for bi, block in enumerate(blocks):
            if isinstance(block, am.ToolResultBlock) and isinstance(block.content, str) and len(block.content) > MAX_CHARS:
                cut = len(block.content) - MAX_CHARS
                blocks[bi] = block.model_copy(update={"content": block.content[:MAX_CHARS] + f"\n[... {cut} characters cut by tool_output_cap]"})
                trimmed += 1
        if blocks != list(msg.content):
            msgs[i] = msg.model_copy(update={"content": blocks})  # typed messages are frozen: replace, never mutate
    if trimmed:
        ctx.emit("tool_output_cap", trimmed=trimmed, max_chars=MAX_CHARS)


@hookimpl
def cw_response_event(ctx, event):
    """Called for every streamed event; keep it cheap (it runs between chunks on the event loop)."""
    global streamed_events
    streamed_events += 1


@hookimpl
def cw_turn_complete(ctx, turn):
    """Runs on a worker thread once the assistant's turn is assembled and usage is known."""
    if turn.usage is not None:
        ctx.emit("tool_output_cap_turn", input=turn.usage.total_input, output=turn.usage.output_tokens,
                 streamed_events=streamed_events)


@hookimpl
def cw_shutdown(runtime):
    runtime.bus.emit("tool_output_cap_shutdown", {"streamed_events": streamed_events})
