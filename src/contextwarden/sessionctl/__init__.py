"""Session control: a session's context versions, rollback, pins and compact-now.

- :mod:`.ledger`: the per-session record (versions, decisions turned off, hold, compact-now, pins) and
  what stages call: ``control(ctx)``, ``record_decision(ctx, stage, ...)``.
- :mod:`.pins`: which content a pin names (``is_pinned``, ``pinned_tool_ids``, ``first_pinned_index``).
- :mod:`.preview`: the decided state of a session's latest request under other controls (dry: no state
  changes), for rollback's cost and fit, and for ``count_tokens``.
- :mod:`.commands`: list, show, rollback, pin, unpin, compact (the local API and the event server serve them).

docs/session-control.md describes it.
"""
