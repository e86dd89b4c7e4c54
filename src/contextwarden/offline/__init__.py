"""Offline: replay of recorded traces, the oracle, fidelity counts, baselines, policy search and the memory evaluations."""
