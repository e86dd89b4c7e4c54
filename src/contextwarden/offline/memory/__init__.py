"""The memory evaluations (LoCoMo, LongMemEval, live) and the replay they drive through the lifecycle."""
