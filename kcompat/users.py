"""USER / `-u`: a name or uid, optionally `:group` or `:gid`, looked up in the image's
/etc/passwd and /etc/group as runc does (libcontainer/user). One resolver for `check`
(the texts come from the scan) and `run` (from the rootfs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary one included
    home: str
    name: str | None = None


class UnknownUser(Exception):
    """The message runc prints (docker shows it and exits 125)."""


def _rows(text: str | None) -> list[list[str]]:
    if not text:
        return []
    return [line.split(":") for line in text.splitlines() if line.count(":") >= 2]


def resolve_user(spec: str | None, passwd: str | None, group: str | None) -> User:
    """The user a container's process runs as. Raises UnknownUser with runc's words."""
    if not spec:
        spec = "0"
    user, _, grp = spec.partition(":")
    rows = _rows(passwd)
    entry = next((p for p in rows if len(p) >= 6 and user in (p[0], p[2])), None)
    name: str | None
    if entry is not None and entry[2].isdigit() and entry[3].isdigit():
        uid, gid, home, name = int(entry[2]), int(entry[3]), entry[5] or "/", entry[0]
    elif user.isdigit():
        uid, gid, home, name = int(user), 0, "/", None
    else:
        raise UnknownUser(f"unable to find user {user}: no matching entries in passwd file")
    groups_db = _rows(group)
    if grp:
        g = next((e for e in groups_db if len(e) >= 3 and grp in (e[0], e[2])), None)
        if g is not None and g[2].isdigit():
            gid = int(g[2])
        elif grp.isdigit():
            gid = int(grp)
        else:
            raise UnknownUser(f"unable to find group {grp}: no matching entries in group file")
    extra = tuple(
        int(e[2])
        for e in groups_db
        if len(e) >= 4 and name and name in e[3].split(",") and e[2].isdigit()
    )
    return User(uid, gid, tuple(sorted({gid, *extra})), home, name)
