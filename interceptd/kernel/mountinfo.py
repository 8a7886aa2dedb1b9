"""/proc/<pid>/mountinfo lines as entries (shared by the policy and the runtime), the
host's table as the shim reads it, and overlayfs's layer options.

The runtime parses the host's whole table on every container create, so construction
stays cheap: an entry is a tuple of the line's fields, and the option sets are derived
only when asked for.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from interceptd.kernel.consts import (
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
)

# The MOUNT_ATTR_* bits of the per-mount flags mountinfo shows.
_OPT_ATTR = (("ro", MOUNT_ATTR_RDONLY), ("nosuid", MOUNT_ATTR_NOSUID),
             ("nodev", MOUNT_ATTR_NODEV), ("noexec", MOUNT_ATTR_NOEXEC))


def unescape(s: str) -> str:
    """Undo mountinfo's octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)."""
    if "\\" not in s:
        return s
    out: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


class MountEntry(NamedTuple):
    mount_id: int
    parent_id: int
    dev: str  # "major:minor" of the superblock
    root: str  # the dentry of the filesystem shown at mountpoint
    mountpoint: str
    options: str  # per-mount options as listed ("rw,nosuid,relatime")
    optional: tuple[str, ...]  # propagation tags ("shared:4", "master:1")
    fstype: str
    source: str
    super_options: str  # superblock options as listed, order kept (overlay layers)

    @property
    def opts(self) -> frozenset[str]:
        return frozenset(self.options.split(","))

    @property
    def super_opts(self) -> frozenset[str]:
        return frozenset(self.super_options.split(","))

    @property
    def attrs(self) -> int:
        """MOUNT_ATTR_* bits among ro/nosuid/nodev/noexec set on this mount."""
        opts = self.options.split(",")
        a = 0
        for o, bit in _OPT_ATTR:
            if o in opts:
                a |= bit
        return a

    @property
    def readonly(self) -> bool:
        return "ro" in self.options.split(",")

    @property
    def key(self) -> tuple[str, str]:
        return (self.dev, self.root)


def parse_line(line: str) -> MountEntry:
    """One mountinfo line; ValueError if it is not one."""
    parts = line.rstrip("\n").split(" ")
    try:
        sep = parts.index("-", 6)
        mid, pid, dev, root, mp, opts = parts[:6]
        fstype, source, sopts = parts[sep + 1 : sep + 4]
        return MountEntry(int(mid), int(pid), dev, unescape(root), unescape(mp), opts,
                          tuple(parts[6:sep]), fstype, unescape(source), sopts)
    except ValueError as e:
        raise ValueError(f"malformed mountinfo line: {line[:200]!r}") from e


def parse(text: str, *, skip_malformed: bool = False) -> list[MountEntry]:
    """Every entry of a mountinfo text; a malformed line raises ValueError unless skipped."""
    out = []
    for ln in text.splitlines():
        if not ln.strip():
            continue
        try:
            out.append(parse_line(ln))
        except ValueError:
            if not skip_malformed:
                raise
    return out


# --- the host's table as the runtime shim needs it ------------------------------------


def read(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    with open(path) as f:
        return parse(f.read(), skip_malformed=True)


def mount_at(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The topmost mount whose mount point is exactly `path`."""
    hit = None
    for e in entries:
        if e.mountpoint == path:
            hit = e
    return hit


def cgroup2_mount(entries: list[MountEntry]) -> str | None:
    for e in entries:
        if e.fstype == "cgroup2":
            return e.mountpoint
    return None


class OverlayLayers:
    def __init__(self, lowers: list[str], upper: str | None, work: str | None,
                 other: list[str]) -> None:
        self.lowers = lowers
        self.upper = upper
        self.work = work
        self.other = other  # the remaining options (kept when remounting)


def _split_opts(s: str) -> list[str]:
    parts, cur, esc = [], [], False
    for ch in s:
        if esc:
            cur.append(ch)
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p]


def overlay_layers(super_options: str, base_dir: str) -> OverlayLayers:
    """lowerdir/upperdir/workdir of an overlay mount, relative paths resolved against base_dir.

    Docker's overlay2 passes `l/<short>` relative lower paths when the absolute ones
    would not fit in a page; they are relative to the driver's home (base_dir).
    """
    lowers: list[str] = []
    upper = work = None
    other = []
    for opt in _split_opts(super_options):
        key, _, val = opt.partition("=")
        if key == "lowerdir":
            lowers = [_abs(p, base_dir) for p in val.split(":") if p]
        elif key == "upperdir":
            upper = _abs(val, base_dir)
        elif key == "workdir":
            work = _abs(val, base_dir)
        elif key in ("rw", "ro") or key.startswith("lowerdir+") or key.startswith("datadir+"):
            if key.startswith(("lowerdir+", "datadir+")):
                lowers.append(_abs(val, base_dir))
        else:
            other.append(opt)
    if not lowers:
        raise ValueError("overlay mount without lowerdir")
    return OverlayLayers(lowers, upper, work, other)


def _abs(p: str, base: str) -> str:
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
