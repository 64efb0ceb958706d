"""The test suite, one folder per part: core, sandbox, synth, train and eval run in the training
environment (.venv), generation_env in the generation environment (.venv-vllm); what the parts
share is in :mod:`tests.support`."""
