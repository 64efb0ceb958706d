"""GenPRM core: the wire format, the embedded default model, and (later) the sandbox, grading and generation engines. Never imports axolotl or vLLM."""
