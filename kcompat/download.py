"""One blob brought from a registry into the blob store, read as it arrives.

`BlobDownload.read_chunk()` gives the blob's bytes in the order they come off the
network, each written to the store's partial file and hashed before it is handed on, so
a caller may consume the blob (kcompat.layerscan inflates and scans a layer) while it
downloads. An interruption is resumed with HTTP Range (a registry that answers a range
with the whole blob is read past what is already here), retried with backoff. At the
end the length and the digest are checked: a blob that is too long, too short (the
registry sent all it meant to) or of another digest is deleted and is an
IntegrityError. `commit()` renames the checked file into place. Until then the blob's
name does not exist in the store; a partial file left by an interruption is resumed by
the next download.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

import requests

from kcompat.errors import IntegrityError, LocalIOError, NetworkError
from kcompat.image import Descriptor
from kcompat.progress import NoProgress, Progress
from kcompat.store import BlobStore, hash_file

if TYPE_CHECKING:
    from pathlib import Path

    from kcompat.registry import RegistryClient

# What one read from the socket may hold: an interrupted download keeps all but this much.
NET_CHUNK = 256 * 1024

_BROKEN = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,  # the socket's own, should one get past requests
    TimeoutError,
)


class BlobDownload:
    """The blob `desc` streamed into `store`'s partial file (resuming what it holds).
    The caller holds the blob's store lock for the download's whole life
    (`on_close` may release it)."""

    def __init__(
        self,
        client: RegistryClient,
        desc: Descriptor,
        store: BlobStore,
        progress: Progress | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.client, self.desc, self.store = client, desc, store
        self._on_close = on_close  # e.g. the lock's release
        self.progress = progress or NoProgress()
        self.what = f"blob {desc.digest} of {client.ref.name}"
        self.partial: Path = store.partial_path(desc.digest)
        self.hasher = hashlib.new(desc.digest.split(":")[0])
        self._chunks: Iterator[bytes] | None = None
        self._response: requests.Response | None = None
        self._received = 0  # of the current response's body
        self._skip = 0  # bytes of the current response already here (it ignored the range)
        self._failures = 0
        self._whole = False  # the registry refused a range: ask for the whole blob
        self._done = False
        self._committed = False
        offset = self.partial.stat().st_size if self.partial.exists() else 0
        if offset > desc.size:
            offset = 0
        try:
            self._out: IO[bytes] = open(self.partial, "ab" if offset else "wb")  # noqa: SIM115 (closed by close())
        except OSError as e:
            raise self._disk_error(e) from None
        self.written = offset
        if offset:
            hash_file(self.hasher, self.partial)  # the kept prefix, once, on resume only
        self.progress.advance(desc.digest, offset)

    # -- reading ---------------------------------------------------------------------
    def read_chunk(self) -> bytes:
        """The next bytes of the blob (b"" at its end, once its digest is checked)."""
        while not self._done:
            if self.written == self.desc.size and self._chunks is None:
                self._check_digest()
                return b""
            if self._chunks is None:
                self._connect()
            assert self._chunks is not None
            try:
                chunk = next(self._chunks, None)
            except _BROKEN as e:
                self._interrupted(reason_of(e))
                continue
            if chunk is None:
                self._ended()
                continue
            self._received += len(chunk)
            if self._skip:
                drop = min(self._skip, len(chunk))
                self._skip -= drop
                chunk = chunk[drop:]
                if not chunk:
                    continue
            if self.written + len(chunk) > self.desc.size:
                self.discard()
                raise IntegrityError(
                    f"{self.what} is larger than the {self.desc.size} bytes its manifest says",
                    hint="the registry content is corrupt or hostile",
                )
            try:
                self._out.write(chunk)
            except OSError as e:
                self.discard()
                raise self._disk_error(e) from None
            self.hasher.update(chunk)
            self.written += len(chunk)
            self.progress.advance(self.desc.digest, len(chunk))
            return chunk
        return b""

    def _connect(self) -> None:
        offset = 0 if self._whole else self.written
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.client.request("GET", f"blobs/{self.desc.digest}", headers=headers,
                                       stream=True)  # fmt: skip
        if response.status_code == 416 and offset:
            response.close()
            self._whole = True
            self._interrupted("the registry refused the resume range; reading it whole")
            return
        if response.status_code not in (200, 206):
            self.client.refuse(response, self.what)
        self._response, self._received = response, 0
        self._skip = self.written if response.status_code == 200 else 0
        self._chunks = iter(response.iter_content(NET_CHUNK))

    def _ended(self) -> None:
        """The current response has no more: the blob's end, a short blob or a break."""
        response = self._close_response()
        if self.written >= self.desc.size:
            return
        length = response.headers.get("Content-Length", "") if response is not None else ""
        if length.isdigit() and self._received == int(length):
            # The registry sent all it meant to: its copy is short, not the link.
            self.discard()
            raise IntegrityError(
                f"{self.what}: the registry serves {self.written} bytes, its manifest says "
                f"{self.desc.size}",
                hint="the registry's copy is truncated; re-push the image "
                "(the download was deleted)",
            )
        self._interrupted(f"connection closed after {self.written} of {self.desc.size} bytes")

    def _interrupted(self, reason: str) -> None:
        self._close_response()
        if self._failures >= self.client.retries:
            with contextlib.suppress(OSError):
                self._out.flush()  # what came is kept for the next attempt
            raise NetworkError(
                f"download of {self.desc.digest} from {self.client.ref.name} kept failing: "
                f"{reason}",
                hint="run the command again: it resumes where it stopped",
            )
        self.client.sleep(self.client.backoff * (2**self._failures))
        self._failures += 1

    def _check_digest(self) -> None:
        got = f"{self.desc.digest.split(':')[0]}:{self.hasher.hexdigest()}"
        if got != self.desc.digest:
            self.discard()
            raise IntegrityError(
                f"{self.what}: downloaded content has digest {got}",
                hint="the registry's copy is corrupt or was tampered with; "
                "the download was deleted",
            )
        self._done = True

    @property
    def done(self) -> bool:
        """Read to its end and its digest checked."""
        return self._done

    # -- the end -----------------------------------------------------------------------
    def commit(self, durable: bool = True) -> Path:
        """Rename the checked blob into the store (flushed to the disk first if
        `durable`); the blob must have been read to its end."""
        if not self._done:
            raise AssertionError("commit before the blob was read and checked")
        if self._committed:
            return self.store.path(self.desc.digest)
        try:
            self._out.flush()
            if durable:
                os.fsync(self._out.fileno())
            self._out.close()
        except OSError as e:
            self.discard()
            raise self._disk_error(e) from None
        path = self.store.commit_partial(self.desc.digest)
        self._committed = True
        return path

    def discard(self) -> None:
        """Delete the partial file: its bytes are not the blob's."""
        self.close()
        with contextlib.suppress(OSError):
            self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop; a partial file stays for the next download to resume."""
        try:
            self._close_response()
            with contextlib.suppress(OSError):
                self._out.close()
        finally:
            release, self._on_close = self._on_close, None
            if release is not None:
                release()

    def _close_response(self) -> requests.Response | None:
        response, self._response, self._chunks = self._response, None, None
        if response is not None:
            response.close()
        return response

    def _disk_error(self, e: OSError) -> LocalIOError:
        # Disk full or the cache gone: a partial file here would only hold the space the
        # user must free, so it goes too.
        with contextlib.suppress(OSError):
            self.partial.unlink(missing_ok=True)
        return LocalIOError(
            f"cannot write {self.what} to the cache {self.partial.parent}: {e.strerror or e}",
            hint="free space there or set KCOMPAT_CACHE to a larger disk; "
            "nothing half-written was kept",
        )


def reason_of(e: Exception) -> str:
    """A network exception in a few words."""
    text = str(e)
    for marker in (
        "Connection refused",
        "Name or service not known",
        "timed out",
        "Temporary failure in name resolution",
        "No route to host",
        "Connection reset",
        "Connection broken",
    ):
        if marker in text:
            return marker.lower()
    return e.__class__.__name__


def drain(download: BlobDownload) -> None:
    """Read the whole blob (kcompat pull: nothing consumes it meanwhile)."""
    while download.read_chunk():
        pass

