"""Hold-out images for bench/accuracy.py: program families the census (bench/census.py)
did not observe nor tune kcompat's facts on, so the accuracy report checks that the
rules generalise rather than repeat the census.

Each image is a Debian bookworm minbase root file system made by mmdebstrap with the
packages below (foreign arches built inside a user namespace with a private
binfmt_misc, as the census does: nothing is registered host-wide), plus /srv/acc (the
inputs of the smoke commands), packed as an OCI image with umoci. Cached under
.fixtures/accuracy/<name>/ with a build key; a changed key rebuilds that image only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIRROR = "http://deb.debian.org/debian"
DEB_ARCH = {"amd64": "amd64", "arm64": "arm64", "s390x": "s390x", "ppc64le": "ppc64el"}
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# (family, Debian package, smoke command): start-up and one typical code path each
AMD64 = (
    ("php", "php-cli", ("php", "-r", "echo bin2hex(random_bytes(4)), PHP_EOL;")),
    ("lua", "lua5.4", ("lua5.4", "-e", "print(string.format('%d', 6*7))")),
    ("tcl", "tcl8.6", ("tclsh8.6", "/srv/acc/hello.tcl")),
    ("awk", "gawk", ("gawk", "BEGIN { srand(); print 6*7 }")),
    ("jq-c", "jq", ("jq", "-n", "[1,2,3]|add")),
    ("libmagic", "file", ("file", "/bin/dash")),
    ("bc", "bc", ("bc", "--version")),
    ("nginx", "nginx-light", ("nginx", "-t")),
    ("redis", "redis-tools", ("redis-cli", "--version")),
    ("libgcrypt", "gpg", ("gpg", "--batch", "--armor", "--gen-random", "1", "8")),
    ("rsync", "rsync", ("rsync", "-a", "/etc/hostname", "/tmp/hostname-copy")),
    ("wget", "wget", ("wget", "--version")),
    ("openssh", "openssh-client", ("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                                   "/tmp/key")),
    ("gnutls", "gnutls-bin", ("certtool", "--generate-privkey", "--key-type=ed25519")),
    ("go", "direnv", ("direnv", "version")),
    ("go", "gron", ("gron", "/srv/acc/doc.json")),
    ("go", "gojq", ("gojq", "-n", "1+1")),
    ("go", "micro", ("micro", "-version")),
    ("rust", "hyperfine", ("hyperfine", "-N", "--runs", "2", "true")),
    ("rust", "bat", ("batcat", "--paging=never", "/etc/hostname")),
    ("rust", "zoxide", ("zoxide", "--version")),
    ("tmux", "tmux", ("tmux", "-V")),
)  # fmt: skip
FOREIGN = (
    ("awk", "gawk", ("gawk", "BEGIN { srand(); print 6*7 }")),
    ("jq-c", "jq", ("jq", "-n", "[1,2,3]|add")),
    ("lua", "lua5.4", ("lua5.4", "-e", "print(string.format('%d', 6*7))")),
    ("go", "gojq", ("gojq", "-n", "1+1")),
    ("libmagic", "file", ("file", "/bin/dash")),
)
IMAGES = {"holdout-amd64": ("amd64", AMD64), "holdout-arm64": ("arm64", FOREIGN),
          "holdout-s390x": ("s390x", FOREIGN)}  # fmt: skip
INPUTS = {"hello.tcl": "puts [expr {6*7}]\n", "doc.json": '{"a": [1, 2, {"b": "c"}]}\n'}
_BUILD = "accuracy-holdout-2"


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _key(arch: str, programs: tuple[tuple[str, str, tuple[str, ...]], ...]) -> str:
    doc = [_BUILD, MIRROR, arch, sorted({p for _, p, _ in programs}), INPUTS]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


def build(root: Path, name: str) -> tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]:
    """(OCI reference, ((family, argv), ...)) of one hold-out image, built if needed."""
    arch, programs = IMAGES[name]
    out = root / name
    key = _key(arch, programs)
    ref = f"oci:{out / 'layout'}:{name}"
    cases = tuple((fam, argv) for fam, _, argv in programs)
    meta = out / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        return ref, cases
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print(f"accuracy: building {name} with mmdebstrap (cached afterwards)...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        stage = Path(tmp) / "stage" / "acc"
        stage.mkdir(parents=True)
        for fname, text in INPUTS.items():
            (stage / fname).write_text(text)
        tar = Path(tmp) / "rootfs.tar"
        pkgs = ",".join(sorted({p for _, p, _ in programs}))
        cmd = ["mmdebstrap", "--quiet", "--mode=root", "--variant=minbase",
               f"--architectures={DEB_ARCH[arch]}", f"--include={pkgs}",
               '--aptopt=APT::Install-Recommends "false"',
               "--dpkgopt=path-exclude=/usr/share/man/*",
               "--dpkgopt=path-exclude=/usr/share/doc/*",
               '--customize-hook=mkdir -p "$1/srv/acc"',
               f"--customize-hook=sync-in {stage.resolve()} /srv/acc",
               "bookworm", str(tar), MIRROR]  # fmt: skip
        if arch == "amd64":
            _run(*cmd)
        else:
            sys.path.insert(0, str(REPO / "bench"))
            from census_corpus import _in_private_binfmt

            _in_private_binfmt(arch, cmd)
        layout = out / "layout"
        _run("umoci", "init", "--layout", str(layout))
        oref = f"{layout}:{name}"
        _run("umoci", "new", "--image", oref)
        bundle = Path(tmp) / "bundle"
        _run("umoci", "unpack", "--image", oref, str(bundle))
        _run("tar", "-xpf", str(tar), "--numeric-owner", "-C", str(bundle / "rootfs"))
        _run("umoci", "repack", "--image", oref, str(bundle))
        _run("umoci", "config", "--image", oref, "--os", "linux", "--architecture", arch,
             "--config.cmd", "sh", "--config.env", PATH_ENV)  # fmt: skip
        _run("umoci", "gc", "--layout", str(layout))
    meta.write_text(json.dumps({"key": key}) + "\n")
    return ref, cases
