"""Stored state and its caches: the state store (SQLite or Redis), its write-behind, replicas, recent bodies."""
