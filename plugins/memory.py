"""Built-in stage `memory` (being written)."""
