"""What /proc and a bundle say about a container's waiting threads: the restart's
safety net for a notification missing from the journal (handover.py)."""

from __future__ import annotations

import json
import os


def waiting_threads(init_pid: int) -> list[tuple[int, int, tuple[int, ...], int]]:
    """(tid, nr, args, pc) of every thread in init_pid's pid namespace that waits in a
    syscall (/proc/<tid>/syscall: "nr a0 … a5 sp pc")."""
    try:
        ns = os.stat(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{name}/ns/pid")
            if (st.st_dev, st.st_ino) != (ns.st_dev, ns.st_ino):
                continue
            for tid in os.listdir(f"/proc/{name}/task"):
                with open(f"/proc/{name}/task/{tid}/syscall") as f:
                    fields = f.read().split()
                if len(fields) == 9 and fields[0] != "-1":
                    nums = [int(x, 16) if i else int(x) for i, x in enumerate(fields)]
                    out.append((int(tid), nums[0], tuple(nums[1:7]), nums[8]))
        except (OSError, ValueError):
            continue
    return out


def notified_nrs(bundle: str) -> set[int] | None:
    """The syscalls the bundle's filter notifies (its config.json), None if unknown."""
    from interceptd import syscalls

    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            rules = json.load(f)["linux"]["seccomp"]["syscalls"]
        return {syscalls.NUMBERS[n] for r in rules if r.get("action") == "SCMP_ACT_NOTIFY"
                for n in r.get("names", []) if n in syscalls.NUMBERS}
    except (OSError, ValueError, KeyError, TypeError):
        return None
