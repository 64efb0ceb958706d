"""Best-of-N with a process reward model: N policy samples per problem, every step scored by the
GenPRM verifier (or the critic baseline), one sample picked per problem by its aggregated reward
and graded against the reference; accuracy against N beside majority vote and pass@N."""
