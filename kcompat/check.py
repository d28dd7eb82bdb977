"""`kcompat check`: scan an image, judge it against a target, and report.

The JSON report follows ci/report.schema.json (checked by the tests); SARIF output is
for code-scanning dashboards.
"""

from __future__ import annotations

from typing import Any

from kcompat import __version__
from kcompat.analysis import analyse
from kcompat.platform import Platform
from kcompat.pull import OpenImage
from kcompat.rules import Finding, Result, Severity, check
from kcompat.target import Target

REPORT_SCHEMA = 1


def choose_platform(platforms: tuple[Platform, ...], target: Target) -> Platform | None:
    """The best entry of a multi-arch index for the target: native, then a compat mode,
    then anything (emulated). None when the index offers no linux entry."""
    linux = [p for p in platforms if p.os == "linux"]
    for wanted in (target.platform.architecture, *target.compat_arches):
        same = [p for p in linux if p.architecture == wanted]
        if same:
            if target.platform.variant:
                exact = [p for p in same if p.variant == target.platform.variant]
                if exact:
                    return exact[0]
            return same[0]
    return linux[0] if linux else None


def run_check(opened: OpenImage, target: Target, argv: list[str] | None) -> dict[str, Any]:
    analysis = analyse(opened)
    scan = analysis.scan
    result = check(scan, opened.image.config, target, argv)
    platforms = opened.image.index_platforms
    if len(platforms) > 1:
        chosen = opened.image.config.platform
        others = ", ".join(str(p) for p in platforms if p.architecture != chosen.architecture)
        result.findings.append(
            Finding(
                "platform-choice",
                Severity.INFO,
                f"judged {chosen} of a multi-arch image",
                f"The index also offers: {others}. Without --platform kcompat judges the best "
                "entry for the target (native, then compat mode, then emulated).",
                tuple(str(p) for p in platforms),
            )
        )
    return report(opened, target, result, analysis.summary)


def _finding(f: Finding) -> dict[str, Any]:
    return {
        "rule": f.rule,
        "severity": f.severity.value,
        "title": f.title,
        "explanation": f.explanation,
        "evidence": list(f.evidence),
        "fix": f.fix,
        "path": f.path,
    }


def report(
    opened: OpenImage, target: Target, result: Result, summary: dict[str, Any]
) -> dict[str, Any]:
    img = opened.image
    entry = result.entrypoint
    binary = entry.binary if entry else None
    return {
        "schema": REPORT_SCHEMA,
        "kcompat": __version__,
        "image": {
            "reference": img.reference,
            "digest": img.manifest_digest,
            "platform": str(img.config.platform),
        },
        "target": target.to_json(),
        "entrypoint": {
            "argv": list(entry.argv) if entry else [],
            "chain": list(entry.chain) if entry else [],
            "binary": binary.path if binary else None,
        },
        "verdict": result.verdict.value,
        "findings": [_finding(f) for f in result.findings],
        "image_summary": summary,
    }


_SARIF_LEVEL = {
    Severity.FATAL: "error",
    Severity.UNCERTAIN: "warning",
    Severity.WARNING: "warning",
    Severity.INFO: "note",
}


def _fix(fix: str | None) -> str:
    return f" Fix: {fix}" if fix else ""


def sarif(rep: dict[str, Any]) -> dict[str, Any]:
    """The report as SARIF 2.1.0: one result per finding, located at the file it names."""
    rules = sorted({f["rule"] for f in rep["findings"]})
    results = []
    for f in rep["findings"]:
        r: dict[str, Any] = {
            "ruleId": f["rule"],
            "level": _SARIF_LEVEL[Severity(f["severity"])],
            "message": {
                "text": f"{f['title']}: {f['explanation']}"
                + (f" Fix: {f['fix']}" if f["fix"] else "")
            },
        }
        if f["path"]:
            r["locations"] = [
                {"physicalLocation": {"artifactLocation": {"uri": f["path"].lstrip("/")}}}
            ]
        results.append(r)
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "kcompat",
                        "version": rep["kcompat"],
                        "rules": [{"id": r} for r in rules],
                    }
                },
                "results": results,
                "properties": {"verdict": rep["verdict"], "image": rep["image"]},
            }
        ],
    }
