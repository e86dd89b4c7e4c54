"""Stored state and its caches: the state store (SQLite or Redis), its in-process cache, replicas, recent bodies."""
