"""Offline: replay of recorded traces, the hindsight oracle, fidelity counts, baselines and the memory evaluations."""
