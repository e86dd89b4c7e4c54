"""The hooks a contextwarden plugin can implement.

A plugin is a module (or object) registered under a name: through the ``contextwarden`` entry-point
group, or as a ``.py`` file in the ``cw_plugins`` folder. The built-in stages are registered the same
way. A plugin that implements :func:`cw_request` is a *stage*: it runs once per request, in the order
the profile's ``pipeline.order`` gives, under its own time budget.

Write an implementation with the marker::

    from contextwarden import hookimpl

    @hookimpl
    def cw_request(ctx):
        ...

Set ``CONTEXTWARDEN_TRACE=1`` to print every hook call to stderr.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("contextwarden")
hookimpl = pluggy.HookimplMarker("contextwarden")


@hookspec
def cw_configure(runtime):
    """Called when the proxy starts and whenever settings change at run time.

    ``runtime`` (:class:`contextwarden.core.runtime.Runtime`) holds ``settings``, ``home``, ``bus``,
    ``state`` and ``tokens``. Third-party stages read their own settings from
    ``runtime.settings.plugins.get(<name>, {})``. Do slow set-up here, not per request.
    """


@hookspec
def cw_request(ctx):
    """A request stage: read and rewrite ``ctx.request`` (the typed, lossless request model).

    Runs in a worker thread under the stage's time budget (``ctx.deadline``: the ``perf_counter`` time
    by which it must return). Raising, or running past the budget, makes the proxy send the session's
    decided state instead (see :func:`cw_reapply`) and record an ``error`` event naming the stage.
    The proxy sees what changed, validates the result and sends the original if the result is
    invalid. Emit what you did with ``ctx.emit(type, **data)``.

    **The contract, in one line: typed messages and blocks are frozen; replace, never mutate** —
    ``ctx.request.messages[i] = msg.model_copy(update={...})`` or ``ctx.request.messages = [...]``
    (``req.input = [...]`` for the Responses API); never ``block.text = ...`` or ``msg.content.append``
    (both raise), never change ``ctx.original`` or the dicts and lists it shares with the typed request
    (a tool input, a tool_result's list content, unknown extra fields, Responses items): build new ones.
    A message that is still the object the request was prepared with (``ctx.history.entries[i].obj``)
    is the client's message, unchanged; typed messages are shared with the conversation's other requests.
    """


@hookspec
def cw_request_start(ctx):
    """The request is read and its stages are about to run: start slow work whose input no stage
    changes, so that it runs while the stages do (the memory stage starts embedding the person's
    message here, and its ``cw_request`` finishes the search).

    Runs on the stage thread before the first stage, outside every stage's budget: keep it to what
    starts the work (a message sent, a future submitted), never the work itself. Raising is reported
    (an ``error`` event) and changes nothing else. Read ``ctx.original`` and ``ctx.request``; change
    neither: the stages decide what goes upstream. Put what the stage will need in ``ctx.notes``.
    """


@hookspec
def cw_reapply(ctx):
    """Put in again, on ``ctx.request``, ONLY what this stage already decided for the session (stored
    records, a stored summary), byte for byte, and decide nothing new: no new clearing, no new summary,
    no retrieval, nothing slow.

    The proxy's fall-back: when any stage raises, runs past its budget, or the rewrite is invalid or
    above the window, the request goes out as the session's *decided state*: a fresh typed request
    (one no abandoned stage call can touch) with every stage's ``cw_reapply`` run on it, in the
    pipeline's order, then validated like any rewrite. A stage the breaker skips (its previous call is
    still running) gets its ``cw_reapply`` called in its place. If ``cw_reapply`` raises, the client's
    original bytes go, with an ``error`` event (``where: "reapply"``) naming the stage.

    Implement it with the very code your ``cw_request`` uses to re-apply its stored decisions (a flag
    that skips the deciding part), not with a second copy of it. A stage that keeps no per-session
    decisions (memory's injection, tags) does not implement it: its work is simply absent from the
    decided state.
    """


@hookspec
def cw_response_event(ctx, event):
    """One parsed event of the response, as it streams (an SSE event's JSON, or the whole JSON body).

    Runs on the proxy's event loop between chunks: keep it to microseconds. The bytes the client
    receives are never affected by what this hook does. The request as the client sent it is
    ``ctx.original``.
    """


@hookspec
def cw_turn_complete(ctx, turn):
    """The assistant's turn is assembled (``turn``: :class:`contextwarden.wire.streams.AssembledTurn`) and
    the provider's usage is known. Runs on a worker thread, off the event loop: storing memory,
    calibrating token counts and updating budgets belong here. Read the request from ``ctx.original``.
    """


@hookspec
def cw_shutdown(runtime):
    """The proxy is stopping: flush and close what the plugin holds."""
