#!/usr/bin/env python3
"""Time from `kcompat run --vm-kernel` to the command's first instruction, against the
kernel's own boot floor, timed in the same run.

  floor      qemu-system-x86_64 with the same machine, memory, boot path (the PVH
             vmlinux kcompat boots, and also the bzImage as Debian ships it) and an
             initramfs holding only a static /bin/true, `-append "console=ttyS0 panic=-1
             quiet rdinit=/bin/true"`: the kernel's boot to its first user instruction
             (true exits, the kernel panics, -no-reboot ends qemu)
  kcompat    `kcompat run --vm-kernel K IMAGE echo x` (the core API in a child process
             doing what the CLI does, until the CLI is wired): from the start of the
             process to the first byte of the command's stdout on the host, and to the
             end of the run

Rows for TCG, and for KVM when kcompat.vm's probe shows it works here. Needs
qemu-system-x86, gcc (static glibc), the fixture images (tests/fixtures/build_images.py)
and the network once for debian:bullseye's kernel.

Run: .venv/bin/python bench/vm_boot.py [--kernel debian:bullseye] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kcompat import kernelimage, vm, vminit, vmkernel  # noqa: E402
from kcompat.store import default_cache_dir  # noqa: E402

_CORE = """
import sys, time
from dataclasses import replace
from kcompat import vm
from kcompat.check import BestPlatform
from kcompat.pull import open_image
from kcompat.runoptions import RunOptions
from kcompat.sources import Options
from kcompat.store import BlobStore
kernel, accel, image, *cmd = sys.argv[1:]
target = vm.target_for_kernel(kernel)
best = BestPlatform(target)
with open_image(image, replace(Options(), choose=best)) as opened:
    prepared = vm.prepare(opened, RunOptions(command=tuple(cmd)), BlobStore(), target, best.why)
print(f"prepared-at {time.time()}", file=sys.stderr, flush=True)
sys.exit(vm.run_in_vm(prepared, vm.VmOptions(kernel, accel=accel)))
"""


def _cli_wired() -> bool:
    r = subprocess.run([sys.executable, "-m", "kcompat", "run", "--help"], capture_output=True,
                       text=True, check=False)  # fmt: skip
    return "--vm-kernel" in r.stdout


def _true_initramfs(work: Path) -> Path:
    src = work / "true.c"
    src.write_text("int main(void) { return 0; }\n")
    binary = work / "true"
    subprocess.run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(src)], check=True)
    out = work / "true.cpio"
    entries = [("bin", 0o40755, b""), ("bin/true", 0o100755, binary.read_bytes())]
    out.write_bytes(vminit.cpio(entries))
    return out


def time_floor(kernel: kernelimage.Kernel, boot: Path, initrd: Path, accel: str) -> float:
    """Wall time of qemu booting to a static /bin/true as the first process."""
    cpu = "host" if accel == "kvm" else "max"
    cmd = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
           "-no-reboot", "-monitor", "none", "-m", f"{vm.DEFAULT_MEMORY >> 20}M", "-smp", "1",
           "-M", "pc", "-cpu", cpu, "-accel", accel, "-kernel", str(boot), "-initrd",
           str(initrd), "-append", "console=ttyS0 panic=-1 quiet rdinit=/bin/true",
           "-serial", "null"]  # fmt: skip
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    return time.monotonic() - t


def time_kcompat(spec: str, image: str, accel: str, wired: bool) -> tuple[float, float, float]:
    """(to the first stdout byte, to the end, to the run prepared: the Python side, the
    prediction included; NaN from the CLI) of one VM run of `echo x`."""
    if wired:
        cmd = [sys.executable, "-m", "kcompat", "run", "--vm-kernel", spec, image, "echo", "x"]
    else:
        cmd = [sys.executable, "-c", _CORE, spec, accel, image, "echo", "x"]
    env = dict(os.environ)
    wall = time.time()
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout is not None
    first = p.stdout.read(1)
    t_first = time.monotonic() - t
    _, err = p.communicate()
    total = time.monotonic() - t
    if p.returncode != 0 or first != b"x":
        raise SystemExit(f"kcompat run failed ({p.returncode}): {err.decode()[-500:]}")
    marks = [float(line.split()[1]) - wall for line in err.decode().splitlines()
             if line.startswith("prepared-at ")]  # fmt: skip
    return t_first, total, marks[0] if marks else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kernel", default="debian:bullseye")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    build = [sys.executable, str(REPO / "tests/fixtures/build_images.py")]
    images = subprocess.run(build, check=True, capture_output=True, text=True).stdout.split()[-1]
    image = f"oci:{Path(images) / 'layout'}:busybox-amd64"
    cache = default_cache_dir()
    kernel = vmkernel.resolve(args.kernel, cache)
    if kernel.arch != "amd64":
        raise SystemExit("the bench times an amd64 kernel (the floor is qemu-system-x86_64)")
    pvh, how = kernelimage.boot_image(kernel, cache)
    wired = _cli_wired()
    time_kcompat(args.kernel, image, "tcg", wired)  # warm: the rootfs, init, initramfs
    ok, why = vm.kvm_usable()
    accels = ["tcg"] + (["kvm"] if ok else [])
    print(f"kernel {kernel.source}; boots as: {how}")
    print(f"KVM: {'used' if ok else 'not used'} ({why})")
    print(f"kcompat side: {'the CLI' if wired else 'the core API (CLI wiring pending)'}; "
          f"{args.rounds} rounds, interleaved; medians in seconds")
    with tempfile.TemporaryDirectory() as tmp:
        initrd = _true_initramfs(Path(tmp))
        for accel in accels:
            rows: dict[str, list[float]] = {"floor-pvh": [], "floor-bzimage": [],
                                            "first": [], "total": [], "python": []}  # fmt: skip
            for _ in range(args.rounds):
                rows["floor-pvh"].append(time_floor(kernel, pvh, initrd, accel))
                rows["floor-bzimage"].append(time_floor(kernel, kernel.image, initrd, accel))
                first, total, python = time_kcompat(args.kernel, image, accel, wired)
                rows["first"].append(first)
                rows["total"].append(total)
                rows["python"].append(python)
            med = {k: statistics.median(v) for k, v in rows.items()}
            print(f"\n{accel.upper()}")
            print(f"  floor, qemu to /bin/true (PVH vmlinux)     {med['floor-pvh']:6.2f}")
            print(f"  floor, qemu to /bin/true (bzImage)         {med['floor-bzimage']:6.2f}")
            print(f"  kcompat run --vm-kernel: first instruction {med['first']:6.2f}  "
                  f"({med['first'] / med['floor-pvh']:.2f}x the PVH floor, "
                  f"{med['first'] / med['floor-bzimage']:.2f}x the bzImage floor)")
            print(f"  kcompat run --vm-kernel: whole run         {med['total']:6.2f}")
            print(f"    of which start-up and prediction, to the prepared run (Python) "
                  f"{med['python']:.2f}")
            print("  rounds: " + "; ".join(f"{k} " + " ".join(f"{x:.2f}" for x in v)
                                          for k, v in rows.items()))  # fmt: skip
    print(f"\nload average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
