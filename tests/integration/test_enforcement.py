"""interceptd-runc fails closed, with real runc and crun behind it.

Each test runs through the native launcher both ways a call can take: the
daemon's prepare service, and the Python entry (INTERCEPTD_RUNC_NO_SERVICE).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Runtime
from tests.harness.bundle import BundleSpec
from tests.harness.runtime import RUNTIMES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHIM = REPO / ".venv" / "bin" / "interceptd-runc"
if not SHIM.exists():
    SHIM = Path(shutil.which("interceptd-runc") or sys.prefix + "/bin/interceptd-runc")


@pytest.fixture(params=[(rt, entry) for rt in RUNTIMES for entry in ("service", "python")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def shim(request, monkeypatch, daemon, runtime_factory) -> Runtime:
    name, entry = request.param
    rt = runtime_factory(name)
    rt.binary = str(SHIM)
    monkeypatch.setenv("INTERCEPTD_RUNTIME", name)
    monkeypatch.setenv("INTERCEPTD_STATE_DIR", str(daemon.state_dir))
    monkeypatch.delenv("INTERCEPTD_CONFIG", raising=False)
    if entry == "python":
        monkeypatch.setenv("INTERCEPTD_RUNC_NO_SERVICE", "1")
    else:
        monkeypatch.delenv("INTERCEPTD_RUNC_NO_SERVICE", raising=False)
    rt.daemon = daemon  # type: ignore[attr-defined]
    return rt


def plain_bundle(bundle_factory, args: list[str]):
    """A bundle as an image would come: no user namespace, no seccomp."""
    b = bundle_factory(BundleSpec(args=args, id_base=0))
    linux = b.config["linux"]
    linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "user"]
    linux.pop("uidMappings", None)
    linux.pop("gidMappings", None)
    linux.pop("seccomp", None)
    b.write_config()
    return b


def real_list(rt: Runtime) -> list[str]:
    """The containers the real runtime holds in this root (not through the shim)."""
    p = subprocess.run([rt.name, "--root", str(rt.root), "list", "-q"], capture_output=True,
                       text=True, check=True)
    return p.stdout.split()


def run_shim(rt: Runtime, *args: str, cwd: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SHIM), "--root", str(rt.root), *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=cwd)


def assert_nothing_left(rt: Runtime) -> None:
    rd = Path(rt.daemon.state_dir) / "runtime"  # type: ignore[attr-defined]
    pool = rd / "idpool.json"
    if pool.exists():
        assert json.loads(pool.read_text())["allocated"] == {}
    assert not list((rd / "containers").glob("*.json")) if (rd / "containers").exists() else True


def assert_refused(rt: Runtime, p: subprocess.CompletedProcess[str], cid: str, why: str,
                   log: Path | None = None) -> None:
    assert p.returncode != 0, p
    assert "interceptd-runc: refused: " in p.stderr and why in p.stderr, p.stderr
    assert cid not in real_list(rt)
    assert_nothing_left(rt)
    if log is not None:  # containerd shows the runtime log's last error to the user
        last = json.loads(log.read_text().splitlines()[-1])
        assert last["level"] == "error" and why in last["msg"], last


def test_restore_refused(shim, bundle_factory, new_id, workdir):
    b = plain_bundle(bundle_factory, ["true"])
    orig = b.config_path.read_bytes()
    cid = new_id("restore")
    log = workdir / "log.json"
    p = run_shim(shim, "--log", str(log), "--log-format", "json", "restore", "--bundle",
                 str(b.path), "--image-path", str(workdir), cid)
    assert_refused(shim, p, cid, "`restore` starts a container from a checkpoint image", log)
    assert b.config_path.read_bytes() == orig


@pytest.mark.parametrize("args,why", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["init"], "`init` is the runtime's internal command"),
    # crun's argp reads --deb as --debug and would create the container unprotected.
    (["--deb", "create"], "unknown global option '--deb'"),
    (["--log-lev", "warn", "create"], "unknown global option '--log-lev'"),
    (["---root", "/x", "create"], "cannot parse global option '---root'"),
    (["create", "-bX"], "unknown create option '-bX'"),
    (["create", "--no-such"], "unknown create option '--no-such'"),
])
def test_unparsable_or_unknown_refused(shim, bundle_factory, new_id, args, why):
    b = plain_bundle(bundle_factory, ["true"])
    orig = b.config_path.read_bytes()
    cid = new_id("unk")
    p = run_shim(shim, *args, "--bundle", str(b.path), cid)
    assert_refused(shim, p, cid, why)
    assert b.config_path.read_bytes() == orig


def test_crun_takes_abbreviated_globals(runtime_factory, workdir):
    """Why `--deb` must be refused: crun itself accepts it (argp prefixes)."""
    rt = runtime_factory("crun")
    p = subprocess.run(["crun", "--deb", "--root", str(rt.root), "list"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr


def test_no_container_id_refused(shim, bundle_factory):
    b = plain_bundle(bundle_factory, ["true"])
    orig = b.config_path.read_bytes()
    before = real_list(shim)
    p = run_shim(shim, "create", "--bundle", str(b.path), cwd=str(b.path))
    assert p.returncode != 0 and "create: no container id" in p.stderr, p.stderr
    assert real_list(shim) == before
    assert b.config_path.read_bytes() == orig
    assert_nothing_left(shim)


def test_log_level_global_parses(shim, bundle_factory, new_id):
    """crun's `--log-level warn` is a global option with a value, not the command:
    the shim prepares the container, the real runtime decides about the option
    (runc 1.1.5 and crun 1.8.1 do not have it), and the shim rolls back."""
    b = plain_bundle(bundle_factory, ["true"])
    orig = b.config_path.read_bytes()
    cid = new_id("ll")
    p = run_shim(shim, "--log-level", "warn", "create", "--bundle", str(b.path), cid)
    assert "interceptd-runc" not in p.stderr, p.stderr
    direct = subprocess.run([shim.name, "--log-level", "warn", "list"], capture_output=True,
                            text=True)
    if direct.returncode == 0:  # a crun that has --log-level: a container was made
        assert p.returncode == 0, p.stderr
        shim.delete(cid)
    else:
        assert p.returncode != 0 and "log-level" in p.stderr, p.stderr
        assert cid not in real_list(shim)
    assert b.config_path.read_bytes() == orig
    assert_nothing_left(shim)
    p = run_shim(shim, "--log-level=warn", "state", cid)  # passed through as is
    assert "interceptd-runc" not in p.stderr and p.returncode != 0


def test_bundle_through_symlink_resolved_like_runtime(shim, bundle_factory, new_id, workdir):
    """`--bundle link/../X`: runc and crun chdir there, so `..` is taken after the
    symlink (realpath), not textually. The shim must rewrite the bundle the
    runtime will read, not the decoy the text points at."""
    real = plain_bundle(bundle_factory, ["sh", "-c", "echo real; cat /proc/self/uid_map"])
    decoy = plain_bundle(bundle_factory, ["sh", "-c", "echo decoy; cat /proc/self/uid_map"])
    real_orig, decoy_orig = real.config_path.read_bytes(), decoy.config_path.read_bytes()
    (real.path.parent / "sub").mkdir(exist_ok=True)
    top = workdir / "t"
    top.mkdir()
    (top / "link").symlink_to(real.path.parent / "sub")
    (top / real.path.name).symlink_to(decoy.path)  # what a textual normpath finds
    cid = new_id("sym")
    shim._ids.add(cid)
    try:
        p = run_shim(shim, "run", "--bundle", f"link/../{real.path.name}", cid, cwd=str(top))
    finally:
        shim.delete(cid)
    assert p.returncode == 0, p.stderr
    which, inside, outside, size = p.stdout.split()
    assert which == "real", p.stdout
    assert (inside, size) == ("0", "65536") and outside != "0", p.stdout
    assert decoy.config_path.read_bytes() == decoy_orig
    assert not (decoy.path / "config.json.orig").exists()
    assert real.config_path.read_bytes() == real_orig  # restored after the run
    assert_nothing_left(shim)


def test_bundle_symlink_and_default_cwd(shim, bundle_factory, new_id, workdir):
    """A bundle given as a symlink, and the default bundle (the cwd)."""
    b = plain_bundle(bundle_factory, ["cat", "/proc/self/uid_map"])
    link = workdir / "blink"
    link.symlink_to(b.path)
    for args, cwd in ((["--bundle", str(link)], None), ([], str(link))):
        cid = new_id("bl")
        shim._ids.add(cid)
        try:
            p = run_shim(shim, "run", *args, cid, cwd=cwd)
        finally:
            shim.delete(cid)
        assert p.returncode == 0, p.stderr
        assert p.stdout.split()[1] != "0", p.stdout
    assert_nothing_left(shim)


# ------------------------------------------------------------------ recursion

def test_runtime_that_is_the_shim_refuses_not_loops(shim, bundle_factory, new_id, workdir,
                                                    monkeypatch):
    """A real runtime that is a copy of interceptd-runc (not recognisable by its
    name) refuses at once, on every path, instead of calling itself forever."""
    copy = workdir / "bin" / "runc"
    copy.parent.mkdir()
    shutil.copy(SHIM, copy)
    monkeypatch.setenv("INTERCEPTD_RUNTIME", str(copy))
    p = run_shim(shim, "list")
    assert p.returncode != 0 and "its own real runtime" in p.stderr, p.stderr
    b = plain_bundle(bundle_factory, ["true"])
    orig = b.config_path.read_bytes()
    cid = new_id("loop")
    p = run_shim(shim, "create", "--bundle", str(b.path), cid)
    assert p.returncode != 0 and "its own real runtime" in p.stderr, p.stderr
    assert cid not in real_list(shim)
    assert b.config_path.read_bytes() == orig
    assert_nothing_left(shim)


def test_shim_first_in_path_as_runc(shim, bundle_factory, new_id, workdir, monkeypatch):
    """The enforcement set-up: `runc` in the caller's PATH is interceptd-runc. The
    shim's own lookup of the real runtime by name skips it."""
    shadow = workdir / "shadow"
    shadow.mkdir()
    (shadow / "runc").symlink_to(SHIM)
    (shadow / "crun").symlink_to(SHIM)
    monkeypatch.setenv("PATH", f"{shadow}:{os.environ['PATH']}")
    monkeypatch.setenv("INTERCEPTD_RUNTIME", shim.name)  # a bare name, looked up in PATH
    p = subprocess.run([str(shadow / "runc"), "--root", str(shim.root), "list"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    b = plain_bundle(bundle_factory, ["cat", "/proc/self/uid_map"])
    cid = new_id("shadow")
    shim._ids.add(cid)
    try:
        p = subprocess.run([str(shadow / "runc"), "--root", str(shim.root), "run", "--bundle",
                            str(b.path), cid], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    finally:
        shim.delete(cid)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[1] != "0", p.stdout
    assert_nothing_left(shim)


def test_service_sends_chrooted_caller_to_python(daemon, workdir):
    """A caller chrooted in the service's mount namespace: its paths name other
    files here, so the service does not prepare for it (FALLBACK)."""
    import socket

    sock_path = Path(daemon.state_dir) / "runtime.sock"
    jail = workdir / "jail"
    jail.mkdir()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(sock_path))
            os.chroot(jail)
            os.chdir("/")
            req = {"argv": ["create", "--bundle", "/b", "cj1"], "cwd": "/",
                   "env": {"INTERCEPTD_STATE_DIR": str(daemon.state_dir),
                           "INTERCEPTD_RUNTIME": "runc"}}
            s.sendall(json.dumps(req).encode() + b"\n")
            os.write(w, s.recv(4096))
        finally:
            os._exit(0)
    os.close(w)
    try:
        reply = os.read(r, 4096)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert reply == b"FALLBACK\n", reply


def test_duplicate_create_refused_not_passed(shim, bundle_factory, new_id):
    """A create of a live container's id: refused by the shim (the runtime is never
    handed the unrewritten config), the live container untouched."""
    first = plain_bundle(bundle_factory, ["sleep", "60"])
    second = plain_bundle(bundle_factory, ["true"])
    orig = second.config_path.read_bytes()
    cid = new_id("dup")
    with shim.started(first, cid):
        pid = shim.state(cid)["pid"]
        p = run_shim(shim, "create", "--bundle", str(second.path), cid)
        assert p.returncode != 0 and f"container {cid} already exists" in p.stderr, p.stderr
        assert second.config_path.read_bytes() == orig
        assert shim.state(cid)["pid"] == pid and shim.state(cid)["status"] == "running"
    assert_nothing_left(shim)


def test_hooks_calling_the_runtime_are_not_taken_for_a_loop(shim, bundle_factory, new_id):
    """The loop guard names one pid: a hook the real runtime starts (which may
    inherit its environment) can still call interceptd-runc."""
    b = plain_bundle(bundle_factory, ["true"])
    env_file = b.path / "hook.env"
    b.config["hooks"] = {"prestart": [
        {"path": "/bin/sh", "args": ["sh", "-c", f"env > {env_file}"]},
        {"path": str(SHIM), "args": ["runc", "--root", str(shim.root), "list", "-q"]},
    ]}
    b.write_config()
    cid = new_id("hook")
    shim._ids.add(cid)
    try:
        p = run_shim(shim, "run", "--bundle", str(b.path), cid)
    finally:
        shim.delete(cid)
    assert p.returncode == 0, p.stderr
    assert "its own real runtime" not in p.stderr
    if shim.name == "runc":  # runc gives a hook without env its own environment
        assert "INTERCEPTD_RUNC_GUARD=" in env_file.read_text()
    assert_nothing_left(shim)


def test_crun_config_flag_relative_to_cwd(runtime_factory, daemon, bundle_factory, new_id,
                                          workdir, monkeypatch):
    """crun's `--config FILE` is read relative to the caller's cwd, not the bundle:
    the shim rewrites that file (a decoy of the same name in the bundle stays
    untouched), and the container gets its user namespace."""
    rt = runtime_factory("crun")
    monkeypatch.setenv("INTERCEPTD_RUNTIME", "crun")
    monkeypatch.setenv("INTERCEPTD_STATE_DIR", str(daemon.state_dir))
    monkeypatch.delenv("INTERCEPTD_CONFIG", raising=False)
    b = plain_bundle(bundle_factory, ["sh", "-c", "echo real; cat /proc/self/uid_map"])
    cwd = workdir / "cwd"
    cwd.mkdir()
    cfg = json.loads(b.config_path.read_text())
    cfg["root"]["path"] = str(b.rootfs)
    (cwd / "alt.json").write_text(json.dumps(cfg))
    real_orig = (cwd / "alt.json").read_bytes()
    cfg["process"]["args"] = ["sh", "-c", "echo decoy; cat /proc/self/uid_map"]
    (b.path / "alt.json").write_text(json.dumps(cfg))
    decoy_orig = (b.path / "alt.json").read_bytes()
    cid = new_id("cfg")
    rt._ids.add(cid)
    try:
        p = subprocess.run([str(SHIM), "--root", str(rt.root), "run", "--bundle", str(b.path),
                            "--config", "alt.json", cid], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL, cwd=str(cwd))
    finally:
        subprocess.run([str(SHIM), "--root", str(rt.root), "delete", "-f", cid],
                       capture_output=True)
        rt._ids.discard(cid)
    assert p.returncode == 0, p.stderr
    which, inside, outside, size = p.stdout.split()
    assert which == "real" and (inside, size) == ("0", "65536") and outside != "0", p.stdout
    assert (b.path / "alt.json").read_bytes() == decoy_orig
    assert (cwd / "alt.json").read_bytes() == real_orig  # restored after the run
