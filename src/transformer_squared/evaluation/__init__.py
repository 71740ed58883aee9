"""Run a task and score it: metrics, seen-question bookkeeping, the constant-answer reference."""
