"""Registry credentials and the WWW-Authenticate challenge.

Credentials come from `--creds USER:PASS`, else from the files docker and podman keep:
`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`, then
`$DOCKER_CONFIG/config.json` or `~/.docker/config.json` (the `auths` map, entries with
`auth` = base64 of `user:pass`, or `username`/`password`). Credential helpers
(`credsStore`, `credHelpers`) run external programs; kcompat does not run them and says so.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kcompat.errors import UnsupportedError, UsageError
from kcompat.reference import DOCKER_HUB


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = ""

    def __repr__(self) -> str:  # never show a password in a traceback or log
        return f"Credentials(username={self.username!r}, password=***)"


def parse_creds(text: str) -> Credentials:
    user, sep, password = text.partition(":")
    if not user or not sep:
        raise UsageError("--creds must be USER:PASSWORD", hint="e.g. --creds alice:s3cret")
    return Credentials(user, password)


def _config_files() -> list[Path]:
    files: list[Path] = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    docker_dir = os.environ.get("DOCKER_CONFIG")
    files.append(
        Path(docker_dir) / "config.json" if docker_dir else Path.home() / ".docker/config.json"
    )
    return files


def _keys_for(registry: str) -> list[str]:
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    return keys


def stored_credentials(registry: str) -> Credentials | None:
    """Credentials for `registry` from docker/podman config files, or None."""
    for path in _config_files():
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else {}
        assert isinstance(auths, dict)
        for key in _keys_for(registry):
            entry = auths.get(key)
            if not isinstance(entry, dict):
                continue
            if entry.get("auth"):
                try:
                    decoded = base64.b64decode(entry["auth"], validate=True).decode()
                except (binascii.Error, UnicodeDecodeError, ValueError):
                    raise UsageError(
                        f"{path}: the 'auth' entry for {key} is not base64 of USER:PASSWORD",
                        hint="log in again or pass --creds",
                    ) from None
                user, _, password = decoded.partition(":")
                return Credentials(user, password)
            if entry.get("username"):
                return Credentials(str(entry["username"]), str(entry.get("password", "")))
            if entry.get("identitytoken"):
                raise UnsupportedError(
                    f"{path}: {key} has an OAuth identity token, which kcompat cannot use",
                    hint="pass --creds USER:PASSWORD or a token as the password",
                )
        helpers = doc.get("credHelpers") if isinstance(doc.get("credHelpers"), dict) else {}
        assert isinstance(helpers, dict)
        helper = next((helpers[k] for k in _keys_for(registry) if k in helpers), None)
        helper = helper or doc.get("credsStore")
        if helper:
            raise UnsupportedError(
                f"{path}: credentials for {registry} are kept by the credential helper "
                f"'docker-credential-{helper}', which kcompat does not run",
                hint="pass --creds USER:PASSWORD",
            )
    return None


_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-case: "bearer" or "basic"
    params: dict[str, str]


def parse_www_authenticate(header: str) -> Challenge | None:
    """Parse `Bearer realm="...",service="...",scope="..."` (RFC 6750 section 3)."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM_RE.finditer(rest)
    }
    return Challenge(scheme.lower(), params)
