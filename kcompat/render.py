"""What the CLI prints, as lines of styled spans: the same words with or without colour.

Each function turns a report (the JSON-able dicts of kcompat.check, kcompat.pull,
kcompat.binaries, kcompat.target) into `Lines`; the CLI prints them plain, or styled
through rich on a terminal that wants colour. Nothing here prints or imports rich.
The matrix of `check` (images x targets) is built here too: its JSON document
(kcompat/data/matrix.schema.json), its SARIF, its table and its exit status (each
cell's by kcompat.failon).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Union

from kcompat import __version__
from kcompat.failon import FailOn
from kcompat.versions import version_key

Span = tuple[str, str]  # (text, rich style; "" for none)
Line = Union[str, tuple[Span, ...]]
Lines = list[Line]

MATRIX_SCHEMA = 1
# From best to worst: the matrix's verdict is its worst cell's.
VERDICT_ORDER = ("native", "emulated", "uncertain", "incompatible", "error")
VERDICT_STYLE = {
    "native": "bold green",
    "emulated": "bold green",
    "uncertain": "bold yellow",
    "incompatible": "bold red",
    "error": "bold magenta",
}
_MARK = {"fatal": "FAIL", "uncertain": "MAYBE", "warning": "WARN", "info": "ok"}
_MARK_STYLE = {"fatal": "bold red", "uncertain": "yellow", "warning": "yellow", "info": "green"}
_SEVERITY_ORDER = ["fatal", "uncertain", "warning", "info"]


def plain(line: Line) -> str:
    return line if isinstance(line, str) else "".join(text for text, _ in line)


def text(lines: Lines) -> str:
    return "\n".join(plain(line) for line in lines)


# -- check -------------------------------------------------------------------------------


def check_lines(rep: dict[str, Any]) -> Lines:
    t = rep["target"]
    where = "this host" if t["source"] == "host" else t["source"]
    verdict = rep["verdict"]
    lines: Lines = [
        f"{rep['image']['reference']} ({rep['image']['platform']}) on {where}: "
        f"Linux {t['kernel'] or '?'} {t['platform']}",
    ]
    if rep["image"].get("chosen_because"):
        lines.append(f"Platform: {rep['image']['platform']} ({rep['image']['chosen_because']})")
    lines.append(
        f"Entrypoint: {' '.join(rep['entrypoint']['argv']) or '-'}"
        + (f"  -> {rep['entrypoint']['binary']}" if rep["entrypoint"]["binary"] else "")
    )
    observed = (
        (("  (observed by --verify; predicted UNCERTAIN)", "dim"),)
        if rep.get("verdict_basis") == "observed"
        else ()
    )
    lines.append(
        (("Verdict: ", ""), (verdict.upper(), VERDICT_STYLE.get(verdict, "bold")), *observed)
    )
    for f in sorted(rep["findings"], key=lambda f: _SEVERITY_ORDER.index(f["severity"])):
        sev = f["severity"]
        lines.append((("  [", ""), (_MARK[sev], _MARK_STYLE[sev]), (f"] {f['title']}", "")))
        lines.append(f"      {f['explanation']}")
        for ev in f["evidence"][:6]:
            lines.append((("      evidence: ", "dim"), (str(ev), "")))
        if len(f["evidence"]) > 6:
            lines.append(f"      ... {len(f['evidence']) - 6} more (--format json)")
        if f["fix"]:
            lines.append((("      fix: ", "bold cyan"), (f["fix"], "")))
    for note in t.get("notes", []):
        lines.append(f"  note: {note}")
    return lines


def verify_lines(v: Any) -> Lines:
    o = v.observed
    mark = {"agree": "AGREE", "disagree": "DISAGREEMENT", "uncertain": "UNDECIDED"}
    style = {"agree": "bold green", "disagree": "bold red", "uncertain": "bold yellow"}
    lines: Lines = [
        f"Verify ({o.simulated}): {' '.join(o.command)}",
        f"  observed: {o.outcome}, exit {o.exit_code}"
        + (f", first error: {o.first_error}" if o.first_error else ""),
        (("  ", ""), (mark[v.agreement], style[v.agreement]), (f": {v.summary}", "")),
    ]
    if v.agreement == "disagree":
        lines.insert(0, (("!" * 72, "bold red"),))
        lines.append((("!" * 72, "bold red"),))
    return lines


# -- inspect, scan, host -----------------------------------------------------------------


def inspect_lines(r: dict[str, Any]) -> Lines:
    cfg = r["config"]
    platform = "/".join(x for x in (r["os"], r["architecture"], r["variant"]) if x)
    lines: Lines = [
        f"Reference:    {r['reference']}",
        f"Digest:       {r['digest'] or '(none: local archive)'}",
        f"Media type:   {r['mediaType'] or '-'}",
    ]
    if r["index"]:
        lines.append(f"Index:        {r['index']['digest']}")
        lines.append(f"Platforms:    {', '.join(r['index']['platforms'])}")
    lines += [
        f"Platform:     {platform}",
        f"Created:      {cfg['created'] or '-'}",
        f"Entrypoint:   {json.dumps(cfg['entrypoint'])}",
        f"Cmd:          {json.dumps(cfg['cmd'])}",
        f"Workdir:      {cfg['workdir'] or '/'}",
        f"User:         {cfg['user'] or '(root)'}",
        "Env:",
        *[f"  {e}" for e in cfg["env"]],
        "Labels:" if cfg["labels"] else "Labels:       -",
        *[f"  {k}={v}" for k, v in cfg["labels"].items()],
        f"Layers ({len(r['layers'])}):",
        *[
            f"  {layer['digest']}  {layer['size']:>12}  {layer['mediaType']}"
            for layer in r["layers"]
        ],
    ]
    return lines


def counts(c: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in c.items()) or "-"


def binaries_lines(r: dict[str, Any]) -> Lines:
    s = r["summary"]
    libcs = ", ".join(
        f"{c['family']} {c['version'] or '(version unknown)'} ({c['path']}, {c['evidence']})"
        for c in s["libc"]
    )
    lines: Lines = [
        "Binaries:",
        f"  C library:        {libcs or 'none found'}",
        f"  Formats:          {counts(s['formats'])}",
        f"  Architectures:    {counts(s['architectures'])}",
        f"  Max ABI tag:      {s['max_abi_tag'] or '-'}",
        f"  Max GLIBC needed: {s['max_glibc_required'] or '-'}",
    ]
    if s["newest_syscall"]:
        top = s["newest_syscall"]
        lines.append(f"  Newest syscall:   {top['name']} (Linux {top['since']})")
    if s["go_versions"]:
        lines.append(f"  Go:               {', '.join(s['go_versions'])}")
    for interp, present in s["interpreters"].items():
        lines.append(f"  Interpreter:      {interp}{'' if present else '  MISSING'}")
    for path, missing in s["missing_libraries"].items():
        lines.append(f"  Missing libs:     {path}: {', '.join(missing)}")
    for path in s["missing_interpreters"]:
        lines.append(f"  No interpreter:   {path}")
    for path, reason in s["unreadable"].items():
        lines.append(f"  Unreadable:       {path}: {reason}")
    for path in s["windows_or_macos"]:
        lines.append(f"  Not Linux:        {path}")
    lines.append("")
    for b in r["binaries"]:
        lines.append(_binary_line(b))
    return lines


def _binary_line(b: dict[str, Any]) -> str:
    if b.get("unreadable"):
        return f"{b['path']}  unreadable: {b['unreadable']}"
    if b["format"] == "script":
        found = "  (interpreter MISSING)" if b["interpreter_found"] is False else ""
        return f"{b['path']}  script #!{b['interpreter']}{found}"
    if b["format"] in ("pe", "macho"):
        arch = b["arch"] if isinstance(b["arch"], str) else "+".join(b["arch"])
        return f"{b['path']}  {b['os']} {b['format']} {arch}"
    parts = [b["path"], b["arch"], b["linkage"]]
    if b.get("go_version"):
        parts.append(b["go_version"])
    if b.get("glibc_required"):
        parts.append(f"GLIBC>={b['glibc_required']}")
    if b.get("abi_tag"):
        parts.append(f"ABI-tag {b['abi_tag']}")
    needs = b.get("needs")
    if needs:
        floor = version_key(needs["abi_floor"])
        newer = sorted(
            (x for x in needs["syscalls"] if x["since"] and version_key(x["since"]) > floor),
            key=lambda x: version_key(x["since"]),
        )
        text_ = f"syscalls {len(needs['syscalls'])}"
        if newer:
            listed = ", ".join(f"{x['name']} {x['since']}" for x in newer)
            text_ += f" (newer than {needs['abi_floor']}: {listed})"
        if not needs["complete"]:
            text_ += f" [{needs['method']}]"
        if needs["unresolved_sites"]:
            text_ += f", {needs['unresolved_sites']} sites unresolved"
        parts.append(text_)
    if b.get("missing_libraries"):
        parts.append("MISSING " + ", ".join(b["missing_libraries"]))
    return "  ".join(parts)


def host_lines(profile: dict[str, Any]) -> Lines:
    return [
        f"Kernel:          {profile['kernel'] or 'unknown'}",
        f"Platform:        {profile['platform']}",
        f"Compat modes:    {', '.join(profile['compat_arches']) or 'none'}",
        f"vsyscall:        {profile['vsyscall'] or 'unknown'}",
        f"cgroup:          {profile['cgroup'] or 'unknown'}",
        f"seccomp:         {profile['seccomp'] or 'unknown'}",
        f"user namespaces: {profile['userns']}",
        f"private binfmt:  {profile['private_binfmt']}",
        f"qemu-user:       {', '.join(f'{a}={p}' for a, p in profile['qemu'].items()) or 'none'}",
        "binfmt_misc:",
        *[
            f"  {b['name']}: {'enabled' if b['enabled'] else 'disabled'} flags={b['flags'] or '-'} "
            f"{b['interpreter']} ({'static' if b['interpreter_static'] else 'not static'})"
            for b in profile["binfmt"]
        ],
        f"runtimes:        {counts(profile['runtimes']) if profile['runtimes'] else 'none'}",
        f"syscalls absent: {' '.join(profile['absent_syscalls'] or []) or '-'}"
        if profile["absent_syscalls"] is not None
        else "syscalls absent: not probed",
        f"syscalls EPERM:  {' '.join(profile['blocked_syscalls'] or []) or '-'}"
        if profile["blocked_syscalls"] is not None
        else "syscalls EPERM:  not probed",
        *[f"note: {n}" for n in profile["notes"]],
    ]


# -- the matrix: images x targets ----------------------------------------------------------


def target_label(t: dict[str, Any], given: str | None = None) -> str:
    """A column's name: what the user gave (a profile's path, --kernel K), or this host."""
    kernel, platform = t.get("kernel") or "?", t.get("platform") or "?"
    source = t.get("source", "")
    if source == "host":
        return f"this host (Linux {kernel} {platform})"
    if source.startswith("file:"):
        return f"{given or os.path.basename(source[5:])} (Linux {kernel} {platform})"
    return f"{given or '--kernel ' + kernel} ({platform})"


def first_reason(rep: dict[str, Any]) -> str | None:
    """Why a cell is not a plain yes: the first finding of the verdict's own severity
    (fatal for incompatible and error, uncertain for uncertain); None when it runs."""
    want = {"incompatible": "fatal", "error": "fatal", "uncertain": "uncertain"}.get(
        rep["verdict"]
    )
    if want is None:
        return None
    f = next((f for f in rep["findings"] if f["severity"] == want), None)
    if f is None:
        return None
    return str(f["title"])


def worst(verdicts: Sequence[str]) -> str:
    return max(verdicts, key=VERDICT_ORDER.index) if verdicts else "error"


def matrix_document(
    images: Sequence[str],
    targets: Sequence[tuple[str, dict[str, Any]]],
    reports: dict[tuple[int, int], dict[str, Any]],
    fail_on: FailOn,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`check --format json` for many images or targets (kcompat/data/matrix.schema.json):
    every cell's full report (ci/report.schema.json), its verdict and first reason; the
    worst verdict and the exit status it gives."""
    cells = []
    for (i, t), rep in sorted(reports.items()):
        cells.append({
            "image": i, "target": t, "verdict": rep["verdict"], "reason": first_reason(rep),
            "exit_code": fail_on.exit_code(rep), "report": rep,
        })  # fmt: skip
    doc: dict[str, Any] = {
        "schema": MATRIX_SCHEMA,
        "kcompat": __version__,
        "verdict": worst([c["verdict"] for c in cells]) if error is None else "error",
        "exit_code": matrix_exit(cells) if error is None else int(error["exit_code"]),
        "fail_on": fail_on.value,
        "images": list(images),
        "targets": [{"name": name, "target": t} for name, t in targets],
        "cells": cells,
    }
    if error is not None:
        doc["error"] = error
    return doc


