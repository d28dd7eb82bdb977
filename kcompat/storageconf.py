"""Where a containers-storage store is: its storage.conf, graph root and driver.

As containers/storage finds them (types/options.go): the reference's [DRIVER@ROOT],
else storage.conf's `driver` and `graphroot` (rootless: `rootless_storage_path`, or
~/.local/share/containers/storage), else the defaults; a store whose storage.conf
names no driver has the one whose `<root>/<driver>` directory exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcompat.errors import LocalIOError, NotFoundError, UnsupportedError, UsageError
from kcompat.reference import StorageRef

SUPPORTED_DRIVERS = ("overlay", "vfs")
# containers/storage drivers/driver_linux.go Priority; a store whose storage.conf names
# no driver has the one whose <root>/<driver> directory exists (ScanPriorDrivers).
DRIVER_PRIORITY = ("overlay", "aufs", "btrfs", "zfs", "vfs")


def _toml_storage_table(text: str) -> dict[str, Any]:
    """The [storage] table of a storage.conf: tomllib where Python has it (3.11+), else
    the simple form containers-storage.conf(5) shows (`key = "string"` lines)."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.9/3.10
        table: dict[str, Any] = {}
        section = ""
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if line.startswith("["):
                section = line.strip("[] ")
            elif "=" in line and section == "storage":
                key, _, value = line.partition("=")
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                    table[key.strip()] = value[1:-1]
        return table
    doc = tomllib.loads(text)
    storage = doc.get("storage")
    return storage if isinstance(storage, dict) else {}


def _rootless() -> bool:
    return os.geteuid() != 0


def _user_config_dir() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def storage_conf_path() -> Path | None:
    """The storage.conf containers/storage reads (types/options.go DefaultConfigFile):
    $CONTAINERS_STORAGE_CONF; as root /etc/containers/storage.conf, else
    /usr/share/containers/storage.conf; rootless the user's own
    ($XDG_CONFIG_HOME or ~/.config)/containers/storage.conf."""
    env = os.environ.get("CONTAINERS_STORAGE_CONF")
    if env:
        return Path(env)
    if _rootless():
        user = _user_config_dir() / "containers" / "storage.conf"
        return user if user.is_file() else None
    for path in (Path("/etc/containers/storage.conf"), Path("/usr/share/containers/storage.conf")):
        if path.is_file():
            return path
    return None


def _expand(path: str) -> str:
    """containers/storage expandEnvPath: $HOME, $UID and other variables, ~."""
    path = path.replace("$UID", str(os.geteuid())).replace("${UID}", str(os.geteuid()))
    return os.path.expanduser(os.path.expandvars(path))


def _read_conf() -> tuple[dict[str, Any], Path | None]:
    path = storage_conf_path()
    if path is None:
        return {}, None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, path
    except OSError as e:
        raise LocalIOError(
            f"cannot read {path}: {e.strerror}",
            hint="fix its permissions or set CONTAINERS_STORAGE_CONF",
        ) from None
    try:
        return _toml_storage_table(text), path
    except ValueError as e:
        raise UsageError(
            f"{path} is not valid TOML ({e})",
            hint="fix it, or name the store: containers-storage:[DRIVER@ROOT]NAME",
        ) from None


@dataclass(frozen=True)
class StoreLocation:
    driver: str
    root: Path
    how: str  # where the root came from, for messages


def locate_store(ref: StorageRef) -> StoreLocation:
    """The store's graph root and driver: the reference's [DRIVER@ROOT], else
    storage.conf's driver and graphroot (rootless: its rootless_storage_path or
    ~/.local/share/containers/storage), else the defaults."""
    conf: dict[str, Any] = {}
    conf_path: Path | None = None
    if ref.root is None or ref.driver is None:
        conf, conf_path = _read_conf()
    if ref.root is not None:
        root, how = Path(ref.root), "given"
    else:
        graphroot = conf.get("graphroot")
        rootless_path = conf.get("rootless_storage_path")
        own_conf = conf_path is not None and (
            os.environ.get("CONTAINERS_STORAGE_CONF") or not _rootless()
        )
        if isinstance(graphroot, str) and graphroot and (own_conf or _rootless()):
            root, how = Path(_expand(graphroot)), f"graphroot in {conf_path}"
        elif _rootless() and isinstance(rootless_path, str) and rootless_path:
            root, how = Path(_expand(rootless_path)), f"rootless_storage_path in {conf_path}"
        elif _rootless():
            data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
            root, how = Path(data) / "containers" / "storage", "the rootless default"
        else:
            root, how = Path("/var/lib/containers/storage"), "the default"
    driver = ref.driver or (conf.get("driver") if isinstance(conf.get("driver"), str) else None)
    if not driver:
        found = [d for d in DRIVER_PRIORITY if (root / d).is_dir()]
        if not found:
            raise NotFoundError(
                f"no containers-storage store at {root} ({how}): it has no directory of a "
                f"storage driver ({', '.join(DRIVER_PRIORITY)})",
                hint="name the store as containers-storage:[overlay@GRAPHROOT]NAME "
                "('podman info --format {{.Store.GraphRoot}}' shows it)",
            )
        if len(found) > 1:  # containers/storage refuses to guess too
            raise UsageError(
                f"the containers-storage store at {root} holds data of several drivers "
                f"({', '.join(found)})",
                hint=f"name one: containers-storage:[{found[0]}@{root}]NAME",
            )
        driver = found[0]
    if driver == "overlay2":  # containers/storage's alias
        driver = "overlay"
    if driver not in SUPPORTED_DRIVERS:
        raise UnsupportedError(
            f"containers-storage driver {driver!r} (store {root}) is not supported; "
            f"kcompat reads {' and '.join(SUPPORTED_DRIVERS)}",
            hint="copy the image out: skopeo copy containers-storage:NAME oci:DIR, "
            "then check oci:DIR",
        )
    return StoreLocation(driver, root, how)


__all__ = ["StoreLocation", "locate_store", "storage_conf_path"]
