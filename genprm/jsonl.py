"""Input files of JSON lines, read line by line: a missing or unreadable file and every bad line
(not UTF-8, not JSON, a lone surrogate that UTF-8 cannot write back) are an error that names the
file (and line), raised when the line is read, not when a stage writes it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# A JSON escape of a surrogate (\ud800-\udfff): the only way into text decoded from valid UTF-8
# for a lone surrogate, which UTF-8 cannot encode (a pair's escapes match too, and pass).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

# json.dumps(..., ensure_ascii=False) builds an encoder per call; this one is built once
dumps = json.JSONEncoder(ensure_ascii=False).encode


class InputError(ValueError):
    """An input line that is not a usable record (the message names file and line)."""


def check_readable(path: Path) -> None:
    """Refuse a missing or unreadable input file (:class:`InputError` naming it), so that a
    run stops before it starts anything or creates any output."""
    try:
        with Path(path).open("rb"):
            pass
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None


def input_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of every non-blank line of an input file, as bytes (each is
    decoded by :func:`parse_line`, so that bad bytes are one line's error)."""
    check_readable(path)
    with Path(path).open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield number, line


def parse_line(line: bytes) -> tuple[Any, str | None]:
    """``(value, None)`` for a JSON line whose text UTF-8 can hold, else ``(None, problem)``:
    checked here, so that a bad line is named when read, not when a stage writes it."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, not_utf8(error)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"not JSON ({error.msg})"
    problem = unencodable(text, value)
    return (None, problem) if problem else (value, None)


def not_utf8(error: UnicodeDecodeError) -> str:
    return f"not UTF-8 (byte {error.start + 1} of the line: {error.reason})"


def unencodable(text: str, value: Any) -> str | None:
    """Why ``value`` (parsed from the JSON ``text``) cannot be written back as UTF-8, or None."""
    if not _SURROGATE_ESCAPE.search(text):
        return None
    try:
        dumps(value).encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate escape (\\ud800-\\udfff), which UTF-8 cannot hold"
    return None
