"""bench_fuse.py's in-container part: open + read + close of the emulated files from
inside a real container (runc, user namespace, 256 MiB and CPU 0) attached to a real
interceptd, interceptd's bound files vs LXCFS's vs the kernel's.

The container gets interceptd's files exactly where interceptd-runc binds them
(`emulbinds.apply` on a clone of the daemon's tree), LXCFS's files under /lx (LXCFS on
its own mountpoint) and a procfs and sysfs of its own under /nproc and /nsys (native).
Readers are `runc exec` shells running bench/read_loop, one command per line.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

from common import ContainerEnv, table

from interceptd.runtime import emulbinds
from tests.harness.bundle import BundleSpec
from tests.harness.daemon import Daemon

FILES = {  # name: (interceptd's path in the container, path below LXCFS / native roots)
    "meminfo": ("/proc/meminfo", "proc/meminfo"),
    "cpuinfo": ("/proc/cpuinfo", "proc/cpuinfo"),
    "stat": ("/proc/stat", "proc/stat"),
    "uptime": ("/proc/uptime", "proc/uptime"),
    "cpu/online": ("/sys/devices/system/cpu/online", "sys/devices/system/cpu/online"),
}


class ExecRunner:
    """A shell inside the container (runc exec) running one command per line."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen([*cmd, "sh", "-c", "while read -r c; do $c; done"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")

    def result(self) -> dict[str, int]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("{"):
            raise RuntimeError(f"read_loop in the container: {line!r}")
        import json

        return json.loads(line)

    def run(self, cmd: str) -> dict[str, int]:
        self.send(cmd)
        return self.result()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(loop: Path, lxcfs_start, lxcfs_stop, *, n: int, runs: int, parallel: int,
        parallel_n: int) -> None:
    with ContainerEnv({"read_loop": loop}) as env:
        daemon = Daemon(env.dir / "icd", "")
        daemon.start()
        lx_mnt = env.dir / "lxcfs"
        lx_mnt.mkdir()
        lxcfs = None
        tree = env.dir / "emul"
        runners: list[ExecRunner] = []
        cid = f"bench-fuse-{os.getpid()}"
        try:
            em = daemon.control("status").get("emulation")
            if not em:
                print("in a container: the daemon runs without emulation (no /dev/fuse?)")
                return
            emulbinds.clone_tree(em["fs"], str(tree))
            lxcfs = lxcfs_start(lx_mnt)
            b = env.bundle(BundleSpec(args=["sleep", "3600"], notify=["sysfs"],
                                      listener_path=daemon.listener_path))
            cfg = b.config
            cfg["linux"]["resources"] = {"memory": {"limit": 256 << 20},
                                         "cpu": {"cpus": "0"}}
            emulbinds.apply(cfg, list(emulbinds.registry.FILES), str(tree))
            cfg["mounts"] += [{"destination": "/nproc", "type": "proc", "source": "proc"},
                              {"destination": "/nsys", "type": "sysfs", "source": "sysfs",
                               "options": ["ro", "nosuid", "nodev", "noexec"]}]
            sources: dict[str, dict[str, str]] = {"interceptd": {}, "native": {}}
            if lxcfs is not None:
                sources["LXCFS"] = {}
            for name, (ipath, rel) in FILES.items():
                sources["interceptd"][name] = ipath
                sources["native"][name] = ("/nproc/" if rel.startswith("proc/")
                                           else "/nsys/") + rel.split("/", 1)[1]
                if lxcfs is not None and (lx_mnt / rel).exists():
                    dest = "/lx/" + rel.replace("/", "_")
                    cfg["mounts"].append({"destination": dest, "type": "bind",
                                          "source": str(lx_mnt / rel),
                                          "options": ["bind", "ro", "nosuid", "nodev"]})
                    sources["LXCFS"][name] = dest
            b.write_config()
            env.runtime.create(b, cid)
            env.runtime.start(cid)
            daemon.wait_container(cid)
            runner = ExecRunner(env.runtime.cmd("exec", cid))
            runners.append(runner)
            for src in sources.values():  # warm-up and first renders
                for path in src.values():
                    runner.run(f"/bin/read_loop {path} 50")
            med: dict[tuple[str, str], tuple[float, float]] = {}
            for name in FILES:
                res: dict[str, list[dict[str, int]]] = {s: [] for s in sources}
                for r in range(runs):
                    order = [s for s in sources if name in sources[s]]
                    if r % 2:
                        order.reverse()
                    for s in order:
                        res[s].append(runner.run(f"/bin/read_loop {sources[s][name]} {n}"))
                for s, v in res.items():
                    if v:
                        med[(s, name)] = (statistics.median(x["p50_ns"] for x in v) / 1000,
                                          statistics.median(x["p99_ns"] for x in v) / 1000)
            rows = []
            for name in FILES:
                row = [name]
                for s in ("interceptd", "LXCFS", "native"):
                    p = med.get((s, name))
                    row.append(f"{p[0]:.1f} / {p[1]:.1f}" if p else "-")
                i, lx = med.get(("interceptd", name)), med.get(("LXCFS", name))
                row.append(f"{i[0] / lx[0]:.2f} / {i[1] / lx[1]:.2f}" if i and lx else "-")
                rows.append(row)
            print(f"\nfrom inside a runc container (user namespace, 256 MiB, CPU 0), "
                  f"open+read+close, {n} x {runs} runs, p50 / p99 in us")
            print(table(["file", "interceptd", "LXCFS", "native", "interceptd / LXCFS"],
                        rows))
            if parallel:
                runners += [ExecRunner(env.runtime.cmd("exec", cid))
                            for _ in range(parallel - 1)]
                prow = []
                for s, pid in (("interceptd", daemon.pid),
                               ("LXCFS", lxcfs.pid if lxcfs else 0)):
                    path = sources.get(s, {}).get("meminfo")
                    if path is None:
                        continue
                    for r in runners:
                        r.run(f"/bin/read_loop {path} 10")
                    cpu0, t0 = cpu_seconds(pid), time.monotonic()
                    for r in runners:
                        r.send(f"/bin/read_loop {path} {parallel_n}")
                    for r in runners:
                        r.result()
                    wall, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
                    total = parallel_n * len(runners)
                    prow.append([s, f"{total / wall:.0f}", f"{cpu * 10000 / total:.3f}"])
                if len(prow) == 2:
                    prow[0].append(f"{float(prow[0][1]) / float(prow[1][1]):.2f}")
                    prow[1].append("1.00")
                print(f"{len(runners)} readers in the container reading /proc/meminfo at once, "
                      f"{parallel_n} each (CPU: the serving process: interceptd = the whole "
                      "daemon, renders included)")
                print(table(["source", "reads/s", "CPU s / 10k reads", "vs LXCFS"][
                    :len(prow[0])], prow))
        finally:
            for r in runners:
                r.close()
            env.runtime.cleanup()
            if lxcfs is not None:
                lxcfs_stop(lxcfs, lx_mnt)
            daemon.stop()
            subprocess.run(["umount", "-l", str(tree)], stderr=subprocess.DEVNULL, check=False)
