from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from kcompat.auth import Credentials, parse_creds, parse_www_authenticate, stored_credentials
from kcompat.errors import UnsupportedError, UsageError
from tests.registry_server import DOCKER_HUB_CHALLENGE


def test_docker_hub_challenge_recorded() -> None:
    c = parse_www_authenticate(DOCKER_HUB_CHALLENGE)
    assert c is not None
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/nginx:pull",
    }


def test_ghcr_style_challenge_without_scope_and_basic() -> None:
    c = parse_www_authenticate('Bearer realm="https://ghcr.io/token",service="ghcr.io"')
    assert c is not None and "scope" not in c.params and c.params["service"] == "ghcr.io"
    b = parse_www_authenticate('Basic realm="kcompat-test"')
    assert b is not None and b.scheme == "basic"


def test_parse_creds() -> None:
    assert parse_creds("alice:pa:ss") == Credentials("alice", "pa:ss")
    with pytest.raises(UsageError):
        parse_creds("alice")
    assert "pa:ss" not in repr(parse_creds("alice:pa:ss"))


def _write_config(tmp_path: Path, doc: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps(doc))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


def test_docker_config_auths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = base64.b64encode(b"bob:secret").decode()
    _write_config(
        tmp_path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": token},
                "reg.example:5000": {"username": "u", "password": "p"},
            }
        },
        monkeypatch,
    )
    assert stored_credentials("docker.io") == Credentials("bob", "secret")
    assert stored_credentials("reg.example:5000") == Credentials("u", "p")
    assert stored_credentials("other.example") is None


def test_credential_helpers_are_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_config(tmp_path, {"auths": {"ghcr.io": {}}, "credsStore": "desktop"}, monkeypatch)
    with pytest.raises(UnsupportedError) as err:
        stored_credentials("ghcr.io")
    assert "docker-credential-desktop" in str(err.value) and "--creds" in str(err.value)
