"""`check --fail-on`: which verdicts fail a check, and the exit status one report gives."""

from __future__ import annotations

from enum import Enum
from typing import Any

from kcompat.errors import ExitCode


class FailOn(str, Enum):
    FATAL = "fatal"  # an incompatible verdict
    ERROR = "error"  # incompatible or uncertain
    WARNING = "warning"  # also any warning finding
    NEVER = "never"

    def fails(self, rep: dict[str, Any]) -> bool:
        """Whether the report (ci/report.schema.json) fails this policy."""
        verdict = rep["verdict"]
        if self is FailOn.FATAL:
            return bool(verdict == "incompatible")
        if self is FailOn.ERROR:
            return verdict in ("incompatible", "uncertain")
        if self is FailOn.WARNING:
            return verdict in ("incompatible", "uncertain") or any(
                f["severity"] == "warning" for f in rep["findings"]
            )
        return False

    def exit_code(self, rep: dict[str, Any]) -> int:
        """The exit status `check` gives one report: an error's own; VERIFY_DISAGREED when
        the run of `--verify` disagrees with the prediction; 1 when it fails this policy."""
        if rep["verdict"] == "error":
            return int(rep["error"]["exit_code"])
        if rep.get("verify", {}).get("agreement") == "disagree":
            return int(ExitCode.VERIFY_DISAGREED)
        return 1 if self.fails(rep) else 0
