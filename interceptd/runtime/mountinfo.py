"""Parsing /proc/self/mountinfo and overlayfs options (pure)."""

from __future__ import annotations

import os


class MountEntry:
    __slots__ = ("fstype", "mount_id", "mount_point", "options", "parent_id", "root",
                 "source", "super_options")

    def __init__(self, mount_id: int, parent_id: int, root: str, mount_point: str,
                 options: str, fstype: str, source: str, super_options: str) -> None:
        self.mount_id = mount_id
        self.parent_id = parent_id
        self.root = root
        self.mount_point = mount_point
        self.options = options
        self.fstype = fstype
        self.source = source
        self.super_options = super_options


def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1 : i + 4].isdigit() and len(s[i + 1 : i + 4]) == 3:
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse(text: str) -> list[MountEntry]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, _, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        if len(f) < 6 or len(r) < 2:
            continue
        out.append(MountEntry(
            mount_id=int(f[0]), parent_id=int(f[1]), root=_unescape(f[3]),
            mount_point=_unescape(f[4]), options=f[5], fstype=r[0],
            source=_unescape(r[1]), super_options=r[2] if len(r) > 2 else "",
        ))
    return out


def read(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    with open(path) as f:
        return parse(f.read())


def mount_at(entries: list[MountEntry], path: str) -> MountEntry | None:
    """The topmost mount whose mount point is exactly `path`."""
    hit = None
    for e in entries:
        if e.mount_point == path:
            hit = e
    return hit


def cgroup2_mount(entries: list[MountEntry]) -> str | None:
    for e in entries:
        if e.fstype == "cgroup2":
            return e.mount_point
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
