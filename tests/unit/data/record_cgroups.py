"""Record a container-like cgroup of this host into tests/unit/data/cgroups/<name>/.

Run as root on a hybrid host (v1 controllers under /sys/fs/cgroup, v2 at
/sys/fs/cgroup/unified), e.g.:
    python3 tests/unit/data/record_cgroups.py v1-cpuset0 --mem 256M --cpus 0
    python3 tests/unit/data/record_cgroups.py v1-quota150 --cpus 0-1 --quota 150000
It makes `<uuid>/ctr` in every hierarchy (limits on the parent or on ctr as asked), runs a
small workload in a new pid namespace inside ctr (page cache, 48 MiB of anon memory, some
direct I/O and cpu), copies the files interceptd's snapshot reads from ctr and each
ancestor, the workload's /proc/<pid>/{stat,status}, the host's /proc files, the cgroup
lines of mountinfo and /proc/<pid>/cgroup, then kills the workload and removes the cgroups.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid

FILES = (
    "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat",
    "memory.memsw.limit_in_bytes", "memory.memsw.usage_in_bytes",
    "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpuacct.usage_user", "cpuacct.usage_sys",
    "cpuacct.stat", "cpuacct.usage", "cpuset.effective_cpus", "cpuset.cpus",
    "pids.current", "blkio.throttle.io_service_bytes_recursive",
    "blkio.throttle.io_serviced_recursive", "blkio.throttle.io_service_bytes",
    "blkio.throttle.io_serviced", "tasks", "cgroup.procs", "cgroup.threads",
    "cgroup.controllers", "memory.max", "memory.current", "memory.swap.max",
    "memory.swap.current", "cpu.max", "cpu.stat", "cpuset.cpus.effective", "io.stat",
)
V1 = ("memory", "cpu", "cpuacct", "cpuset", "blkio", "pids")
BASE = "/sys/fs/cgroup"
WORKLOAD = (
    "dd if=/dev/zero of=/var/tmp/rec.$$ bs=1M count=8 oflag=direct 2>/dev/null;"
    "dd if=/dev/zero of=/var/tmp/rec2.$$ bs=1M count=16 2>/dev/null; sync;"
    "python3 -c 'import time; x = bytearray(48 << 20); s = sum(range(3000000));"
    " time.sleep(60)' & sleep 60"
)


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def copy_chain(hier: str, rel: str, dest_root: str) -> None:
    parts = rel.strip("/").split("/")
    for i in range(len(parts) + 1):
        src = os.path.join(hier, *parts[:i])
        dst = os.path.join(dest_root, src.lstrip("/"))
        os.makedirs(dst, exist_ok=True)
        for name in FILES:
            if i < len(parts) and name in ("tasks", "cgroup.procs", "cgroup.threads"):
                continue  # an ancestor's task lists are other processes'
            try:
                shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
            except OSError:
                continue


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--mem", help="memory limit on the parent, e.g. 256M")
    ap.add_argument("--memsw", help="memory+swap limit on the parent")
    ap.add_argument("--cpus", default="0-1")
    ap.add_argument("--quota", type=int, help="cfs quota (us) of ctr, period 100000")
    ap.add_argument("--parent-quota", type=int)
    a = ap.parse_args()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cgroups", a.name)
    parent = f"interceptd-rec-{uuid.uuid4().hex[:8]}"
    rel = f"{parent}/ctr"
    hiers = [f"{BASE}/{c}" for c in V1] + [f"{BASE}/unified"]
    for h in hiers:
        os.makedirs(f"{h}/{rel}")
    proc = None
    try:
        for d in (parent, rel):
            write(f"{BASE}/cpuset/{d}/cpuset.mems", "0")
            write(f"{BASE}/cpuset/{d}/cpuset.cpus", a.cpus)
        if a.mem:
            write(f"{BASE}/memory/{parent}/memory.limit_in_bytes", a.mem)
        if a.memsw:
            write(f"{BASE}/memory/{parent}/memory.memsw.limit_in_bytes", a.memsw)
        if a.parent_quota:
            write(f"{BASE}/cpu/{parent}/cpu.cfs_quota_us", str(a.parent_quota))
        # Since Linux 6.9 v1's blkio.throttle counters only move on a queue that has a
        # throttle rule: a limit no one reaches turns them on for the disk of /var/tmp.
        dev = os.stat("/var/tmp").st_dev
        write(f"{BASE}/blkio/{rel}/blkio.throttle.read_bps_device",
              f"{os.major(dev)}:{os.minor(dev)} {1 << 40}")
        if a.quota:
            write(f"{BASE}/cpu/{rel}/cpu.cfs_quota_us", str(a.quota))

        def enter() -> None:  # before exec, so the forked workload is inside too
            for h in hiers:
                write(f"{h}/{rel}/cgroup.procs", str(os.getpid()))

        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sh", "-c",
                                 WORKLOAD], preexec_fn=enter)
        time.sleep(6)
        shutil.rmtree(out, ignore_errors=True)
        root = os.path.join(out, "root")
        for h in hiers:
            copy_chain(h, rel, root)
        tids = []
        for h in hiers[:1]:
            with open(f"{h}/{rel}/tasks") as f:
                tids = [int(t) for t in f.read().split()]
        for tid in tids:
            d = os.path.join(root, "proc", str(tid))
            os.makedirs(d, exist_ok=True)
            for name in ("stat", "status"):
                with contextlib.suppress(OSError):
                    shutil.copyfile(f"/proc/{tid}/{name}", os.path.join(d, name))
        host = os.path.join(out, "host")
        os.makedirs(host)
        for name in ("meminfo", "cpuinfo", "stat", "uptime", "diskstats"):
            shutil.copyfile(f"/proc/{name}", os.path.join(host, name))
        shutil.copyfile("/sys/devices/system/cpu/online", os.path.join(host, "online"))
        with open(f"/proc/{proc.pid}/cgroup") as f:
            write(os.path.join(out, "proc_cgroup"), f.read())
        with open("/proc/self/mountinfo") as f:
            lines = [ln for ln in f if " - cgroup" in ln]
        write(os.path.join(out, "mountinfo"), "".join(lines))
        init = proc.pid  # unshare; its forked child is pid 1 of the new namespace
        for tid in tids:
            with open(os.path.join(root, "proc", str(tid), "status")) as f:
                if any(ln.startswith("NSpid:") and ln.split()[-1] == "1" for ln in f):
                    init = tid
        write(os.path.join(out, "init_pid"), f"{init}\n")
        write(os.path.join(out, "now"), f"{time.clock_gettime(time.CLOCK_BOOTTIME):.2f}\n")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        time.sleep(0.5)
        subprocess.run("rm -f /var/tmp/rec.* /var/tmp/rec2.*", shell=True, check=False)
        for h in hiers:
            for d in (rel, parent):
                for _ in range(20):
                    try:
                        os.rmdir(f"{h}/{d}")
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.2)


if __name__ == "__main__":
    main()
