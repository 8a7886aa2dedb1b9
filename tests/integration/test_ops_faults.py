"""Faults around the daemon (issue 14, Tests: faults), each against a real daemon and
real runc containers:

- its state dir full (a small tmpfs of the test's own), then read-only (a read-only bind
  over it): a full or read-only state dir costs only what the daemon persists for a
  restart (the per-container policy state, logged as "policy state not saved");
- a container SIGKILLed while the handler holds its notification;
- `runc create` SIGKILLed at spread moments around its listener hand-shake;
- an attached container whose cgroups vanish;
- a reader of the emulated /proc/meminfo (FUSE) stopped for good mid-file.

(The watchdog firing on a stuck serving loop is tests/integration/test_ops_daemon.py's
test_stuck_serving_loop_stops_the_pings.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, Runtime
from tests.harness.fleet import HANDLERS
from tests.harness.handlers import ANNOTATION, DELAY_ANNOTATION
from tests.harness.runtime import output
from tests.integration.policy_support import privileged, probe, run_script

pytestmark = pytest.mark.integration

SCRIPT = "\n".join([
    "mkdir -p /mnt/a",
    probe("mount", "sys mount s:t s:/mnt/a s:tmpfs 0 s:size=1m"),
    probe("umount", "sys umount2 s:/mnt/a 0"),
    probe("umount_proc", "sys umount2 s:/proc 2"),
])
# When `runc create` is killed: dense around where runc connects to the listener here
# (20-50 ms after the start), spread on either side for other machines.
DELAYS = [0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.07, 0.1, 0.2]
EXPECT = {"mount": (0, 0), "umount": (0, 0), "umount_proc": (-1, 16)}  # EBUSY


@pytest.fixture
def state_tmpfs(workdir: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs where daemon_factory's first daemon keeps its state (requested
    before daemon_factory, so it is unmounted after that daemon stopped)."""
    mnt = workdir / "daemon0"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "ic-ops-state",
                    str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(top: Path) -> None:
    with contextlib.suppress(OSError), open(top / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    with pytest.raises(OSError) as e, open(top / "probe", "wb") as f:
        f.write(b"x" * 8192)
        f.flush()
        os.fsync(f.fileno())
    assert e.value.errno in (errno.ENOSPC,)


def test_state_dir_full_then_readonly(state_tmpfs: Path, daemon_factory: Callable[..., Daemon],
                                      runtime_factory: Callable[[str], Runtime],
                                      bundle_factory, new_id):
    rt = runtime_factory("runc")
    d = daemon_factory()
    assert d.state_dir == state_tmpfs
    assert run_script(rt, privileged(bundle_factory, d, SCRIPT), new_id("ok")) == EXPECT
    fill(state_tmpfs)
    assert run_script(rt, privileged(bundle_factory, d, SCRIPT), new_id("full")) == EXPECT
    assert "policy state not saved" in d.log()
    # Read-only for every new lookup (the daemon's open files keep the tmpfs busy, so no
    # remount of the tmpfs itself): a read-only bind of the directory over itself.
    subprocess.run(["mount", "--bind", str(state_tmpfs), str(state_tmpfs)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(state_tmpfs)], check=True)
        with pytest.raises(OSError):
            (state_tmpfs / "x").touch()
        assert run_script(rt, privileged(bundle_factory, d, SCRIPT), new_id("ro")) == EXPECT
        assert d.alive()
        assert d.control("status")["containers"] == 0
        # Stopping with a read-only state dir (it cannot unlink its sockets) is still clean.
        assert d.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(state_tmpfs)], check=False)  # the bind


