"""/proc/stat: the container's cpu times on its CPUs (cpuview), its boot time, and its
tasks; `intr`, `ctxt` and `softirq` are the host's (no cgroup counts them; LXCFS passes
them through too)."""

from __future__ import annotations

from interceptd.emulation import cpuview
from interceptd.emulation.hostfacts import CpuTimes, HostFacts
from interceptd.emulation.snapshot import CgroupSnapshot


def cpu_line(name: str, t: CpuTimes) -> str:
    return name + "".join(f" {v}" for v in t.fields()) + "\n"


def render(snap: CgroupSnapshot, host: HostFacts, now: float) -> bytes:
    times = cpuview.cpu_times(snap, host, now)
    out = [cpu_line("cpu ", cpuview.total(times))]  # the kernel's two spaces
    out.extend(cpu_line(f"cpu{i}", t) for i, t in enumerate(times))
    passthrough = {ln.split(" ", 1)[0]: ln for ln in host.stat_passthrough}
    for key in ("intr", "ctxt"):
        if key in passthrough:
            out.append(passthrough[key] + "\n")
    tasks = snap.tasks
    # processes counts forks since boot; in the container's own pid namespace pids are
    # handed out in order, so its highest pid is that count until pids wrap.
    forks = tasks.last_pid if tasks is not None and tasks.last_pid else (
        snap.pids_current or 0)
    running = tasks.running if tasks is not None else 0
    blocked = tasks.blocked if tasks is not None else 0
    out.append(f"btime {cpuview.container_btime(snap, host)}\n")
    out.append(f"processes {forks}\n")
    # The reader itself is running while the kernel prints this line.
    out.append(f"procs_running {max(1, running)}\n")
    out.append(f"procs_blocked {blocked}\n")
    if "softirq" in passthrough:
        out.append(passthrough["softirq"] + "\n")
    return "".join(out).encode()
