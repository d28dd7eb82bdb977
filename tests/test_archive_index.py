"""A Debian-style archive's Packages index is read as apt reads it: by its digest when the
InRelease offers `Acquire-By-Hash`, so a mirror caught mid-sync (a new Packages.xz under
the plain name, the old InRelease still served, or the reverse) still yields the index that
InRelease names; without by-hash a mismatch is retried once from a fresh InRelease, and a
mirror that stays inconsistent is an IntegrityError naming the file. A pool file (a .deb)
that does not match its index is fetched once more, then removed and refused; a body cut
short of its Content-Length is a failed attempt, never returned nor kept.

The mirror is a real HTTP server on 127.0.0.1 serving files from a directory; the
signature check is the integration tests' (tests/test_vm.py), so keyring=None here."""

from __future__ import annotations

import hashlib
import lzma
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kcompat import vmkernel
from kcompat.errors import IntegrityError, NetworkError

NAME = "main/binary-all/Packages.xz"


def _index(package: str) -> bytes:
    return lzma.compress(f"Package: {package}\nVersion: 1\nFilename: pool/{package}.deb\n"
                         "SHA256: 00\n\n".encode())  # fmt: skip


def _release(index: bytes, by_hash: bool) -> bytes:
    head = "Origin: Test\nSuite: stable\n" + ("Acquire-By-Hash: yes\n" if by_hash else "")
    digest = hashlib.sha256(index).hexdigest()
    return (head + f"SHA256:\n {digest} {len(index)} {NAME}\n").encode()


class Cut(bytes):
    """A body the server announces as 100 bytes longer than it sends (then it closes)."""


Route = Callable[[str, int], bytes | None]


@pytest.fixture
def mirror() -> Iterator[Callable[[Route], str]]:
    """A server whose answers come from `route(path, nth request of that path)`."""
    servers: list[ThreadingHTTPServer] = []

    def start(route: Route) -> str:
        seen: dict[str, int] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                n = seen[self.path] = seen.get(self.path, 0) + 1
                body = route(self.path, n)
                self.send_response(404 if body is None else 200)
                extra = 100 if isinstance(body, Cut) else 0
                self.send_header("Content-Length", str(len(body or b"") + extra))
                self.end_headers()
                self.wfile.write(body or b"")
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_mid_sync_mirror_is_read_by_hash(mirror: Callable[[Route], str]) -> None:
    old, new = _index("old-one"), _index("new-one")
    release = _release(old, by_hash=True)
    by_hash = f"/dists/stable/main/binary-all/by-hash/SHA256/{hashlib.sha256(old).hexdigest()}"
    files = {"/dists/stable/InRelease": release, by_hash: old, f"/dists/stable/{NAME}": new}
    url = mirror(lambda path, n: files.get(path))
    packages, _ = vmkernel._packages("stable", "all", url, None)
    assert list(packages) == ["old-one"]


def test_without_by_hash_a_mismatch_is_retried_once(mirror: Callable[[Route], str]) -> None:
    old, new = _index("old-one"), _index("new-one")

    def route(path: str, n: int) -> bytes | None:
        if path == "/dists/stable/InRelease":  # the first InRelease is from before the sync
            return _release(old if n == 1 else new, by_hash=False)
        return new if path == f"/dists/stable/{NAME}" else None

    packages, _ = vmkernel._packages("stable", "all", mirror(route), None)
    assert list(packages) == ["new-one"]


def test_an_inconsistent_mirror_is_an_integrity_error(mirror: Callable[[Route], str]) -> None:
    old, new = _index("old-one"), _index("new-one")
    files = {"/dists/stable/InRelease": _release(old, by_hash=True),
             f"/dists/stable/{NAME}": new}  # fmt: skip
    url = mirror(lambda path, n: files.get(path))
    with pytest.raises(IntegrityError, match=r"Packages\.xz: its SHA256 is not the one"):
        vmkernel._packages("stable", "all", url, None)


def test_a_body_cut_short_is_retried_and_never_kept(
        tmp_path: Path, mirror: Callable[[Route], str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A response that ends before its Content-Length is a failed attempt: the next one is
    taken, and when every one is cut, a NetworkError; nothing partial is left or renamed."""
    monkeypatch.setattr(vmkernel, "_RETRY_PAUSE", 0.0)
    whole = b"x" * 1000
    url = mirror(lambda path, n: Cut(whole[:10]) if n == 1 else whole)  # each path's 1st: cut
    assert vmkernel._fetch(f"{url}/a") == whole
    vmkernel._fetch(f"{url}/b", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == whole
    url = mirror(lambda path, n: Cut(whole[:10]))
    for dest in (None, tmp_path / "cut"):
        with pytest.raises(NetworkError, match=r"cannot download .*/c: IncompleteRead"):
            vmkernel._fetch(f"{url}/c", dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_ubuntu_keyring_is_taken_from_the_first_suite_that_reads(
        mirror: Callable[[Route], str]) -> None:
    """stable's index inconsistent, testing's without the package, unstable's has it."""
    bad, empty, good = _index("ubuntu-keyring"), _index("other"), _index("ubuntu-keyring")
    files = {"/dists/stable/InRelease": _release(bad, by_hash=False),
             f"/dists/stable/{NAME}": _index("changed"),
             "/dists/testing/InRelease": _release(empty, by_hash=False),
             f"/dists/testing/{NAME}": empty,
             "/dists/unstable/InRelease": _release(good, by_hash=False),
             f"/dists/unstable/{NAME}": good}  # fmt: skip
    url = mirror(lambda path, n: files.get(path))
    assert vmkernel._keyring_package(url, None)["Filename"] == "pool/ubuntu-keyring.deb"
    del files["/dists/unstable/InRelease"]
    with pytest.raises(IntegrityError, match="dists/stable/"):  # the first failure is told
        vmkernel._keyring_package(url, None)


def test_a_pool_file_is_fetched_again_once_then_refused(
        tmp_path: Path, mirror: Callable[[Route], str]) -> None:
    deb = b"!<arch>\n a package"
    pkg = {"Filename": "pool/p.deb", "SHA256": hashlib.sha256(deb).hexdigest()}
    url = mirror(lambda path, n: (b"cut" if n == 1 else deb) if path == "/pool/p.deb" else None)
    vmkernel._fetch_checked(url, pkg, tmp_path / "p.deb")  # the first answer was cut
    assert (tmp_path / "p.deb").read_bytes() == deb
    url = mirror(lambda path, n: b"always wrong" if path == "/pool/p.deb" else None)
    with pytest.raises(IntegrityError, match=r"pool/p\.deb: its SHA256 is not the index's"):
        vmkernel._fetch_checked(url, pkg, tmp_path / "q.deb")
    assert not (tmp_path / "q.deb").exists()
