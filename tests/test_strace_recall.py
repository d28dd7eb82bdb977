"""Recall of the scanner's syscall findings on what real programs do (strace -f -c).

The numbers at the time of writing (python -m tests.strace_recall .fixtures/binaries/bin):
19 runs of 18 programs, overall recall 426/428; the only misses are sort's getuid and
getgid. The floors below fail the suite if a change loses what it found."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import Binaries
from tests.strace_recall import measure

PER_PROGRAM_FLOOR = 0.9
OVERALL_FLOOR = 0.98


@pytest.mark.integration
def test_recall_on_observed_syscalls(binaries: Binaries) -> None:
    if shutil.which("strace") is None:
        pytest.skip("needs strace (installed by ci/setup)")
    rows = measure(binaries.root / "bin")
    assert len(rows) >= 10
    low = [(r.program, round(r.recall, 2), r.missed) for r in rows if r.recall < PER_PROGRAM_FLOOR]
    assert low == []
    seen = sum(len(r.seen) for r in rows)
    hit = sum(len(r.seen & r.found) for r in rows)
    assert seen > 200  # strace really ran and was parsed
    assert hit / seen >= OVERALL_FLOOR
