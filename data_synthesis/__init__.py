"""Data synthesis stages (solve, rollout, label, rationale, filter, export) and converters into GenPRM training conversations."""
