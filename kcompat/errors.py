"""One error base class carrying an exit code; the CLI's single handler prints it.

Every message names the input that failed and says what to do next, on one line.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1  # `check` failed its --fail-on
    USAGE = 2
    NOT_FOUND = 3
    AUTH = 4
    NETWORK = 5
    INTEGRITY = 6
    BAD_IMAGE = 7
    UNSUPPORTED = 8
    LOCAL_IO = 9
    INCOMPATIBLE = 10  # `run` refused: the prediction says the image cannot run here
    VERIFY_DISAGREED = 11  # `check --verify`: what happened is not what was predicted
    # `run`, once the container exists, uses docker's statuses: 125 it could not be set
    # up, 126 the command cannot be invoked, 127 the command was not found; otherwise
    # the container's own status (128+N when a signal N ended it).
    CONTAINER_SETUP = 125
    CANNOT_INVOKE = 126
    COMMAND_NOT_FOUND = 127
    INTERRUPTED = 130
    INTERNAL = 70  # a bug in kcompat (sysexits EX_SOFTWARE): the message asks for a report


class KcompatError(Exception):
    """Base of every error kcompat reports to a user."""

    exit_code: ExitCode = ExitCode.LOCAL_IO

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self) -> tuple[Any, ...]:
        # whole across a process boundary (layers are scanned in worker processes)
        return (_restore, (type(self), self.message, dict(self.__dict__)))

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class UsageError(KcompatError):
    """Bad command-line input: a malformed reference, an unknown platform."""

    exit_code = ExitCode.USAGE


class NotFoundError(KcompatError):
    """The image, tag, blob or platform does not exist where we looked."""

    exit_code = ExitCode.NOT_FOUND


class AuthError(KcompatError):
    exit_code = ExitCode.AUTH


class NetworkError(KcompatError):
    """The registry could not be reached, or kept failing after retries."""

    exit_code = ExitCode.NETWORK


class IntegrityError(KcompatError):
    """Bytes did not match their digest."""

    exit_code = ExitCode.INTEGRITY


class BadImageError(KcompatError):
    """The image's content is malformed: corrupt layer, bad manifest JSON."""

    exit_code = ExitCode.BAD_IMAGE


class UnsupportedError(KcompatError):
    """Something valid that kcompat does not handle (schema 1, credential helpers)."""

    exit_code = ExitCode.UNSUPPORTED


class LocalIOError(KcompatError):
    """The local disk or cache failed us."""

    exit_code = ExitCode.LOCAL_IO


class IncompatibleError(KcompatError):
    """`run` stopped before starting: the prediction for this host is `incompatible`."""

    exit_code = ExitCode.INCOMPATIBLE


class ContainerError(KcompatError):
    """The container could not be set up, or its command could not be started."""

    exit_code = ExitCode.CONTAINER_SETUP

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 125) -> None:
        super().__init__(message, hint=hint)
        known = exit_code in ExitCode._value2member_map_
        self.exit_code = ExitCode(exit_code) if known else ExitCode.CONTAINER_SETUP


def _restore(cls: type[KcompatError], message: str, state: dict[str, Any]) -> KcompatError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err
