"""The Textual TUI (``contextwarden tui``): live traffic, tags, compactions and savings; steer sessions.

Layout follows posting/harlequin: ``app.py`` (the App), ``screens/`` (main, inspector, settings, each
with its ``.tcss``), ``widgets/`` (one panel per module), ``messages.py`` (typed messages),
``client.py`` (live WebSocket client with reconnects, offline log reader, in-memory source),
``store.py`` (events folded into bounded views, no Textual), ``diff.py`` (body diff by message and block).

Never imported by the proxy path (tests/addons/test_import_boundary.py).
"""
