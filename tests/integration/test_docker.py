"""End to end: a private dockerd (Debian's docker.io) with interceptd-runc as a runtime.

Set up as packaging/ ships it: the `interceptd` runtime registered in
daemon.json, and interceptd-runc first in dockerd's (and so its containerd's)
PATH as `runc` and `crun`, so that every runtime name (`--runtime=runc`, the
containerd shims' own, `ctr run`) goes through the shim.

The dockerd has its own data root, exec root and socket, no bridge and no
iptables; it is stopped by the pid this module started and everything it made
is removed at the end.
"""

from __future__ import annotations

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
        self.shadow = top / "runtime-path"
        self.daemon = daemon

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
        # packaging/systemd's drop-ins: the shim as `runc` and `crun` first in PATH.
        self.shadow.mkdir()
        for name in ("runc", "crun"):
            (self.shadow / name).symlink_to(shim)
        env = dict(os.environ, INTERCEPTD_STATE_DIR=str(self.daemon.state_dir),
                   INTERCEPTD_RUNTIME=self.runtime,  # a bare name: the shim skips itself
                   INTERCEPTD_CONFIG=str(cfg_path),
                   INTERCEPTD_RUNC_TRACE=str(self.top / "python-entry.log"),
                   PATH=f"{self.shadow}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}")
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


def test_first_command_writes_a_served_sysctl(docker_env):
    """Docker's config (with its own prestart hook) gets the createContainer hook too:
    the container's first command writes a served /proc/sys value and reads it back,
    the host's stays."""
    before = Path("/proc/sys/kernel/panic").read_text().strip()
    panic = "7" if before != "7" else "8"
    p = docker_env.run(IMAGE, "sh", "-c", f"echo {panic} > /proc/sys/kernel/panic && "
                       "cat /proc/sys/kernel/panic")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == panic
    assert Path("/proc/sys/kernel/panic").read_text().strip() == before
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


def test_docker_net_files_writable_and_root_safe(docker_env):
    """/etc/hosts, /etc/hostname, /etc/resolv.conf are Docker's per-container files, host
    root's: the container's root may rewrite them while it runs (images do at start), but
    they go back to host root at delete without a set-id bit the container added."""
    d = docker_env
    cid = d.docker("create", "--network=none", "--runtime=interceptd", IMAGE, "sh", "-c",
                   "echo 10.9.9.9 extra >> /etc/hosts && echo box > /etc/hostname"
                   " && chmod 4755 /etc/hosts && stat -c '%u %a' /etc/hosts"
                   ).stdout.strip()
    try:
        p = d.docker("start", "-a", cid, check=False)
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == ["0", "4755"], p.stdout
    finally:
        d.docker("rm", "-f", cid, check=False)
    # Host side: the container's root owns them while it runs; stopped (the shim's
    # delete), they are host root's again, without the set-id bits it added.
    cid = d.docker("run", "-d", "--network=none", "--runtime=interceptd", IMAGE, "sh", "-c",
                   "chmod 6755 /etc/hosts; sleep 1000").stdout.strip()
    try:
        files = d.top / "data" / "containers" / cid
        deadline = time.monotonic() + 10
        while (files / "hosts").stat().st_mode & 0o7000 != 0o6000:
            assert time.monotonic() < deadline, oct((files / "hosts").stat().st_mode)
            time.sleep(0.1)
        assert (files / "hosts").stat().st_uid != 0  # the container's root, a range id
        d.docker("stop", "-t", "1", cid)
        for name in ("hosts", "hostname", "resolv.conf"):
            st = (files / name).stat()
            assert (st.st_uid, st.st_gid) == (0, 0), name
            assert st.st_mode & 0o6000 == 0, (name, oct(st.st_mode))
    finally:
        d.docker("rm", "-f", cid, check=False)
    assert_clean(d)


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


# ------------------------------------------------------------------ enforcement

# What a privileged container could do to the isolation if it ran on plain runc.
ESCAPE = ("umount -l /proc 2>&1 && echo proc-detached; "
          "umount /proc/kcore 2>&1 && echo mask-removed; "
          "test -r /proc/self/status && echo proc-still-there")


V1_BROKEN = "cgroups: cannot find cgroup mount destination"


