"""The createRuntime hook that binds the served /proc/sys values (runtime/sysctlhook.c),
run as a runtime runs it (as root, the container's pid in the state on stdin; here a
shell in a private mount namespace stands for the container's init) against rootfs
shapes an image could take: it binds onto the procfs mounted at <rootfs>/proc and
nowhere else, never through a symlink, and a malformed command line or state fails it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from interceptd.runtime import emulbinds
from tests.harness import Daemon

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
              pytest.mark.skipif(not os.path.exists(emulbinds.SYSCTL_HOOK),
                                 reason="the hook is built by `make launcher`")]

PANIC = "/proc/sys/kernel/panic"
PID_STATE = '{"pid": $$}'


def sh_quoted(state: str) -> str:
    """`state` inside a shell's double quotes, where only "$$" (the shell's pid, the
    stand-in container init) is expanded."""
    return state.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")


def run_hook(daemon: Daemon, root: Path, setup: str, *paths: str, tree: str | None = None,
             dev: str | None = None, state: str = PID_STATE
             ) -> tuple[int, str, list[str]]:
    """`setup` then the hook in a private mount namespace; (rc, stderr, the
    fuse.interceptd mounts of that namespace as "root mountpoint")."""
    fs = tree or os.path.join(str(daemon.state_dir), "fs")
    dev = dev or str(os.stat(fs).st_dev)
    script = (f"set -e; {setup}\n"
              f"printf '%s' \"{sh_quoted(state)}\" | "
              f"{emulbinds.SYSCTL_HOOK} {fs} {dev} {root} {' '.join(paths or (PANIC,))} "
              "|| echo rc=$?\n"
              "awk '/ - fuse.interceptd / {print $4, $5}' /proc/self/mountinfo")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    rc = next((int(ln[3:]) for ln in lines if ln.startswith("rc=")), 0)
    return rc, p.stderr, [ln for ln in lines if not ln.startswith("rc=")
                          and not ln.startswith("/ ")]  # the tree's own mount


def test_binds_onto_the_rootfs_procfs(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    rc, err, mounts = run_hook(daemon, tmp_path, f"mount -t proc proc {tmp_path}/proc",
                               PANIC, "/proc/sys/kernel/domainname")
    assert rc == 0 and err == ""
    assert mounts == [f"{PANIC} {tmp_path}{PANIC}",
                      f"/proc/sys/kernel/domainname {tmp_path}/proc/sys/kernel/domainname"]


def test_bound_already_is_left(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    fs = os.path.join(str(daemon.state_dir), "fs")
    hook = (f"printf '%s' \"{sh_quoted(PID_STATE)}\" | "
            f"{emulbinds.SYSCTL_HOOK} {fs} {os.stat(fs).st_dev} {tmp_path} {PANIC}")
    rc, err, mounts = run_hook(daemon, tmp_path, f"mount -t proc proc {tmp_path}/proc; {hook}")
    assert rc == 0 and err == "" and mounts == [f"{PANIC} {tmp_path}{PANIC}"]


@pytest.mark.parametrize("shape", ["symlink", "plain-dir", "cover", "rootfs-link"])
def test_hostile_rootfs_gets_nothing_bound(daemon: Daemon, tmp_path: Path, shape: str) -> None:
    """/proc a symlink to the host's (the runtime would have mounted the procfs where
    it points), a plain directory with a panic file, a tmpfs over /proc/sys/kernel,
    a rootfs path through a symlink: nothing bound, said on stderr, the hook succeeds
    (the daemon's attach then tries, with the same rules)."""
    root = tmp_path / "root"
    root.mkdir()
    setup = "true"
    if shape == "symlink":
        (root / "proc").symlink_to("/proc")
    elif shape == "plain-dir":
        (root / "proc/sys/kernel").mkdir(parents=True)
        (root / "proc/sys/kernel/panic").write_text("0\n")
    elif shape == "cover":
        (root / "proc").mkdir()
        setup = (f"mount -t proc proc {root}/proc; mount -t tmpfs t {root}/proc/sys/kernel; "
                 f"echo 0 > {root}/proc/sys/kernel/panic")
    else:
        (root / "proc").mkdir()
        (tmp_path / "link").symlink_to(root)
        setup = f"mount -t proc proc {root}/proc"
        root = tmp_path / "link"
    rc, err, mounts = run_hook(daemon, root, setup)
    assert rc == 0, err
    assert mounts == [], mounts
    assert "not bound" in err, err


def test_the_tree_must_be_the_daemons(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    fake = tmp_path / "fake"
    (fake / "proc/sys/kernel").mkdir(parents=True)
    (fake / "proc/sys/kernel/panic").write_text("9\n")
    rc, err, mounts = run_hook(daemon, tmp_path, f"mount -t proc proc {tmp_path}/proc",
                               tree=str(fake), dev=str(os.stat(fake).st_dev))
    assert rc == 0 and mounts == [] and "the daemon's tree" in err


@pytest.mark.parametrize("bad", ["/proc/sys/../../etc/passwd", "/proc/sys//kernel/panic",
                                 "/proc/self/fd/0", "/proc/sys/kernel/./panic"])
def test_malformed_paths_fail_the_hook(daemon: Daemon, tmp_path: Path, bad: str) -> None:
    (tmp_path / "proc").mkdir()
    rc, err, mounts = run_hook(daemon, tmp_path, f"mount -t proc proc {tmp_path}/proc", bad)
    assert rc == 2 and mounts == [] and "not a /proc/sys path" in err


@pytest.mark.parametrize("state", [
    "", "[]", '{"pid": 0}', '{"pid": "$$"}', '{"pid": $$x}',
    # A key named pid anywhere but at the top is not the container's pid.
    '{"id": "c", "annotations": {"pid": $$}}',
    '{"bundle": "/b\\", \\"pid\\": $$, \\"x", "status": "x"}'])
def test_state_without_a_pid_fails_the_hook(daemon: Daemon, tmp_path: Path, state: str) -> None:
    (tmp_path / "proc").mkdir()
    rc, err, mounts = run_hook(daemon, tmp_path, f"mount -t proc proc {tmp_path}/proc",
                               state=state)
    assert rc == 2 and mounts == [] and "no container pid" in err, err


def test_state_as_the_runtimes_write_it(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    state = ('{"ociVersion":"1.0.2","id":"c1","status":"creating","bundle":"/b",'
             '"annotations":{"x":"{\\"pid\\":1}"},"pid":$$}')
    rc, err, mounts = run_hook(daemon, tmp_path, f"mount -t proc proc {tmp_path}/proc",
                               state=state)
    assert rc == 0 and err == "" and mounts == [f"{PANIC} {tmp_path}{PANIC}"], err
