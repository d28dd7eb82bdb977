#!/usr/bin/env python3
"""How fast `kcompat check` and `kcompat pull` are, as ratios against baselines measured
in the same run, on real images from Debian packages served by a local docker-registry.

Corpus: bench/speed_corpus.py (bookworm minbase, + build-essential, + python3,
+ openjdk-17 and clang: 4 images of growing size sharing their lower layers; the largest
is 1.13 GB uncompressed in 4 gzip layers). Debian's docker-registry serves them on
127.0.0.1 from a temporary directory; it stops when the benchmark ends.

For each image:
  decompress  every layer blob inflated once, sequentially, by each gzip engine that is
              installed (zlib, zlib-ng, isal, rapidgzip with 2 threads): the fastest is
              the baseline
  cold check  `kcompat check REF --format json` with an empty cache (the blobs are
              downloaded, every layer is scanned): ratio to the fastest decompression
              (target <= 1.3); peak memory (PSS) of kcompat and its workers, sampled
              every 10 ms from /proc (target < 300 MB for the 1 GB image)
  warm check  the same command again (target < 0.3 s); and run_check() inside this
              process, to tell kcompat's own work from Python's and the CLI's start-up
  shared      `check` of the image after the next smaller one was checked: only the
              new layer is scanned
  pull        `kcompat pull` vs `skopeo copy docker://... oci:DIR`, both into empty
              directories (target <= 1.0)
Each timing is the median of REPEAT runs (default 3). Nothing here asserts a time: the
numbers are printed, and the issue note carries them.

Run: .venv/bin/python bench/speed.py [--repeat N] [--images 1,4]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import speed_corpus  # noqa: E402
from registry_server import RealRegistry  # noqa: E402
from run_startup import median_time  # noqa: E402

KCOMPAT = [sys.executable, "-m", "kcompat"]


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    r = subprocess.run(argv, capture_output=True, env=env)
    if r.returncode not in (0, 1):  # check exits 1 when its verdict fails --fail-on
        raise SystemExit(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.decode()[-400:]}")
    return r


def tree_pss(pid: int) -> int:
    """Proportional set size of a process and all its descendants, from /proc: memory
    a forked worker shares with its parent is counted once, not once per process."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
            for tid in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except (OSError, ValueError):
            continue
    return total


