"""Where a container's cgroups are: v1 controllers, the v2 unified tree, or both.

`/proc/<pid>/cgroup` names a path per hierarchy ("4:memory:/docker/x", "0::/docker/x");
mountinfo says where each hierarchy is mounted. Everything is joined beneath `root` so
tests point it at a recorded tree, and every path is checked to stay beneath its mount.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "blkio", "pids")


@dataclass(frozen=True)
class Mounts:
    v1: dict[str, str] = field(default_factory=dict)  # controller -> mountpoint
    v2: str | None = None


@dataclass(frozen=True)
class Hierarchy:
    mount: str  # absolute directory of the hierarchy's root (beneath `root`)
    cgroup: str  # absolute directory of the container's cgroup in it

    def chain(self) -> list[str]:
        """The container's directory, then each ancestor up to the mount's root."""
        out = [self.cgroup]
        d = self.cgroup
        while d != self.mount:
            d = posixpath.dirname(d)
            out.append(d)
        return out


@dataclass(frozen=True)
class CgroupPaths:
    v1: dict[str, Hierarchy] = field(default_factory=dict)
    v2: Hierarchy | None = None

    @property
    def layout(self) -> str:
        if self.v1 and self.v2 is not None:
            return "hybrid"
        return "v1" if self.v1 else "v2"


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """{controller: path}, "" for the v2 hierarchy; named v1 hierarchies (name=systemd)
    are kept under their name.

    The kernel prints cgroup names unescaped, so a container allowed to make cgroups can
    name one "x\n4:memory:/" and move a process there: a controller named twice is
    refused (ValueError) rather than guessed at."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"not a /proc/<pid>/cgroup line: {line[:80]!r}")
        _, ctrls, path = parts
        for ctl in ctrls.split(",") if ctrls else [""]:
            if ctl in out:
                raise ValueError(f"cgroup hierarchy {ctl or 'v2'!r} named twice")
            out[ctl] = path
    return out


def parse_mountinfo(text: str) -> Mounts:
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if len(parts) < sep + 4 or parts[3] != "/":
            continue  # a bind of a subtree says nothing about where the hierarchy starts
        fstype, sopts, point = parts[sep + 1], parts[sep + 3], parts[4]
        if fstype == "cgroup2" and v2 is None:
            v2 = point
        elif fstype == "cgroup":
            for opt in sopts.split(","):
                if opt in V1_CONTROLLERS:
                    v1.setdefault(opt, point)
    return Mounts(v1, v2)


def _beneath(root: str, mount: str, path: str) -> Hierarchy | None:
    if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
        return None  # "/.." is another cgroup namespace's view: not ours to read
    rel = posixpath.normpath(path).lstrip("/")
    base = posixpath.normpath(posixpath.join(root, mount.lstrip("/")))
    full = posixpath.normpath(posixpath.join(base, rel)) if rel and rel != "." else base
    if full != base and not full.startswith(base + "/"):
        return None
    return Hierarchy(base, full)


def locate(proc_cgroup: dict[str, str], mounts: Mounts, root: str = "/") -> CgroupPaths:
    v1: dict[str, Hierarchy] = {}
    for ctl, point in mounts.v1.items():
        if ctl in proc_cgroup:
            h = _beneath(root, point, proc_cgroup[ctl])
            if h is not None:
                v1[ctl] = h
    v2 = None
    if mounts.v2 is not None and "" in proc_cgroup:
        v2 = _beneath(root, mounts.v2, proc_cgroup[""])
    return CgroupPaths(v1, v2)
