#!/usr/bin/env python3
"""How often kcompat's prediction matches what happens, on real images and kernels.

For each (image, command, kernel) of the corpus below, kcompat predicts with `check`'s
rules for a described target (`--kernel K`, this machine's arch: what a user asks),
then runs the command with `kcompat run --kernel K` (seccomp ENOSYS for syscalls newer
than K, the release faked to K) and records whether it ran (exit 0) or failed. It prints
the confusion matrix and every disagreement with its evidence.

Corpus (built from Debian packages, cached under .fixtures/corpus; a re-run only
re-evaluates):
  bullseye, bookworm, trixie   Debian minbase images made by mmdebstrap
  busybox                      Debian's busybox-static (tests/fixtures images)
  fzf                          a Go program from Debian's fzf package, on bookworm
  dash-arm64                   arm64 dash + glibc, run under qemu-user emulation
  shapes, entry-echo           scripts with CRLF endings, without exec bits, nested
                               #! chains; an Entrypoint with arguments (tests/fixtures)
  arm64-only, windows-only     indexes without an amd64 entry (emulated) and with only
                               a Windows one
  vsyscall                     static programs (gcc -static) that call or read the
                               vsyscall page, judged for this host's vsyscall mode (the
                               simulation keeps it)

Predictions go through `check`'s pipeline (kcompat.check.run_check), with docker's
meaning of the command: the words after the image replace Cmd.

Observations are cached under .fixtures/corpus/observed, keyed by the digest the
reference names, the command, kernel and runtime, and a hash of the simulation's own
modules (RUN_PATH) and HARNESS: changing the rules re-predicts and re-runs nothing;
changing how the simulation works re-runs everything.

Run: .venv/bin/python bench/accuracy.py [--kernels 3.2,4.4] [--images bullseye,fzf]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

KERNELS = ("2.6.32", "3.2", "3.10", "3.17", "4.4", "4.19", "5.4", "5.10", "6.1")
DEBIAN_COMMANDS = (
    ("sh", "-c", "true"),
    ("ls", "-l", "/"),
    ("cat", "/etc/os-release"),
    ("cp", "/etc/hostname", "/tmp/copy"),
    ("stat", "/etc"),
    ("sort", "/etc/passwd"),
    ("date",),
    ("apt-get", "--version"),
    ("bash", "-c", "echo $((6*7))"),
)


@dataclass(frozen=True)
class Case:
    image: str
    reference: str
    argv: tuple[str, ...]
    kernel: str
    runtime: str | None = None  # an old runtime's seccomp profile ("docker:20.10.7")
    family: str = ""


@dataclass(frozen=True)
class Outcome:
    case: Case
    predicted: str  # runs | fails | uncertain
    verdict: str
    evidence: tuple[str, ...]
    observed: str  # runs | fails
    exit_code: int | None
    first_error: str | None


FAMILIES = {  # the program family of each base image's commands (for the report)
    "shapes": "scripts", "entry-echo": "static-glibc", "arm64-only": "static-glibc",
    "windows-only": "windows", "vsyscall": "static-glibc", "bullseye": "glibc-c",
    "bookworm": "glibc-c", "trixie": "glibc-c", "busybox": "static-glibc", "fzf": "go",
    "dash-arm64": "glibc-c",
}  # fmt: skip
OLD_RUNTIME = "docker:20.10.7"  # before the clone3 fix (moby#42681, 20.10.9)
RUNTIME_KERNEL = "5.10"


def build_corpus(root: Path) -> dict[str, tuple[str, tuple[tuple[str, ...], ...]]]:
    """name -> (reference, commands)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "tests/fixtures/build_images.py")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    bins = subprocess.run(
        [sys.executable, str(REPO / "tests/fixtures/build_binaries.py")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    images, binaries = Path(out), Path(bins)
    from build_binaries import debian_image

    layout = root / "layout"
    for suite in ("bookworm", "trixie"):
        marker = root / f"{suite}.done"
        if not marker.exists():
            print(f"building {suite} with mmdebstrap (cached afterwards)...", file=sys.stderr)
            debian_image(suite, layout, suite)
            marker.write_text("ok\n")
    if not (root / "fzf.done").exists():  # Debian's fzf is dynamic: on bookworm's glibc
        from build_images import run

        run("umoci", "tag", "--image", f"{layout}:bookworm", "fzf")
        run("umoci", "insert", "--image", f"{layout}:fzf", str(binaries / "bin" / "fzf-amd64"),
            "/usr/bin/fzf")  # fmt: skip
        (root / "fzf.done").write_text("ok\n")
    vsys = root / "vsyscall"
    if not (root / "vsyscall.done").exists():
        (vsys / "bin").mkdir(parents=True, exist_ok=True)
        programs = {
            "vcall": "typedef long (*f)(long *);\n"
            "int main(void) { return ((f)0xffffffffff600400UL)(0) > 0 ? 0 : 1; }\n",
            "vread": "int main(void) { return "
            "*(volatile unsigned char *)0xffffffffff600000UL == 0x48 ? 0 : 2; }\n",
        }
        for name, body in programs.items():
            src = root / f"{name}.c"
            src.write_text(body)
            subprocess.run(["gcc", "-static", "-O2", "-o", str(vsys / "bin" / name), str(src)],
                           check=True)  # fmt: skip
        (root / "vsyscall.done").write_text("ok\n")
    shape_cmds = tuple(
        (f"/shapes/{name}",)
        for name in ("ok.sh", "crlf.sh", "env-crlf.sh", "noexec.sh", "text", "missing-interp.sh",
                     "empty-shebang", "long-interp.sh", "c5", "c6")
    )  # fmt: skip
    return {
        "shapes": (f"oci:{images / 'layout'}:shapes-amd64", shape_cmds),
        "entry-echo": (f"oci:{images / 'layout'}:entry-echo", ((), ("--version",))),
        "arm64-only": (f"oci:{images / 'layout'}:arm64-only", (("uname", "-m"),)),
        "windows-only": (f"oci:{images / 'layout'}:windows-only", ((),)),
        "vsyscall": (f"dir:{vsys}", (("/bin/vcall",), ("/bin/vread",))),
        "bullseye": (f"oci:{binaries / 'layout'}:bullseye", DEBIAN_COMMANDS),
        "bookworm": (f"oci:{layout}:bookworm", DEBIAN_COMMANDS),
        "trixie": (f"oci:{layout}:trixie", DEBIAN_COMMANDS),
        "busybox": (
            f"oci:{images / 'layout'}:busybox-amd64",
            (("sh", "-c", "true"), ("ls", "-l", "/"), ("id",)),
        ),
        "fzf": (f"oci:{layout}:fzf", (("fzf", "--version"),)),
        "dash-arm64": (
            f"oci:{images / 'layout'}:dash-arm64",
            (("/bin/dash", "-c", "true"), ("uname", "-m")),
        ),
    }


def extra_corpus(
    root: Path, census: bool
) -> dict[str, tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]]:
    """name -> (reference, ((family, argv), ...)): the hold-out images (families the
    census did not tune on) and, with `census`, the census's own amd64 image."""
    from accuracy_corpus import IMAGES, build

    out = {name: build(root / "holdout", name) for name in IMAGES}
    if census:
        from census_corpus import build_image

        image = build_image("bookworm", "amd64", root.parent / "census")
        out["census-bookworm"] = (
            image.reference,
            tuple((p.family, p.judged) for p in image.programs if "amd64" in p.arches),
        )
    return out


def predict_all(
    cases: list[Case],
) -> tuple[dict[Case, tuple[str, str, tuple[str, ...]]], dict[str, str]]:
    """`check --kernel K` for this machine's arch and vsyscall mode, through the same
    pipeline as the CLI (the image's cached analysis, the rules, the report); and the
    architecture of the image judged for each reference, as its config names it."""
    from dataclasses import replace

    from kcompat.check import BestPlatform, run_check
    from kcompat.execve import Command
    from kcompat.platform import host_platform
    from kcompat.pull import open_image
    from kcompat.sources import Options
    from kcompat.target import described, probe_vsyscall

    out = {}
    arches: dict[str, str] = {}
    arch = host_platform().architecture
    mode = probe_vsyscall()
    for c in cases:
        target = described(c.kernel, arch, vsyscall=mode, runtime=c.runtime)
        best = BestPlatform(target)
        with open_image(c.reference, replace(Options(), choose=best)) as opened:
            rep = run_check(opened, target, Command(c.argv), best.why)
        verdict = rep["verdict"]
        predicted = {"incompatible": "fails", "uncertain": "uncertain"}.get(verdict, "runs")
        evidence = tuple(
            f"{f['rule']}: {f['title']}"
            for f in rep["findings"]
            if f["severity"] in ("fatal", "uncertain")
        )
        out[c] = (predicted, verdict, evidence)
        arches[c.reference] = rep["image"]["platform"].split("/")[1]
    return out, arches


HARNESS = "accuracy-1"  # bump when what an observation means changes
# the modules that make the simulation what it is (the namespaces, the seccomp filter of
# ENOSYS/EPERM answers, the faked release, the flattened rootfs): an observation is
# reused until one of them, the syscall tables or HARNESS changes
RUN_PATH = ("run.py", "runspec.py", "container.py", "mounts.py", "pid1.py", "seccomp.py",
            "confine.py", "linuxapi.py", "syscalls.py", "cgroups.py", "binfmt.py", "rootfs.py",
            "users.py", "data/confinement.json")  # fmt: skip


def run_code_hash() -> str:
    """What an observation depends on besides the case: the simulation's code and data."""
    h = hashlib.sha256(HARNESS.encode())
    for rel in RUN_PATH:
        p = REPO / "kcompat" / rel
        if p.is_file():
            h.update(rel.encode() + b"\0" + p.read_bytes())
    for p in sorted((REPO / "syscall_tables").rglob("*.json")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _census_emulation() -> set[tuple[str, str]]:
    """(command, kernel) of the census's ENOSYS-mode failures it traced to the release
    faker (qemu-user as the first process), not to the kernel: its cause `emulation`."""
    out: set[tuple[str, str]] = set()
    for tsv in [REPO / "bench" / "census" / "bookworm-amd64.tsv"]:  # the census-bookworm image
        lines = tsv.read_text().splitlines()
        head = lines[0].split("\t") if lines else []
        if not {"command", "kernel", "mode", "cause"} <= set(head):
            continue
        col = {name: i for i, name in enumerate(head)}
        for line in lines[1:]:
            f = line.split("\t")
            if f[col["mode"]] == "enosys" and f[col["cause"]] == "emulation":
                out.add((f[col["command"]], f[col["kernel"]]))
    return out


def _top_digest(ref: str) -> str:
    if ref.startswith("oci:"):
        layout, _, tag = ref[4:].rpartition(":")
        index = json.loads((Path(layout) / "index.json").read_text())
        for m in index.get("manifests", ()):
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return str(m["digest"])
    from kcompat.pull import open_image

    with open_image(ref) as opened:
        return opened.image.manifest_digest or ref


class ObservedCache:
    """One JSON file per observation, written by rename (a killed run leaves no half)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.code = run_code_hash()
        self._digests: dict[str, str] = {}

    def _digest(self, ref: str) -> str:
        """The digest the reference names (an index's own, not one of its entries')."""
        if ref not in self._digests:
            self._digests[ref] = _top_digest(ref)
        return self._digests[ref]

    def _path(self, c: Case, variant: str = "") -> Path:
        parts: list[object] = [self._digest(c.reference), c.argv, c.kernel, c.runtime, self.code]
        key = json.dumps(parts + ([variant] if variant else []))
        h = hashlib.sha256(key.encode()).hexdigest()
        return self.root / h[:2] / f"{h}.json"

    def observe(self, c: Case, variant: str = "") -> tuple[str, int | None, str | None]:
        """`variant` "": `run --kernel K`; "no-qemu" and "qemu": the emulation check's
        two runs (observe_variant)."""
        path = self._path(c, variant)
        try:
            got = json.loads(path.read_text())
            return got[0], got[1], got[2]
        except (OSError, ValueError, IndexError):
            pass
        result = observe_variant(c, variant) if variant else observe(c)
        if (result[2] or "").startswith("timed out"):
            return result  # a loaded machine's, maybe: observed again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.partial")
        tmp.write_text(json.dumps(list(result)))
        tmp.replace(path)
        return result


def observe_variant(c: Case, variant: str) -> tuple[str, int | None, str | None]:
    """The emulation check of a native failure at kernel K: the syscalls K lacks answered
    ENOSYS with the real release, "no-qemu" through `--security-opt seccomp=PROFILE`
    (the program alone, as a real old kernel would answer it) and "qemu" through qemu-user
    as `--kernel` runs the first process (census.py's narrowed simulation, `--simrun`)."""
    from census import ERRNO, HOST_ARCH, profile_file

    from kcompat.seccomp import simulation
    from kcompat.syscalls import ABI_OF_ARCH

    names = sorted(set(simulation(ABI_OF_ARCH[HOST_ARCH], c.kernel).names))
    if variant == "no-qemu":
        prof = profile_file(Path(tempfile.gettempdir()) / "kcompat-accuracy", names,
                            ERRNO["enosys"])  # fmt: skip
        return _run_observed([sys.executable, "-m", "kcompat", "run", "--no-predict",
                              "--security-opt", f"seccomp={prof}", c.reference, "--", *c.argv])
    params = {"reference": c.reference, "argv": list(c.argv), "env": [], "platform": None,
              "kernel": c.kernel, "names": names, "release": "host"}  # fmt: skip
    return _run_observed([sys.executable, str(REPO / "bench" / "census.py"), "--simrun",
                          json.dumps(params)])  # fmt: skip


def _run_observed(cmd: list[str]) -> tuple[str, int | None, str | None]:
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=180)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "fails", None, "timed out after 180 s"
    err = next((ln.strip() for ln in r.stderr.splitlines() if ln.strip()), None)
    return ("runs" if r.returncode == 0 else "fails"), r.returncode, err


def observe(c: Case) -> tuple[str, int | None, str | None]:
    """`kcompat run --kernel K`; for an old runtime also that release's EPERM answers
    (kcompat.verify's profile: its missing calls first, newer calls EPERM)."""
    profile = None
    extra: list[str] = []
    if c.runtime:
        from kcompat.target import described
        from kcompat.verify import _runtime_profile

        profile = _runtime_profile(described(c.kernel, runtime=c.runtime))
        if profile is not None:
            extra = ["--seccomp-eperm", "--security-opt", f"seccomp={profile[0]}"]
    cmd = [
        sys.executable,
        "-m",
        "kcompat",
        "run",
        "--no-predict",
        *(("--kernel", c.kernel) if c.kernel else ()),  # none: the control, this host as it is
        *extra,
        c.reference,
        *(("--", *c.argv) if c.argv else ()),
    ]
    try:
        r = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired:
        return "fails", None, "timed out after 180 s"
    finally:
        if profile is not None:
            os.unlink(profile[0])
    err = next(
        (
            line.strip()
            for line in r.stderr.splitlines()
            if line.strip() and not line.startswith("kcompat: warning:")
        ),
        None,
    )
    if r.returncode in (126, 127) and "exec" in (err or ""):
        return "fails", r.returncode, err  # the runtime could not exec the command
    if r.returncode == 10 and "image operating system" in (err or ""):
        return "fails", r.returncode, err  # a Windows image: no Linux runtime can run it
    if r.returncode == 125 or (err or "").startswith("kcompat: error"):
        raise SystemExit(f"the run itself failed, not the program: {' '.join(cmd)}: {err}")
    if r.returncode == 70 or "kcompat: internal error" in r.stderr:  # (a program's own
        # traceback is its output: python3 failing to start a thread is an observation)
        raise SystemExit(f"kcompat failed, not the program (nothing cached): {' '.join(cmd)}: "
                         f"{r.stderr.strip()[-300:]}")  # fmt: skip
    return ("runs" if r.returncode == 0 else "fails"), r.returncode, err


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernels", default=",".join(KERNELS))
    ap.add_argument("--images", default="")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--no-extra", action="store_true",
                    help="only the base corpus (no hold-out or census images)")
    ap.add_argument("--no-census", action="store_true", help="without the census image")
    args = ap.parse_args()
    corpus_root = Path(os.environ.get("KCOMPAT_FIXTURES", REPO / ".fixtures")) / "corpus"
    corpus_root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("KCOMPAT_CACHE", str(corpus_root / "cache"))
    t0 = time.monotonic()
    corpus = build_corpus(corpus_root)
    extra = {} if args.no_extra else extra_corpus(corpus_root.parent / "accuracy",
                                                  not args.no_census)  # fmt: skip
    names = [*corpus, *extra]
    wanted = [i for i in args.images.split(",") if i] or names
    kernels = args.kernels.split(",")
    cases = [
        Case(name, corpus[name][0], argv, k, family=FAMILIES.get(name, name))
        for name in wanted
        if name in corpus
        for argv in corpus[name][1]
        for k in kernels
    ]
    for name in wanted:
        if name not in extra:
            continue
        ref, progs = extra[name]
        for family, argv in progs:
            cases += [Case(name, ref, argv, k, family=family) for k in kernels]
            if name in ("holdout-amd64", "census-bookworm"):  # the old-runtime target
                cases.append(Case(name, ref, argv, RUNTIME_KERNEL, OLD_RUNTIME, family))
    t1 = time.monotonic()
    predictions, arches = predict_all(cases)
    from kcompat.platform import host_platform

    host_arch = host_platform().architecture

    def native(c: Case) -> bool:  # the judged image's config names this machine's arch
        return arches[c.reference] == host_arch

    t2 = time.monotonic()
    store = ObservedCache(corpus_root / "observed")
    for c in cases:  # the digests first, in this thread
        store._digest(c.reference)
    # the control of each command: this host as it is (no --kernel); a command that fails
    # there says nothing about kernels, and is left out (as the census does)
    controls = {(c.reference, c.argv): Case(c.image, c.reference, c.argv, "", family=c.family)
                for c in cases}  # fmt: skip
    with ThreadPoolExecutor(args.jobs) as pool:
        control = dict(zip(controls, pool.map(store.observe, controls.values())))
        observed = dict(zip(cases, pool.map(store.observe, cases)))
    t3 = time.monotonic()
    # a command failing on this host as it is stays in when kcompat predicts that failure
    # (exec failures, a Windows image: what it must catch whatever the kernel)
    def sound(c: Case) -> bool:
        return control[(c.reference, c.argv)][0] == "runs" or predictions[c][0] == "fails"

    broken = sorted({(c.image, " ".join(c.argv), control[(c.reference, c.argv)][2] or "")
                     for c in cases if not sound(c)})  # fmt: skip
    census_artefacts = _census_emulation()
    # a failure qemu-user reports itself (it is the first process when the release is
    # faked): the simulation's, not the kernel's (the census labels these `emulation`)
    # (and what the census found to be one, by bisection: bench/census/*.tsv cause `emulation`)
    artefacts = [
        c for c in cases if control[(c.reference, c.argv)][0] == "runs"
        and observed[c][0] == "fails" and ((observed[c][2] or "").startswith("qemu:")
        or (c.image.startswith("census-") and not c.runtime
            and (shlex.join(c.argv), c.kernel) in census_artefacts))
    ]  # fmt: skip
    # qemu-user as the first process answers some calls itself, unlike a kernel (7.2:
    # getrandom(NULL, 0, ...) is EFAULT, so the getrandom crate's probe of ENOSYS fails
    # and thread_rng panics): a native failure at K that runs with K's ENOSYS answers
    # and the real release, and fails with them through qemu-user and the real release,
    # is qemu-user's, not the kernel's
    suspects = [c for c in cases if sound(c) and c not in artefacts and c.kernel
                and not c.runtime and native(c) and observed[c][0] == "fails"
                and control[(c.reference, c.argv)][0] == "runs"]  # fmt: skip
    with ThreadPoolExecutor(args.jobs) as pool:
        alone = dict(zip(suspects, pool.map(lambda c: store.observe(c, "no-qemu"), suspects)))
        ran = [c for c in suspects if alone[c][0] == "runs"]
        via_qemu = dict(zip(ran, pool.map(lambda c: store.observe(c, "qemu"), ran)))
    emulated = [c for c in ran if via_qemu[c][0] == "fails"]
    for c in emulated:
        print(f"  artefact (qemu-user, not the kernel): {c.image} at {c.kernel}: "
              f"{' '.join(c.argv)[:80]}: {observed[c][2]}; runs with {c.kernel}'s ENOSYS "
              "answers and no qemu-user, fails with them through qemu-user")
    artefacts += emulated
    kept = [c for c in cases if sound(c) and c not in artefacts]
    print(f"left out: {len(cases) - len(kept) - len(artefacts)} cases of {len(broken)} commands "
          "that fail on this "
          f"host as it is, and {len(artefacts)} simulation artefacts (qemu-user failing as the "
          "release faker)")  # fmt: skip
    for image, argv, err in broken:
        print(f"  control fails: {image}: {argv}: {err[:160]}")
    for c in (c for c in artefacts if c not in emulated):
        print(f"  artefact: {c.image} at {c.kernel}: {' '.join(c.argv)[:80]}: {observed[c][2]}")
    cases = kept
    outcomes = [Outcome(c, *predictions[c], *observed[c]) for c in cases]
    matrix = Counter((o.predicted, o.observed) for o in outcomes)
    families = sorted({c.family for c in cases})
    arches = sorted({a for c in cases for a in ("arm64", "s390x", "ppc64le") if a in c.image}
                    | {"amd64"})  # fmt: skip
    print(
        f"{len(cases)} cases: {len(wanted)} images x commands x {len(kernels)} kernels "
        f"(+ {OLD_RUNTIME} on {RUNTIME_KERNEL}); {len(families)} families "
        f"({', '.join(families)}); arches {', '.join(arches)}; "
        f"corpus {t1 - t0:.0f} s, predictions {t2 - t1:.0f} s, runs {t3 - t2:.0f} s"
    )
    print()
    head = "predicted \\ observed"
    print(f"{head:24s}{'runs':>8s}{'fails':>8s}")
    for p in ("runs", "fails", "uncertain"):
        print(f"{p:24s}{matrix[(p, 'runs')]:8d}{matrix[(p, 'fails')]:8d}")
    wrong = [
        o for o in outcomes if (o.predicted, o.observed) in (("runs", "fails"), ("fails", "runs"))
    ]
    print()
    print(f"disagreements: {len(wrong)}")
    for o in wrong:
        c = o.case
        print(
            f"  {c.image} at {c.kernel}{' ' + c.runtime if c.runtime else ''}: "
            f"{' '.join(c.argv)}: predicted {o.verdict}, observed "
            f"{o.observed} (exit {o.exit_code}){': ' + o.first_error if o.first_error else ''}"
        )
        for e in o.evidence:
            print(f"      evidence: {e}")
    failing = Counter((o.case.image, o.case.kernel) for o in outcomes if o.observed == "fails")
    print(
        "observed failures by image and kernel: "
        + ", ".join(f"{image}@{kernel} x{n}" for (image, kernel), n in sorted(failing.items()))
    )
    unsure = [o for o in outcomes if o.predicted == "uncertain"]
    fails = [o for o in outcomes if o.observed == "fails"]
    caught = [o for o in fails if o.predicted == "fails"]
    share = len(unsure) / len(outcomes) if outcomes else 0.0
    recall = len(caught) / len(fails) if fails else 1.0
    print()
    print("targets (issue: Decisive verdicts):")
    print(f"  disagreements {len(wrong)} (target 0): {'met' if not wrong else 'NOT met'}")
    print(f"  uncertain {len(unsure)}/{len(outcomes)} = {share:.1%} (target <= 10%): "
          f"{'met' if share <= 0.10 else 'NOT met'}")  # fmt: skip
    print(f"  real failures predicted incompatible {len(caught)}/{len(fails)} = {recall:.1%} "
          f"(target >= 80%): {'met' if recall >= 0.80 else 'NOT met'}")  # fmt: skip
    print(f"  families {len(families)} (target >= 12), arches {len(arches)} (target 3)")
    by_family = Counter(o.case.family for o in unsure)
    print("uncertain by family: " + ", ".join(f"{f} {n}" for f, n in by_family.most_common()))
    print(f"uncertain: {len(unsure)} of {len(outcomes)}")
    for o in unsure:
        c = o.case
        print(
            f"  {c.image} at {c.kernel}{' ' + c.runtime if c.runtime else ''}: "
            f"{' '.join(c.argv)}: observed {o.observed}"
            f"{' (' + o.first_error + ')' if o.first_error else ''}; "
            f"{'; '.join(o.evidence)[:200]}"
        )
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
