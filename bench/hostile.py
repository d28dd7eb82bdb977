"""A hostile corpus through every local source: does kcompat stay inside its target?

Each case is an image built here from hand-made layers (no downloads): `..` and absolute
paths, symlink and hard link escapes within and across layers, device nodes, setuid
files, absurd header sizes, sparse bombs, gzip and zstd bombs, truncated streams, very
long names, 2000 levels of directories, a config whose diff_id lies. Every case is
served as `oci:`, `oci-archive:`, `docker-archive:` (made by skopeo from the layout) and,
when Debian's docker-registry is installed, from a registry on 127.0.0.1; for each,
`kcompat check` and `kcompat pull --unpack` run with a fresh KCOMPAT_CACHE inside a
canary directory, a timeout and an address-space cap (RLIMIT_AS). A run passes when:
the canary tree (and the absolute paths the links aim at) is unchanged, the exit
status is a documented one (and the case's expected one, where it has one), stderr is
only `kcompat:` lines (one error at most) and no traceback, and it ends in time.

    .venv/bin/python bench/hostile.py [--cap-mib 1024] [--timeout 180] [--only NAME]

Prints case x source -> outcome and the totals; exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.registry_server import RealRegistry  # noqa: E402

DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
ELF_HEAD = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\x3e\x00"  # ET_EXEC x86-64
BOMB = 1 << 30  # bytes a bomb inflates to
MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


# -- layers ----------------------------------------------------------------------------


@dataclass
class Layer:
    blob: bytes  # as stored (compressed or not)
    diff_id: str  # sha256 of the tar it should inflate to
    how: str = "gzip"


def _compress(tar: bytes, how: str) -> bytes:
    if how == "gzip":
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        return c.compress(tar) + c.flush()
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(tar)
    return tar


def layer(tar: bytes, how: str = "gzip") -> Layer:
    return Layer(_compress(tar, how), "sha256:" + hashlib.sha256(tar).hexdigest(), how)


Member = tuple[tarfile.TarInfo, bytes]


def info(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", mode: int = 0o644,
         data: bytes = b"", dev: tuple[int, int] = (0, 0)) -> Member:  # fmt: skip
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, link, mode
    ti.devmajor, ti.devminor = dev
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    return ti, data


def tar(*members: Member) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def raw_header(name: bytes, kind: bytes, size: int, extra: dict[int, bytes] | None = None) -> bytes:
    """A header written by hand, for what tarfile will not write (absurd sizes, GNU `S`)."""
    h = bytearray(512)
    h[0 : len(name)] = name[:100]
    h[100:124] = b"0000644\x000000000\x000000000\x00"
    if size < 8**11:
        h[124:136] = b"%011o\x00" % size
    else:  # GNU base-256
        h[124:136] = b"\x80" + size.to_bytes(11, "big")
    h[136:148] = b"00000000000\x00"
    h[156:157] = kind
    h[257:265] = b"ustar  \x00"
    for at, value in (extra or {}).items():
        h[at : at + len(value)] = value
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


END = bytes(1024)


def bomb(how: str, head: bytes = ELF_HEAD, size: int = BOMB) -> Layer:
    """One file of `size` bytes (mostly zeros) compressed on the fly: a few MB that
    inflate to a GiB."""
    ti = tarfile.TarInfo("bomb")
    ti.size, ti.mode = size, 0o755
    hasher = hashlib.sha256()
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    zs = zstandard.ZstdCompressor().compressobj()
    out: list[bytes] = []

    def put(data: bytes) -> None:
        hasher.update(data)
        out.append(gz.compress(data) if how == "gzip" else zs.compress(data))

    put(ti.tobuf(tarfile.PAX_FORMAT) + head)
    zeros = bytes(1 << 20)
    left = size - len(head)
    while left:
        put(zeros[: min(left, len(zeros))])
        left -= min(left, len(zeros))
    put(bytes(-size % 512) + END)
    out.append(gz.flush() if how == "gzip" else zs.flush())
    return Layer(b"".join(out), "sha256:" + hasher.hexdigest(), how)


# -- the cases -------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    layers: Callable[[Path], list[Layer]]  # given the canary directory
    expect: set[int] | None = None  # exit statuses allowed for both commands
    diff_ids: Callable[[list[Layer]], list[str]] | None = None  # a config that lies
    registry: bool = True


BASE = info("bin/sh", data=b"#!/bin/sh\nexit 0\n", mode=0o755)


def _up(canary: Path, to: str) -> str:
    """A relative path from anywhere in the target up to `to` in the canary."""
    return "../" * 40 + str(canary / to).lstrip("/")


def cases() -> list[Case]:
    def dotdot(c: Path) -> list[Layer]:
        return [layer(tar(BASE, info("../../../../../../escape-dotdot", data=b"x"),
                          info(_up(c, "victim.txt"), data=b"pwned"),
                          info("a/../../escape2", data=b"x")))]  # fmt: skip

    def absolute(c: Path) -> list[Layer]:
        climb = "/../../" + str(c / "abs-new").lstrip("/")
        return [layer(tar(BASE, info(str(c / "victim.txt"), data=b"pwned"), info(climb)))]

    def symlink_same(c: Path) -> list[Layer]:
        return [layer(tar(BASE, info("out", tarfile.SYMTYPE, link=str(c / "victimdir")),
                          info("out/pwned", data=b"x"),
                          info("rel", tarfile.SYMTYPE, link=_up(c, "victimdir")),
                          info("rel/pwned2", data=b"x"),
                          info("vict", tarfile.SYMTYPE, link=str(c / "victim.txt")),
                          info("vict", data=b"pwned")))]  # fmt: skip

    def symlink_cross(c: Path) -> list[Layer]:
        return [layer(tar(BASE, info("out", tarfile.SYMTYPE, link=str(c / "victimdir")),
                          info("rel", tarfile.SYMTYPE, link=_up(c, "victimdir")),
                          info("f", tarfile.SYMTYPE, link=str(c / "victim.txt")))),
                layer(tar(info("out/pwned", data=b"x"), info("rel/sub/pwned", data=b"x"),
                          info("f", data=b"pwned")), "zstd")]  # fmt: skip

    def hardlink(c: Path) -> list[Layer]:
        return [layer(tar(BASE, info("h1", tarfile.LNKTYPE, link=_up(c, "victim.txt")),
                          info("h2", tarfile.LNKTYPE, link=str(c / "victim.txt")),
                          info("h3", tarfile.LNKTYPE, link="../../etc/passwd"),
                          info("hdir", tarfile.LNKTYPE, link="bin")))]  # fmt: skip

    def hardlink_cross(c: Path) -> list[Layer]:
        return [layer(tar(BASE, info("s", tarfile.SYMTYPE, link=str(c / "victim.txt")),
                          info("d", tarfile.SYMTYPE, link=str(c / "victimdir")))),
                layer(tar(info("hs", tarfile.LNKTYPE, link="s"),
                          info("hd", tarfile.LNKTYPE, link="d/inner"))),
                layer(tar(info("hs", data=b"pwned"), info("s", data=b"pwned")))]  # fmt: skip

    def devices(c: Path) -> list[Layer]:
        return [layer(tar(BASE, info("dev/mem", tarfile.CHRTYPE, mode=0o666, dev=(1, 1)),
                          info("dev/sda", tarfile.BLKTYPE, mode=0o666, dev=(8, 0)),
                          info("dev/fifo", tarfile.FIFOTYPE),
                          info(str(c / "devnode"), tarfile.CHRTYPE, dev=(1, 3))))]  # fmt: skip

    def setuid(c: Path) -> list[Layer]:
        return [layer(tar(BASE, info("bin/su", data=b"#!/bin/sh\n", mode=0o4755),
                          info("bin/sg", data=b"#!/bin/sh\n", mode=0o2755),
                          info("tmp", tarfile.DIRTYPE, mode=0o1777),
                          info("ro", tarfile.DIRTYPE, mode=0o000),
                          info("ro/inside", data=b"x")))]  # fmt: skip

    def absurd_size(c: Path) -> list[Layer]:
        huge = raw_header(b"huge", b"0", 1 << 62) + b"x" * 512 + END
        return [layer(tar(BASE)), layer(huge, "none")]

    def absurd_size_limit(c: Path) -> list[Layer]:  # just under 8^11: no data follows
        return [layer(tar(BASE)), layer(raw_header(b"big", b"0", 8**11 - 1) + END)]

    def sparse_bomb(c: Path) -> list[Layer]:
        """GNU `S`: 60 GiB real size, 512 bytes of data (an ELF head)."""
        real = 60 << 30
        slots = {386: b"%011o\x00%011o\x00" % (0, 512), 483: b"%011o\x00" % real}
        h = raw_header(b"sparse-elf", b"S", 512, slots)
        return [layer(tar(BASE)), layer(h + ELF_HEAD.ljust(512, b"\0") + END)]

    def sparse_bad_map(c: Path) -> list[Layer]:
        slots = {386: b"%011o\x00%011o\x00%011o\x00%011o\x00" % (0, 512, 100, 512),
                 483: b"%011o\x00" % 4096}  # fmt: skip
        h = raw_header(b"overlap", b"S", 1024, slots)
        return [layer(tar(BASE)), layer(h + bytes(1024) + END)]

    def sparse_map_bomb(c: Path) -> list[Layer]:
        pax = tarfile.TarInfo("f")
        pax.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                           "GNU.sparse.name": "f", "GNU.sparse.realsize": "4096"}  # fmt: skip
        pax.size = 512
        body = b"999999999999\n".ljust(512, b"\0")
        return [layer(tar(BASE)), layer(pax.tobuf(tarfile.PAX_FORMAT) + body + END)]

    def truncated_gzip(c: Path) -> list[Layer]:
        good = layer(tar(BASE, info("big", data=os.urandom(200_000))))
        return [Layer(good.blob[: len(good.blob) // 2], good.diff_id)]

    def truncated_zstd(c: Path) -> list[Layer]:
        good = layer(tar(BASE, info("big", data=os.urandom(200_000))), "zstd")
        return [Layer(good.blob[: len(good.blob) // 2], good.diff_id, "zstd")]

    def truncated_tar(c: Path) -> list[Layer]:
        good = tar(BASE, info("big", data=os.urandom(20_000)))
        return [Layer(good[:6000], layer(good).diff_id, "none")]

    def garbage(c: Path) -> list[Layer]:
        return [layer(os.urandom(4096), "none")]

    def long_names(c: Path) -> list[Layer]:
        long_path = "/".join(["n" * 200] * 30) + "/file"  # 6 KB: longer than PATH_MAX
        return [layer(tar(BASE, info("x" * 300, data=b"x"), info(long_path, data=b"x"),
                          info("l", tarfile.SYMTYPE, link="y" * 5000),
                          info("p" * 150 + "/" + "q" * 150, data=b"x")))]  # fmt: skip

    def huge_pax(c: Path) -> list[Layer]:
        return [layer(tar(BASE)), layer(tar(info("z" * (2 << 20), data=b"x")))]

    def deep(c: Path) -> list[Layer]:
        path = "/".join(["d"] * 2000)
        return [layer(tar(BASE, info(path + "/file", data=b"#!/bin/sh\n", mode=0o755),
                          info(path + "/link", tarfile.SYMTYPE, link="../" * 2100)))]  # fmt: skip

    def whiteouts(c: Path) -> list[Layer]:
        return [layer(tar(BASE, info("etc/keep", data=b"x"))),
                layer(tar(info(".wh..wh..opq", data=b""), info(".wh.", data=b""),
                          info(".wh...", data=b""), info("etc/.wh.keep", data=b""),
                          info("bin/sh", data=b"#!/bin/sh\n", mode=0o755)))]  # fmt: skip

    def type_swaps(c: Path) -> list[Layer]:
        return [layer(tar(BASE, info("a", tarfile.DIRTYPE), info("a/f", data=b"x"),
                          info("b", data=b"file"))),
                layer(tar(info("a", data=b"now a file"), info("b", tarfile.DIRTYPE),
                          info("b/inner", data=b"x"),
                          info("loop", tarfile.SYMTYPE, link="loop")))]  # fmt: skip

    def gzip_bomb(c: Path) -> list[Layer]:
        return [layer(tar(BASE)), bomb("gzip")]

    def zstd_bomb(c: Path) -> list[Layer]:
        return [layer(tar(BASE)), bomb("zstd")]

    def wrong_diff_id(ls: list[Layer]) -> list[str]:
        return ["sha256:" + "c" * 64 for _ in ls]

    return [
        Case("dotdot", dotdot),
        Case("absolute", absolute),
        Case("symlink-same-layer", symlink_same),
        Case("symlink-cross-layer", symlink_cross),
        Case("hardlink-escape", hardlink),
        Case("hardlink-cross-layer", hardlink_cross),
        Case("devices", devices),
        Case("setuid-modes", setuid),
        Case("absurd-size-2^62", absurd_size, {7}),
        Case("absurd-size-no-data", absurd_size_limit, {7}),
        Case("sparse-60GiB", sparse_bomb),
        Case("sparse-bad-map", sparse_bad_map, {7}),
        Case("sparse-map-bomb", sparse_map_bomb, {7}),
        Case("truncated-gzip", truncated_gzip, {7}),
        Case("truncated-zstd", truncated_zstd, {7}),
        Case("truncated-tar", truncated_tar, {6, 7}),  # docker-archive: named by diff_id
        Case("garbage-layer", garbage, {7}),
        Case("long-names", long_names),
        Case("pax-2MiB-name", huge_pax),
        Case("deep-2000", deep),
        Case("whiteouts", whiteouts),
        Case("type-swaps", type_swaps),
        Case("gzip-bomb-1GiB", gzip_bomb),
        Case("zstd-bomb-1GiB", zstd_bomb),
        Case("wrong-diff-id", lambda c: [layer(tar(BASE))], {6}, wrong_diff_id),
    ]


# -- images in every source --------------------------------------------------------------


def write_layout(out: Path, ref: str, layers: list[Layer], diff_ids: list[str]) -> None:
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes, media: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}

    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}  # fmt: skip
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": put(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [put(x.blob, MEDIA[x.how]) for x in layers],
    }
    desc = put(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))


def sources(case: Case, work: Path, canary: Path, registry: RealRegistry | None) -> Iterator[
        tuple[str, str | None, str]]:  # fmt: skip
    """(source, reference or None if it could not be made, why not)."""
    layers = case.layers(canary)
    diff_ids = case.diff_ids(layers) if case.diff_ids else [x.diff_id for x in layers]
    layout = work / case.name / "layout"
    write_layout(layout, "img", layers, diff_ids)
    yield "oci", f"oci:{layout}:img", ""
    archive = work / case.name / "oci.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(layout, arcname=".")
    yield "oci-archive", f"oci-archive:{archive}:img", ""
    docker = work / case.name / "docker.tar"
    repo_name = "hostile/" + case.name.lower().replace("^", "") + ":1"  # a valid docker name
    r = _skopeo(f"oci:{layout}:img", f"docker-archive:{docker}:{repo_name}")
    yield "docker-archive", (f"docker-archive:{docker}" if r is None else None), r or ""
    if registry is not None:
        repo = f"{registry.host}/{repo_name}"
        r = _skopeo("--dest-tls-verify=false", f"oci:{layout}:img", f"docker://{repo}")
        yield "registry", (f"docker://{repo}" if r is None else None), r or ""


def _skopeo(*args: str) -> str | None:
    """None on success, else skopeo's last line (skopeo refusing a hostile image is fine:
    that source just has nothing to test)."""
    r = subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", *args],
                       capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    if r.returncode == 0:
        return None
    return (r.stderr.strip().splitlines() or ["failed"])[-1][:100]


# -- one run ---------------------------------------------------------------------------


def snapshot(canary: Path, skip: str) -> dict[str, object]:
    """Every path under the canary (but the target `skip`) with its type, mode and content."""
    out: dict[str, object] = {}
    for root, dirs, files in os.walk(canary):
        rel_root = os.path.relpath(root, canary)
        if rel_root == ".":
            dirs[:] = [d for d in dirs if d != skip]
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            what: object = (st.st_mode, st.st_size, st.st_nlink)
            if os.path.islink(p):
                what = ("link", os.readlink(p))
            elif os.path.isfile(p):
                what = (st.st_mode, hashlib.sha256(Path(p).read_bytes()).hexdigest(), st.st_nlink)
            out[os.path.relpath(p, canary)] = what
    return out


@dataclass
class Outcome:
    ok: bool
    text: str
    notes: list[str] = field(default_factory=list)


def run_kcompat(args: list[str], canary: Path, cap: int, timeout: float) -> tuple[int, str, float]:
    cache = canary / "target"
    subprocess.run(["rm", "-rf", str(cache)], check=True)  # deep trees: not shutil.rmtree
    cache.mkdir()
    env = {**os.environ, "KCOMPAT_CACHE": str(cache), "KCOMPAT_RETRIES": "1",
           "DOCKER_CONFIG": str(canary / "target" / "no-docker")}  # fmt: skip

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    start = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "kcompat", *args], cwd=canary, env=env,
                           capture_output=True, text=True, timeout=timeout,
                           preexec_fn=limit, check=False)  # fmt: skip
        return r.returncode, r.stderr, time.monotonic() - start
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return -1, err, time.monotonic() - start


def judge(case: Case, ref: str, canary: Path, sentinels: list[Path], cap: int,
          timeout: float) -> Outcome:  # fmt: skip
    before = snapshot(canary, "target")
    codes: list[str] = []
    problems: list[str] = []
    for args in (["check", "--kernel", "6.1", "--arch", "amd64", ref], ["pull", "--unpack", ref]):
        rc, err, secs = run_kcompat(args, canary, cap, timeout)
        codes.append(str(rc))
        lines = [x for x in err.splitlines() if x.strip()]
        if rc == -1:
            problems.append(f"{args[0]}: timeout after {secs:.0f}s")
        elif rc not in DOCUMENTED:
            problems.append(f"{args[0]}: exit {rc}: {(lines or [''])[-1][:160]}")
        elif case.expect is not None and rc not in case.expect:
            problems.append(f"{args[0]}: exit {rc}, expected {sorted(case.expect)}: "
                            f"{(lines or [''])[-1][:160]}")  # fmt: skip
        if "Traceback" in err:
            problems.append(f"{args[0]}: traceback: {lines[-1][:160] if lines else ''}")
        stray = [x for x in lines if not x.startswith("kcompat: ")]
        if stray and "Traceback" not in err:
            problems.append(f"{args[0]}: stray stderr: {stray[0][:120]}")
        if sum(x.startswith("kcompat: error:") for x in lines) > 1:
            problems.append(f"{args[0]}: more than one error line")
        after = snapshot(canary, "target")
        if after != before:
            changed = sorted(set(before.items()) ^ set(after.items()), key=str)
            problems.append(f"{args[0]}: ESCAPE: the canary changed: {changed[:3]}")
            before = after
        for s in sentinels:
            if s.exists() or s.is_symlink():
                problems.append(f"{args[0]}: ESCAPE: {s} was created")
                subprocess.run(["rm", "-rf", str(s)], check=False)
    subprocess.run(["rm", "-rf", str(canary / "target")], check=True)
    text = "/".join(codes)
    return Outcome(not problems, f"ok {text}" if not problems else f"FAIL {text}", problems)


def make_canary(work: Path) -> Path:
    canary = work / "canary"
    (canary / "victimdir").mkdir(parents=True)
    (canary / "victim.txt").write_text("the host's file\n")
    (canary / "victimdir" / "inner").write_text("inner\n")
    return canary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cap-mib", type=int, default=1024, help="RLIMIT_AS of each run")
    ap.add_argument("--timeout", type=float, default=180, help="seconds per run")
    ap.add_argument("--only", action="append", help="run only these cases")
    ap.add_argument("--no-registry", action="store_true")
    opts = ap.parse_args()
    if shutil.which("skopeo") is None:
        print("hostile: skopeo is needed for docker-archive (ci/setup installs it)")
    work = Path(tempfile.mkdtemp(prefix="kcompat-hostile-"))
    canary = make_canary(work)
    sentinels = [work / "canary-new", canary / "abs-new", Path("/escape-dotdot"),
                 Path("/escape2"), canary / "devnode"]  # fmt: skip
    registry = None
    if not opts.no_registry and shutil.which("docker-registry"):
        registry = RealRegistry(work / "registry")
    rows: list[tuple[str, str, Outcome]] = []
    try:
        for case in cases():
            if opts.only and case.name not in opts.only:
                continue
            for source, ref, why in sources(case, work / "images", canary, registry):
                if ref is None:
                    out = Outcome(True, "n/a", [f"{source} could not be made: {why}"])
                else:
                    out = judge(case, ref, canary, sentinels, opts.cap_mib << 20, opts.timeout)
                rows.append((case.name, source, out))
                print(f"  {case.name:22} {source:15} {out.text}", file=sys.stderr, flush=True)
            subprocess.run(["rm", "-rf", str(work / "images" / case.name)], check=True)
    finally:
        if registry is not None:
            registry.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return report(rows)


def report(rows: list[tuple[str, str, Outcome]]) -> int:
    srcs = list(dict.fromkeys(s for _, s, _ in rows))
    names = list(dict.fromkeys(n for n, _, _ in rows))
    cell = {(n, s): o for n, s, o in rows}
    print("outcome per run: check/pull exit statuses\n")
    print(f"{'case':24}" + "".join(f"{s:17}" for s in srcs))
    for n in names:
        print(f"{n:24}" + "".join(f"{cell[n, s].text if (n, s) in cell else '-':17}" for s in srcs))
    ran = [o for _, _, o in rows if o.text != "n/a"]
    failed = [(n, s, o) for n, s, o in rows if not o.ok]
    skipped = [(n, s, o) for n, s, o in rows if o.text == "n/a"]
    print(f"\ncases: {len(names)}, sources: {len(srcs)}, runs: {len(ran)} (x2 commands), "
          f"passed: {len(ran) - len(failed)}, failed: {len(failed)}, "
          f"not made: {len(skipped)}")  # fmt: skip
    for n, s, o in failed + skipped:
        for note in o.notes:
            print(f"  {n} [{s}]: {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
