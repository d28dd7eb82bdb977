#!/usr/bin/env python3
"""The speed benchmark's corpus: Debian images of growing size, built from Debian's
packages the way a Dockerfile would layer them.

Each stage is a real `mmdebstrap` root file system of bookworm with more packages; its
image is the previous stage's image plus one layer that `umoci repack` computes as the
difference (new and changed files, whiteouts for removed ones), gzip-compressed. So
`speed:3` has the layers of `speed:2` plus one, as `FROM speed:2 / RUN apt-get install`
would give.

  speed:1  minbase                                          (about 0.1 GB uncompressed)
  speed:2  + build-essential                                 (gcc, binutils, perl, libc6-dev)
  speed:3  + python3, python3-dev
  speed:4  + openjdk-17-jdk-headless, clang                  (over 1 GB, thousands of ELF files)

and, on its own, a multi-runtime image of one layer (as `docker export | docker import`
or a squashed build gives), trixie minbase with:

  speed:runtimes  nodejs (Node, libuv), openjdk-21-jre-headless (a JVM), fzf (Go),
                  ripgrep and fd-find (Rust, glibc), and a static musl program compiled
                  here with musl-gcc (musl-tools) from bench/data/hello-musl.c

Downloaded .deb files are kept in OUT/debs, so rebuilding a stage downloads nothing.
Needs root (mmdebstrap keeps owners and device nodes), mmdebstrap, umoci, tar.

Run: python3 bench/speed_corpus.py [OUT]   (default .fixtures/speed; a built stage is kept)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# (tag, packages added at this stage)
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("1", ()),
    ("2", ("build-essential",)),
    ("3", ("python3", "python3-dev")),
    ("4", ("openjdk-17-jdk-headless", "clang")),
)
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUNTIMES_SUITE = "trixie"
RUNTIMES = ("nodejs", "openjdk-21-jre-headless", "fzf", "ripgrep", "fd-find")
MUSL_SOURCE = REPO / "bench" / "data" / "hello-musl.c"


def run(*argv: str) -> None:
    print("+", " ".join(argv), file=sys.stderr, flush=True)
    subprocess.run(argv, check=True)


def default_out() -> Path:
    return Path(os.environ.get("KCOMPAT_FIXTURES", REPO / ".fixtures")) / "speed"


def rootfs_tar(packages: list[str], debs: Path, out: Path, suite: str = SUITE,
               hooks: tuple[str, ...] = ()) -> None:
    """A minbase root file system with `packages`, as a tar, the .debs cached in `debs`
    (the recipe in mmdebstrap(1), EXAMPLES, for a local package cache)."""
    debs.mkdir(parents=True, exist_ok=True)
    argv = ["mmdebstrap", "--quiet", "--variant=minbase", "--skip=download/empty",
            "--skip=essential/unlink",
            '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
            f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
            f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
            '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
            *(f"--customize-hook={h}" for h in hooks),
            ]  # fmt: skip
    if packages:
        argv.append("--include=" + ",".join(packages))
    run(*argv, suite, str(out), MIRROR)


def _commit_stage(layout: Path, base: str, tag: str, tar: Path, work: Path, cmd: str) -> None:
    """Image `tag`: image `base` plus one layer, the difference to the root file system in
    `tar` (umoci repack computes it), with `cmd` as its Cmd."""
    bundle = work / "bundle"
    run("umoci", "unpack", "--image", f"{layout}:{base}", str(bundle))
    shutil.rmtree(bundle / "rootfs")
    (bundle / "rootfs").mkdir()
    run("tar", "-xpf", str(tar), "--numeric-owner", "-C", str(bundle / "rootfs"))
    run("umoci", "repack", "--image", f"{layout}:{tag}", str(bundle))
    run("umoci", "config", "--image", f"{layout}:{tag}", "--os", "linux", "--architecture",
        "amd64", "--config.cmd", cmd, "--config.env", PATH_ENV)  # fmt: skip
    run("umoci", "gc", "--layout", str(layout))


def build(out: Path, tags: tuple[str, ...] | None = None) -> Path:
    """Build every missing stage (or only those the images `tags` need: speed:N needs
    stages 1 to N, speed:runtimes none of them); the OCI layout holding them all."""
    layout = out / "layout"
    out.mkdir(parents=True, exist_ok=True)
    if not layout.exists():
        run("umoci", "init", "--layout", str(layout))
        run("umoci", "new", "--image", f"{layout}:0")
    wanted = [int(t) for t in tags if t.isdigit()] if tags is not None else [len(STAGES)]
    last = max(wanted, default=0)
    packages: list[str] = []
    previous = "0"
    for tag, added in STAGES[:last]:
        packages += added
        done = out / f"stage{tag}.done"
        if not done.exists():
            with tempfile.TemporaryDirectory(dir=out) as tmp:
                tar = Path(tmp) / "rootfs.tar"
                rootfs_tar(packages, out / "debs", tar)
                _commit_stage(layout, previous, tag, tar, Path(tmp), "bash")
            done.write_text(" ".join(packages) + "\n")
        previous = tag
    if tags is None or "runtimes" in tags:
        _build_runtimes(out, layout)
    return layout


def _build_runtimes(out: Path, layout: Path) -> None:
    """speed:runtimes, one layer: a trixie minbase with RUNTIMES and a static musl program."""
    done = out / "runtimes.done"
    if done.exists():
        return
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        musl = Path(tmp) / "hello-musl"
        run("musl-gcc", "-static", "-O2", "-o", str(musl), str(MUSL_SOURCE))
        tar = Path(tmp) / "rootfs.tar"
        rootfs_tar(list(RUNTIMES), out / f"debs-{RUNTIMES_SUITE}", tar, RUNTIMES_SUITE,
                   (f"upload {musl} /usr/local/bin/hello-musl",
                    'chmod 0755 "$1"/usr/local/bin/hello-musl'))  # fmt: skip
        _commit_stage(layout, "0", "runtimes", tar, Path(tmp), "node")
    done.write_text(" ".join(RUNTIMES) + " hello-musl\n")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else default_out()
    print(build(out))


if __name__ == "__main__":
    main()
