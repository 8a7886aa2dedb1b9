"""Container start latency: interceptd-runc vs plain runc and crun with a user namespace.

One sample = `create` + `start` + the container's exit (a busybox `true`),
timed from the caller's side; `delete` is timed separately. The baseline is
what a hardened container costs without interceptd: the plain runtime, a user
namespace, a rootfs chowned to the mapped root ahead of time, Docker's default
masked and read-only paths, and a default-deny seccomp profile (interceptd's
default profile, modelled on Docker's: what every `docker run` brings). runc and
crun compile a profile at every create (runc 1.1.5 ~25 ms, crun 1.8.1 ~20 ms on
this kind of VM), so a baseline without one would charge interceptd with the
runtime's own compile; that row is printed as context ("bare").
interceptd-runc gets an image-style root-owned rootfs and a config without a user
namespace or profile, and does everything itself (id range, id-mapped mount, the
same default profile plus its notify and deny rules, seccomp attach, checks).
Rows of one runtime use the same real runtime.

Rows run interleaved, round by round, cycling through every order of the rows,
after warm-up rounds: a VM's speed drifts by tens of percent within seconds, and this
way the drift hits every row alike. Prints each row's median (150 rounds by
default) and quartiles, the ratio of the medians with PASS/MISS against the
runtime's target (runc 1.15x, crun 1.25x), and the median of the per-round ratios
as a cross-check.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from interceptd.runtime.spec import DOCKER_MASKED, DOCKER_READONLY

REPO = Path(__file__).resolve().parents[1]
INTERCEPTD = REPO / ".venv" / "bin" / "interceptd"
TARGETS = {"runc": 1.15, "crun": 1.25}
BASELINE_ID = 3_000_000_000  # far from interceptd's pool


def make_rootfs(path: Path, owner: int) -> None:
    (path / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", path / "bin" / "busybox")
    for a in ("sh", "true"):
        os.symlink("busybox", path / "bin" / a)
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        (path / d).mkdir()
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), owner, owner)
    os.lchown(path, owner, owner)


def config(userns: bool) -> dict:
    ns = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]
    cfg: dict = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["true"],
                    "env": ["PATH=/bin"], "cwd": "/",
                    "capabilities": {k: ["CAP_KILL", "CAP_CHOWN"]
                                     for k in ("bounding", "effective", "permitted")},
                    "noNewPrivileges": True},
        "root": {"path": "rootfs"},
        "hostname": "bench",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}],
        # Both rows start from what Docker passes any non-privileged container:
        # its masked and read-only paths (the shim adds them where missing).
        "linux": {"namespaces": ns, "maskedPaths": list(DOCKER_MASKED),
                  "readonlyPaths": list(DOCKER_READONLY)},
    }
    if userns:
        ns.append({"type": "user"})
        m = [{"containerID": 0, "hostID": BASELINE_ID, "size": 65536}]
        cfg["linux"]["uidMappings"] = m
        cfg["linux"]["gidMappings"] = m
    return cfg


def make_bundle(path: Path, userns: bool, listener: str | None = None,
                profile: bool = False) -> Path:
    path.mkdir(parents=True)
    os.chmod(path, 0o711)
    make_rootfs(path / "rootfs", BASELINE_ID if userns else 0)
    cfg = config(userns)
    sys.path.insert(0, str(REPO))
    if listener:  # the same filter the shim installs, without the shim
        from interceptd.runtime import policylink
        from interceptd.runtime.spec import add_seccomp

        notified, denied, _ = policylink.syscalls({}, None)
        add_seccomp(cfg, notified, denied, listener, "bench")
    elif profile:  # the profile the shim gives a config without one, nothing of its own
        from interceptd.runtime import seccomp_default

        cfg["linux"]["seccomp"] = seccomp_default.profile()
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def become_subreaper() -> None:
    """Orphaned container inits become our children, so their exit can be waited for."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def one(cmd: list[str], bundle: Path, cid: str, env: dict[str, str]) -> list[float]:
    """Seconds for [create + start + exit, create, start, exit, delete]."""
    pidfile = bundle / "pid"
    t0 = time.perf_counter()
    subprocess.run([*cmd, "create", "--bundle", str(bundle), "--pid-file", str(pidfile), cid],
                   check=True, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    pid = int(pidfile.read_text())
    t1 = time.perf_counter()
    subprocess.run([*cmd, "start", cid], check=True, env=env)
    t2 = time.perf_counter()
    os.waitpid(pid, 0)
    t3 = time.perf_counter()
    subprocess.run([*cmd, "delete", cid], check=True, env=env)
    t4 = time.perf_counter()
    return [t3 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3]


def daemon_cpu(pid: int) -> float:
    """The daemon's CPU time (all threads, user + system), ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU time of the processes this one waited for (runtimes, launcher, inits), ms."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1000


def print_service_phases(path: Path, warmup: int) -> None:
    """Medians of the prepare service's phases of the shim row's creates (the daemon
    appends them: interceptd/runtime/timing.py)."""
    lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    lines = [d for d in lines if d.get("command") == "create"
             and d.get("cid", "").startswith("shim-")
             and int(d["cid"].rsplit("-", 1)[1]) >= warmup]
    if not lines:
        return
    names = [k for k in lines[0] if k not in ("cid", "command")]
    med = {k: statistics.median(d.get(k, 0.0) for d in lines) for k in names}
    total = statistics.median(sum(d.get(k, 0.0) for k in names) for d in lines)
    print(f"  prepare service, shim create, median ms (total {total:.1f}): "
          + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))


def measure(args: argparse.Namespace, rt: str, top: Path, state: Path, shim: str,
            daemon_pid: int) -> bool:
    """One runtime's rows, interleaved; prints them; whether the target is met."""
    real = shutil.which(rt)
    if not real:
        print(f"container start ({rt}): {rt} not installed: MISS")
        return False
    base_cmd = [real, "--root", str(top / f"root-base-{rt}")]
    shim_cmd = [shim, "--root", str(top / f"root-shim-{rt}")]
    env = dict(os.environ, INTERCEPTD_RUNTIME=real, INTERCEPTD_STATE_DIR=str(state))
    env.pop("INTERCEPTD_CONFIG", None)
    b_base = make_bundle(top / f"base-{rt}", userns=True, profile=True)
    b_shim = make_bundle(top / f"shim-{rt}", userns=False)
    b_filt = make_bundle(top / f"filt-{rt}", userns=True, listener=str(state / "seccomp.sock"))
    b_bare = make_bundle(top / f"bare-{rt}", userns=True)
    py_env = dict(env, INTERCEPTD_RUNC_NO_SERVICE="1")
    rows: dict[str, list[float]] = {"base": [], "shim": [], "filt": [], "bare": [], "py": []}
    phases: dict[str, list[list[float]]] = {k: [] for k in rows}
    # CPU per round (create..delete), which other work on the machine inflates far less
    # than wall time: the caller's children (runtime, launcher, container init) and
    # the daemon (prepare service, attach, FUSE, detach; clock ticks, summed per row).
    cpu_children: dict[str, list[float]] = {k: [] for k in rows}
    cpu_daemon: dict[str, float] = dict.fromkeys(rows, 0.0)
    timing = state / "timing.jsonl"
    timing.write_text("")
    load0 = os.getloadavg()[0]
    t_start = time.monotonic()
    runs = [("base", base_cmd, b_base, env), ("shim", shim_cmd, b_shim, env)]
    if not args.no_context:
        runs.append(("filt", base_cmd, b_filt, env))
        runs.append(("bare", base_cmd, b_bare, env))
    if args.python_row:
        runs.append(("py", shim_cmd, b_shim, py_env))
    # Interleaved, round by round, cycling through every order of the rows: drifting
    # load hits every row alike, and no row always follows the same other one
    # (what a row leaves behind, say the daemon's detach work, lands on the next).
    orders = list(itertools.permutations(runs))
    for i in range(args.warmup + args.n):
        for name, cmd, bundle, e in orders[i % len(orders)]:
            c0, d0 = children_cpu(), daemon_cpu(daemon_pid)
            t = [x * 1000 for x in one(cmd, bundle, f"{name}-{i}", e)]
            c1, d1 = children_cpu(), daemon_cpu(daemon_pid)
            if i >= args.warmup:
                rows[name].append(t[0])
                phases[name].append(t[1:])
                cpu_children[name].append(c1 - c0)
                cpu_daemon[name] += d1 - d0
    elapsed = time.monotonic() - t_start
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    mb, ms = med["base"], med["shim"]
    ratio = ms / mb
    paired = statistics.median(s / b for s, b in zip(rows["shim"], rows["base"], strict=True))

    def quart(name: str) -> str:
        q = statistics.quantiles(rows[name], n=4)
        return f"(quartiles {q[0]:.1f}-{q[2]:.1f})"

    target = TARGETS.get(rt, 1.25)
    print(f"container start ({rt}, create+start+exit, median of {args.n}, interleaved "
          f"after {args.warmup} warm-up rounds; {elapsed:.0f} s; load "
          f"{load0:.2f} -> {os.getloadavg()[0]:.2f}):")
    print(f"  baseline: {rt} + userns (chowned rootfs) + default seccomp profile: "
          f"{mb:7.1f} ms {quart('base')}")
    print(f"  interceptd-runc (launcher + daemon's prepare service): {ms:7.1f} ms "
          f"{quart('shim')}")
    if "py" in med:
        print(f"  interceptd-runc, Python fallback (no service): {med['py']:7.1f} ms "
              f"({med['py'] / mb:.2f}x)")
    if "filt" in med:
        mf = med["filt"]
        print(f"  context: {rt} + userns + interceptd's seccomp filter/listener, no "
              f"shim: {mf:.1f} ms {quart('filt')} ({mf / mb:.2f}x)")
    if "bare" in med:
        mr = med["bare"]
        print(f"  context: {rt} + userns, no seccomp profile at all: {mr:.1f} ms "
              f"{quart('bare')} (interceptd-runc {ms / mr:.2f}x of it)")
    print("  medians of create / start / exit / (delete, not counted), ms:")
    for name in rows:
        if phases[name]:
            ph = [statistics.median(p[j] for p in phases[name]) for j in range(4)]
            print(f"    {name:5s} {ph[0]:6.1f} {ph[1]:5.1f} {ph[2]:5.1f}  ({ph[3]:.1f})")
    print_service_phases(timing, args.warmup)
    print("  CPU per round (create..delete), ms: caller's children median / daemon mean:")
    for name in rows:
        if cpu_children[name]:
            print(f"    {name:5s} {statistics.median(cpu_children[name]):6.1f} / "
                  f"{cpu_daemon[name] / len(cpu_children[name]):5.1f}")
    print(f"  per-round ratio, median: {paired:.2f}x")
    verdict = "PASS" if ratio <= target else "MISS"
    print(f"  ratio {ratio:.2f}x (+{ms - mb:.1f} ms; target <= {target}x): {verdict}")
    return ratio <= target


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=150, help="measured rounds (default 150)")
    ap.add_argument("--warmup", type=int, default=5, help="unmeasured rounds first")
    ap.add_argument("--runtime", default="runc,crun",
                    help="comma-separated real runtimes to measure (default runc,crun)")
    ap.add_argument("--shim", help="interceptd-runc to measure (default: the native "
                    "launcher, built into a temporary directory)")
    ap.add_argument("--python-row", action="store_true",
                    help="also time the launcher's Python fallback (no prepare service)")
    ap.add_argument("--no-context", action="store_true",
                    help="skip the context rows (interceptd's filter but no shim; no profile)")
    args = ap.parse_args()
    become_subreaper()
    top = Path(tempfile.mkdtemp(prefix="icd-bench-", dir="/tmp"))
    os.chmod(top, 0o711)
    state = top / "interceptd"
    # The real daemon, which also hosts the runtime's prepare service (runtime.sock).
    daemon = subprocess.Popen([str(INTERCEPTD), "--state-dir", str(state), "--metrics-address",
                               "off", "--log-level", "warning"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ,
                                       INTERCEPTD_RUNC_TIMING=str(state / "timing.jsonl")))
    try:
        deadline = time.monotonic() + 20
        while not ((state / "control.sock").exists() and (state / "runtime.sock").exists()):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("interceptd (with its runtime.sock) did not start")
            time.sleep(0.02)
        shim = args.shim
        if not shim:
            sys.path.insert(0, str(REPO))
            from interceptd.runtime.launcher import build

            shim = build(str(top / "interceptd-runc"))
        ok = True
        for rt in args.runtime.split(","):
            ok = measure(args, rt, top, state, shim, daemon.pid) and ok
        return 0
    finally:
        daemon.terminate()
        daemon.wait(20)
        with open("/proc/self/mountinfo") as f:
            left = [ln.split()[4] for ln in f if str(top) in ln]
        for p in reversed(left):
            subprocess.run(["umount", "-l", p], check=False)
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
