"""End to end: a private dockerd (Debian's docker.io) with interceptd-runc as a runtime.

The dockerd has its own data root, exec root and socket, no bridge and no
iptables; it is stopped by the pid this module started and everything it made
is removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import dockerd
from tests.harness.daemon import Daemon
from tests.harness.dockerd import IMAGE

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]

if dockerd.DOCKERD is None or dockerd.DOCKER is None:  # pragma: no cover - in the set-up
    pytest.skip("docker.io is not installed", allow_module_level=True)


class Dockerd(dockerd.Dockerd):
    """The private dockerd with interceptd-runc as its `interceptd` runtime."""

    def __init__(self, top: Path, daemon: Daemon, runtime: str) -> None:
        super().__init__(top)
        self.runtime = runtime
        self.daemon = daemon

    def start(self) -> None:
        from interceptd.runtime.launcher import build

        # What a set-up installs: the native launcher in front of the Python shim.
        shim = build(str(self.top / "interceptd-runc"))
        cfg = json.loads((REPO / "packaging" / "docker" / "daemon.json").read_text())
        cfg["runtimes"]["interceptd"]["path"] = shim
        env = dict(os.environ, INTERCEPTD_STATE_DIR=str(self.daemon.state_dir),
                   INTERCEPTD_RUNTIME=self.runtime,
                   INTERCEPTD_RUNC_TRACE=str(self.top / "python-entry.log"))
        env.pop("INTERCEPTD_CONFIG", None)
        self.launch(cfg, env)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.docker("run", "--rm", "--network=none", "--runtime=interceptd", *args,
                           check=False)


@pytest.fixture(scope="module", params=["runc", "crun"])
def docker_env(request: pytest.FixtureRequest) -> Iterator[Dockerd]:
    """A private dockerd whose `interceptd` runtime hands over to runc or crun."""
    if request.param == "crun":
        request.getfixturevalue("crun_cgroups")
    top = Path(tempfile.mkdtemp(prefix="icd-dk-", dir="/tmp"))  # short: socket paths
    os.chmod(top, 0o711)
    sock_existed = os.path.lexists("/var/run/docker.sock")
    daemon = Daemon(top / "interceptd")
    daemon.start()
    d = Dockerd(top, daemon, request.param)
    try:
        # The launcher's prepare service is the daemon's own runtime.sock, as in production.
        deadline = time.monotonic() + 10
        while not (Path(daemon.state_dir) / "runtime.sock").exists():
            assert time.monotonic() < deadline, daemon.log()  # no runtime.sock
            time.sleep(0.05)
        d.start()
        d.import_busybox()
        yield d
    finally:
        d.stop()
        rc = daemon.stop()
        dockerd.unmount_under(str(top))
        shutil.rmtree(top, ignore_errors=True)
        # `-v /var/run/docker.sock:...` makes dockerd create the missing source.
        if not sock_existed and os.path.isdir("/var/run/docker.sock"):
            os.rmdir("/var/run/docker.sock")
        assert rc == 0, daemon.log()


def assert_clean(d: Dockerd) -> None:
    """No id range held, nothing mounted by the shim, no record left."""
    state = Path(d.daemon.state_dir)
    pool = state / "runtime" / "idpool.json"
    if pool.exists():
        assert json.loads(pool.read_text())["allocated"] == {}
    mnt = str(state) + "-rootfs"
    with open("/proc/self/mountinfo") as f:
        assert mnt not in f.read()


PROBE = ("cat /proc/self/uid_map; stat -c '%u:%g %n' /bin/busybox /etc/passwd; "
         "echo hi > /written && stat -c '%u %n' /written; "
         "grep -E '^(Seccomp|CapBnd):' /proc/self/status; echo masked=$(wc -c < /proc/timer_list)")


def _check_probe(out: str) -> None:
    inside, outside, size = out.splitlines()[0].split()
    assert (inside, size) == ("0", "65536") and outside != "0"  # not the identity
    assert "0:0 /bin/busybox" in out and "0:0 /etc/passwd" in out  # image files are root's
    assert "0 /written" in out  # the rootfs is writable
    assert "Seccomp:\t2" in out
    assert "masked=0" in out
    capbnd = int(next(x for x in out.splitlines() if x.startswith("CapBnd")).split()[1], 16)
    assert not capbnd >> 24 & 1  # CAP_SYS_RESOURCE is not in this host's bounding set


def test_normal_container(docker_env):
    p = docker_env.run(IMAGE, "sh", "-c", PROBE)
    assert p.returncode == 0, p.stderr
    _check_probe(p.stdout)
    assert_clean(docker_env)
    # create and delete went through the prepare service; the Python entry (which
    # logs every call it handles) was not started.
    assert not (docker_env.top / "python-entry.log").exists()


def test_privileged_container(docker_env):
    p = docker_env.run("--privileged", IMAGE, "sh", "-c", PROBE + "; ls /dev | wc -l")
    assert p.returncode == 0, p.stderr
    _check_probe(p.stdout)
    assert_clean(docker_env)


def test_userns_host_cannot_disable(docker_env):
    p = docker_env.run("--userns=host", IMAGE, "cat", "/proc/self/uid_map")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[1] != "0"


def test_volume(docker_env):
    vol = docker_env.top / "vol"
    vol.mkdir()
    (vol / "from-host").write_text("h")
    p = docker_env.run("-v", f"{vol}:/data", IMAGE, "sh", "-c",
                       "stat -c '%u' /data/from-host; echo c > /data/from-container")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "0"
    st = (vol / "from-container").stat()
    assert (st.st_uid, st.st_gid) == (0, 0)  # the container's root is the volume's root
    assert (vol / "from-container").read_text() == "c\n"
    assert_clean(docker_env)


def test_named_volume(docker_env):
    d = docker_env
    name = f"icd-vol-{d.runtime}"
    d.docker("volume", "create", name)
    try:
        p = d.run("-v", f"{name}:/data", IMAGE, "sh", "-c", "echo n > /data/f; stat -c %u /data/f")
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "0"
        src = d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", name).stdout.strip()
        assert Path(src, "f").stat().st_uid == 0
    finally:
        d.docker("volume", "rm", "-f", name, check=False)
    assert_clean(d)


def test_readonly_rootfs(docker_env):
    p = docker_env.run("--read-only", IMAGE, "sh", "-c",
                       "touch /x 2>/dev/null && echo writable || echo readonly; "
                       "cat /proc/self/uid_map")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "readonly"
    assert p.stdout.split()[2] != "0"
    assert_clean(docker_env)


def test_docker_sock_refused(docker_env):
    p = docker_env.run("-v", "/var/run/docker.sock:/var/run/docker.sock", IMAGE, "true")
    assert p.returncode != 0
    assert "sensitive host path" in p.stderr, p.stderr
    assert_clean(docker_env)


def test_pid_host_refused(docker_env):
    p = docker_env.run("--pid=host", IMAGE, "true")
    assert p.returncode != 0
    assert "pid namespace" in p.stderr, p.stderr
    assert_clean(docker_env)


def test_network_host_refused(docker_env):
    p = docker_env.docker("run", "--rm", "--network=host", "--runtime=interceptd", IMAGE,
                          "true", check=False)
    assert p.returncode != 0
    assert "network namespace" in p.stderr, p.stderr
    assert_clean(docker_env)


def test_exec_and_restart_keep_ownership(docker_env):
    d = docker_env
    cid = d.docker("run", "-d", "--network=none", "--runtime=interceptd", IMAGE,
                   "sleep", "1000").stdout.strip()
    try:
        conts = d.daemon.control("containers")["containers"]
        assert cid in json.dumps(conts)
        # The real runtime behind the shim is the one asked for (runc: state.json,
        # crun: status in its state dir).
        rt_state = d.top / "exec" / "runtime-runc" / "moby" / cid
        marker = "state.json" if d.runtime == "runc" else "status"
        assert (rt_state / marker).exists(), sorted(os.listdir(rt_state))
        p = d.docker("exec", cid, "sh", "-c",
                     "echo a > /etc/newconf; grep Seccomp: /proc/self/status")
        assert "Seccomp:\t2" in p.stdout
        p = d.docker("exec", "--privileged", cid, "sh", "-c", "id -u")
        assert p.stdout.strip() == "0"
        d.docker("stop", "-t", "1", cid)
        assert_clean(d)
        d.docker("start", cid)
        p = d.docker("exec", cid, "stat", "-c", "%u %n", "/etc/newconf")
        assert p.stdout.strip() == "0 /etc/newconf"
    finally:
        d.docker("rm", "-f", cid, check=False)
    assert_clean(d)


def test_tty_and_console_socket(docker_env):
    """`-t` makes containerd pass --console-socket: the pass-through must keep it."""
    p = docker_env.run("-t", IMAGE, "sh", "-c", "tty; cat /proc/self/uid_map")
    assert p.returncode == 0, p.stderr
    assert "/dev/pts/0" in p.stdout
    assert p.stdout.split()[-2] != "0"
    assert_clean(docker_env)
