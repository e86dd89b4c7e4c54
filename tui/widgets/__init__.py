"""Panels and small widgets of the TUI, one per module."""
