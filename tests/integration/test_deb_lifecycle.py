"""The package's whole life on this machine (issue 14, item 3): `dpkg -i`, the daemon
started from the installed files, `docker run` through the installed shim with the
shipped Docker snippets, an upgrade to a rebuilt package while that container loops over
notified calls (the postinst hands the running daemon's fds to the new code: nothing may
fail), then `dpkg --purge`, after which nothing of the package is left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import dockerd
from tests.integration.policy_support import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PKG = "interceptd"
STATE = Path("/run/interceptd")  # the postinst's state dir, as in production
INTERCEPTCTL = "/usr/bin/interceptctl"
DROP_IN = Path("/usr/share/interceptd/systemd/docker.service.d/interceptd.conf")
# Vetted mounts (the native helper), emulated sysinfo (busybox uptime) and an emulated
# /proc file (the FUSE tree, handed over too), each checked; /count shows progress.
LOOP = ("mkdir -p /mnt; n=0; while [ ! -e /stop ]; do "
        "mount -t tmpfs t /mnt 2>&1 || echo FAIL-mount; umount /mnt 2>&1 || echo FAIL-umount; "
        "uptime >/dev/null || echo FAIL-sysinfo; "
        "head -c 64 /proc/meminfo >/dev/null || echo FAIL-proc; "
        "n=$((n+1)); echo $n > /count; done; echo loops=$n")

if dockerd.DOCKERD is None or dockerd.DOCKER is None:  # pragma: no cover - in the set-up
    pytest.skip("docker.io is not installed", allow_module_level=True)


def _dpkg_status() -> str:
    p = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", PKG],
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else ""


def _build(out: Path, version: str | None) -> Path:
    env = dict(os.environ)
    if version:
        env["INTERCEPTD_DEB_VERSION"] = version
    p = subprocess.run([str(REPO / "packaging/deb/build.sh"), str(out)], env=env,
                       check=True, capture_output=True, text=True)
    return Path(p.stdout.strip().splitlines()[-1])


def _dpkg(*args: str) -> None:
    p = subprocess.run(["dpkg", *args], capture_output=True, text=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    assert p.returncode == 0, f"dpkg {' '.join(args)}:\n{p.stdout}\n{p.stderr}"


def _status(timeout: float = 2.0) -> dict[str, Any]:
    if not os.path.exists(INTERCEPTCTL):
        return {}
    p = subprocess.run([INTERCEPTCTL, "--state-dir", str(STATE), "status", "-o", "json"],
                       capture_output=True, text=True, timeout=timeout + 5)
    if p.returncode != 0:
        return {}
    st: dict[str, Any] = json.loads(p.stdout)
    return st


def _stop_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if os.path.exists(f"/proc/{pid}"):
        os.kill(pid, signal.SIGKILL)


def _drop_in_path() -> str:
    """The PATH the shipped docker.service drop-in gives dockerd."""
    for line in DROP_IN.read_text().splitlines():
        if line.startswith("Environment=PATH="):
            return line.split("=", 2)[2]
    raise AssertionError(f"no PATH in {DROP_IN}")


@pytest.fixture
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This machine without the package and without a daemon on /run/interceptd; both
    are put back that way whatever happens."""
    if _dpkg_status():
        pytest.fail(f"a {PKG} package is installed here ({_dpkg_status()}): this test "
                    "installs and purges its own; remove it first")
    if (STATE / "control.sock").exists() and _status():
        pytest.fail(f"a daemon serves {STATE}: this test needs that state dir")
    out = tmp_path_factory.mktemp("debs")
    try:
        yield out
    finally:
        if (pid := _status().get("pid")) is not None:  # a successor the test lost track of
            _stop_pid(int(pid))
        if _dpkg_status():
            subprocess.run(["dpkg", "--purge", PKG], capture_output=True)
        dockerd.unmount_under(str(STATE))