def timed_with_rss(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss(proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    elapsed = time.perf_counter() - t
    done.set()
    sampler.join()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} failed: {err.decode()[-400:]}")
    return elapsed, peak


# -- decompression baselines ---------------------------------------------------------------


def _inflate_with(module: object) -> Callable[[Path], int]:
    def go(path: Path) -> int:
        d = module.decompressobj(31)  # type: ignore[attr-defined]
        n = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                n += len(d.decompress(chunk))
        return n

    return go


def engines() -> dict[str, Callable[[Path], int]]:
    out: dict[str, Callable[[Path], int]] = {"zlib": _inflate_with(zlib)}
    for name, module in (("zlib-ng", "zlib_ng.zlib_ng"), ("isal", "isal.isal_zlib")):
        with contextlib.suppress(ImportError):
            out[name] = _inflate_with(importlib.import_module(module))
    try:
        import rapidgzip

        def rapid(path: Path) -> int:
            n = 0
            with rapidgzip.open(str(path), parallelization=os.cpu_count() or 1) as f:
                while chunk := f.read(4 << 20):
                    n += len(chunk)
            return n

        out[f"rapidgzip-{os.cpu_count()}"] = rapid
    except ImportError:
        pass
    return out


# -- the benchmark -------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--images", default="1,2,3,4")
    args = ap.parse_args()
    tags = args.images.split(",")
    layout = speed_corpus.build(speed_corpus.default_out())
    work = Path(tempfile.mkdtemp(prefix="kcompat-speed-"))
    registry = RealRegistry(work / "registry")
    try:
        for tag in tags:
            registry.push(f"oci:{layout}:{tag}", f"speed/debian:{tag}")
        report(registry, tags, work, args.repeat)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


def image_layers(ref: str, env: dict[str, str]) -> tuple[list[str], int]:
    out = json.loads(run([*KCOMPAT, "inspect", ref, "--format", "json"], env).stdout)
    return [d["digest"] for d in out["layers"]], sum(d["size"] for d in out["layers"])


def report(registry: RealRegistry, tags: list[str], work: Path, repeat: int) -> None:
    from kcompat.layers import GZIP_ENGINE

    dec = engines()
    print(f"engines: {', '.join(dec)}; kcompat inflates with {GZIP_ENGINE}; "
          f"{os.cpu_count()} cores; median of {repeat}")  # fmt: skip
    rows = []
    previous_cache: Path | None = None
    for tag in tags:
        row, previous_cache = measure(registry, tag, work, repeat, dec, previous_cache)
        print_row(row)
        rows.append(row)
    print_summary(rows)


def measure(
    registry: RealRegistry,
    tag: str,
    work: Path,
    repeat: int,
    dec: dict[str, Callable[[Path], int]],
    previous_cache: Path | None,
) -> tuple[dict, Path]:  # type: ignore[type-arg]
    from kcompat.check import run_check
    from kcompat.pull import open_image
    from kcompat.target import probe_host

    base_env = {**os.environ}
    ref = f"{registry.host}/speed/debian:{tag}"
    check = [*KCOMPAT, "check", ref, "--format", "json"]
    digests, compressed = image_layers(ref, base_env)
    blobs = [registry.blob_path(d) for d in digests]
    times = {}
    for name, fn in dec.items():
        times[name] = median_time(lambda fn=fn: [fn(b) for b in blobs], repeat)
    uncompressed = sum(dec["zlib"](b) for b in blobs)
    best = min(times, key=lambda k: times[k])

    def fresh_cache(name: str) -> dict[str, str]:
        d = work / f"cache-{tag}-{name}-{time.monotonic_ns()}"
        return {**base_env, "KCOMPAT_CACHE": str(d)}

    cold_runs = []
    for i in range(repeat):
        env = fresh_cache(f"cold{i}")
        cold_runs.append((*timed_with_rss(check, env), env))
    cold = statistics.median(t for t, _, _ in cold_runs)
    peak = max(r for _, r, _ in cold_runs)
    warm_env = cold_runs[-1][2]
    warm = median_time(lambda: run(check, warm_env), repeat)
    os.environ["KCOMPAT_CACHE"] = warm_env["KCOMPAT_CACHE"]
    target = probe_host()

    def in_process() -> None:
        with open_image(ref) as opened:
            run_check(opened, target, None)

    warm_api = median_time(in_process, repeat)
    os.environ.pop("KCOMPAT_CACHE")
    shared = None
    if previous_cache is not None:
        # a cache holding only the lower layers' results (from checking the previous image)
        samples = []
        for i in range(repeat):
            copy = work / f"shared-{tag}-{i}"
            shutil.copytree(previous_cache, copy)
            shutil.rmtree(copy / "images", ignore_errors=True)
            shutil.rmtree(copy / "blobs", ignore_errors=True)
            env = {**base_env, "KCOMPAT_CACHE": str(copy)}
            t = time.perf_counter()
            run(check, env)
            samples.append(time.perf_counter() - t)
        shared = statistics.median(samples)

    def kpull() -> None:
        run([*KCOMPAT, "pull", ref], fresh_cache("pull"))

    def skopeo() -> None:
        dest = work / f"skopeo-{time.monotonic_ns()}"
        run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
             f"oci:{dest}:x"])  # fmt: skip

    row = {
        "image": f"speed:{tag}",
        "layers": len(digests),
        "compressed_mb": compressed / 1e6,
        "uncompressed_mb": uncompressed / 1e6,
        "decompress": times,
        "best": best,
        "cold": cold,
        "peak_rss_mb": peak / 1e6,
        "warm": warm,
        "warm_api": warm_api,
        "shared": shared,
        "pull": median_time(kpull, repeat),
        "skopeo": median_time(skopeo, repeat),
    }
    return row, Path(warm_env["KCOMPAT_CACHE"])


def print_row(r: dict) -> None:  # type: ignore[type-arg]
    d = r["decompress"]
    best = d[r["best"]]
    print(f"\n{r['image']}: {r['layers']} layers, {r['compressed_mb']:.0f} MB compressed, "
          f"{r['uncompressed_mb']:.0f} MB uncompressed")  # fmt: skip
    print("  decompress all layers: " + ", ".join(f"{k} {v:.2f} s" for k, v in d.items())
          + f"  (fastest: {r['best']})")  # fmt: skip
    print(f"  cold check   {r['cold']:6.2f} s   / fastest decompress {best:.2f} s = "
          f"{r['cold'] / best:.2f}   (target <= 1.3)")  # fmt: skip
    print(f"  peak memory  {r['peak_rss_mb']:6.0f} MB  (PSS of kcompat + its workers; "
          "target < 300 MB)")  # fmt: skip
    print(f"  warm check   {r['warm']:6.3f} s   (CLI process; target < 0.3 s); in-process "
          f"run_check {r['warm_api']:.3f} s")  # fmt: skip
    if r["shared"] is not None:
        print(f"  check with the lower layers cached  {r['shared']:.2f} s   "
              f"(= {r['shared'] / r['cold']:.2f} of cold)")  # fmt: skip
    print(f"  kcompat pull {r['pull']:6.2f} s   / skopeo copy {r['skopeo']:.2f} s = "
          f"{r['pull'] / r['skopeo']:.2f}   (target <= 1.0)")  # fmt: skip


def print_summary(rows: list[dict]) -> None:  # type: ignore[type-arg]
    print("\nscaling (cold check against uncompressed bytes):")
    print(f"  {'image':10} {'MB':>7} {'cold s':>7} {'s/GB':>6} {'ratio':>6}")
    for r in rows:
        best = r["decompress"][r["best"]]
        per_gb = r["cold"] / (r["uncompressed_mb"] / 1000)
        print(f"  {r['image']:10} {r['uncompressed_mb']:7.0f} {r['cold']:7.2f} "
              f"{per_gb:6.2f} {r['cold'] / best:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
