"""Evaluation: ProcessBench, Best-of-N and test-time scaling (Maj@N)."""
