"""Platforms (os/architecture/variant) as OCI names, accepting `uname -m` spellings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kcompat.errors import UsageError

# `uname -m` and other common spellings -> (OCI architecture, default variant).
# OCI names are those of the image-index spec and Go's GOARCH; containers/podman#12680
# asked for the uname names to be accepted.
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "amd64": ("amd64", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "386": ("386", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armhf": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armel": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
    "arm": ("arm", None),
    "ppc64le": ("ppc64le", None),
    "ppc64el": ("ppc64le", None),
    "ppc64": ("ppc64", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64le": ("mips64le", None),
    "mips64el": ("mips64le", None),
    "mipsle": ("mipsle", None),
    "mipsel": ("mipsle", None),
    "loong64": ("loong64", None),
    "loongarch64": ("loong64", None),
}
KNOWN_OS = frozenset({"linux", "windows", "darwin", "freebsd"})


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s

    def matches(self, other: Platform) -> bool:
        """Does `other` (an index entry) satisfy this wanted platform?

        A wanted platform without a variant takes any variant; arm64's only variant is v8,
        so `arm64` and `arm64/v8` are the same thing (as in containerd's platform matcher).
        """
        if self.os != other.os or self.architecture != other.architecture:
            return False
        if self.variant is None:
            return True
        theirs = other.variant
        if self.architecture == "arm64" and theirs is None:
            theirs = "v8"
        return theirs == self.variant


def normalize_arch(arch: str, variant: str | None = None) -> tuple[str, str | None]:
    """Map an architecture spelling to the OCI name and its variant."""
    key = arch.strip().lower()
    if key not in _ARCH_ALIASES:
        raise UsageError(
            f"unknown architecture {arch!r}",
            hint="use an OCI name such as amd64, arm64, arm/v7, ppc64le, s390x, riscv64",
        )
    oci, default_variant = _ARCH_ALIASES[key]
    return oci, (variant.lower() if variant else default_variant)


def parse_platform(text: str) -> Platform:
    """Parse `linux/arm64/v8`, `arm64`, `aarch64`, `armv7l`, `linux/arm/v7`..."""
    parts = [p for p in text.strip().split("/")]
    if not text.strip() or any(not p for p in parts) or len(parts) > 3:
        raise UsageError(
            f"invalid platform {text!r}",
            hint="expected OS/ARCH[/VARIANT] or ARCH, e.g. linux/arm64",
        )
    os_name = "linux"
    if parts[0].lower() in KNOWN_OS:
        os_name = parts.pop(0).lower()
        if not parts:
            raise UsageError(
                f"invalid platform {text!r}", hint="it names an OS but no architecture"
            )
    if len(parts) > 2:
        raise UsageError(f"invalid platform {text!r}", hint="expected OS/ARCH[/VARIANT]")
    arch, variant = normalize_arch(parts[0], parts[1] if len(parts) == 2 else None)
    return Platform(os_name, arch, variant)


def platform_from_oci(os_name: str, arch: str, variant: str | None) -> Platform:
    """A platform as an index or config writes it, with the architecture name normalised.

    The variant is kept as written (no default filled in), so that what kcompat shows
    matches what the registry says.
    """
    oci = _ARCH_ALIASES.get(arch.lower(), (arch, None))[0]
    return Platform(os_name, oci, variant or None)


def format_platforms(platforms: Iterable[Platform]) -> str:
    return ", ".join(str(p) for p in platforms) or "none"


def host_platform() -> Platform:
    """This machine's platform, from `uname -m` (Linux only)."""
    import platform as _stdlib_platform

    machine = _stdlib_platform.machine() or "x86_64"
    try:
        arch, variant = normalize_arch(machine)
    except UsageError:
        return Platform("linux", machine)
    return Platform("linux", arch, variant)
