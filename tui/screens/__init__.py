"""Screens: main (tabs), inspector (body diff), settings (run-time changes)."""
