"""Docker-in-Docker: the host's dockerd, containerd, runc and iptables (docker.io's
binaries and the libraries ldd lists, copied in: nothing is downloaded) inside a hardened
container in Docker's --privileged shape run `docker run` of an imported busybox image
with the overlay2 storage driver (overlayfs inside the user namespace, vetted by the
daemon), their own bridge and iptables rules; the inner containers' calls reach the same
daemon through the inherited filter."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import dockerd
from tests.harness.daemon import Daemon
from tests.harness.dockerd import busybox_tar
from tests.harness.nested import install_iptables, install_runtimes
from tests.harness.rootfs import build_rootfs
from tests.integration.policy_support import parse
from tests.integration.test_docker import Dockerd
from tests.integration.test_nested_runtimes import docker_privileged
from tests.integration.test_runtime_shim import SHIM

pytestmark = [pytest.mark.integration, pytest.mark.docker]

if dockerd.DOCKERD is None or dockerd.DOCKER is None:  # pragma: no cover - in the set-up
    pytest.skip("docker.io is not installed", allow_module_level=True)

DOCKER_BINARIES = ("runc", "dockerd", "containerd", "containerd-shim-runc-v2", "docker",
                   "docker-init")

# Its own bridge (docker0) and iptables rules (nf_tables), inside the outer container's
# network namespace: one inner container serves HTTP, another fetches it over the bridge.
SCRIPT = r"""
mkdir -p /var/lib/docker /etc/docker /var/run
ip link set lo up
(dockerd --storage-driver=overlay2 >/tmp/dockerd.log 2>&1 &)
for i in $(seq 120); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
docker info --format 'driver ret=0 errno=0 {{.Driver}}' 2>&1
docker import /busybox.tar busybox:latest >/dev/null 2>&1; echo "import ret=$? errno=0"
echo "run ret=$(docker run --rm --network=none busybox sh -c 'echo $$') errno=0"
docker run --rm --network=none --cap-add SYS_ADMIN --security-opt seccomp=unconfined \
  busybox sh -c \
  'mount -o remount,bind,rw /proc/sys 2>/dev/null; echo "in_sys_rw ret=$? errno=0";
   umount -l /proc 2>/dev/null; echo "in_umount_proc ret=$? errno=0";
   mkdir /m && mount -t tmpfs t /m; echo "in_tmpfs ret=$? errno=0"'
docker run --rm --network=none --privileged busybox sh -c \
  'grep CapEff /proc/self/status; mount -o remount,bind,rw /proc/sys 2>/dev/null;
   echo "priv_sys_rw ret=$? errno=0"; umount -l /proc 2>/dev/null;
   echo "priv_umount_proc ret=$? errno=0"' 2>&1; echo "priv ret=$? errno=0"
docker run --rm --network=none --privileged --cap-drop SYS_RESOURCE busybox sh -c \
  'grep CapEff /proc/self/status; mount -o remount,bind,rw /proc/sys 2>/dev/null;
   echo "privd_sys_rw ret=$? errno=0"; umount -l /proc 2>/dev/null;
   echo "privd_umount_proc ret=$? errno=0"' 2>&1; echo "privd ret=$? errno=0"
docker run -d --name srv busybox sh -c 'echo hello > /i; httpd -f -p 8080 -h /' >/dev/null
ip=""; for i in $(seq 20); do
  ip=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' srv); [ -n "$ip" ] && break
  sleep 0.25; done
got=""; for i in $(seq 20); do  # (busybox-static's wget -T crashes)
  got=$(docker run --rm busybox wget -q -O- "http://$ip:8080/i" 2>/dev/null)
  [ "$got" = hello ] && break; sleep 0.5; done
[ "$got" = hello ] && echo "bridge ret=0 errno=0" || echo "bridge ret=-1 errno=0 [$ip]"
iptables -t nat -S DOCKER >/dev/null 2>&1; echo "iptables ret=$? errno=0"
docker rm -f srv >/dev/null 2>&1
grep 'level=error' /tmp/dockerd.log | tail -5
kill $(cat /var/run/docker.pid) 2>/dev/null; for i in $(seq 40); do
  [ -e /var/run/docker.pid ] || break; sleep 0.25; done
