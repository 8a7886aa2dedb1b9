"""interceptd-runc in front of real runc and crun, attached to a real interceptd."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness import Runtime
from tests.harness.bundle import BundleSpec, bounding_caps
from tests.harness.runtime import RUNTIMES, output

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHIM = REPO / ".venv" / "bin" / "interceptd-runc"
if not SHIM.exists():
    SHIM = Path(shutil.which("interceptd-runc") or sys.prefix + "/bin/interceptd-runc")

PROBE = ("cat /proc/self/uid_map; stat -c '%u:%g %n' /bin/busybox /; "
         "echo hello > /written && stat -c '%u %n' /written; "
         "grep -E '^(Seccomp|CapBnd):' /proc/self/status")


@pytest.fixture(params=RUNTIMES)
def shim(request, monkeypatch, daemon, runtime_factory) -> Runtime:
    """A harness Runtime whose binary is interceptd-runc over runc or crun."""
    rt = runtime_factory(request.param)
    rt.binary = str(SHIM)
    monkeypatch.setenv("INTERCEPTD_RUNTIME", request.param)
    monkeypatch.setenv("INTERCEPTD_STATE_DIR", str(daemon.state_dir))
    monkeypatch.delenv("INTERCEPTD_CONFIG", raising=False)
    rt.daemon = daemon  # type: ignore[attr-defined]
    return rt


def plain_bundle(bundle_factory, args: list[str], **kw):
    """A bundle as an image would come: host-root-owned rootfs, no user namespace."""
    b = bundle_factory(BundleSpec(args=args, id_base=0, **kw))
    linux = b.config["linux"]
    linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "user"]
    linux.pop("uidMappings", None)
    linux.pop("gidMappings", None)
    linux.pop("seccomp", None)
    b.write_config()
    return b


def runtime_dir(rt: Runtime) -> Path:
    return Path(rt.daemon.state_dir) / "runtime"  # type: ignore[attr-defined]


def assert_nothing_left(rt: Runtime) -> None:
    rd = runtime_dir(rt)
    pool = rd / "idpool.json"
    if pool.exists():
        assert json.loads(pool.read_text())["allocated"] == {}
    recs = list((rd / "containers").glob("*.json")) if (rd / "containers").exists() else []
    assert recs == []
    mnt = str(rt.daemon.state_dir).rstrip("/") + "-rootfs"  # type: ignore[attr-defined]
    with open("/proc/self/mountinfo") as f:
        assert mnt not in f.read()
    # Each id range keeps its (empty) mount points for its next holder; nothing else.
    for top, dirs, files in os.walk(mnt):
        for d in dirs:
            assert d in ("rootfs", "lower", "vol", "emul") or d.isdigit() or (
                top == mnt and d.startswith("r") and d[1:].isdigit()), os.path.join(top, d)
        for n in files:
            assert os.path.basename(top) == "vol" and os.path.getsize(os.path.join(top, n)) == 0


def test_plain_container_isolated_and_attached(shim, bundle_factory, new_id):
    b = plain_bundle(bundle_factory, ["sh", "-c", PROBE])
    orig = b.config_path.read_bytes()
    res = shim.run(b, new_id("plain")).check()
    lines = res.stdout.splitlines()
    inside, outside, size = lines[0].split()
    assert inside == "0" and outside != "0" and size == "65536"
    assert "0:0 /bin/busybox" in res.stdout  # image files are root's
    assert "0 /written" in res.stdout
    assert "Seccomp:\t2" in res.stdout
    # Written through the id-mapped mount: the host sees the image's owner.
    assert (b.rootfs / "written").stat().st_uid == 0
    assert (b.rootfs / "written").read_text() == "hello\n"
    assert b.config_path.read_bytes() == orig  # restored after the container went
    assert_nothing_left(shim)


def test_privileged_style_config(shim, bundle_factory, new_id):
    b = plain_bundle(bundle_factory,
                     ["sh", "-c", PROBE + "; echo masked=$(wc -c < /proc/timer_list)"])
    caps = [*bounding_caps(), "CAP_SYS_RESOURCE"]
    b.config["process"]["capabilities"] = {k: caps for k in ("bounding", "effective",
                                                             "permitted")}
    b.config["linux"].pop("maskedPaths", None)
    b.config["linux"].pop("readonlyPaths", None)
    b.write_config()
    res = shim.run(b, new_id("priv")).check()
    assert res.stdout.split()[1] != "0"
    assert "Seccomp:\t2" in res.stdout
    capbnd = int(next(ln for ln in res.stdout.splitlines() if ln.startswith("CapBnd"))
                 .split()[1], 16)
    assert not capbnd >> 24 & 1  # CAP_SYS_RESOURCE clamped away
    assert "masked=0" in res.stdout  # Docker's masked paths, though the config had none


def test_daemon_sees_container_and_exec(shim, bundle_factory, new_id):
    b = plain_bundle(bundle_factory, ["sleep", "60"])
    cid = new_id("exec")
    with shim.started(b, cid):
        # crun returns from create without waiting for the listener to take the fd
        # (the protocol has no ack), so the daemon may register it a moment later.
        for _ in range(100):
            conts = shim.daemon.control("containers")["containers"]  # type: ignore[attr-defined]
            if cid in json.dumps(conts):
                break
            time.sleep(0.02)
        assert cid in json.dumps(conts)
        r = shim._call("exec", "--cap", "CAP_SYS_RESOURCE", cid, "sh", "-c",
                       "grep Seccomp: /proc/self/status", check=False)
        assert r.rc == 0, r.stderr
        assert "Seccomp:\t2" in r.stdout
        proc = dict(b.config["process"], args=["sh", "-c", "id -u"])
        proc["capabilities"] = {k: ["CAP_SYS_RESOURCE", "CAP_KILL"]
                                for k in ("bounding", "effective", "permitted")}
        pf = b.path / "process.json"
        pf.write_text(json.dumps(proc))
        r = shim._call("exec", "--process", str(pf), cid, check=False)
        assert r.rc == 0, r.stderr
        assert r.stdout.strip() == "0"
        state = shim.state(cid)
        with open(f"/proc/{state['pid']}/cgroup") as f:
            v2 = next(ln for ln in f if ln.startswith("0::"))[3:].strip()
        assert v2 not in ("", "/")
        node = Path("/sys/fs/cgroup/unified") / v2.lstrip("/")
        assert node.is_dir()
    assert not node.exists()
    assert_nothing_left(shim)


def test_volume_id_mapped(shim, bundle_factory, new_id, workdir, monkeypatch):
    """A bind from a shared path, owned by a host user: the container's root is that
    user there (the bind model: never host root; tests/integration/test_runtime_binds.py)."""
    vol = workdir / "vol"
    vol.mkdir()
    os.chown(vol, 4242, 4242)
    (vol / "from-host").write_text("x")
    os.chown(vol / "from-host", 4242, 4242)
    cfg = workdir / "shared.toml"
    cfg.write_text(f'[runtime]\nshared_paths = ["{vol}"]\n')
    monkeypatch.setenv("INTERCEPTD_CONFIG", str(cfg))
    b = plain_bundle(bundle_factory, ["sh", "-c",
                                      "stat -c '%u' /data/from-host; echo v > /data/new"])
    b.config["mounts"].append({"destination": "/data", "type": "bind", "source": str(vol),
                               "options": ["rbind", "rw"]})
    b.write_config()
    res = shim.run(b, new_id("vol")).check()
    assert res.stdout.strip() == "0"
    assert (vol / "new").stat().st_uid == 4242 and (vol / "new").read_text() == "v\n"
    assert_nothing_left(shim)


def refused(rt: Runtime, b, cid: str, pattern: str) -> None:
    orig = b.config_path.read_bytes()
    res = rt.run(b, cid)
    assert res.rc != 0
    assert pattern in res.stderr, res.stderr
    assert b.config_path.read_bytes() == orig
    assert not (b.path / "config.json.orig").exists()
    assert_nothing_left(rt)


def test_host_pid_namespace_refused(shim, bundle_factory, new_id):
    b = plain_bundle(bundle_factory, ["true"])
    b.config["linux"]["namespaces"] = [n for n in b.config["linux"]["namespaces"]
                                       if n["type"] != "pid"]
    b.write_config()
    refused(shim, b, new_id("hostpid"), "pid namespace")


def test_host_net_namespace_path_refused(shim, bundle_factory, new_id):
    b = plain_bundle(bundle_factory, ["true"])
    for n in b.config["linux"]["namespaces"]:
        if n["type"] == "network":
            n["path"] = "/proc/self/ns/net"
    b.write_config()
    refused(shim, b, new_id("hostnet"), "network namespace path")


def test_sensitive_mount_refused(shim, bundle_factory, new_id, workdir):
    sock = workdir / "docker.sock"
    sock.write_text("")
    b = plain_bundle(bundle_factory, ["true"])
    b.config["mounts"].append({"destination": "/var/run/docker.sock", "type": "bind",
                               "source": str(sock), "options": ["rbind"]})
    b.write_config()
    refused(shim, b, new_id("sock"), "sensitive")


def test_daemon_unreachable_refused(request, monkeypatch, runtime_factory, bundle_factory,
                                    new_id, workdir):
    rt = runtime_factory("runc")
    rt.binary = str(SHIM)
    empty = workdir / "no-daemon"
    empty.mkdir()
    monkeypatch.setenv("INTERCEPTD_RUNTIME", "runc")
    monkeypatch.setenv("INTERCEPTD_STATE_DIR", str(empty))
    b = plain_bundle(bundle_factory, ["true"])
    orig = b.config_path.read_bytes()
    res = rt.run(b, new_id("nodaemon"))
    assert res.rc != 0 and "unreachable" in res.stderr
    assert b.config_path.read_bytes() == orig


@pytest.mark.parametrize("case", ["missing-bundle", "missing-config", "bad-json", "not-object"])
def test_bad_bundles(shim, bundle_factory, new_id, workdir, case):
    b = plain_bundle(bundle_factory, ["true"])
    path = b.path
    if case == "missing-bundle":
        path = workdir / "nope"
    elif case == "missing-config":
        b.config_path.unlink()
    elif case == "bad-json":
        b.config_path.write_text("{not json")
    else:
        b.config_path.write_text("[1, 2]")
    before = b.config_path.read_bytes() if b.config_path.exists() else None
    p = subprocess.run(shim.cmd("create", "--bundle", str(path), new_id("bad")),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "interceptd-runc:" in p.stderr
    after = b.config_path.read_bytes() if b.config_path.exists() else None
    assert before == after
    assert not (b.path / "config.json.orig").exists()
    assert_nothing_left(shim)


def test_unknown_global_flag_refused(shim):
    """Fail closed: a global option the shim cannot parse is not guessed at."""
    via = subprocess.run([str(SHIM), "--no-such-flag", "list"], capture_output=True, text=True)
    assert via.returncode != 0
    assert "interceptd-runc: refused: unknown global option '--no-such-flag'" in via.stderr


def test_passthrough_output_untouched(shim, bundle_factory, new_id):
    b = plain_bundle(bundle_factory, ["sleep", "60"])
    cid = new_id("pass")
    with shim.started(b, cid):
        via = shim._call("state", cid)
        # The runtime reads the init's start time in the container's time namespace, as
        # it did at create (runtime/timens.py): run directly from the host's, it would
        # take the container for stopped.
        key = f"{cid}.{zlib.crc32(str(shim.root).encode()):08x}"
        pin = runtime_dir(shim) / "timens" / key
        assert pin.exists()
        direct = subprocess.run(["nsenter", f"--time={pin}", shim.name, "--root",
                                 str(shim.root), "state", cid], capture_output=True, text=True)
        assert via.stdout == direct.stdout and via.rc == direct.returncode == 0
        assert shim.list() == [cid]


def test_runtime_failure_rolls_back(shim, bundle_factory, new_id):
    b = plain_bundle(bundle_factory, ["/no/such/binary"])
    orig = b.config_path.read_bytes()
    cid = new_id("fail")
    p = subprocess.run(shim.cmd("create", "--bundle", str(b.path), cid), capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    if p.returncode == 0:  # crun reports a missing binary only at start
        shim.delete(cid)
    assert b.config_path.read_bytes() == orig
    assert_nothing_left(shim)


def test_concurrent_creates_get_distinct_ranges(shim, bundle_factory, new_id):
    bundles = [plain_bundle(bundle_factory, ["sh", "-c", "sleep 60"]) for _ in range(6)]
    ids = [new_id("par") for _ in bundles]
    with ThreadPoolExecutor(6) as ex:
        list(ex.map(lambda bc: shim.create(*bc), zip(bundles, ids, strict=True)))
    try:
        maps = set()
        for cid in ids:
            pid = shim.state(cid)["pid"]
            maps.add(Path(f"/proc/{pid}/uid_map").read_text().split()[1])
        assert len(maps) == len(ids)
    finally:
        for cid in ids:
            shim.delete(cid)
    assert_nothing_left(shim)


def test_create_start_output(shim, bundle_factory, new_id):
    b = plain_bundle(bundle_factory, ["sh", "-c", "echo started"])
    cid = new_id("cs")
    with shim.started(b, cid):
        for _ in range(100):
            if shim.state(cid)["status"] == "stopped":
                break
            time.sleep(0.05)
        assert output(b)[0] == "started\n"




@pytest.fixture
def launcher(workdir) -> str:
    from interceptd.runtime.launcher import build

    return build(str(workdir / "interceptd-runc"))


def test_native_launcher(shim, launcher, bundle_factory, new_id, workdir):
    """The native launcher: same container as the Python entry, pass-through untouched."""
    shim.binary = launcher
    b = plain_bundle(bundle_factory, ["sh", "-c", PROBE])
    res = shim.run(b, new_id("launch")).check()
    assert res.stdout.split()[1] != "0" and "Seccomp:\t2" in res.stdout
    assert_nothing_left(shim)
    for args in (["--root", str(shim.root), "list"], ["--root", str(shim.root), "state", "nope"],
                 ["--version"]):
        via = subprocess.run([launcher, *args], capture_output=True, text=True)
        direct = subprocess.run([shim.name, *args], capture_output=True, text=True)
        # runc stamps its error lines to the second: the two runs may straddle one.
        assert (via.returncode, via.stdout, _untimed(via.stderr)) == (
            direct.returncode, direct.stdout, _untimed(direct.stderr)), args


def _untimed(text: str) -> str:
    return re.sub(r'time="[^"]*"', 'time="-"', text)


def test_launcher_runtime_from_config(monkeypatch, launcher, workdir):
    cfg = workdir / "i.toml"
    cfg.write_text('[daemon]\nruntime = "nope"\n[runtime]\nruntime = "/usr/bin/crun"\n')
    monkeypatch.delenv("INTERCEPTD_RUNTIME", raising=False)
    monkeypatch.setenv("INTERCEPTD_CONFIG", str(cfg))
    out = subprocess.run([launcher, "--version"], capture_output=True, text=True).stdout
    assert out.startswith("crun version")


@pytest.fixture
def service(shim):
    """The prepare service, hosted by the test daemon on <state-dir>/runtime.sock."""
    state = Path(shim.daemon.state_dir)  # type: ignore[attr-defined]
    for _ in range(500):
        if (state / "runtime.sock").exists():
            break
        time.sleep(0.01)
    else:
        pytest.fail("the daemon does not serve runtime.sock")
    return state / "runtime.sock"


def test_daemon_hosts_service_and_reports_policy(shim, service):
    from interceptd import control

    status = control.request(str(Path(shim.daemon.state_dir) / "control.sock"),  # type: ignore[attr-defined]
                             {"cmd": "status"})
    rp = status["runtime_policy"]
    assert "mount" in rp["notified"] and rp["denied"]
    assert service.exists()


def test_launcher_falls_back_to_python(shim, service, launcher, bundle_factory, new_id,
                                       monkeypatch, workdir):
    """INTERCEPTD_RUNC_NO_SERVICE (and an absent runtime.sock) take the Python entry."""
    shim.binary = launcher
    trace = workdir / "trace.log"
    monkeypatch.setenv("INTERCEPTD_RUNC_TRACE", str(trace))
    monkeypatch.setenv("INTERCEPTD_RUNC_NO_SERVICE", "1")
    b = plain_bundle(bundle_factory, ["sh", "-c", PROBE])
    res = shim.run(b, new_id("nosvc")).check()
    assert res.stdout.split()[1] != "0" and "Seccomp:\t2" in res.stdout
    assert_nothing_left(shim)
    assert trace.exists()


def test_launcher_with_prepare_service(shim, service, launcher, bundle_factory, new_id,
                                      monkeypatch, workdir):
    shim.binary = launcher
    # The Python entry logs every call it handles here; the service path never enters it
    # (the file is made by the first logged call).
    trace = workdir / "trace.log"
    monkeypatch.setenv("INTERCEPTD_RUNC_TRACE", str(trace))
    b = plain_bundle(bundle_factory, ["sh", "-c", PROBE])
    res = shim.run(b, new_id("svc")).check()
    assert res.stdout.split()[1] != "0" and "Seccomp:\t2" in res.stdout
    assert "0 /written" in res.stdout
    assert_nothing_left(shim)
    # create/start/delete with output to files; and parallel creates
    bundles = [plain_bundle(bundle_factory, ["sleep", "60"]) for _ in range(4)]
    ids = [new_id("svcpar") for _ in bundles]
    with ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda bc: shim.create(*bc), zip(bundles, ids, strict=True)))
    try:
        maps = {Path(f"/proc/{shim.state(c)['pid']}/uid_map").read_text().split()[1]
                for c in ids}
        assert len(maps) == len(ids)
    finally:
        for c in ids:
            shim.delete(c)
    assert_nothing_left(shim)
    assert not trace.exists()  # create/run/delete all went to the service


def test_prepare_service_refusal(shim, service, launcher, bundle_factory, new_id, workdir):
    shim.binary = launcher
    b = plain_bundle(bundle_factory, ["true"])
    b.config["linux"]["namespaces"] = [n for n in b.config["linux"]["namespaces"]
                                       if n["type"] != "pid"]
    b.write_config()
    log = workdir / "log.json"
    orig = b.config_path.read_bytes()
    p = subprocess.run([launcher, "--root", str(shim.root), "--log", str(log), "--log-format",
                        "json", "create", "--bundle", str(b.path), new_id("svcref")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert p.stderr.startswith("interceptd-runc: ") and "--pid=host" in p.stderr
    assert "--pid=host" in json.loads(log.read_text().splitlines()[-1])["msg"]
    assert b.config_path.read_bytes() == orig
    assert_nothing_left(shim)


def test_exec_through_prepare_service(shim, service, launcher, bundle_factory, new_id,
                                      monkeypatch, workdir):
    shim.binary = launcher
    trace = workdir / "trace.log"
    monkeypatch.setenv("INTERCEPTD_RUNC_TRACE", str(trace))
    b = plain_bundle(bundle_factory, ["sleep", "60"])
    cid = new_id("svcexec")
    with shim.started(b, cid):
        r = shim._call("exec", "--cap", "CAP_SYS_RESOURCE", cid, "sh", "-c",
                       "grep Seccomp: /proc/self/status; exit 7", check=False)
        assert r.rc == 7, r.stderr  # the process's own exit status comes back
        assert "Seccomp:\t2" in r.stdout
        proc = dict(b.config["process"], args=["sh", "-c", "id -u"])
        proc["capabilities"] = {k: ["CAP_SYS_RESOURCE", "CAP_KILL"]
                                for k in ("bounding", "effective", "permitted")}
        pf = b.path / "process.json"
        pf.write_text(json.dumps(proc))
        r = shim._call("exec", "--process", str(pf), cid, check=False)
        assert r.rc == 0, r.stderr
        assert r.stdout.strip() == "0"
        assert "CAP_SYS_RESOURCE" not in pf.read_text()  # rewritten in place
    assert not trace.exists()
    assert_nothing_left(shim)


def _own_cgroup2(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next((ln[3:].strip() for ln in f if ln.startswith("0::")), "/")


def test_launcher_skips_finish_when_init_is_placed(shim, service, launcher, bundle_factory,
                                                   new_id, workdir):
    """After a create the launcher reports `RC 0 placed` and exits without the
    service's reply only when the init already sits in a cgroup v2 node of its own;
    otherwise the service checks (and places it) before the launcher returns."""
    b = plain_bundle(bundle_factory, ["sleep", "60"])
    cid = new_id("placed")
    log = workdir / "strace.log"
    subprocess.run(["strace", "-o", str(log), "-e", "trace=write", "-s", "64", launcher,
                    "--root", str(shim.root), "create", "--bundle", str(b.path), cid],
                   check=True, timeout=30, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)
    try:
        writes = log.read_text()
        pid = shim.state(cid)["pid"]
        node = _own_cgroup2(pid)
        assert node not in ("/", "")  # placed either way, before create returned
        placed = '"RC 0 placed\\n"' in writes
        assert placed or '"RC 0\\n"' in writes
        # Both runtimes make the v2 node themselves on this hybrid host.
        assert placed, writes
        r = shim._call("start", cid)
        assert r.rc == 0
    finally:
        shim.delete(cid)
    assert_nothing_left(shim)


def test_service_takes_placed_without_reply(shim, service, bundle_factory, new_id):
    """The service side of `RC 0 placed`: no finish, no reply, and it keeps serving."""
    import socket

    b = plain_bundle(bundle_factory, ["sleep", "60"])
    cid = new_id("svcplaced")
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(service))
    req = {"argv": ["--root", str(shim.root), "create", "--bundle", str(b.path), cid],
           "cwd": str(b.path), "env": {"INTERCEPTD_RUNTIME": shim.name,
                                       "INTERCEPTD_STATE_DIR": str(service.parent)}}
    s.sendall(json.dumps(req).encode() + b"\n")
    f = s.makefile("rb")
    head = f.readline().split()
    assert head[0] == b"OK"
    out = [f.read1(1 << 16)]
    while sum(x.count(b"\0") for x in out) < int(head[1]):
        out.append(f.read1(1 << 16))
    args = [a.decode() for a in b"".join(out).split(b"\0")[: int(head[1])]]
    try:
        subprocess.run(args[1:], executable=args[0], check=True, timeout=30,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        pid = shim.state(cid)["pid"]
        assert _own_cgroup2(pid) not in ("/", "")  # runc placed it (hybrid host)
        s.sendall(b"RC 0 placed\n")
        s.settimeout(5)
        assert f.read() == b""  # the service closed without a DONE
    finally:
        s.close()
        shim.delete(cid)
    assert_nothing_left(shim)


def test_reused_range_dir_left_mounted_is_cleared(shim, bundle_factory, new_id):
    """A mount left at an id range's mount point (a teardown that failed) is taken
    away by the range's next holder, not shadowed: the container sees its own rootfs
    and nothing stays mounted afterwards."""
    b = plain_bundle(bundle_factory, ["sh", "-c", "ls /"])
    shim.run(b, new_id("first")).check()
    assert_nothing_left(shim)
    mnt = Path(str(shim.daemon.state_dir).rstrip("/") + "-rootfs")  # type: ignore[attr-defined]
    ranges = sorted(mnt.iterdir(), key=lambda p: int(p.name[1:]))
    assert ranges, "the first container left no range dir"
    target = ranges[0] / "rootfs"  # the lowest range: the one the next create takes
    subprocess.run(["mount", "-t", "tmpfs", "leftover", str(target)], check=True)
    try:
        (target / "stale-marker").write_text("x")
        res = shim.run(b, new_id("second")).check()
        assert "bin" in res.stdout.split() and "stale-marker" not in res.stdout
        with open("/proc/self/mountinfo") as f:
            assert str(target) not in f.read()  # cleared by the create, not by us
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
    assert_nothing_left(shim)
