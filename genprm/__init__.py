"""GenPRM core: the wire format, training records, the embedded default model, the sandbox for
model-written code and answer grading. Never imports axolotl or vLLM."""
