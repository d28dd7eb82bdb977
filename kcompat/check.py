"""`kcompat check`: scan an image, judge it against a target, and report.

The image is opened once, its best index entry for the target chosen (`open_for`,
`check_image`); many images on many targets are a matrix (`check_matrix`), each image
opened once for all its targets. The JSON report follows ci/report.schema.json (checked
by the tests); SARIF output is for code-scanning dashboards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from kcompat import __version__
from kcompat.cache import ResultCache, analysis_key
from kcompat.errors import KcompatError
from kcompat.merged import max_file_size
from kcompat.platform import Platform, host_platform
from kcompat.pull import OpenImage, open_image
from kcompat.reference import parse_reference
from kcompat.sources import Options, open_source
from kcompat.store import BlobStore
from kcompat.target import Target

if TYPE_CHECKING:  # the analysis and the rules are imported where a report is made: a
    # warm check answered from the report cache never loads them
    from kcompat.execve import Command
    from kcompat.facts import ImageFacts
    from kcompat.rules import Finding, Result

REPORT_SCHEMA = 1


class BestPlatform:
    """Chooses the entry of a multi-platform index to judge for a target, as
    `Options.choose`: the target's own arch, then a compat-mode arch, then an arch the
    target can emulate, then any Linux entry; an index with no Linux entry gives its
    best entry of another OS, so the OS rule can say why it cannot run. `why` records
    the reason for the report."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.why: str | None = None

    def _emulable(self, arch: str) -> bool:
        t = self.target
        handler = t.handler_for(arch)
        return bool(
            (handler is not None and handler.usable_in_container())
            or (t.private_binfmt and arch in t.qemu)
            or t.binfmt_assumed
        )

    def __call__(self, platforms: tuple[Platform, ...]) -> Platform | None:
        t = self.target
        own = t.platform.architecture
        linux = [p for p in platforms if p.os == "linux"]
        for wanted, why in ((own, "native"), *((a, "compat") for a in t.compat_arches)):
            same = [p for p in linux if p.architecture == wanted]
            if same:
                exact = [p for p in same if t.platform.variant and p.variant == t.platform.variant]
                self.why = (
                    f"{why}: the target runs {wanted} itself"
                    if why == "native"
                    else f"compat mode: the target ({own}) runs {wanted} natively"
                )
                return (exact or same)[0]
        emulable = [p for p in linux if self._emulable(p.architecture)]
        if emulable:
            self.why = (
                f"emulated: the index has no {own} entry; {emulable[0].architecture} runs under "
                "qemu-user on the target"
            )
            return emulable[0]
        if linux:
            self.why = (
                f"no entry runs on the target: the index has no {own} entry and no "
                "qemu-user handler for the others"
            )
            return linux[0]
        others = [p for p in platforms if p.architecture == own] or list(platforms)
        if others:
            oses = ", ".join(sorted({p.os for p in platforms}))
            self.why = f"the index has no linux entry, only {oses}"
            return others[0]
        return None


@contextlib.contextmanager
def open_for(
    reference: str, target: Target, options: Options
) -> Iterator[tuple[OpenImage, str | None]]:
    """The image opened once, the entry of an index judged for `target` chosen by
    BestPlatform unless `options.platform` names one; with why it was chosen (None when
    --platform chose it), for the report."""
    best = BestPlatform(target)
    with open_image(reference, replace(options, choose=best)) as opened:
        yield opened, None if options.platform else best.why


def check_image(
    reference: str, target: Target, command: Command, options: Options
) -> dict[str, Any]:
    """`kcompat check IMAGE`: the report (ci/report.schema.json) of one image on one target."""
    with open_for(reference, target, options) as (opened, why):
        return run_check(opened, target, command, why)


class Spinners(Protocol):
    """What shows the cells of a matrix while they are judged (the CLI's spinners)."""

    def status(self, key: str, description: str) -> None: ...
    def finish(self, key: str) -> None: ...


def check_matrix(
    references: Sequence[str],
    targets: Sequence[tuple[str | None, Target]],
    command: Command,
    options: Options,
    spinners: Spinners | None = None,
) -> dict[tuple[int, int], dict[str, Any]]:
    """Every image on every target (each with the name the user gave it, or None): each
    image opened once (one source: one registry session, one archive index) and judged
    against each target (its best index entry for that target); an image or a cell that
    cannot be judged is an error report, the others go on. Keyed by (image, target)."""
    reports: dict[tuple[int, int], dict[str, Any]] = {}
    for i, ref in enumerate(references):
        reports.update(_judge_each(i, ref, targets, command, options, spinners))
    return reports


