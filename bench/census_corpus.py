"""The census corpus: real programs from Debian packages (and PyPI), one OCI image per
Debian suite and architecture, each program with a smoke command.

An image is a Debian minbase root file system made by mmdebstrap with every package the
suite's programs need, plus /srv/census (inputs for the smoke commands) and /opt/census
(programs that are not Debian packages: ruff's static musl build from PyPI, a C program
linked statically against Debian's musl). Foreign architectures are built by mmdebstrap
in a user namespace of our own, with a private binfmt_misc instance (Linux 6.7+) that
registers the host's static qemu-user: nothing is registered host-wide.

Images are cached under .fixtures/census/images/<suite>-<arch>/ (an OCI layout, ref
"census") with a meta.json: the build key (a hash of the package list, the inputs and
this file's build code), the package versions read from the image's dpkg status, and
the manifest digest. A changed key rebuilds that image only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIRROR = "http://deb.debian.org/debian"
SUITES = ("bullseye", "bookworm", "trixie")
FOREIGN_SUITES = ("bookworm",)  # foreign arches: one suite (emulation is slow)
ARCHES = ("amd64", "arm64", "s390x", "ppc64le")
DEB_ARCH = {"amd64": "amd64", "arm64": "arm64", "s390x": "s390x", "ppc64le": "ppc64el"}
RUFF = "ruff==0.17.6"  # static musl builds (musllinux wheels) for amd64 and arm64
RUFF_WHEEL_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}
# the example recipient of age's README (https://github.com/FiloSottile/age#readme)
AGE_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ALL = ("amd64", "arm64", "s390x", "ppc64le")
A64 = ("amd64", "arm64")
EMU = ("amd64", "arm64", "s390x")  # a dozen programs under qemu-user on both foreign arches
NATIVE = ("amd64",)


@dataclass(frozen=True)
class Program:
    """One smoke command: its start-up and one typical code path."""

    name: str  # unique: the row's program
    package: str  # the Debian package that ships it, or pypi:NAME / built:musl
    family: str  # refined per binary for go/rust (kcompat.census.refine_family)
    argv: tuple[str, ...]
    judge: tuple[str, ...] = ()  # what the prediction judges (default: argv)
    env: tuple[str, ...] = ()
    expect: str | None = None  # stdout must contain this
    arches: tuple[str, ...] = NATIVE
    needs: tuple[str, ...] = ()  # more Debian packages
    suites: tuple[str, ...] = SUITES

    @property
    def judged(self) -> tuple[str, ...]:
        return self.judge or self.argv

    @property
    def debian(self) -> bool:
        return ":" not in self.package


PY = (
    "import ssl, hashlib, subprocess, threading, os; "
    "t = threading.Thread(target=lambda: None); t.start(); t.join(); "
    "ctx = ssl.create_default_context(); "
    "h = hashlib.sha256(os.urandom(16)).hexdigest(); "
    "r = subprocess.run(['true']).returncode; "
    "print('census ok', len(h), r)"
)
PERL = (
    'my ($fh, $n) = tempfile(); print $fh "x"; close $fh; '
    'my $pid = fork(); die "fork: $!" unless defined $pid; exit 0 unless $pid; '
    'waitpid($pid, 0); print "census ok ", length(sha256_hex("x")), "\\n";'
)
RUBY = (
    't = Thread.new { Digest::SHA256.hexdigest("x") }; '
    'puts JSON.generate({"census ok" => t.value.size, "r" => SecureRandom.hex(4).size}); '
    'system("true") or exit 1'
)
NODE = (
    "const c = require('crypto'), fs = require('fs'), cp = require('child_process');"
    "fs.writeFileSync('/tmp/n', c.randomBytes(8).toString('hex'));"
    "const s = cp.execFileSync('cat', ['/tmp/n']).toString();"
    "console.log(s.length === 16 ? 'census ok' : 'bad')"
)
GIT = (
    "set -e; git init -q /tmp/repo; cd /tmp/repo; echo x > f; git add f; "
    "git -c user.name=census -c user.email=census@example.org commit -q -m census; "
    "git log --oneline | grep -q census; echo census ok"
)
JAVA = """import java.nio.file.*;

