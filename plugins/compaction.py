"""Built-in stage `compaction` (being written)."""