def matrix_exit(cells: Sequence[dict[str, Any]]) -> int:
    """The worst cell's exit status: an error's own (the first, by the worst verdict),
    else 1 when a cell fails --fail-on, else 0."""
    if not cells:
        return 0
    bad = max(cells, key=lambda c: (VERDICT_ORDER.index(c["verdict"]), c["exit_code"] != 0))
    if bad["verdict"] == "error":
        return int(bad["exit_code"])
    return 1 if any(c["exit_code"] for c in cells) else 0


def matrix_sarif(doc: dict[str, Any]) -> dict[str, Any]:
    """The matrix as SARIF 2.1.0: one run per cell, as `check --format sarif` makes it."""
    from kcompat.check import sarif

    runs = []
    for c in doc["cells"]:
        run = sarif(c["report"])["runs"][0]
        run["properties"]["target"] = doc["targets"][c["target"]]["name"]
        runs.append(run)
    return {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
            "runs": runs}  # fmt: skip


def matrix_lines(doc: dict[str, Any]) -> Lines:
    """One table, images down, targets across; each cell its verdict, and for a cell
    that is not a plain yes a note number whose reason is listed under the table."""
    names = [t["name"] for t in doc["targets"]]
    notes: list[str] = []
    grid: list[list[tuple[str, str]]] = []  # per row: (cell text, verdict)
    by_pos = {(c["image"], c["target"]): c for c in doc["cells"]}
    for i in range(len(doc["images"])):
        row = []
        for t in range(len(names)):
            c = by_pos.get((i, t))
            if c is None:
                row.append(("-", ""))
                continue
            cell = c["verdict"]
            if c["reason"]:
                if c["reason"] not in notes:
                    notes.append(c["reason"])
                cell += f" [{notes.index(c['reason']) + 1}]"
            row.append((cell, c["verdict"]))
        grid.append(row)
    first = max([len("IMAGE"), *(len(img) for img in doc["images"])])
    widths = [max([len(n), *(len(r[t][0]) for r in grid)]) for t, n in enumerate(names)]
    header = "  ".join(["IMAGE".ljust(first), *(n.ljust(w) for n, w in zip(names, widths))])
    lines: Lines = [((header.rstrip(), "bold"),)]
    for img, row in zip(doc["images"], grid):
        spans: list[Span] = [(img.ljust(first), "")]
        for (cell, verdict), w in zip(row, widths):
            verdict_text, _, note = cell.partition(" ")
            spans.append(("  ", ""))
            spans.append((verdict_text, VERDICT_STYLE.get(verdict, "")))
            rest = (" " + note if note else "").ljust(w - len(verdict_text))
            spans.append((rest, ""))
        last = spans[-1]
        spans[-1] = (last[0].rstrip(), last[1])
        lines.append(tuple(spans))
    if notes:
        lines.append("")
        lines += [f"[{n}] {reason}" for n, reason in enumerate(notes, 1)]
    lines.append("")
    verdict = doc["verdict"]
    lines.append((("Worst: ", ""), (verdict.upper(), VERDICT_STYLE.get(verdict, "bold")),
                  (f" ({len(doc['cells'])} checks; kcompat check IMAGE --target T for one "
                   "in full)", "")))  # fmt: skip
    return lines