def test_container_killed_while_its_notification_is_handled(
        daemon_factory: Callable[..., Daemon], runtime_factory: Callable[[str], Runtime],
        bundle_factory, new_id):
    """The handler still holds the notification when the container is SIGKILLed: the
    answer to the dead caller is dropped and counted (respond_errors{target gone}),
    nothing else is done for it, the container is detached and the daemon serves on."""
    rt = runtime_factory("runc")
    d = daemon_factory(sections=HANDLERS)
    plain = bundle_factory(args=["sys", "sysfs", "3"], notify=["sysfs"],
                           listener_path=d.listener_path)
    assert rt.run(plain, new_id("warm")).check().stdout.strip() == "ret=4242 errno=0"
    baseline = d.fd_count()
    slow = bundle_factory(args=["sys", "sysfs", "3"], notify=["sysfs"],
                          listener_path=d.listener_path,
                          annotations={DELAY_ANNOTATION: "2000", ANNOTATION: "value:7"})
    cid = new_id("victim")
    with rt.started(slow, cid):
        d.wait_container(cid)
        # The call is made at once; the handler then sleeps 2 s on it. Killed 0.8 s
        # in (the counter below shows the kill did land while it was being handled).
        time.sleep(0.8)
        rt.kill(cid, "KILL")
        wait_until(lambda: counter(d, "respond_errors", "target gone") >= 1, 10)
        wait_until(lambda: d.container(cid) is None, 10)
    assert "ret=" not in output(slow)[0]  # the caller never saw an answer
    assert d.alive()
    assert rt.run(plain, new_id("after")).check().stdout.strip() == "ret=4242 errno=0"
    wait_until(lambda: d.fd_count() == baseline, 10)


def counter(d: Daemon, name: str, label: str) -> int:
    return d.control("status")["counters"].get(name, {}).get(label, 0)


