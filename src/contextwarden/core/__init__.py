"""The runtime one process holds: settings, plugin manager, pools, event bus and live protocol, stage budgets, the collector, the engine hop's frames."""
