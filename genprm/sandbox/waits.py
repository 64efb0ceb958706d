"""How long the sandbox lets anything wait: the longest time-out a snippet may ask for, and the
slice every ``poll`` waits at most (``poll`` takes an int of milliseconds: 1e7 s overflows it;
a session's replayed blocks multiply a wait), so that no time-out crashes a worker or the host.

>>> poll_ms(0.25), poll_ms(-1.0), poll_ms(1e7) == POLL_SLICE_S * 1000
(250.0, 0.0, True)
"""

MAX_TIMEOUT_S = 86_400.0  # a day: the longest a snippet (or a session's block) may run
POLL_SLICE_S = 3_600.0


def poll_ms(seconds: float) -> float:
    """The milliseconds to ``poll`` for a wait of ``seconds``, at most one slice: the caller
    polls again while its deadline has not passed."""
    return min(max(seconds, 0.0), POLL_SLICE_S) * 1000