def _delete_leaked_v1(d: Dockerd) -> None:
    """The v1 shim leaves its failed container `created` in the runtime (plain runc
    too). It was made through interceptd-runc all the same: its init waits in a
    user namespace of its own. Delete it through the shim, which tears down."""
    runc = [str(d.shadow / "runc"), "--root", str(d.top / "exec" / "runtime-runc" / "moby")]
    env = dict(os.environ, INTERCEPTD_STATE_DIR=str(d.daemon.state_dir),
               INTERCEPTD_RUNTIME=d.runtime)
    ids = subprocess.run([*runc, "list", "-q"], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert len(ids) == 1, ids
    pid = json.loads(subprocess.run([*runc, "state", ids[0]], capture_output=True, text=True,
                                    env=env, check=True).stdout)["pid"]
    assert Path(f"/proc/{pid}/uid_map").read_text().split()[1] != "0"
    subprocess.run([*runc, "delete", "-f", ids[0]], env=env, check=True)


def _normalized(out: str) -> str:
    """The probe's output without what differs between two runs (the id range)."""
    lines = out.splitlines()
    inside, _outside, size = lines[0].split()
    return "\n".join([f"{inside} HOSTBASE {size}", *lines[1:]])


def _runtimes(d: Dockerd) -> list[str]:
    info = json.loads(d.docker("info", "--format", "{{json .Runtimes}}").stdout)
    return sorted(info)


def test_every_runtime_name_goes_through_the_shim(docker_env):
    """`docker run --runtime=runc --privileged` (and every other runtime name
    this dockerd knows) gets the user namespace, the masks and the daemon's
    vetting exactly like the default interceptd runtime."""
    d = docker_env
    names = _runtimes(d)
    assert {"runc", "interceptd"} <= set(names), names
    ref = d.run("--privileged", IMAGE, "sh", "-c", PROBE + "; " + ESCAPE)
    assert ref.returncode == 0, ref.stderr
    _check_probe(ref.stdout)
    for name in names:
        p = d.docker("run", "--rm", "--network=none", f"--runtime={name}", "--privileged",
                     IMAGE, "sh", "-c", PROBE + "; " + ESCAPE, check=False)
        if name == "io.containerd.runtime.v1.linux" and V1_BROKEN in p.stderr:
            # containerd's deprecated v1 shim fails on this host after create, with
            # plain runc too (its cgroup v1 loader); nothing runs, nothing is left.
            assert p.returncode != 0
            assert d.docker("ps", "-aq").stdout.strip() == ""
            _delete_leaked_v1(d)
            assert_clean(d)
            continue
        assert p.returncode == 0, (name, p.stderr)
        assert not p.stdout.startswith("0 0 4294967295"), (name, p.stdout)
        _check_probe(p.stdout)
        assert "proc-detached" not in p.stdout and "mask-removed" not in p.stdout, p.stdout
        assert "proc-still-there" in p.stdout
        assert _normalized(p.stdout) == _normalized(ref.stdout), name
        assert_clean(d)
    # The daemon saw the refusals: they were its decisions, not the kernel's.
    assert "umount2" in d.daemon.log()


def _rootfs_dir(d: Dockerd) -> Path:
    root = d.top / "ctr-rootfs"
    if not root.exists():
        root.mkdir()
        with tarfile.open(d.top / "busybox.tar") as tf:
            tf.extractall(root)
    return root


def _ctr(d: Dockerd, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    sock = d.top / "exec" / "containerd" / "containerd.sock"
    p = subprocess.run(["ctr", "-a", str(sock), "-n", "icd-test", *args], capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"ctr {' '.join(args)}: rc={p.returncode}\n{p.stderr}")
    return p


@pytest.mark.skipif(shutil.which("ctr") is None, reason="ctr is in the set-up (containerd)")
def test_ctr_run_goes_through_the_shim(docker_env):
    """A container created directly through containerd (not dockerd) is contained."""
    d = docker_env
    cid = f"icd-ctr-{d.runtime}-{os.getpid()}"
    try:
        p = _ctr(d, "run", "--rm", "--env", "PATH=/bin", "--rootfs", str(_rootfs_dir(d)), cid,
                 "/bin/sh", "-c",
                 "cat /proc/self/uid_map; grep Seccomp: /proc/self/status; " + ESCAPE,
                 check=False)
        assert p.returncode == 0, p.stderr
        assert not p.stdout.startswith("0 0 4294967295") and p.stdout.split()[1] != "0", p.stdout
        assert "Seccomp:\t2" in p.stdout
        assert "proc-detached" not in p.stdout and "mask-removed" not in p.stdout, p.stdout
    finally:
        _ctr(d, "task", "kill", "-s", "KILL", cid, check=False)
        _ctr(d, "container", "rm", cid, check=False)
        _ctr(d, "namespaces", "rm", "icd-test", check=False)
    assert_clean(d)


def test_overlay_rootfs_shows_no_host_path_and_emulated_limits(docker_env):
    """Docker's overlay2 rootfs, remounted by the shim from layer fds: neither mountinfo
    nor /proc/mounts names the data root (upper, lower or work dirs), and the emulated
    files give the container's 256 MiB and one CPU (docker --cpus: a CFS quota)."""
    assert docker_env.daemon.control("status")["emulation"] is not None
    name = f"ovl-{os.getpid()}-{time.monotonic_ns()}"
    p = docker_env.docker("run", "-d", "--name", name, "--network=none",
                          "--runtime=interceptd", "--memory", "256m", "--cpus", "1",
                          IMAGE, "sleep", "60", check=False)
    assert p.returncode == 0, p.stderr
    try:
        info = json.loads(docker_env.docker("inspect", name).stdout)[0]
        data = info["GraphDriver"]["Data"]
        # The driver's whole home (Docker's per-container files, resolv.conf and
        # hosts, are binds from <data>/containers: their path within the filesystem
        # shows as any bind's does, docs/runtime.md).
        host_paths = [data["UpperDir"], data["WorkDir"], *data["LowerDir"].split(":"),
                      str(docker_env.top / "data" / "overlay2")]
        out = docker_env.docker("exec", name, "sh", "-c",
                                "cat /proc/self/mountinfo; echo ==; cat /proc/mounts; "
                                "echo ==; grep MemTotal: /proc/meminfo; "
                                "cat /sys/devices/system/cpu/online; "
                                "grep -c ^processor /proc/cpuinfo").stdout
        mountinfo, mounts, figures = out.split("==\n")
        root = next(ln for ln in mountinfo.splitlines() if ln.split()[4] == "/")
        assert " - overlay " in root and "lowerdir+=/" in root, root
        for hp in host_paths:
            assert hp not in mountinfo and hp not in mounts, (hp, out)
        assert figures.split() == ["MemTotal:", str(256 * 1024), "kB", "0", "1"], figures
    finally:
        docker_env.docker("rm", "-f", name, check=False)
    assert_clean(docker_env)


def test_daemon_down_refuses_every_runtime_name(docker_env):
    """No interceptd daemon: no container, whatever the runtime name (last in this
    module: it stops the daemon and starts it again)."""
    d = docker_env
    assert d.daemon.stop() == 0
    try:
        for name in ("runc", "interceptd"):
            p = d.docker("run", "--rm", "--network=none", f"--runtime={name}", "--privileged",
                         IMAGE, "true", check=False)
            assert p.returncode != 0, name
            assert "refusing to start" in p.stderr and "unreachable" in p.stderr, p.stderr
        assert d.docker("ps", "-q").stdout.strip() == ""
        assert_clean(d)
    finally:
        d.daemon.start()


def test_dockerd_refuses_to_redefine_runc():
    """Why the set-up goes through PATH: dockerd will not let daemon.json point
    the name `runc` at another binary."""
    top = Path(tempfile.mkdtemp(prefix="icd-dr-", dir="/tmp"))
    try:
        (top / "daemon.json").write_text(json.dumps(
            {"runtimes": {"runc": {"path": "/usr/local/bin/interceptd-runc"}}}))
        proc = subprocess.Popen(
            [dockerd.DOCKERD, "--config-file", str(top / "daemon.json"),
             "--data-root", str(top / "d"),
             "--exec-root", str(top / "e"), "--pidfile", str(top / "pid"),
             "-H", f"unix://{top / 'sock'}", "--bridge=none", "--iptables=false"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:  # it started after all: stop the one we started
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
        assert proc.returncode != 0
        assert b"runtime name 'runc' is reserved" in out, out[-2000:]
    finally:
        dockerd.unmount_under(str(top))
        shutil.rmtree(top, ignore_errors=True)
