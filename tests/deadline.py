"""A hang guard for decoder tests: SIGALRM after `seconds` of wall time raises
TimeoutError naming what hung, so a regression fails its test instead of stalling the
suite. Generous on purpose: it catches loops, not slowness (no timed assertions)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    def fail(signum: int, frame: object) -> None:
        raise TimeoutError(f"over {seconds:g} s: {what}")

    old = signal.signal(signal.SIGALRM, fail)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
