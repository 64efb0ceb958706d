"""Shared fixtures: the embedded model's tokenizer, the Qwen2.5 tokenizer, ProcessBench rows."""

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["AXOLOTL_DO_NOT_TRACK"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("GENPRM_CACHE_DIR", str(REPO / ".cache" / "genprm"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from genprm.models import prepare_default_model

    return prepare_default_model()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from genprm.models import qwen25_tokenizer

    return qwen25_tokenizer()


@pytest.fixture(scope="session", params=["smollm2", "qwen2.5"])
def tokenizer(request):
    return request.getfixturevalue("smollm2_tokenizer" if request.param == "smollm2" else "qwen_tokenizer")


@pytest.fixture(scope="session")
def processbench_gsm8k() -> list[dict]:
    return read_jsonl(SHARED_DATA / "processbench" / "gsm8k.jsonl")
