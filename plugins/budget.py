"""Built-in stage `budget` (being written)."""
