"""Built-in stage `strip` (being written)."""
