"""Turn one training record into the GenPRM conversation, or a clear error naming the record.

Accepted shapes (one per file; HF datasets fills absent keys with None, which means absent):
- released GenPRM-MATH-Data rows: ``conversations: [{role, content}, ...]``;
- chat rows: ``messages: [{role, content}, ...]``;
- structured records: ``problem``, ``steps`` and either ``rationales`` (one assistant turn per
  step, optionally checked against or closed with per-step ``labels``) or step labels only
  (``labels`` per step, or ``label``: the first wrong step's index or -1) for a direct-mode
  conversation.
"""

from __future__ import annotations

from typing import Any

from genprm.format import (
    FormatError,
    build_conversation,
    build_direct_conversation,
    first_error_from_labels,
    with_judgement,
)

ROLES = ("system", "user", "assistant")


class RecordError(ValueError):
    """A training record that cannot become a GenPRM conversation."""


def describe(record: dict[str, Any]) -> str:
    """Name a record for an error message: its id, else the start of its first user text."""
    if record.get("id") is not None:
        return f"record id={record['id']!r}"
    for key in ("conversations", "messages"):
        for message in record.get(key) or []:
            if isinstance(message, dict) and message.get("role") == "user":
                return f"record starting {str(message.get('content'))[:60]!r}"
    if record.get("problem") is not None:
        return f"record with problem {str(record['problem'])[:60]!r}"
    return f"record with keys {sorted(k for k, v in record.items() if v is not None)}"


def record_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation of one record as ``[{"role", "content"}, ...]``.

    >>> record_messages({"problem": "1+1?", "steps": ["2"], "label": -1})[2]["content"]
    '<output>\\n**Judgement**: $\\\\boxed{Yes}$\\n</output>\\n'
    >>> record_messages({"messages": [{"role": "user", "content": "hi"}]})
    Traceback (most recent call last):
    ...
    genprm.records.RecordError: record starting 'hi': no assistant turn to train on
    """
    try:
        for key in ("conversations", "messages"):
            if record.get(key) is not None:
                return _checked_messages(record[key], key)
        if record.get("problem") is not None or record.get("steps") is not None:
            return _structured_messages(record)
    except (FormatError, RecordError) as error:
        raise RecordError(f"{describe(record)}: {error}") from None
    raise RecordError(
        f"{describe(record)}: expected `conversations`, `messages`, or `problem` + `steps`"
    )


def _checked_messages(messages: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"`{key}` must be a non-empty list of {{role, content}} messages")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RecordError(f"{key}[{index}] is {type(message).__name__}, not a message")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RecordError(f"{key}[{index}] has unknown role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise RecordError(f"{key}[{index}] content is {type(content).__name__}, not a string")
        checked.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"] for m in checked):
        raise RecordError("no assistant turn to train on")
    return checked


def _structured_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    problem, steps = record.get("problem"), record.get("steps")
    rationales, labels = record.get("rationales"), record.get("labels")
    if rationales is not None:
        if not isinstance(rationales, list) or len(rationales) != len(steps or []):
            raise RecordError(
                f"`rationales` must be a list with one rationale per step "
                f"({len(steps or [])} steps)"
            )
        if labels is not None:
            _check_labels(labels, steps)
            rationales = [
                with_judgement(rationale, bool(label)) if isinstance(rationale, str) else rationale
                for rationale, label in zip(rationales, labels)
            ]
        return build_conversation(problem, steps, rationales)
    if labels is not None:
        _check_labels(labels, steps)
        return build_direct_conversation(problem, steps, first_error_from_labels(labels))
    if record.get("label") is not None:
        return build_direct_conversation(problem, steps, record["label"])
    raise RecordError("a structured record needs `rationales`, `labels` or `label`")


def _check_labels(labels: Any, steps: Any) -> None:
    if not isinstance(labels, list) or len(labels) != len(steps or []):
        raise RecordError("`labels` must be a list with one 0/1 label per step")
