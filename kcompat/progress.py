"""How core code reports progress without printing: the CLI supplies an implementation.

Core code is handed a Progress, or uses `NoProgress()` when it was given none. A
NoProgress reports to the Progress the CLI installed with `reporting()`, if any, and
does nothing otherwise: so the downloads `check` makes deep inside its pipeline (a
layer fetched just before it is scanned) show, without every layer of the call chain
passing a Progress down. Layers are scanned (and fetched) in forked worker processes
(kcompat.layerscan); a `Relay` carries their events to the parent's Progress through a
pipe, one short line per event, written whole (a pipe write up to PIPE_BUF is atomic).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
from collections.abc import Iterator
from typing import Protocol


class Progress(Protocol):
    def start(self, key: str, description: str, total: int | None) -> None: ...
    def advance(self, key: str, amount: int) -> None: ...
    def finish(self, key: str) -> None: ...


_installed: Progress | None = None


class NoProgress:
    """The default for core code given no Progress: the installed one's, else none."""

    def start(self, key: str, description: str, total: int | None) -> None:
        if _installed is not None:
            _installed.start(key, description, total)

    def advance(self, key: str, amount: int) -> None:
        if _installed is not None:
            _installed.advance(key, amount)

    def finish(self, key: str) -> None:
        if _installed is not None:
            _installed.finish(key)


class Relay:
    """A Progress usable from this process and from processes forked from it: events in
    this process go straight to `target`; a forked child writes them to a pipe that a
    thread of this process reads and hands to `target`. Events a child cannot write
    whole, or after `close()`, are dropped: progress is a display, never a result."""

    def __init__(self, target: Progress) -> None:
        self._target = target
        self._pid = os.getpid()
        self._r, self._w = os.pipe()
        self._thread = threading.Thread(target=self._pump, name="progress-relay", daemon=True)
        self._thread.start()

    def _send(self, *event: object) -> None:
        data = json.dumps(event).encode() + b"\n"
        if len(data) > select.PIPE_BUF:
            return
        with contextlib.suppress(OSError):
            os.write(self._w, data)

    def start(self, key: str, description: str, total: int | None) -> None:
        if os.getpid() == self._pid:
            self._target.start(key, description, total)
        else:
            self._send("s", key, description, total)

    def advance(self, key: str, amount: int) -> None:
        if os.getpid() == self._pid:
            self._target.advance(key, amount)
        else:
            self._send("a", key, amount)

    def finish(self, key: str) -> None:
        if os.getpid() == self._pid:
            self._target.finish(key)
        else:
            self._send("f", key)

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._r, 65536)
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line == b'"end"':
                    return
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    kind, *args = json.loads(line)
                    if kind == "s":
                        self._target.start(str(args[0]), str(args[1]), args[2])
                    elif kind == "a":
                        self._target.advance(str(args[0]), int(args[1]))
                    elif kind == "f":
                        self._target.finish(str(args[0]))

    def close(self) -> None:
        """Stop reading: what children wrote before now is handed on first."""
        if os.getpid() != self._pid:
            return
        with contextlib.suppress(OSError):
            os.write(self._w, b'"end"\n')
        self._thread.join(timeout=5)
        for fd in (self._w, self._r):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def reporting(progress: Progress) -> Iterator[Relay]:
    """Install `progress` (through a Relay) as what NoProgress reports to, for the block."""
    global _installed
    relay = Relay(progress)
    previous, _installed = _installed, relay
    try:
        yield relay
    finally:
        _installed = previous
        relay.close()
