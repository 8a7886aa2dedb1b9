"""What the rewrite needs from the host: the bounding set, the host's namespaces,
where the cgroup v2 hierarchy is mounted."""

from __future__ import annotations

import os

NS_PROC_NAME = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
                "cgroup": "cgroup", "time": "time"}


def host_namespaces() -> dict[str, set[tuple[int, int]]]:
    out: dict[str, set[tuple[int, int]]] = {}
    for oci, proc in NS_PROC_NAME.items():
        ids = set()
        for pid in ("1", "self"):
            try:
                s = os.stat(f"/proc/{pid}/ns/{proc}")
                ids.add((s.st_dev, s.st_ino))
            except OSError:
                pass
        out[oci] = ids
    return out


class HostFacts:
    """The bounding set, host namespaces, where the cgroup v2 hierarchy is mounted
    (None: not found)."""

    __slots__ = ("bounding", "cgroup2", "host_ns")

    # Set by a long-lived caller (the prepare service): facts that do not change
    # while it runs (its capability bounding set, the host's namespace identities).
    held: HostFacts | None = None

    def __init__(self, bounding: set[str], host_ns: dict[str, set[tuple[int, int]]],
                 cgroup2: str | None = None) -> None:
        self.bounding = bounding
        self.host_ns = host_ns
        self.cgroup2 = cgroup2

    @classmethod
    def read(cls) -> HostFacts:
        from interceptd.kernel import mountinfo

        from .caps import host_bounding_set

        return cls(host_bounding_set(), host_namespaces(),
                   mountinfo.cgroup2_mount(mountinfo.read()))

    @classmethod
    def current(cls) -> HostFacts:
        """The held facts, or this process's (without the cgroup2 mount: read when needed)."""
        if cls.held is not None:
            return cls.held
        from .caps import host_bounding_set

        return cls(host_bounding_set(), host_namespaces())

    @classmethod
    def bounding_set(cls) -> set[str]:
        if cls.held is not None:
            return cls.held.bounding
        from .caps import host_bounding_set

        return host_bounding_set()
