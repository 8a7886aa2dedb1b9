"""Helpers for the policy integration tests (containers in the --privileged shape)."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from typing import Any

import interceptd.policy as policy
from tests.harness import Bundle, Daemon, Runtime

EPERM, EBUSY, EINVAL = 1, 16, 22
# Build the filter from notify_rules (argument-narrowed) rather than notified_syscalls.
NARROW = os.environ.get("INTERCEPTD_TEST_NARROW_NOTIFY", "") == "1"


def privileged(bundle_factory: Callable[..., Bundle], daemon: Daemon | None, script: str,
               **kw: Any) -> Bundle:
    """A bundle running `sh -c script` with every capability the host allows; with a daemon
    its filter is the policy's (notify + deny list), without one it has no filter at all."""
    if daemon is None:
        return bundle_factory(args=["sh", "-c", script], caps="all", **kw)
    rules = policy.notify_rules(None) if NARROW else []
    return bundle_factory(
        args=["sh", "-c", script], caps="all",
        notify=[] if NARROW else policy.notified_syscalls(None),
        seccomp_rules=rules + policy.denied_syscalls(None), seccomp=True,
        listener_path=daemon.listener_path, **kw)


def probe(label: str, cmd: str, last: bool = False) -> str:
    """A script line printing `label ret=R errno=E`.

    `cmd` prints `ret=R errno=E` as its last line; with `last`, it is a multi-step helper
    (policy_mntapi, tracer) and the line reports its first failing step, or `ret=0 errno=0`
    when every step succeeded."""
    if not last:
        return f"echo \"{label} $({cmd} 2>&1 | tail -1)\""
    return (
        f"o=$({cmd} 2>&1); "
        f"f=$(echo \"$o\" | grep -o 'ret=-1 errno=[0-9]*' | head -1); "
        f"[ -n \"$f\" ] || f='ret=0 errno=0'; "
        f"echo \"$o\" | grep -q 'ret=' || f='ret=-2 errno=0'; "
        f"echo \"{label} $f\""
    )


def parse(stdout: str) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].startswith("ret=") and parts[2].startswith("errno="):
            try:
                out[parts[0]] = (int(parts[1][4:]), int(parts[2][6:]))
            except ValueError:
                continue
    return out


def run_script(rt: Runtime, bundle: Bundle, cid: str) -> dict[str, tuple[int, int]]:
    res = rt.run(bundle, cid, timeout=120)
    assert res.rc == 0, f"rc={res.rc}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    out = parse(res.stdout)
    print(res.stdout)
    return out


def host_mounts() -> list[str]:
    """The host's /, /proc and /sys mounts without ids (to see that nothing changed there;
    the rest of the table moves with other tests' containers)."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            mp = line.split()[4]
            if mp == "/" or mp.startswith("/proc") or (
                    mp.startswith("/sys") and not mp.startswith("/sys/fs/cgroup")):
                out.append(" ".join(line.split()[2:]))
    return sorted(out)


def quote(s: str) -> str:
    return shlex.quote(s)


def children(pid: int) -> list[int]:
    """Child processes of `pid` (threads that end meanwhile are skipped)."""
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                out += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            continue
    return out


def wait_for(pred: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out{' waiting for ' + what if what else ''}")