public class Hello {
    public static void main(String[] args) throws Exception {
        Thread t = new Thread(() -> {});
        t.start();
        t.join();
        Path p = Files.createTempFile("census", ".txt");
        Files.writeString(p, "census ok");
        Process child = new ProcessBuilder("true").start();
        System.out.println(Files.readString(p) + " " + child.waitFor());
    }
}
"""
MUSL_C = r"""#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;
static void *work(void *arg) { return arg; }

int main(void) {
    pthread_t t;
    if (pthread_create(&t, 0, work, 0)) { perror("pthread_create"); return 2; }
    pthread_join(t, 0);
    struct stat st;
    if (stat("/etc/passwd", &st)) { perror("stat"); return 3; }
    pid_t pid;
    char *argv[] = {"true", 0};
    if (posix_spawnp(&pid, "true", 0, 0, argv, environ)) { perror("posix_spawnp"); return 4; }
    int status;
    waitpid(pid, &status, 0);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    FILE *f = fopen("/tmp/musl-census", "w");
    if (!f) { perror("fopen"); return 5; }
    fprintf(f, "%ld\n", (long)ts.tv_sec);
    fclose(f);
    puts("census ok");
    return 0;
}
"""
SHELL_SAMPLE = '#!/bin/sh\nfor f in "$@"; do\n\techo "$f"\ndone\n'
PY_SAMPLE = 'import os\n\n\ndef main() -> None:\n    print(os.getcwd())\n\n\nmain()\n'

# fmt: off
PROGRAMS: tuple[Program, ...] = (
    # C and shell base tools
    Program("ls", "coreutils", "glibc-c", ("ls", "-l", "/etc"), arches=ALL),
    Program("cp", "coreutils", "glibc-c", ("cp", "-a", "/etc", "/tmp/etc-copy"), arches=ALL),
    Program("sort", "coreutils", "glibc-c",
            ("sort", "--parallel=2", "-S", "1M", "-o", "/tmp/sorted", "/srv/census/blob"),
            arches=EMU),
    Program("stat", "coreutils", "glibc-c", ("stat", "/etc/passwd")),
    Program("find", "findutils", "glibc-c",
            ("find", "/usr/lib", "-type", "f", "-name", "*.so*", "-size", "+1k")),
    Program("grep", "grep", "glibc-c", ("grep", "-r", "-l", "root", "/etc")),
    Program("sed", "sed", "glibc-c", ("sed", "-i", "s/root/toor/", "/etc/passwd")),
    Program("tar", "tar", "glibc-c", ("tar", "-czf", "/tmp/etc.tgz", "-C", "/", "etc")),
    Program("gzip", "gzip", "glibc-c", ("gzip", "-9", "-k", "/srv/census/blob")),
    Program("dpkg-query", "dpkg", "glibc-c", ("dpkg-query", "-W", "-f=${Package} ${Version}\\n")),
    Program("dash", "dash", "glibc-c",
            ("dash", "-c", "for i in 1 2 3; do echo $i; done | wc -l; x=$(cat /etc/hostname)"),
            arches=ALL),
    Program("bash", "bash", "glibc-c",
            ("bash", "-c", 'a=(1 2 3); echo ${#a[@]}; read -r l < /etc/passwd; '
             'echo "${l%%:*}"; sleep 0.1 & wait'), arches=ALL),
    Program("xz", "xz-utils", "glibc-c", ("xz", "-T2", "-1", "-k", "/srv/census/blob"), arches=EMU),
    Program("zstd", "zstd", "glibc-c", ("zstd", "-T2", "-q", "/srv/census/blob", "-o",
                                        "/tmp/blob.zst")),
    Program("sqlite3", "sqlite3", "glibc-c",
            ("sqlite3", "/tmp/t.db", "create table t(x); insert into t values(42); "
             "select x from t;"), expect="42"),
    # OpenSSL and curl
    Program("openssl-rand", "openssl", "openssl", ("openssl", "rand", "-hex", "8"), arches=ALL),
    Program("openssl-dgst", "openssl", "openssl", ("openssl", "dgst", "-sha256", "/etc/passwd")),
    Program("curl", "curl", "openssl",
            ("curl", "-sS", "-o", "/tmp/os-release", "file:///etc/os-release"), arches=EMU),
    Program("git", "git", "glibc-c", ("sh", "-c", GIT), judge=("git", "--version"),
            expect="census ok"),
    # systemd-linked
    Program("ps", "procps", "systemd-linked", ("ps", "-ef")),
    Program("systemctl", "systemd", "systemd-linked", ("systemctl", "--version")),
    Program("journalctl", "systemd", "systemd-linked", ("journalctl", "--version")),
    Program("systemd-id128", "systemd", "systemd-linked", ("systemd-id128", "new")),
    Program("systemd-analyze", "systemd", "systemd-linked",
            ("systemd-analyze", "calendar", "daily")),
    # C++
    Program("apt-get", "apt", "cxx", ("apt-get", "--version"), arches=EMU),
    Program("apt-cache", "apt", "cxx", ("apt-cache", "policy", "apt")),
    Program("cmake", "cmake", "cxx", ("cmake", "-E", "sha256sum", "/etc/passwd")),
    # interpreters
    Program("python3", "python3", "python", ("python3", "-c", PY), expect="census ok",
            arches=ALL),
    Program("perl", "perl", "perl",
            ("perl", "-MPOSIX", "-MFile::Temp=tempfile", "-MDigest::SHA=sha256_hex", "-e", PERL),
            expect="census ok", arches=EMU),
    Program("ruby", "ruby", "ruby", ("ruby", "-rjson", "-rdigest", "-rsecurerandom", "-e", RUBY),
            expect="census ok"),
    Program("java-version", "default-jre-headless", "jvm",
            ("java", "-XshowSettings:properties", "-version"), arches=A64),
    Program("java-hello", "default-jdk-headless", "jvm", ("java", "/srv/census/Hello.java"),
            expect="census ok 0"),
    Program("node", "nodejs", "node", ("node", "-e", NODE), expect="census ok", arches=EMU),
    # Go: without cgo (static; or PIE without libc), with cgo (libc.so.6 in DT_NEEDED)
    Program("shfmt", "shfmt", "go", ("shfmt", "-f", "/usr/bin"), arches=ALL,
            suites=("bookworm", "trixie")),  # not in bullseye
    Program("age-keygen", "age", "go", ("age-keygen", "-o", "/tmp/age.key")),
    Program("age", "age", "go",
            ("age", "-e", "-r", AGE_RECIPIENT, "-o", "/tmp/passwd.age", "/etc/passwd")),
    Program("fzf", "fzf", "go", ("fzf", "--version"), arches=EMU),
    Program("restic", "restic", "go", ("restic", "-q", "-r", "/tmp/repo", "init"),
            env=("RESTIC_PASSWORD=census",)),
    # Rust: glibc (Debian), static musl (PyPI's musllinux wheel)
    Program("rg", "ripgrep", "rust", ("rg", "-c", "root", "/etc"), arches=EMU),
    Program("fdfind", "fd-find", "rust", ("fdfind", "-t", "f", "passwd", "/etc")),
    Program("ruff", "pypi:ruff", "rust",
            ("/opt/census/ruff", "check", "--no-cache", "--select", "E,F", "/srv/census/x.py"),
            arches=A64, suites=("bookworm",)),  # static: any suite
    # static C
    Program("busybox", "busybox-static", "static-glibc",
            ("busybox", "tar", "-czf", "/tmp/etc.tgz", "/etc"), arches=ALL),
    Program("musl-c", "built:musl", "static-musl", ("/opt/census/musl-census",),
            expect="census ok", suites=("bookworm",)),
)
# fmt: on


def programs_for(suite: str, arch: str) -> tuple[Program, ...]:
    if arch != "amd64" and suite not in FOREIGN_SUITES:
        return ()
    return tuple(p for p in PROGRAMS if arch in p.arches and suite in p.suites
                 and (p.package != "pypi:ruff" or arch in RUFF_WHEEL_ARCH))  # fmt: skip


def packages_for(suite: str, arch: str) -> tuple[str, ...]:
    pkgs = {"ca-certificates"}
    for p in programs_for(suite, arch):
        if p.debian:
            pkgs.add(p.package)
        pkgs.update(p.needs)
    return tuple(sorted(pkgs))


# -- building ---------------------------------------------------------------------------


def _run(*cmd: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, check=False, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        said = [ln for ln in r.stderr.splitlines() if ln.startswith("E: ")][:5]
        raise BuildError(f"{' '.join(cmd[:6])}... failed ({r.returncode}):\n"
                         + "\n".join([*said, r.stderr[-2000:]]))  # fmt: skip
    return r.stdout


class BuildError(Exception):
    pass


def _ruff(arch: str, downloads: Path) -> Path:
    tag = f"musllinux_1_2_{RUFF_WHEEL_ARCH[arch]}"
    found = sorted(downloads.glob(f"ruff-*-{tag}.whl"))
    if not found:
        _run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--platform", tag, "-d", str(downloads), RUFF)  # fmt: skip
        found = sorted(downloads.glob(f"ruff-*-{tag}.whl"))
    if not found:
        raise BuildError(f"pip download {RUFF} --platform {tag} gave no wheel")
    return found[-1]


def _stage(suite: str, arch: str, stage: Path, downloads: Path) -> None:
    """/srv/census and /opt/census for the image, staged on the host."""
    srv, opt = stage / "srv" / "census", stage / "opt" / "census"
    srv.mkdir(parents=True)
    opt.mkdir(parents=True)
    line = b"census: the quick brown fox jumps over the lazy dog 0123456789\n"
    (srv / "blob").write_bytes(line * (8 * 1024 * 1024 // len(line)))  # 8 MiB: several blocks
    (srv / "Hello.java").write_text(JAVA)
    (srv / "x.sh").write_text(SHELL_SAMPLE)
    (srv / "x.py").write_text(PY_SAMPLE)
    names = {p.package for p in programs_for(suite, arch)}
    if "pypi:ruff" in names:
        import zipfile

        with zipfile.ZipFile(_ruff(arch, downloads)) as z:
            inner = next(n for n in z.namelist() if n.endswith(".data/scripts/ruff"))
            (opt / "ruff").write_bytes(z.read(inner))
        (opt / "ruff").chmod(0o755)
    if "built:musl" in names:
        src = stage / "musl-census.c"
        src.write_text(MUSL_C)
        _run("musl-gcc", "-static", "-O2", "-pthread", "-o", str(opt / "musl-census"), str(src))
        src.unlink()


def build_key(suite: str, arch: str) -> str:
    """What an image is made of: a change rebuilds it."""
    h = hashlib.sha256()
    progs = sorted(p.package for p in programs_for(suite, arch))
    h.update(json.dumps([suite, arch, MIRROR, RUFF, packages_for(suite, arch), progs]).encode())
    for text in (JAVA, MUSL_C, SHELL_SAMPLE, PY_SAMPLE, _BUILD_VERSION):
        h.update(text.encode())
    return h.hexdigest()[:16]


_BUILD_VERSION = "census-build-2"  # bump when the build steps below change


def _mmdebstrap(suite: str, arch: str, out_tar: Path, stage: Path) -> None:
    pkgs = ",".join(packages_for(suite, arch))
    cmd = [
        "mmdebstrap", "--quiet", "--mode=root", "--variant=minbase",
        f"--architectures={DEB_ARCH[arch]}", f"--include={pkgs}",
        '--aptopt=APT::Install-Recommends "false"',
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        # openjdk's postinst links its man page there (update-alternatives fails without)
        '--setup-hook=mkdir -p "$1/usr/share/man/man1"',
        f"--customize-hook=sync-in {stage}/srv /srv",
        f"--customize-hook=sync-in {stage}/opt /opt",
        suite, str(out_tar), MIRROR,
    ]  # fmt: skip
    if arch == "amd64":
        _run(*cmd)
        return
    _in_private_binfmt(arch, cmd)


def _in_private_binfmt(arch: str, cmd: list[str]) -> None:
    """Run `cmd` as root of a new user namespace (uids 0-65535 mapped to themselves), with
    new mount and PID namespaces and a binfmt_misc instance of its own (Linux 6.7+) that
    registers qemu-user for `arch` with flag F: mmdebstrap then runs the maintainer
    scripts of a foreign root under qemu, and the host's registrations stay untouched."""
    sys.path.insert(0, str(REPO))
    from kcompat import linuxapi as L
    from kcompat.binfmt import BINFMT

    spec = BINFMT[arch]
    qemu = shutil.which(f"qemu-{spec.qemu}-static")
    if qemu is None:
        raise BuildError(f"qemu-{spec.qemu}-static not found: apt-get install qemu-user-static")
    line = spec.register_line(qemu)
    script = (
        "set -e; mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; "
        "printf '%s' \"$CENSUS_BINFMT\" > /proc/sys/fs/binfmt_misc/register; "
        'exec "$@"'
    )
    r, w = os.pipe()  # parent -> child: "g", the maps are written
    r2, w2 = os.pipe()  # child -> parent: "u", it is in its new user namespace
    pid = os.fork()
    if pid == 0:  # the child: a new user namespace, mapped by the parent
        try:
            os.close(w)
            os.close(r2)
            L.unshare(L.CLONE_NEWUSER)
            os.write(w2, b"u")
            os.close(w2)
            if os.read(r, 1) != b"g":
                os._exit(126)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            env = dict(os.environ, CENSUS_BINFMT=line)
            os.execvpe("unshare", ["unshare", "--mount", "--pid", "--fork", "--mount-proc",
                                   "--propagation", "private", "sh", "-c", script, "sh", *cmd],
                       env)  # fmt: skip
        finally:
            os._exit(127)
    os.close(r)
    os.close(w2)
    go = b"x"
    try:
        # only once the child has unshared: before, its maps are the parent's (EPERM)
        if os.read(r2, 1) == b"u":
            for name in ("uid_map", "gid_map"):
                Path(f"/proc/{pid}/{name}").write_text("0 0 65536\n")
            go = b"g"
    finally:
        os.write(w, go)
        os.close(w)
        os.close(r2)
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise BuildError(f"mmdebstrap for {arch} failed (exit {os.waitstatus_to_exitcode(status)})")