def test_install_run_upgrade_purge(machine: Path):
    v1 = _build(machine / "v1", None)
    version1 = v1.name.split("_")[1]
    v2 = _build(machine / "v2", version1 + "+upgrade1")
    top = Path(subprocess.run(["mktemp", "-d", "/tmp/icd-deb-XXXXXX"], check=True,
                              capture_output=True, text=True).stdout.strip())
    os.chmod(top, 0o711)
    d = dockerd.Dockerd(top)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        _dpkg("-i", str(v1))
        assert _dpkg_status() == f"install ok installed {version1}"
        for f in ("/usr/bin/interceptd", "/usr/sbin/interceptd-runc",
                  "/etc/interceptd/interceptd.toml", "/lib/systemd/system/interceptd.service"):
            assert os.path.exists(f), f

        # The daemon from the installed files; no eBPF and no metrics port here (the
        # other tests cover them; this one is about the package).
        cfg = top / "interceptd.toml"
        cfg.write_text('[daemon]\nmetrics_address = "off"\n[ebpf]\nenabled = false\n')
        with open(top / "interceptd.log", "ab") as log:
            daemon = subprocess.Popen(
                ["/usr/bin/interceptd", "--state-dir", str(STATE), "--config", str(cfg)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        first = wait_for(_status, 30, "the installed daemon")
        assert first["version"] == version1 and first["pid"] == daemon.pid

        # dockerd as the shipped snippets configure it: interceptd-runc as the
        # default runtime, and runc in its PATH being the shim too.
        conf = json.loads(Path("/usr/share/interceptd/docker/daemon.json").read_text())
        assert conf["runtimes"]["interceptd"]["path"] == "/usr/sbin/interceptd-runc"
        d.launch(conf, dict(os.environ, PATH=_drop_in_path()))
        d.import_busybox()
        p = d.docker("run", "--rm", "--network=none", dockerd.IMAGE,
                     "cat", "/proc/self/uid_map")
        inside, outside, _ = p.stdout.split()
        assert inside == "0" and outside != "0"  # a user namespace, from the package

        d.docker("run", "-d", "--name", "loop", "--network=none", "--privileged",
                 dockerd.IMAGE, "sh", "-c", LOOP)

        def count() -> int:
            r = d.docker("exec", "loop", "cat", "/count", check=False)
            return int(r.stdout) if r.returncode == 0 and r.stdout.strip() else 0

        wait_for(lambda: count() >= 20, 30, "the loop to run")

        # The upgrade: the new package's postinst runs `interceptctl restart`.
        _dpkg("-i", str(v2))
        assert _dpkg_status() == f"install ok installed {version1}+upgrade1"
        second = wait_for(lambda: (s := _status()) and s.get("pid") != daemon.pid and s,
                          30, "the upgraded daemon")
        assert second["version"] == f"{version1}+upgrade1", second
        assert daemon.wait(30) == 0  # the old process handed over and exited
        kept = (second.get("handover") or {}).get("containers")
        assert kept and kept >= 1, second

        at_upgrade = count()
        wait_for(lambda: count() >= at_upgrade + 20, 30, "the loop to go on after the upgrade")
        d.docker("exec", "loop", "touch", "/stop")
        assert d.docker("wait", "loop").stdout.strip() == "0"
        out = d.docker("logs", "loop").stdout
        assert "FAIL" not in out and "loops=" in out, out
        d.docker("rm", "loop")
        d.stop()

        _stop_pid(int(second["pid"]))
        _dpkg("--purge", PKG)
        assert _dpkg_status() == ""
        for f in ("/usr/lib/interceptd", "/usr/bin/interceptd", "/usr/sbin/interceptd-runc",
                  "/etc/interceptd", "/lib/systemd/system/interceptd.service", str(STATE)):
            assert not os.path.lexists(f), f
        leftovers = subprocess.run(["find", "/etc/systemd", "/var/lib/systemd",
                                    "-name", "*interceptd*"],
                                   capture_output=True, text=True).stdout.split()
        assert leftovers == []
    finally:
        d.stop()
        if daemon is not None and daemon.poll() is None:
            _stop_pid(daemon.pid)
        dockerd.unmount_under(str(top))
        subprocess.run(["rm", "-rf", str(top)], check=False)
