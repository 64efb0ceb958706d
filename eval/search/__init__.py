"""Verifier-guided search (``genprm-eval search``): step-level beam search and diverse verifier
tree search over the policy's steps, with the GenPRM verifier's step reward as the value."""
