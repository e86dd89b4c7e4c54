"""Built-in stage `clearing` (being written)."""
