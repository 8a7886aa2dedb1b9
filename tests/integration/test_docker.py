"""End to end: a private dockerd (Debian's docker.io) with interceptd-runc as a runtime.

The dockerd has its own data root, exec root and socket, no bridge and no
iptables; it is stopped by the pid this module started and everything it made
is removed at the end.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.daemon import Daemon

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
DOCKERD = shutil.which("dockerd")
DOCKER = shutil.which("docker")
IMAGE = "interceptd-busybox:test"

if DOCKERD is None or DOCKER is None:  # pragma: no cover - docker.io is in the set-up
    pytest.skip("docker.io is not installed", allow_module_level=True)


def _busybox_tar(path: Path) -> None:
    """A busybox image rootfs as a tarball, every entry owned by root."""
    def add(tf: tarfile.TarFile, name: str, *, kind: bytes = tarfile.DIRTYPE,
            data: bytes = b"", mode: int = 0o755, link: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, 0, 0, int(time.time())
        ti.linkname = link
        ti.size = len(data) if kind == tarfile.REGTYPE else 0
        tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    busybox = Path("/bin/busybox").read_bytes()
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    with tarfile.open(path, "w") as tf:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "data"):
            add(tf, d, mode=0o1777 if d == "tmp" else 0o755)
        add(tf, "bin/busybox", kind=tarfile.REGTYPE, data=busybox)
        for a in applets:
            if a != "busybox":
                add(tf, f"bin/{a}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        add(tf, "etc/passwd", kind=tarfile.REGTYPE, data=b"root:x:0:0:root:/root:/bin/sh\n",
            mode=0o644)
        add(tf, "etc/group", kind=tarfile.REGTYPE, data=b"root:x:0:\n", mode=0o644)


class Dockerd:
    def __init__(self, top: Path, daemon: Daemon, runtime: str) -> None:
        self.top = top
        self.runtime = runtime
        self.sock = top / "docker.sock"
        self.pidfile = top / "docker.pid"
        self.log_path = top / "dockerd.log"
        self.daemon = daemon
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from interceptd.runtime.launcher import build

        # What a set-up installs: the native launcher in front of the Python shim.
        shim = build(str(self.top / "interceptd-runc"))
        cfg = json.loads((REPO / "packaging" / "docker" / "daemon.json").read_text())
        cfg["runtimes"]["interceptd"]["path"] = shim
        (self.top / "daemon.json").write_text(json.dumps(cfg))
        # Binds may come from <top>/shared only (and Docker's own volumes and files).
        (self.top / "shared").mkdir()
        cfg_path = self.top / "interceptd.toml"
        cfg_path.write_text(f'[runtime]\nshared_paths = ["{self.top / "shared"}"]\n')
        env = dict(os.environ, INTERCEPTD_STATE_DIR=str(self.daemon.state_dir),
                   INTERCEPTD_RUNTIME=self.runtime, INTERCEPTD_CONFIG=str(cfg_path),
                   INTERCEPTD_RUNC_TRACE=str(self.top / "python-entry.log"))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [DOCKERD, "--config-file", str(self.top / "daemon.json"),
                 "--data-root", str(self.top / "data"), "--exec-root", str(self.top / "exec"),
                 "--pidfile", str(self.pidfile), "-H", f"unix://{self.sock}",
                 "--bridge=none", "--iptables=false", "--ip6tables=false",
                 "--storage-driver=overlay2"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not come up:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def docker(self, *args: str, check: bool = True, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", *args], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: rc={p.returncode}\n{p.stderr}")
        return p

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.docker("run", "--rm", "--network=none", "--runtime=interceptd", *args,
                           check=False)

    def stop(self) -> None:
        if self.proc is None:
            return
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _unmount_under(top: str) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in reversed(points):
        if p == top or p.startswith(top + "/"):
            subprocess.run(["umount", "-l", p], check=False)


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
        tar = top / "busybox.tar"
        _busybox_tar(tar)
        d.docker("import", str(tar), IMAGE)
        yield d
    finally:
        d.stop()
        rc = daemon.stop()
        _unmount_under(str(top))
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


HOST_USER = 4242
VOLUME_BASE = (1 << 20) + 1024 * 65536  # [runtime] volume_id_base's default


def test_volume(docker_env):
    """A host directory under a shared path, owned by a host user: the container's
    root is that user there (never host root)."""
    vol = docker_env.top / "shared" / "vol"
    vol.mkdir()
    os.chown(vol, HOST_USER, HOST_USER)
    (vol / "from-host").write_text("h")
    os.chown(vol / "from-host", HOST_USER, HOST_USER)
    p = docker_env.run("-v", f"{vol}:/data", IMAGE, "sh", "-c",
                       "stat -c '%u' /data/from-host; echo c > /data/from-container; "
                       "cp /bin/busybox /data/s; chmod 4755 /data/s")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "0"
    st = (vol / "from-container").stat()
    assert (st.st_uid, st.st_gid) == (HOST_USER, HOST_USER)
    assert (vol / "from-container").read_text() == "c\n"
    assert (vol / "s").stat().st_uid == HOST_USER  # setuid, but not root's
    assert_clean(docker_env)


def test_root_owned_volume_gives_no_host_root(docker_env):
    vol = docker_env.top / "shared" / "rootvol"
    vol.mkdir(mode=0o777)
    os.chmod(vol, 0o777)
    p = docker_env.run("-v", f"{vol}:/data", IMAGE, "sh", "-c",
                       "touch /data/t; cp /bin/busybox /data/s; chmod 4755 /data/s")
    assert p.returncode == 0, p.stderr
    for name in ("t", "s"):
        assert (vol / name).stat().st_uid != 0, name
    assert_clean(docker_env)


def test_bind_outside_shared_paths_refused(docker_env):
    other = docker_env.top / "not-shared"
    other.mkdir(exist_ok=True)
    p = docker_env.run("-v", f"{other}:/data", IMAGE, "true")
    assert p.returncode != 0
    assert "outside [runtime] shared_paths" in p.stderr, p.stderr
    assert_clean(docker_env)


@pytest.mark.parametrize("src", ["/proc", "/sys", "/dev"])
def test_host_kernel_filesystem_bind_refused(docker_env, src):
    p = docker_env.run("-v", f"{src}:/host", IMAGE, "true")
    assert p.returncode != 0
    assert "refused" in p.stderr, p.stderr
    assert_clean(docker_env)


def test_bind_volume_of_outside_place_refused(docker_env):
    """`docker volume create -o type=none -o o=bind -o device=X`: dockerd binds X at the
    volume's _data, under its (allowed) volumes dir; X itself is outside the shared
    paths, so the volume is refused."""
    d = docker_env
    private = d.top / "private"
    private.mkdir(exist_ok=True)
    name = f"icd-bindvol-{d.runtime}"
    d.docker("volume", "create", "-o", "type=none", "-o", "o=bind", "-o",
             f"device={private}", name)
    try:
        p = d.run("-v", f"{name}:/data", IMAGE, "true")
        assert p.returncode != 0
        assert "outside [runtime] shared_paths" in p.stderr, p.stderr
    finally:
        d.docker("volume", "rm", "-f", name, check=False)
    assert_clean(d)


def test_named_volume(docker_env):
    """A fresh named volume (dockerd made it, root's) is shifted once into the
    volume range: the container's root writes there as that range, not host root,
    and a second container sees the same owners."""
    d = docker_env
    name = f"icd-vol-{d.runtime}"
    d.docker("volume", "create", name)
    try:
        p = d.run("-v", f"{name}:/data", IMAGE, "sh", "-c",
                  "echo n > /data/f; chown 1000:1000 /data/f; stat -c %u /data /data/f")
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == ["0", "1000"]
        src = d.docker("volume", "inspect", "-f", "{{.Mountpoint}}", name).stdout.strip()
        assert Path(src).stat().st_uid == VOLUME_BASE
        assert Path(src, "f").stat().st_uid == VOLUME_BASE + 1000
        p = d.run("-v", f"{name}:/data", IMAGE, "sh", "-c", "stat -c %u /data /data/f")
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == ["0", "1000"]
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
