"""A count of a cgroup subtree's threads by state, for /proc/stat and /proc/loadavg.

Threads are listed by `tasks` (v1) or `cgroup.threads` (v2) in the container's cgroup and
every cgroup beneath it; each one's `/proc/<tid>/status` gives its state and its pid in
the innermost pid namespace. Bounded by MAX_TASKS: past it the counts are a lower bound.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from interceptd.emulation.cgpaths import CgroupPaths

MAX_TASKS = 4096
MAX_CGROUPS = 1024  # a container with delegated cgroups can make many: walk a bounded few


@dataclass(frozen=True)
class TaskSummary:
    threads: int = 0
    running: int = 0  # R
    blocked: int = 0  # D: uninterruptible, as the kernel counts procs_blocked and load
    last_pid: int = 0  # the highest pid seen in the container's own pid namespace
    truncated: bool = False


def _tids(paths: CgroupPaths) -> tuple[list[int], bool]:
    """The thread ids of the subtree, and whether a bound cut the list short."""
    h = next((paths.v1[c] for c in ("pids", "memory", "cpu", "cpuacct") if c in paths.v1),
             None)
    name = "tasks"
    if h is None and paths.v2 is not None:
        h, name = paths.v2, "cgroup.threads"
    if h is None:
        return [], False
    out: list[int] = []
    for n, (d, _, _) in enumerate(os.walk(h.cgroup)):
        if n >= MAX_CGROUPS:
            return out, True
        try:
            with open(f"{d}/{name}", encoding="ascii") as f:
                out.extend(int(t) for t in f.read().split() if t.isdigit())
        except OSError:
            continue
        if len(out) > MAX_TASKS:
            return out[:MAX_TASKS], True
    return out, False


def parse_status(text: str) -> tuple[str, tuple[int, ...]]:
    """(state letter, its pids from the host's namespace inward) from /proc/<tid>/status."""
    state, nspid = "?", ()
    for line in text.splitlines():
        if line.startswith("State:"):
            parts = line.split()
            state = parts[1] if len(parts) > 1 else "?"
        elif line.startswith("NSpid:"):
            nspid = tuple(int(p) for p in line.split()[1:] if p.isdigit())
            break  # NSpid comes after State
    return state, nspid


def _status(proc: str, tid: int) -> tuple[str, tuple[int, ...]] | None:
    try:
        with open(f"{proc}/{tid}/status", encoding="utf-8", errors="replace") as f:
            return parse_status(f.read(8192))
    except OSError:
        return None  # exited since it was listed


def summarize(paths: CgroupPaths, proc: str = "/proc", init_pid: int | None = None
              ) -> TaskSummary:
    """`last_pid` counts only threads of the init's pid namespace (a `runc exec` still
    outside it, or a nested namespace inside, has other numbers)."""
    tids, truncated = _tids(paths)
    seen = [s for tid in tids if (s := _status(proc, tid)) is not None]
    init = _status(proc, init_pid) if init_pid is not None else None
    depth = len(init[1]) if init is not None else max((len(n) for _, n in seen), default=0)
    return TaskSummary(
        threads=len(seen),
        running=sum(st == "R" for st, _ in seen),
        blocked=sum(st == "D" for st, _ in seen),
        last_pid=max((n[-1] for _, n in seen if len(n) == depth and n), default=0),
        truncated=truncated,
    )
