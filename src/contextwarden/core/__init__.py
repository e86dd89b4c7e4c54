"""The runtime one process holds: settings, plugin manager, pools, event bus and live protocol, the stage clock and budgets, the collector."""