def _judge_each(
    i: int,
    ref: str,
    targets: Sequence[tuple[str | None, Target]],
    what: Command,
    options: Options,
    bars: Spinners | None,
) -> dict[tuple[int, int], dict[str, Any]]:
    out: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        source = open_source(parse_reference(ref), options)
    except KcompatError as e:
        return {(i, t): error_report(ref, target, e) for t, (_, target) in enumerate(targets)}
    try:
        for t, (given, target) in enumerate(targets):
            key = f"check {i} {t}"
            if bars is not None:
                where = given or ("this host" if target.source == "host" else target.source)
                bars.status(key, f"checking {ref} for {where}")
            try:
                best = BestPlatform(target)
                image = source.resolve(options.platform, host_platform(), best)
                out[(i, t)] = run_check(OpenImage(source, image), target, what,
                                        None if options.platform else best.why)  # fmt: skip
            except KcompatError as e:
                out[(i, t)] = error_report(ref, target, e)
            finally:
                if bars is not None:
                    bars.finish(key)
    finally:
        source.close()
    return out


def _empty_facts() -> ImageFacts:
    from kcompat.facts import ImageFacts
    from kcompat.scan import Scan, Tree

    return ImageFacts.of(Scan({}, Tree(), {}))


def _empty_summary() -> dict[str, Any]:
    from kcompat.binaries import summary_json

    return summary_json(_empty_facts())


def run_check(
    opened: OpenImage,
    target: Target,
    command: Command | list[str] | None = None,
    chosen_because: str | None = None,
) -> dict[str, Any]:
    """The verdict pipeline of `check` and `run`: the image's cached analysis, the rules,
    the report (ci/report.schema.json)."""
    config = opened.image.config
    if config.foreign_os:  # foreign layers: nothing to scan
        from kcompat.binaries import summary_json
        from kcompat.rules import check

        empty = _empty_facts()
        result = check(empty, config, target, command)
        return report(opened, target, result, summary_json(empty), chosen_because)
    opened.source.check_present(opened.image)  # broken where it lives: never from cache
    reports = _report_cache(opened)
    key = _report_key(opened, target, command, chosen_because)
    if reports is not None and isinstance(hit := reports.read(key), dict):
        return hit
    rep = _judged(opened, target, command, chosen_because)
    if reports is not None:
        reports.write(key, rep)
    return rep


def _report_cache(opened: OpenImage) -> ResultCache | None:
    """Reports of images known by their digests (a directory's content may change), under
    kcompat's code key: a warm `check` reads its report, not the image's analysis."""
    if opened.source.rootfs_dir() is not None or not opened.image.layers:
        return None
    return ResultCache(BlobStore().root, "reports", analysis_key())


def _report_key(
    opened: OpenImage, target: Target, command: object, chosen_because: str | None
) -> str:
    """Everything a report depends on besides kcompat's code: the image as resolved (its
    reference, manifest, config, index), the target, the command, why the entry was chosen."""
    img = opened.image
    what = json.dumps(
        [img.reference, img.manifest_digest, repr(img.config), [d.digest for d in img.layers],
         [str(p) for p in img.index_platforms], target.to_json(), repr(command), chosen_because,
         max_file_size()],
        sort_keys=True, default=str,
    )  # fmt: skip
    return "sha256:" + hashlib.sha256(what.encode()).hexdigest()


def _judged(
    opened: OpenImage,
    target: Target,
    command: Command | list[str] | None,
    chosen_because: str | None,
) -> dict[str, Any]:
    from kcompat.analysis import analyse
    from kcompat.rules import Finding, Severity, check

    config = opened.image.config
    analysis = analyse(opened)
    scan = analysis.scan
    result = check(analysis.facts, config, target, command)  # the rules read the facts
    if scan.issues:
        result.findings.append(
            Finding(
                "layer-entries",
                Severity.WARNING,
                f"{len(scan.issues)} layer entr{'y' if len(scan.issues) == 1 else 'ies'} "
                "refused or neutralised",
                "Entries that would write outside the root filesystem, through a symlink, or "
                "that kcompat does not create (devices when not root, files over the size "
                "limit) are left out of the image as judged and as run.",
                tuple(scan.issues),
                "rebuild the image without them if the program needs them",
            )
        )
    platforms = opened.image.index_platforms
    if len(platforms) > 1:
        chosen = config.platform
        others = ", ".join(str(p) for p in platforms if p != chosen)
        result.findings.append(
            Finding(
                "platform-choice",
                Severity.INFO,
                f"judged {chosen} of a multi-platform image"
                + (f" ({chosen_because})" if chosen_because else ""),
                f"The index also offers: {others}. Without --platform kcompat judges the best "
                "entry for the target (native, then compat mode, then emulated).",
                tuple(str(p) for p in platforms),
            )
        )
    return report(opened, target, result, analysis.summary, chosen_because)


def _finding(f: Finding) -> dict[str, Any]:
    return {
        "rule": f.rule,
        "severity": f.severity.value,
        "title": f.title,
        "explanation": f.explanation,
        "evidence": list(f.evidence),
        "fix": f.fix,
        "path": f.path,
        "exit_code": f.exit_code,
    }


