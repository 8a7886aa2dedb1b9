"""The host's mount table as the shim needs it: lookups and overlayfs options (pure)."""

from __future__ import annotations

import os

from interceptd.mountinfo import MountEntry, parse


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
