"""Cgroup delegation for nested managers (runc, crun, dockerd, systemd inside).

A config that mounts cgroups read-write (Docker's --privileged shape) gets the container's
own cgroup directories created here before the runtime runs, owned by the container's
root (its host uid), so the runtimes' mkdir -p finds them and a manager inside can make
children; the container sees only them (it always has a cgroup namespace, the shim adds
one). What is delegated follows systemd's delegation rules: in the unified (v2)
hierarchy the node's directory and its `cgroup.procs`, `cgroup.threads` and
`cgroup.subtree_control`; in each v1 hierarchy the directory and `cgroup.procs`/`tasks`.
The limit files stay the host's root's: the runtime writes the container's limits there,
and everything the container creates below is bound by them (the kernel's hierarchical
accounting). Nothing above the container's directory changes owner. An existing
directory is never taken over (it may be another's); a systemd-driver path
("slice:prefix:name") is left to systemd, which delegates by itself (`Delegate=yes`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

V2_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
V1_FILES = ("cgroup.procs", "tasks")
CGROUP_TYPES = ("cgroup", "cgroup2")


def wants_delegation(spec: dict) -> bool:
    """Whether the config mounts a cgroup filesystem read-write."""
    for m in spec.get("mounts") or []:
        if m.get("type") in CGROUP_TYPES and "ro" not in (m.get("options") or []):
            return True
    return False


def relative_path(cgroups_path: str | None) -> str | None:
    """The cgroup path below each hierarchy's root, or None when it is not one the shim
    may create (a systemd slice spec, a relative path, "..", the root)."""
    if not cgroups_path or ":" in cgroups_path or not cgroups_path.startswith("/"):
        return None
    parts = [p for p in cgroups_path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        return None
    return "/".join(parts)


def hierarchies(mountinfo_lines: Iterable[str]) -> list[tuple[str, bool, bool]]:
    """(mount point, is v2, is the v1 cpuset) of each cgroup hierarchy mounted at its
    root in the host's table (the shim runs in the host's cgroup namespace)."""
    seen: dict[str, tuple[str, bool, bool]] = {}
    for line in mountinfo_lines:
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) < 5 or not r or r[0] not in CGROUP_TYPES or f[3] != "/":
            continue
        mp = f[4].replace("\\040", " ")
        key = f[2]  # one entry per hierarchy (major:minor), the first mount of it
        cpuset = r[0] == "cgroup" and len(r) > 2 and "cpuset" in r[2].split(",")
        seen.setdefault(key, (mp, r[0] == "cgroup2", cpuset))
    return list(seen.values())


def prepare(spec: dict, uid: int, gid: int, mountinfo_lines: Iterable[str]) -> list[str]:
    """Create and delegate the container's directories; the ones created (to remove if
    the create fails). OSError on a hierarchy stops there (the caller warns)."""
    if not wants_delegation(spec):
        return []
    rel = relative_path((spec.get("linux") or {}).get("cgroupsPath"))
    if rel is None:
        return []
    created: list[str] = []
    for mp, v2, cpuset in hierarchies(mountinfo_lines):
        node = os.path.join(mp, rel)
        if os.path.lexists(node):
            continue  # not ours to hand over
        os.makedirs(os.path.dirname(node), exist_ok=True)
        os.mkdir(node)
        created.append(node)
        hand_over(node, uid, gid, v2=v2)
        if cpuset:
            # A v1 cpuset child starts with no cpus/mems (no task can join it) unless
            # it copies its parent's: crun does not copy them itself.
            with open(os.path.join(node, "cgroup.clone_children"), "w") as f:
                f.write("1")
    return created


def hand_over(node: str, uid: int, gid: int, *, v2: bool) -> None:
    """Give the container's root the node's directory and the files systemd's
    delegation names, nothing else (the limits and everything above stay root's)."""
    os.chown(node, uid, gid)
    for name in V2_FILES if v2 else V1_FILES:
        # a controller-less or older hierarchy may lack one
        with contextlib.suppress(FileNotFoundError):
            os.chown(os.path.join(node, name), uid, gid)


def remove_node(node: str) -> None:
    """Remove a node the shim made and the children a manager inside left in it
    (deepest first; a cgroup directory goes with its control files, and one still
    holding a process stays: OSError from the node itself)."""
    for top, dirs, _files in os.walk(node, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(top, d))
    os.rmdir(node)


def undo(created: list[str]) -> None:
    """Remove directories prepare() created (only while empty: a runtime that got as far
    as using them removes them itself at delete)."""
    for node in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(node)
