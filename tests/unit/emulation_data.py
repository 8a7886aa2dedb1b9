"""Recorded and hand-made cgroup trees under data/cgroups/, loaded into snapshots.

v1-* were recorded on this project's hybrid test host by data/record_cgroups.py (v1
controllers plus the v2 unified tree, which has no controllers enabled there); v2-* are
hand-made pure-v2 trees. `layout` filters the recorded mountinfo so the same recording
is read as hybrid (both), v1 alone or v2 alone.
"""

from __future__ import annotations

from pathlib import Path

from interceptd.emulation import cgpaths, hostfacts, snapshot

DATA = Path(__file__).parent / "data" / "cgroups"


def host_of(name: str) -> hostfacts.HostFacts:
    d = DATA / name / "host"
    return hostfacts.from_texts(
        meminfo=(d / "meminfo").read_text(), cpuinfo=(d / "cpuinfo").read_text(),
        stat=(d / "stat").read_text(), uptime=(d / "uptime").read_text(),
        diskstats=(d / "diskstats").read_text(), online=(d / "online").read_text(),
    )


def paths_of(name: str, layout: str | None = None) -> cgpaths.CgroupPaths:
    d = DATA / name
    lines = (d / "mountinfo").read_text().splitlines()
    if layout == "v1":
        lines = [ln for ln in lines if " - cgroup " in ln]
    elif layout == "v2":
        lines = [ln for ln in lines if " - cgroup2 " in ln]
    return cgpaths.locate(cgpaths.parse_proc_cgroup((d / "proc_cgroup").read_text()),
                          cgpaths.parse_mountinfo("\n".join(lines)), root=str(d / "root"))


def load(name: str, layout: str | None = None
         ) -> tuple[snapshot.CgroupSnapshot, hostfacts.HostFacts, float]:
    d = DATA / name
    host = host_of(name)
    snap = snapshot.read_snapshot(paths_of(name, layout), host,
                                  init_pid=int((d / "init_pid").read_text()),
                                  proc=str(d / "root" / "proc"))
    return snap, host, float((d / "now").read_text())


def host_view(host: hostfacts.HostFacts) -> snapshot.CgroupSnapshot:
    """A snapshot that limits nothing: renderers must then reproduce the host's files."""
    return snapshot.CgroupSnapshot(
        layout="v1", mem_limit=host.mem_kb("MemTotal") << 10, mem_accounted=False,
        mem_limited=False, mem_usage=0, cpuset=host.online,
    )