def wait_until(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_runc_killed_during_the_listener_handshake(
        daemon_factory: Callable[..., Daemon], runtime_factory: Callable[[str], Runtime],
        bundle_factory, new_id):
    """`runc create` (which connects to the listener and sends the notify fd) SIGKILLed
    at spread moments of its run: whatever the daemon got of it is dropped with the
    container, the daemon keeps no fd of it and serves the next container."""
    rt = runtime_factory("runc")
    d = daemon_factory(rules=[{"syscall": "sysfs", "action": "value", "value": 23}])
    plain = bundle_factory(args=["sys", "sysfs", "3"], notify=["sysfs"],
                           listener_path=d.listener_path)
    assert rt.run(plain, new_id("warm")).check().stdout.strip() == "ret=23 errno=0"
    baseline = d.fd_count()
    for i, delay in enumerate(DELAYS):
        b = bundle_factory(args=["sleep", "30"], notify=["sysfs"],
                           listener_path=d.listener_path)
        cid = new_id(f"cut{i}")
        with open(b.path / "stdout", "wb") as out:
            p = subprocess.Popen(rt.cmd("create", "--bundle", str(b.path), cid),
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        time.sleep(delay)
        p.kill()
        p.wait()
        rt.delete(cid)  # what a runtime's caller does after a failed create
        wait_until(lambda cid=cid: d.container(cid) is None, 10)
    assert d.alive()
    attached = d.log().count("info attach container=cut")
    print(f"\n{attached} of {len(DELAYS)} cut creates had attached before the kill")
    assert rt.run(plain, new_id("after")).check().stdout.strip() == "ret=23 errno=0"
    wait_until(lambda: d.fd_count() == baseline, 10)
    assert d.control("status")["containers"] == 0


def _cgroup_dirs(pid: int) -> list[tuple[Path, Path]]:
    """(the hierarchy's root, the process's cgroup dir) of each mounted hierarchy."""
    roots: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, opts = right.split()[0], right.split()[2].split(",")
            mnt = Path(left.split()[4])
            if fstype == "cgroup2":
                roots[""] = mnt
            elif fstype == "cgroup":
                ctrls = [o for o in opts if o not in ("rw", "ro", "nosuid", "nodev", "noexec",
                                                      "relatime")]
                roots[",".join(ctrls)] = mnt
    out = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            root = roots.get(ctrls)
            if root is not None and path not in ("", "/"):
                out.append((root, root / path.lstrip("/")))
    return out


def test_attached_container_whose_cgroup_vanishes(
        daemon_factory: Callable[..., Daemon], runtime_factory: Callable[[str], Runtime],
        bundle_factory, new_id):
    """The container's processes are moved to each hierarchy's root and its cgroups
    removed while it calls the emulated sysinfo(2) in a loop: every call is still
    answered (ret=0), the daemon stays up and detaches it at the end."""
    rt = runtime_factory("runc")
    d = daemon_factory()
    b = bundle_factory(args=["sh", "-c", "while :; do sys sysinfo b:128; sleep 0.05; done"],
                       notify=["sysinfo"], listener_path=d.listener_path)
    cid = new_id("cgone")
    with rt.started(b, cid):
        init = d.wait_container(cid)["init_pid"]
        wait_until(lambda: output(b)[0].count("\n") >= 3, 10)
        dirs = _cgroup_dirs(init)
        assert dirs, Path(f"/proc/{init}/cgroup").read_text()
        # The loop forks all the time: a child forked during the move may land in the
        # old cgroup (EBUSY on rmdir), so move and remove again until all are gone.
        deadline = time.monotonic() + 10
        while any(cg.exists() for _, cg in dirs):
            assert time.monotonic() < deadline, "the container's cgroups stay busy"
            for root, cg in dirs:
                with contextlib.suppress(FileNotFoundError):
                    for pid in (cg / "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):  # exited meanwhile
                            (root / "cgroup.procs").write_text(pid)
                with contextlib.suppress(FileNotFoundError, OSError):
                    cg.rmdir()
        before = output(b)[0].count("\n")
        wait_until(lambda: output(b)[0].count("\n") >= before + 10, 10)
        lines = output(b)[0].splitlines()[:-1]
        assert set(lines) == {"ret=0 errno=0"}, [ln for ln in lines if ln != "ret=0 errno=0"]
        assert d.alive()
    wait_until(lambda: d.container(cid) is None, 10)
    assert d.alive()


def _fuse_mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def test_fuse_reader_that_never_finishes(
        daemon_factory: Callable[..., Daemon], runtime_factory: Callable[[str], Runtime],
        bundle_factory, new_id):
    """A reader of the container's emulated /proc/meminfo stops for good in the middle of
    its file: other readers and the container's notified calls are served meanwhile,
    the daemon still stops cleanly (its FUSE tree goes), and the stuck reader, resumed,
    gets an error instead of hanging."""
    rt = runtime_factory("runc")
    d = daemon_factory(rules=[{"syscall": "sysfs", "action": "value", "value": 41}])
    fs = d.control("status")["emulation"]["fs"]
    b = bundle_factory(args=["sleep", "60"], notify=["sysfs"], listener_path=d.listener_path)
    cid = new_id("fuse")
    with rt.started(b, cid):
        pid = d.wait_container(cid)["init_pid"]
        meminfo = f"{fs}/proc/meminfo"
        # nsenter -p forks: its child (sh) is the reader; its own session, so that the
        # test can end exactly the group it started.
        reader = subprocess.Popen(
            ["nsenter", "-t", str(pid), "-p", "--", "sh", "-c",
             f'exec 3<{meminfo}; read -r l <&3; echo "$l"; kill -STOP $$; '
             'cat <&3 >/dev/null; echo "rc=$?"'],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline().startswith("MemTotal:")
            for _ in range(5):
                other = subprocess.run(["nsenter", "-t", str(pid), "-p", "--", "cat", meminfo],
                                       capture_output=True, text=True, timeout=10)
                assert other.returncode == 0 and "MemTotal:" in other.stdout, other.stderr
                res = rt.exec(cid, ["sys", "sysfs", "3"]).check()
                assert res.stdout.strip() == "ret=41 errno=0"
            # The daemon stops with the reader still holding its file open mid-way.
            assert d.stop(timeout=15) == 0
            assert not _fuse_mounted(fs)
            os.killpg(reader.pid, signal.SIGCONT)
            out, _ = reader.communicate(timeout=10)  # no hang on the gone server
            assert "rc=" in out and "rc=0" not in out, out
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(reader.pid, signal.SIGKILL)
            reader.wait()
