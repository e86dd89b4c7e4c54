"""Built-in stage `tagging` (being written)."""
