"""ProcessBench: load the four splits, score earliest-error predictions, write the report."""
