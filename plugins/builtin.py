"""Placeholder: the built-in stages are registered per entry point."""
