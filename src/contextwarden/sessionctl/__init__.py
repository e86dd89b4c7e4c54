"""Session control: a session's context versions, rollback, pins and compact-now.

- :mod:`.ledger`: the per-session record (versions, decisions turned off, hold, compact-now, pins) and
  what stages call: ``control(ctx)``, ``record_decision(ctx, stage, ...)``.
- :mod:`.pins`: which content a pin names (``pinned_tool_ids``, ``first_pinned_index``).
- :mod:`.commands`: list, show, rollback (previewed: the decided state under other controls, nothing
  stored), pin, unpin, compact (the local API and the event server serve them).

docs/session-control.md describes it.
"""
