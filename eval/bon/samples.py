"""Best-of-N policy samples: generated with any engine (one request per problem with ``n`` of
them), or read from an existing file; split into paragraphs, answer extracted and graded.

One line per sample in ``samples.jsonl``::

    {"id": "<problem id>-<k>", "problem_id", "index": k, "problem", "answer" (the reference),
     "text", "steps" (paragraphs), "final_answer" (or null), "correct", "tokens",
     "step_rewards" (once scored)}

The policy answers in free text (the chat template's generation prompt, no ``"Step 1: "``
prefix), which Best-of-N splits on blank lines (spec §5). Generation appends each problem's
samples as the problem finishes, in one write; a rerun keeps the complete problems and
generates the rest (a torn last line and a problem with fewer than ``n`` lines are dropped).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from genprm.backends.types import Engine, SamplingParams
from genprm.grading import extract_boxed
from genprm.jsonl import InputError, input_lines, parse_line
from genprm.paths import write_atomically
from genprm.policy import AnswerGrader, policy_context, policy_request
from genprm.runs import read_results
from genprm.steps import split_paragraphs

SAMPLES = "samples.jsonl"
TEMPERATURE = 0.7
MAX_TOKENS = 1024
REQUIRED = ("id", "problem_id", "problem", "answer", "text")


def make_sample(problem: dict, index: int, text: str, tokens: int | None = None) -> dict:
    """The sample record of ``text`` (not graded yet: ``correct`` is None).

    >>> sample = make_sample({"id": "p", "problem": "1+1?", "answer": "2"}, 3,
    ...                      "One and one.\\n\\nSo \\\\boxed{2}.", 9)
    >>> sample["id"], sample["steps"], sample["final_answer"]
    ('p-3', ['One and one.', 'So \\\\boxed{2}.'], '2')
    """
    return {
        "id": f"{problem['id']}-{index}",
        "problem_id": problem["id"],
        "index": index,
        "problem": problem["problem"],
        "answer": problem["answer"],
        "text": text,
        "steps": split_paragraphs(text),
        "final_answer": extract_boxed(text),
        "correct": None,
        "tokens": tokens,
    }


def sample_line(sample: dict) -> bytes:
    return (json.dumps(sample, ensure_ascii=False) + "\n").encode()


def read_samples(path: Path, limit: int | None = None, n: int | None = None) -> list[dict]:
    """The samples in ``path`` (at least ``id``, ``problem_id``, ``problem``, ``answer``,
    ``text``; ``index``, ``steps`` and ``final_answer`` are computed when missing, ``correct``
    is None when missing), of the first ``limit`` problems, and of each problem the first
    ``n``. ValueError naming file and line for a bad line."""
    samples: list[dict] = []
    seen: set[str] = set()
    per_problem: dict[str, int] = {}
    for number, line in input_lines(path):
        where = f"{path}:{number}"
        record, problem = parse_line(line)
        if problem:
            raise InputError(f"{where}: {problem}")
        if not isinstance(record, dict):
            raise InputError(f"{where}: a {type(record).__name__}, not a JSON object")
        for key in REQUIRED:
            if not isinstance(record.get(key), str):
                raise InputError(f"{where}: {key!r} must be a string")
        if record["id"] in seen:
            raise InputError(f"{where}: duplicate id {record['id']!r}")
        seen.add(record["id"])
        problem_id = record["problem_id"]
        if problem_id not in per_problem:
            if limit is not None and len(per_problem) >= limit:
                continue
            per_problem[problem_id] = 0
        if n is not None and per_problem[problem_id] >= n:
            continue
        record.setdefault("index", per_problem[problem_id])
        per_problem[problem_id] += 1
        if not isinstance(record.get("steps"), list):
            record["steps"] = split_paragraphs(record["text"])
        if "final_answer" not in record:
            record["final_answer"] = extract_boxed(record["text"])
        correct = record.get("correct")
        record["correct"] = correct if isinstance(correct, bool) else None
        record.setdefault("tokens", None)
        samples.append(record)
    if not samples:
        raise ValueError(f"{path}: no samples")
    return samples


def generated_problems(path: Path, n: int) -> dict[str, list[dict]]:
    """The problems whose ``n`` samples are all in ``path`` (from an earlier run), by id.
    A torn last line and the lines of incomplete problems are removed from the file."""
    by_problem: dict[str, list[dict]] = {}
    for record in read_results(path):
        by_problem.setdefault(record["problem_id"], []).append(record)
    complete = {pid: records for pid, records in by_problem.items() if len(records) == n}
    if len(complete) != len(by_problem):
        kept = b"".join(sample_line(r) for records in complete.values() for r in records)
        write_atomically(path, kept)
    return complete


def policy_params(n: int, temperature: float, max_tokens: int, seed: int | None) -> SamplingParams:
    """One request's sampling settings for ``n`` samples; a negative ``seed`` is no seed."""
    if seed is not None and seed < 0:
        seed = None
    return SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)


async def generate(
    engine: Engine,
    problems: Sequence[dict],
    params: SamplingParams,
    grader: AnswerGrader,
    write: Callable[[bytes], None],
    progress: Callable[[int], None] = lambda samples: None,
    concurrency: int = 64,
) -> list[dict]:
    """``params.n`` graded samples of each problem (one request each, ``concurrency`` in
    flight); each problem's lines are written with one ``write`` as it finishes."""
    bound = asyncio.Semaphore(concurrency)

    async def one(problem: dict) -> list[dict]:
        async with bound:
            text = policy_context(engine.tokenizer, problem["problem"])
            completion = await engine.agenerate(policy_request(engine, text, params))
        samples = [
            make_sample(problem, k, sample.text, len(sample.token_ids))
            for k, sample in enumerate(completion.samples)
        ]
        await grade(samples, grader)
        write(b"".join(sample_line(sample) for sample in samples))
        progress(len(samples))
        return samples

    done = await asyncio.gather(*(one(problem) for problem in problems))
    return [sample for samples in done for sample in samples]


async def grade(samples: Sequence[dict], grader: AnswerGrader) -> None:
    """Set ``correct`` where it is None: math-verify against each sample's reference."""
    pending = [sample for sample in samples if sample.get("correct") is None]
    grades = await asyncio.gather(
        *(grader.correct([sample["final_answer"]], sample["answer"]) for sample in pending)
    )
    for sample, [correct] in zip(pending, grades, strict=True):
        sample["correct"] = correct


def write_samples(path: Path, samples: Sequence[dict[str, Any]]) -> None:
    """All of ``samples`` to ``path`` at once (atomically)."""
    write_atomically(path, b"".join(sample_line(sample) for sample in samples))


def by_problem(samples: Sequence[dict]) -> list[list[dict]]:
    """The samples grouped by problem (problems in order of first appearance), each group in
    sample-index order.

    >>> groups = by_problem([{"problem_id": "b", "index": 1}, {"problem_id": "a", "index": 0},
    ...                      {"problem_id": "b", "index": 0}])
    >>> [[(s["problem_id"], s["index"]) for s in group] for group in groups]
    [[('b', 0), ('b', 1)], [('a', 0)]]
    """
    groups: dict[str, list[dict]] = {}
    for sample in samples:
        groups.setdefault(sample["problem_id"], []).append(sample)
    return [sorted(group, key=lambda sample: sample["index"]) for group in groups.values()]