true
"""


@pytest.fixture
def shim(monkeypatch, daemon, runtime_factory):
    """interceptd-runc over runc: crun 1.8.1 as the outer runtime on this hybrid host
    leaves its container in the hugetlb hierarchy's root, where the inner dockerd's runc
    cannot make its cgroups (docs/runtime.md, "Cgroups for nested managers")."""
    rt = runtime_factory("runc")
    rt.binary = str(SHIM)
    monkeypatch.setenv("INTERCEPTD_RUNTIME", "runc")
    monkeypatch.setenv("INTERCEPTD_STATE_DIR", str(daemon.state_dir))
    monkeypatch.delenv("INTERCEPTD_CONFIG", raising=False)
    rt.daemon = daemon  # type: ignore[attr-defined]
    return rt


def test_docker_in_docker(shim, bundle_factory, new_id):
    b = docker_privileged(bundle_factory, SCRIPT)
    install_runtimes(b.rootfs, DOCKER_BINARIES)
    install_iptables(b.rootfs)
    busybox_tar(b.rootfs / "busybox.tar")
    b.write_config()
    res = shim.run(b, new_id("dind"), timeout=240)
    print(res.stdout, res.stderr)
    assert res.rc == 0, res.stderr
    _check_dind(res.stdout, shim.daemon.log())


def _check_dind(stdout: str, log: str) -> None:
    out = parse(stdout)
    assert "overlay2" in next(ln for ln in stdout.splitlines() if ln.startswith("driver"))
    assert out["import"] == (0, 0)
    assert out["run"] == (1, 0)  # the inner container's sh is pid 1 of its namespace
    # an inner container with CAP_SYS_ADMIN and no profile (--privileged would ask for
    # CAP_SYS_RESOURCE, which this host's bounding set lacks): its /proc/sys stays
    # read-only, its /proc stays, its own tmpfs works
    assert out["in_sys_rw"][0] != 0 and out["in_umount_proc"][0] != 0, out
    assert out["in_tmpfs"] == (0, 0)
    assert out["bridge"] == (0, 0) and out["iptables"] == (0, 0), stdout
    # `docker run --privileged` inside: Docker 20.10 asks for every capability the kernel
    # knows (`--cap-drop` is ignored with --privileged), the inner runc's capset(2) asks
    # for CAP_SYS_RESOURCE, absent from this host's bounding set (README, "System
    # containers"). A dockerd that clamps to its own bounding set runs it, and the
    # refusals hold there too.
    for k in ("priv", "privd"):
        if out[k] == (0, 0):
            assert out[f"{k}_sys_rw"][0] != 0 and out[f"{k}_umount_proc"][0] != 0, out
        else:
            assert out[k] == (125, 0) and "unable to apply caps: operation not permitted" \
                in stdout, out
    assert "overlay allowed" in log  # dockerd's overlay2 mounts were vetted here
    # ...and the inner container's refusals were the daemon's
    assert "remount would clear ro" in log
    assert "umount of the (nested) container's /proc refused" in log


def _dind_image(top: Path) -> Path:
    """The DinD image as a tarball for `docker import`: the busybox rootfs with the
    host's docker.io binaries, iptables and a busybox image tarball to import inside."""
    root = build_rootfs(top / "dind-rootfs")
    install_runtimes(root, DOCKER_BINARIES)
    install_iptables(root)
    busybox_tar(root / "busybox.tar")
    tar = top / "dind.tar"
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tar), "."],
                   check=True)
    shutil.rmtree(root)
    return tar


@pytest.fixture
def private_dockerd() -> Iterator[Dockerd]:
    """The private dockerd of test_docker.py (packaging's daemon.json: interceptd-runc
    the default runtime, the shim first in PATH as runc and crun) over runc: crun 1.8.1
    as the outer runtime on this hybrid host leaves its container in the hugetlb
    hierarchy's root (docs/runtime.md, "Cgroups for nested managers")."""
    top = Path(tempfile.mkdtemp(prefix="icd-dd-", dir="/tmp"))  # short: socket paths
    os.chmod(top, 0o711)
    daemon = Daemon(top / "interceptd")
    daemon.start()
    d = Dockerd(top, daemon, "runc")
    try:
        deadline = time.monotonic() + 10
        while not (Path(daemon.state_dir) / "runtime.sock").exists():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        d.start()
        yield d
    finally:
        d.stop()
        rc = daemon.stop()
        dockerd.unmount_under(str(top))
        shutil.rmtree(top, ignore_errors=True)
        assert rc == 0, daemon.log()


def test_docker_in_docker_through_private_dockerd(private_dockerd):
    """The user's path: `docker run --privileged` of a DinD image on a dockerd whose
    default runtime is interceptd-runc (the shipped daemon.json)."""
    d = private_dockerd
    d.docker("import", str(_dind_image(d.top)), "icd-dind:test", timeout=240)
    name = f"dind-{uuid.uuid4().hex[:8]}"
    # /var/lib/docker on a volume, as docker:dind's VOLUME puts it: overlayfs takes no
    # upper directory on an overlayfs (the outer container's rootfs)
    p = d.docker("run", "--rm", "--name", name, "--privileged", "--network=none",
                 "-v", "/var/lib/docker", "icd-dind:test", "sh", "-c", SCRIPT,
                 check=False, timeout=300)
    print(p.stdout, p.stderr)
    assert p.returncode == 0, p.stderr + d.log()[-3000:]
    _check_dind(p.stdout, d.daemon.log())
