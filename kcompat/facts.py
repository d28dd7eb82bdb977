"""Each executable's facts, drawn once per image: what the rules, the binaries report and
`run` read instead of walking the loader's search again.

For every ELF file with an x bit and every executable script of a Scan: its arch, its
loader (PT_INTERP, or a script's `#!` interpreter) and whether the image has it, the C
library it links and that library's version, the shared objects the loader maps for it
(one walk, kcompat.scan.Scan.load), the libraries it cannot find, and the syscalls it
needs with their evidence (kcompat.needs, one memo for the image). `ImageFacts` holds
them with the image-level C libraries and loaders, and is cached with the image's
analysis (kcompat.analysis). A file judged but not in that set (an entrypoint without an
x bit, say) has its facts drawn when first asked for, the same way, and kept only in
memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kcompat.elf import ElfArch
from kcompat.filescan import ScannedFile
from kcompat.needs import BinaryNeeds, Memo, needs_of
from kcompat.scan import LibcInfo, MissingLibrary, Scan


@dataclass(frozen=True)
class ExecFacts:
    """One executable's facts, as the loader and kcompat.needs see it in its image."""

    path: str
    arch: ElfArch | None  # None for a script
    interpreter: str | None  # PT_INTERP, or a script's #! interpreter
    interpreter_found: bool | None  # None: none named (a static ELF file)
    libc: str | None  # the C library family it links: "glibc", "musl"
    libc_version: str | None  # that family's version in the image (the last that shows one)
    libraries: tuple[str, ...] = ()  # what the loader maps for it, breadth first (paths)
    missing: tuple[MissingLibrary, ...] = ()  # DT_NEEDED names not found (loader present)
    needs: BinaryNeeds | None = None  # its syscalls; None when kcompat cannot judge them


def _judged(f: ScannedFile) -> bool:
    """Whether `f` gets its facts with the image's analysis: an ELF file with an x bit,
    or an executable script (as the binaries report has always described them)."""
    return f.executable and (f.elf is not None or f.script is not None)


@dataclass
class ImageFacts:
    """The facts of one image: its Scan, its C libraries and loaders, and each
    executable's ExecFacts by path."""

    scan: Scan
    libc: tuple[LibcInfo, ...]
    interpreters: dict[str, bool]  # every PT_INTERP named, and whether the image has it
    executables: dict[str, ExecFacts]
    _later: dict[str, ExecFacts] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, scan: Scan) -> ImageFacts:
        """Every executable's facts: one loader walk each, one needs memo for the image."""
        facts = cls(scan, tuple(scan.libc()), scan.interpreters(), {})
        memo: Memo = {}
        for f in scan.executables():
            if _judged(f):
                facts.executables[f.path] = facts._draw(f, memo)
        return facts

    @cached_property
    def _libc_versions(self) -> dict[str, str]:
        """Each C library family's version in the image (the last that shows one)."""
        return {c.family: c.version for c in self.libc if c.version}

    @property
    def glibc(self) -> str | None:
        """The image's glibc version (the first libc.so.6 found): what needs are read for."""
        return next((c.version for c in self.libc if c.family == "glibc"), None)

    def of_file(self, f: ScannedFile) -> ExecFacts:
        """`f`'s facts: from the analysis, or drawn now (once) for a file outside its set."""
        if self.scan.files.get(f.path) is not f:  # not this image's file: drawn, not kept
            return self._draw(f, {})
        known = self.executables.get(f.path) or self._later.get(f.path)
        if known is None:
            known = self._later[f.path] = self._draw(f, {})
        return known

    def facts_of(self, path: str) -> ExecFacts | None:
        """The facts of the file at `path` (None: no such ELF file or script)."""
        f = self.scan.files.get(path)
        return self.of_file(f) if f is not None and (f.elf or f.script) else None

    def libraries_of(self, f: ScannedFile) -> list[ScannedFile]:
        """The shared objects the loader maps for `f`, as scanned files."""
        return [self.scan.files[p] for p in self.of_file(f).libraries]

    def _draw(self, f: ScannedFile, memo: Memo) -> ExecFacts:
        scan = self.scan
        if f.elf is None:
            script = f.script
            return ExecFacts(f.path, None, script.interpreter if script else None,
                             scan.script_interpreter_found(f), None, None)  # fmt: skip
        e = f.elf
        libraries: list[ScannedFile] = []
        missing: tuple[MissingLibrary, ...] = ()
        found: bool | None = None
        if e.interpreter:  # only a program with a loader has its libraries mapped
            libraries, not_found = scan.load(f)  # one loader walk for every use
            found = scan.tree.resolve(e.interpreter) in scan.files
            if found:
                missing = tuple(not_found)
        return ExecFacts(
            f.path,
            e.arch,
            e.interpreter,
            found,
            e.libc,
            self._libc_versions.get(e.libc) if e.libc else None,
            tuple(lib.path for lib in libraries),
            missing,
            needs_of(scan, f, self.glibc, libraries, memo),
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (the analysis cache) without the facts drawn later."""
        return {**self.__dict__, "_later": {}}
