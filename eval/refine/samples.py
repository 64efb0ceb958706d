"""Given first solutions (``--samples``): one solution per problem from a samples file, Best-of-N's
``samples.jsonl`` included."""

from __future__ import annotations

from pathlib import Path

from genprm.jsonl import InputError, input_lines, parse_line


def read_samples(path: Path, limit: int | None = None) -> tuple[list[dict], int]:
    """The first solution of each problem in a samples file (``{"id", "problem", "answer",
    "text"}`` per line) and how many later solutions of a problem already read were left out
    (refine takes one solution per problem). A line with ``problem_id`` (Best-of-N's
    ``samples.jsonl``: N samples per problem, ids ``<problem id>-<k>``) is a solution of that
    problem, and the problem id is the record's id."""
    records: dict[str, dict] = {}
    repeated = 0
    for number, line in input_lines(path):
        where = f"{path}:{number}"
        row, problem = parse_line(line)
        if problem:
            raise InputError(f"{where}: {problem}")
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected an object with id, problem, answer, text")
        for key in ("id", "problem", "answer", "text"):
            if not isinstance(row.get(key), str) or (key != "text" and not row[key]):
                raise InputError(f"{where}: `{key}` must be a string, got {row.get(key)!r}")
        problem_id = row.get("problem_id", row["id"])
        if not isinstance(problem_id, str) or not problem_id:
            raise InputError(f"{where}: `problem_id` must be a string, got {problem_id!r}")
        if problem_id in records:
            repeated += 1
            continue
        if limit is not None and len(records) >= limit:
            continue
        records[problem_id] = {k: row[k] for k in ("problem", "answer", "text")}
        records[problem_id]["id"] = problem_id
    return list(records.values()), repeated