def _dpkg_versions(rootfs: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    pkg = None
    status = rootfs / "var/lib/dpkg/status"
    for line in status.read_text(errors="replace").splitlines():
        if line.startswith("Package: "):
            pkg = line.split(": ", 1)[1].strip()
        elif line.startswith("Version: ") and pkg:
            out[pkg] = line.split(": ", 1)[1].strip()
    return out


@dataclass(frozen=True)
class Image:
    suite: str
    arch: str
    reference: str  # oci:DIR:census
    digest: str  # the manifest's
    versions: dict[str, str] = field(default_factory=dict)  # Debian package -> version
    programs: tuple[Program, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.suite}-{self.arch}"


def build_image(suite: str, arch: str, root: Path, log: object = None) -> Image:
    """The image for (suite, arch), built unless its cached build key matches."""
    out = root / "images" / f"{suite}-{arch}"
    meta_path = out / "meta.json"
    key = build_key(suite, arch)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return Image(suite, arch, f"oci:{out / 'layout'}:census", meta["digest"],
                         meta["versions"], programs_for(suite, arch))  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    print(f"census: building {suite}-{arch} ({len(packages_for(suite, arch))} packages) with "
          "mmdebstrap...", file=sys.stderr, flush=True)  # fmt: skip
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=root / "tmp") as tmp:
            t = Path(tmp)
            stage = t / "stage"
            _stage(suite, arch, stage, downloads)
            tar = t / "rootfs.tar"
            _mmdebstrap(suite, arch, tar, stage)
            layout = out / "layout"
            out.mkdir(parents=True)
            _run("umoci", "init", "--layout", str(layout))
            ref = f"{layout}:census"
            _run("umoci", "new", "--image", ref)
            bundle = t / "bundle"
            _run("umoci", "unpack", "--image", ref, str(bundle))
            _run("tar", "-xpf", str(tar), "--numeric-owner", "-C", str(bundle / "rootfs"))
            tar.unlink()
            versions = _dpkg_versions(bundle / "rootfs")
            _run("umoci", "repack", "--image", ref, str(bundle))
            shutil.rmtree(bundle)
            _run("umoci", "config", "--image", ref, "--os", "linux", "--architecture", arch,
                 "--config.cmd", "bash", "--config.env", PATH_ENV)  # fmt: skip
            _run("umoci", "gc", "--layout", str(layout))
            index = json.loads((layout / "index.json").read_text())
            digest = next(m["digest"] for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
                          == "census")  # fmt: skip
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no partial image stays
        raise
    meta = {"key": key, "suite": suite, "arch": arch, "digest": digest, "versions": versions,
            "packages": packages_for(suite, arch)}  # fmt: skip
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return Image(suite, arch, f"oci:{layout}:census", digest, versions, programs_for(suite, arch))