def report(
    opened: OpenImage,
    target: Target,
    result: Result,
    summary: dict[str, Any],
    chosen_because: str | None = None,
) -> dict[str, Any]:
    img = opened.image
    entry = result.entrypoint
    binary = entry.binary if entry else None
    arch = binary.elf.arch.platform.architecture if binary and binary.elf else None
    return {
        "schema": REPORT_SCHEMA,
        "kcompat": __version__,
        "image": {
            "reference": img.reference,
            "digest": img.manifest_digest,
            "platform": str(img.config.platform),
            "chosen_because": chosen_because,
            "index_platforms": [str(p) for p in img.index_platforms],
        },
        "target": target.to_json(),
        "entrypoint": {
            "argv": list(entry.argv) if entry else [],
            "chain": list(entry.chain) if entry else [],
            "binary": binary.path if binary else None,
            "arch": arch,
            "user": entry.user if entry else None,
            "workdir": entry.workdir if entry else None,
        },
        "verdict": result.verdict.value,
        "findings": [_finding(f) for f in result.findings],
        "image_summary": summary,
    }


_SARIF_LEVEL = {  # by kcompat.rules.Severity's values
    "fatal": "error",
    "uncertain": "warning",
    "warning": "warning",
    "info": "note",
}


def error_report(reference: str, target: Target | None, error: KcompatError) -> dict[str, Any]:
    """A valid report for a check that could not judge the image (verdict "error")."""
    return {
        "schema": REPORT_SCHEMA,
        "kcompat": __version__,
        "image": {
            "reference": reference,
            "digest": None,
            "platform": "",
            "chosen_because": None,
            "index_platforms": [],
        },
        "target": target.to_json()
        if target
        else {"schema": 1, "source": "none", "kernel": None, "platform": ""},
        "entrypoint": {
            "argv": [],
            "chain": [],
            "binary": None,
            "arch": None,
            "user": None,
            "workdir": None,
        },
        "verdict": "error",
        "findings": [
            {
                "rule": "error",
                "severity": "fatal",
                "title": error.message,
                "explanation": str(error),
                "evidence": [],
                "fix": error.hint,
                "path": None,
                "exit_code": int(error.exit_code),
            }
        ],
        "image_summary": _empty_summary(),
        "error": {"message": str(error), "exit_code": int(error.exit_code)},
    }


HELP_URI = "https://github.com/kcompat/kcompat#verdicts"  # the README section of the rules
_IMAGE_ROOT = "IMAGEROOT"


def _location(f: dict[str, Any], image: str) -> dict[str, Any]:
    """Every result is located (GitHub's code scanning drops results without one): the
    file inside the image it names, relative to the image's root, or the root itself
    for an image-level finding; the image reference as the logical location."""
    path = (f.get("path") or "").lstrip("/")
    return {
        "physicalLocation": {"artifactLocation": {"uri": path or ".", "uriBaseId": _IMAGE_ROOT}},
        "logicalLocations": [
            {"fullyQualifiedName": f"{image}:/{path}" if path else image, "kind": "resource"}
        ],
    }


def sarif(rep: dict[str, Any]) -> dict[str, Any]:
    """The report as SARIF 2.1.0: one result per finding (and one for a `--verify`
    disagreement), each located; each rule described from its first finding, with its
    fix as help and the README's rule table as helpUri."""
    image = rep["image"]["reference"]
    findings = list(rep["findings"])
    verify = rep.get("verify")
    if verify and verify.get("agreement") == "disagree":
        findings.append({
            "rule": "verify-disagreement", "severity": "fatal",
            "title": f"the observed run disagrees: {verify['summary']}",
            "explanation": f"kcompat predicted {verify['predicted']}; the run under "
            f"{verify['observed']['simulated']} {verify['observed']['outcome']}.",
            "fix": "report it: the prediction is wrong for this image", "path": None,
        })  # fmt: skip
    described: dict[str, dict[str, Any]] = {}
    results = []
    for f in findings:
        described.setdefault(f["rule"], {
            "id": f["rule"],
            "shortDescription": {"text": f["title"]},
            "fullDescription": {"text": f["explanation"]},
            "help": {"text": f["fix"] or "no fix needed: information only"},
            "helpUri": HELP_URI,
            "defaultConfiguration": {"level": _SARIF_LEVEL[f["severity"]]},
        })  # fmt: skip
        results.append({
            "ruleId": f["rule"],
            "level": _SARIF_LEVEL[f["severity"]],
            "message": {"text": f"{f['title']}: {f['explanation']}{_fix(f['fix'])}"},
            "locations": [_location(f, image)],
        })  # fmt: skip
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "kcompat",
                        "version": rep["kcompat"],
                        "informationUri": "https://github.com/kcompat/kcompat",
                        "rules": [described[k] for k in sorted(described)],
                    }
                },
                "originalUriBaseIds": {
                    _IMAGE_ROOT: {
                        "uri": "file:///",
                        "description": {"text": f"the root of {image}"},
                    }
                },
                "results": results,
                "properties": {"verdict": rep["verdict"], "image": rep["image"]},
            }
        ],
    }


def _fix(fix: str | None) -> str:
    return f" Fix: {fix}" if fix else ""
