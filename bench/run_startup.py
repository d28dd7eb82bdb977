#!/usr/bin/env python3
"""Start-up overhead of `kcompat run`, as ratios against baselines timed in the same run.

  native    kcompat run IMAGE true
            vs  unshare --user --map-root-user --mount --pid --fork --uts --ipc
                chroot ROOTFS /bin/true      (the same rootfs, no overlay, no /proc, /dev)
            and podman run --rm --network=none, where podman and skopeo are installed
  emulated  kcompat run IMAGE-arm64 true
            vs  qemu-aarch64-static ROOTFS-arm64/bin/true   (qemu invoked directly)

Each command runs REPEAT times after one warm-up (the image is pulled, flattened and its
prediction cached by the warm-up, as on any second run); the median is reported. The
launcher alone (kcompat.container.run on a ready RunSpec, in this process) is timed too,
to separate the container set-up from the Python start-up of the CLI.

Run: .venv/bin/python bench/run_startup.py [REPEAT]   (images from tests/fixtures)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compile_bytecode(tree: Path = REPO) -> str:
    """Byte-compile kcompat's modules in `tree`, as `pip install` does for an installed
    package, and say so: without .pyc files (a source checkout run with
    PYTHONDONTWRITEBYTECODE=1, as this sandbox sets it) every kcompat command compiles
    its modules again, about 0.1 s of a warm `check` that no installed kcompat pays."""
    r = subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "kcompat")],
                       capture_output=True)  # fmt: skip
    if r.returncode != 0:
        return f"bytecode: compileall failed ({r.stderr.decode()[-200:]})"
    env = " (PYTHONDONTWRITEBYTECODE=1 is set)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    return f"bytecode: compiled beforehand, as pip install does{env}"


def median_time(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    return median_time(fn, repeat)


def cmd(*argv: str, env: dict[str, str] | None = None) -> Callable[[], object]:
    def go() -> None:
        r = subprocess.run(argv, capture_output=True, env=env)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {r.stderr.decode()[-300:]}")

    return go


def podman_run(layout: Path, work: Path) -> Callable[[], object] | str:
    """`podman run --rm --network=none` of the same busybox image, from a private vfs
    store under `work` (nothing mounted on the host) set up as the tests set theirs up
    (tests/engines.py: make_podman_store, run_conf); or why podman cannot run it here."""
    import pytest

    from tests.engines import make_podman_store, run_conf

    try:
        store = make_podman_store(work, "vfs")
    except pytest.skip.Exception as e:
        return str(e)
    name = "localhost/kcompat-bench:busybox"
    store.pull(f"oci:{layout}:busybox-amd64", name)
    env = dict(store.env(), CONTAINERS_CONF=str(run_conf(store)))
    return cmd("podman", *store.global_args(), "run", "--rm", "--network=none", name, "true",
               env=env)  # fmt: skip


def measure(repeat: int) -> dict[str, float]:
    """Every timing, by name (the rows main prints; "native" and "base" for the ratio
    bench/speed.py reports)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fixtures" / "build_images.py")],
        check=True,
        capture_output=True,
        text=True,
    )
    layout = Path(out.stdout.split()[-1]) / "layout"
    cache = Path(tempfile.mkdtemp(prefix="kcompat-bench-"))
    env = dict(os.environ, KCOMPAT_CACHE=str(cache))
    os.environ["KCOMPAT_CACHE"] = str(cache)
    kc = [sys.executable, "-m", "kcompat"]
    img, img_arm = f"oci:{layout}:busybox-amd64", f"oci:{layout}:busybox-arm64"
    try:
        from kcompat.container import RunSpec, run
        from kcompat.pull import open_image, pull, unpack
        from kcompat.store import BlobStore

        store = BlobStore(cache)
        roots = {}
        for ref in (img, img_arm):
            with open_image(ref) as opened:
                pull(opened, store)
                roots[ref] = unpack(opened, store)[0]
        rows: list[tuple[str, float]] = []
        rows.append(
            (
                "python3 -c pass (interpreter start)",
                timed(cmd(sys.executable, "-c", "pass"), repeat),
            )
        )
        base = timed(
            cmd(
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                "--pid",
                "--fork",
                "--uts",
                "--ipc",
                "chroot",
                str(roots[img]),
                "/bin/true",
            ),
            repeat,
        )
        rows.append(("unshare ... chroot ROOTFS /bin/true (baseline)", base))
        spec = RunSpec(
            rootfs=roots[img], argv=("true",), env=(("PATH", "/bin"),), scratch=cache / "run"
        )
        launcher = timed(lambda: run(spec), repeat)
        rows.append(("kcompat.container.run (launcher only, in-process)", launcher))
        native = timed(cmd(*kc, "run", img, "true", env=env), repeat)
        rows.append(("kcompat run IMAGE true", native))
        engine = float("nan")
        podman = podman_run(layout, cache / "podman") if shutil.which("skopeo") else "no skopeo"
        if isinstance(podman, str):
            rows.append((f"podman run: not timed ({podman})", engine))
        else:
            engine = timed(podman, repeat)
            rows.append(("podman run --rm --network=none IMAGE true (private vfs store)",
                         engine))  # fmt: skip
        qemu = shutil.which("qemu-aarch64-static")
        emu_base = emu = float("nan")
        if qemu:
            emu_base = timed(cmd(qemu, str(roots[img_arm] / "bin" / "busybox"), "true"), repeat)
            rows.append(("qemu-aarch64-static ROOTFS/bin/busybox true (baseline)", emu_base))
            emu = timed(cmd(*kc, "run", img_arm, "true", env=env), repeat)
            rows.append(("kcompat run IMAGE-arm64 true", emu))
        return {**dict(rows), "base": base, "launcher": launcher, "native": native,
                "emu_base": emu_base, "emu": emu, "engine": engine}  # fmt: skip
    finally:
        subprocess.run(["rm", "-rf", str(cache)], check=False)


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    print(compile_bytecode())
    t = measure(repeat)
    print(f"median of {repeat} runs each, after one warm-up; machine: {os.uname().release} "
          f"{os.uname().machine}, {os.cpu_count()} CPUs")  # fmt: skip
    for name, secs in t.items():
        if name in ("base", "launcher", "native", "emu_base", "emu", "engine"):
            continue
        shown = "-" if secs != secs else f"{secs * 1000:8.1f} ms"
        print(f"  {name:58s} {shown}")
    print("ratios:")
    print(f"  launcher / unshare+chroot                    {t['launcher'] / t['base']:6.2f}")
    print(f"  kcompat run / unshare+chroot                 {t['native'] / t['base']:6.2f}")
    if t["engine"] == t["engine"]:
        print(f"  kcompat run / podman run                     {t['native'] / t['engine']:6.2f}")
    if t["emu"] == t["emu"]:
        print(f"  kcompat run (arm64) / qemu-aarch64-static     {t['emu'] / t['emu_base']:6.2f}")


if __name__ == "__main__":
    main()
