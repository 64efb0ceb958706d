"""The result of one snippet and the exact feedback text the model is shown (spec §3)."""

from __future__ import annotations

from dataclasses import dataclass

from genprm.format import CODE_ERROR, CODE_TIMEOUT

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "killed")


@dataclass(frozen=True)
class ExecResult:
    """``status`` is one of :data:`STATUSES`; ``feedback`` is what goes into ``[Code Output]``."""

    status: str
    stdout: str
    stderr: str
    duration_s: float
    feedback: str
    error_type: str | None = None
    error_message: str | None = None

    @classmethod
    def from_worker(cls, reply: dict, output_limit: int) -> ExecResult:
        error = reply.get("error") or {}
        return cls(
            status=reply["status"],
            stdout=reply["stdout"],
            stderr=reply["stderr"],
            duration_s=reply["duration_s"],
            feedback=feedback(reply["status"], reply["stdout"], error, output_limit),
            error_type=error.get("type"),
            error_message=error.get("message"),
        )


def feedback(status: str, stdout: str, error: dict, output_limit: int) -> str:
    """What upstream's in-process executor would have shown: stripped stdout on success, else
    ``Code execute Error: {type}: {message}`` or the time-out text.

    >>> feedback("ok", " 42\\n", {}, 1 << 20)
    '42'
    >>> feedback("error", "", {"type": "ZeroDivisionError", "message": "division by zero"}, 1 << 20)
    'Code execute Error: ZeroDivisionError: division by zero'
    """
    if status == "ok":
        return stdout.strip()
    if status == "timeout":
        return CODE_TIMEOUT
    if status == "output_limit":
        error = {
            "type": "OutputLimitExceeded",
            "message": f"more than {output_limit} bytes of output",
        }
    return CODE_ERROR.format(exc_type=error.get("type", "Killed"), message=error.get("message", ""))
