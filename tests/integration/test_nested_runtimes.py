"""runc and crun inside a hardened container (interceptd-runc, the --privileged shape with
a cgroup namespace and a cgroup mount) start a nested busybox container that mounts a
tmpfs; what the outer container may not do, the nested one may not either: its runtime's
and its own calls reach the same daemon through the inherited filter."""

from __future__ import annotations

import contextlib
import errno
import os

import pytest

from tests.harness.bundle import bounding_caps
from tests.harness.nested import add_inner_bundle, inner_config, install_runtimes
from tests.integration.policy_support import EBUSY, EPERM, parse, probe
from tests.integration.test_runtime_shim import plain_bundle, shim  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration

MS_BIND, MS_REC = 0x1000, 0x4000
MS_REMOUNT_BIND = 0x20 | MS_BIND
MNT_DETACH = 0x2


def masked(label: str, path: str) -> str:
    return (f"if [ -c {path} ]; then echo '{label} ret=1 errno=0'; "
            f"elif [ -e {path} ]; then echo '{label} ret=0 errno=0'; "
            f"else echo '{label} ret=-1 errno=0'; fi")


NESTED = "\n".join([
    "echo \"n_pid ret=$$ errno=0\"",
    "mkdir -p /mnt/t /mnt/op && touch /tmp/x",
    probe("n_tmpfs", "sys mount s:t s:/mnt/t s:tmpfs 0 0"),
    probe("n_write", "sh -c 'echo hi > /mnt/t/f && echo ret=0 errno=0'"),
    masked("n_proc_masked", "/proc/timer_list"),
    # a read-only path of the nested /proc made writable again
    probe("n_sys_rw", f"sys mount 0 s:/proc/sys 0 {MS_REMOUNT_BIND} 0"),
    probe("n_umount_proc", f"sys umount2 s:/proc {MNT_DETACH}"),
    # the outer container's /proc, bound in by the nested runtime: its masks came along
    masked("n_outer_masked", "/outer/proc/timer_list"),
    probe("n_bind_outer_mask", f"sys mount s:/outer/proc/timer_list s:/tmp/x 0 {MS_BIND} 0"),
    masked("n_bound_is_mask", "/tmp/x"),
    probe("n_flat_bind_outer", f"sys mount s:/outer/proc s:/mnt/op 0 {MS_BIND} 0"),
    masked("n_flat_bind_masked", "/mnt/op/timer_list"),
    probe("n_umount_outer_mask", f"sys umount2 s:/outer/proc/timer_list {MNT_DETACH}"),
    probe("n_outer_sys_rw", f"sys mount 0 s:/outer/proc/sys 0 {MS_REMOUNT_BIND} 0"),
])


def outer_script(inner: str) -> str:
    if inner == "runc":
        run = "runc --root /run/inner --rootless true run -b /nested/bundle nested1"
    else:
        run = "crun --root /run/inner --cgroup-manager=disabled run -b /nested/bundle nested1"
    return "\n".join([
        "mkdir -p /run/inner",
        f"{run} 2>&1",
        "echo \"outer_rc ret=$? errno=0\"",
    ])


def docker_privileged(bundle_factory, script: str):
    """What docker run --privileged hands the runtime (before interceptd-runc): every
    capability, no seccomp profile, no masks, sysfs read-write, a cgroup mount."""
    b = plain_bundle(bundle_factory, ["sh", "-c", script])
    caps = bounding_caps()
    b.config["process"]["capabilities"] = {k: caps for k in
                                           ("bounding", "effective", "permitted")}
    linux = b.config["linux"]
    linux["maskedPaths"], linux["readonlyPaths"] = [], []
    for m in b.config["mounts"]:
        if m["destination"] == "/sys":
            m["options"] = [o for o in m.get("options", []) if o != "ro"]
    b.config["mounts"].append({"destination": "/sys/fs/cgroup", "type": "cgroup",
                               "source": "cgroup",
                               "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]})
    return b


def test_nested_runtime(shim, bundle_factory, rootfs, new_id):  # noqa: F811
    inner = shim.name
    b = docker_privileged(bundle_factory, outer_script(inner))
    install_runtimes(b.rootfs)
    add_inner_bundle(b.rootfs, rootfs, "/nested/bundle", inner_config(NESTED, [
        {"destination": "/outer/proc", "type": "bind", "source": "/proc",
         "options": ["rbind"]}]))
    b.write_config()
    res = shim.run(b, new_id("nest"), timeout=120)
    print(res.stdout, res.stderr)
    assert res.rc == 0, res.stderr
    out = parse(res.stdout)
    assert out.get("outer_rc") == (0, 0), res.stdout
    assert out["n_pid"] == (1, 0)  # the nested container ran, in its own pid namespace
    assert out["n_tmpfs"] == (0, 0) and out["n_write"] == (0, 0)
    assert out["n_proc_masked"] == (1, 0)
    assert out["n_sys_rw"] == (-1, EPERM)
    assert out["n_umount_proc"] == (-1, EBUSY)
    assert out["n_outer_masked"] == (1, 0)
    assert out["n_bind_outer_mask"] == (0, 0) and out["n_bound_is_mask"] == (1, 0)
    assert out["n_flat_bind_outer"] == (0, 0) and out["n_flat_bind_masked"] == (1, 0)
    assert out["n_umount_outer_mask"] == (-1, EPERM)
    # The outer container's /proc/sys is no read-only mount of its own (its sysctls are
    # the kernel's to check: docs/emulation.md "/proc/sys"), so nothing to remount.
    assert out["n_outer_sys_rw"] == (-1, errno.EINVAL)
    log = shim.daemon.log()
    # the nested runtime's and the nested container's calls reached this daemon
    assert "target=/proc/self/fd/6" in log  # runc/crun mounting onto their fds
    assert "umount of the (nested) container's /proc refused" in log


# Inside the nested container: its pids limit is 1000, the outer container's 200 (the
# runtimes' own threads count too: Go's runc starts a dozen); every
# fork past the outer limit fails whatever the nested one says.
FORKS = "\n".join([
    # the subshell dies at the first fork the limit refuses; the sleeps it started stay
    "echo 0 > /tmp/n; ( for i in $(seq 300); do sleep 30 & echo $i > /tmp/n; done ) "
    "2>/dev/null",
    "read n < /tmp/n; kill -9 -1; wait",  # builtins only: every pid may be in use
    "echo \"n_forks ret=$n errno=0\"",
    "echo \"n_cgroup ret=0 errno=0 $(grep pids /proc/self/cgroup)\"",
])


def outer_cgroup_script(inner: str) -> str:
    return "\n".join([
        "mkdir -p /run/inner",
        # what was delegated: the directory and cgroup.procs, not the limits
        probe("o_owner_dir", "sh -c 'echo ret=$(stat -c %u /sys/fs/cgroup/pids) errno=0'"),
        probe("o_owner_procs", "sh -c 'echo ret=$(stat -c %u /sys/fs/cgroup/pids/cgroup.procs)"
                               " errno=0'"),
        probe("o_raise_limit", "sh -c 'echo 100000 > /sys/fs/cgroup/pids/pids.max "
                               "&& echo ret=0 errno=0 || echo ret=-1 errno=13'"),
        probe("o_mkdir", "sh -c 'mkdir /sys/fs/cgroup/memory/probe && rmdir "
                         "/sys/fs/cgroup/memory/probe && echo ret=0 errno=0'"),
        f"{inner} --root /run/inner --log /run/inner.log run -b /nested/bundle nested1 2>&1",
        "rc=$?; [ $rc = 0 ] || cat /run/inner.log",
        "echo \"outer_rc ret=$rc errno=0\"",
    ])


def test_nested_runtime_with_delegated_cgroups(shim, bundle_factory, rootfs,  # noqa: F811
                                               new_id, monkeypatch):
    # The outer runtime is runc for both: crun 1.8.1 on this hybrid host leaves its
    # container in the hugetlb hierarchy's root (the harness mounts hugetlb for it), so
    # a nested crun finds no hugetlb cgroup of its own to create children in.
    inner = shim.name
    monkeypatch.setenv("INTERCEPTD_RUNTIME", "runc")
    b = docker_privileged(bundle_factory, outer_cgroup_script(inner))
    b.config["linux"]["resources"] = {"pids": {"limit": 200}}
    install_runtimes(b.rootfs)
    cfg = inner_config(FORKS)
    cfg["linux"]["cgroupsPath"] = "/nested1"
    cfg["linux"]["resources"] = {"pids": {"limit": 1000}}
    add_inner_bundle(b.rootfs, rootfs, "/nested/bundle", cfg)
    b.write_config()
    res = shim.run(b, new_id("cgnest"), timeout=120)
    print(res.stdout, res.stderr)
    assert res.rc == 0, res.stderr
    out = parse(res.stdout)
    assert out["o_owner_dir"] == (0, 0) and out["o_owner_procs"] == (0, 0)
    assert out["o_raise_limit"] == (-1, 13)  # the limit file stays the host's
    assert out["o_mkdir"] == (0, 0)
    assert out.get("outer_rc") == (0, 0), res.stdout
    # the nested runtime made its cgroup below the container's (cgroupns: "/nested1")
    assert "/nested1" in next(ln for ln in res.stdout.splitlines()
                              if ln.startswith("n_cgroup"))
    # outer sh + runtime + ... + nested processes: the outer 200 binds, not the nested 1000
    assert 100 < out["n_forks"][0] < 200, out


UNIFIED = "/sys/fs/cgroup/unified"


@pytest.mark.parametrize("own_path", [True, False])
def test_crun_v2_node_is_delegated(daemon, runtime_factory, bundle_factory, new_id,
                                   monkeypatch, own_path):
    """crun 1.8.1 as the outer runtime on this hybrid host: the container's v2 node (the
    config's cgroupsPath, Docker's shape, or the shim's /interceptd/<id>) is the
    container root's as systemd documents delegation (directory, cgroup.procs/threads/
    subtree_control), nothing above it nor its limits; what a manager inside left below
    it goes at delete, and nothing is left in the unified tree."""
    from tests.integration.test_runtime_shim import SHIM

    rt = runtime_factory("crun")
    rt.binary = str(SHIM)
    monkeypatch.setenv("INTERCEPTD_RUNTIME", "crun")
    monkeypatch.setenv("INTERCEPTD_STATE_DIR", str(daemon.state_dir))
    monkeypatch.delenv("INTERCEPTD_CONFIG", raising=False)
    b = docker_privileged(bundle_factory, "sleep 60")
    cid = new_id("cgv2")
    want = f"/icdtest/{cid}" if own_path else f"/interceptd/{cid}"
    if own_path:
        b.config["linux"]["cgroupsPath"] = want
    b.write_config()
    try:
        with rt.started(b, cid):
            pid = rt.state(cid)["pid"]
            with open(f"/proc/{pid}/cgroup") as f:
                rel = next(ln[3:].strip() for ln in f if ln.startswith("0::"))
            assert rel == want
            node = f"{UNIFIED}{rel}"
            with open(f"/proc/{pid}/status") as f:
                uid = int(next(ln.split()[1] for ln in f if ln.startswith("Uid:")))
            assert uid != 0
            for name in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
                assert os.stat(os.path.join(node, name)).st_uid == uid, name
            for name in ("cgroup.max.depth", "cgroup.max.descendants"):
                assert os.stat(os.path.join(node, name)).st_uid == 0, name
            assert os.stat(os.path.dirname(node)).st_uid == 0
            os.mkdir(os.path.join(node, "left-by-a-manager"))
        leaked = os.path.exists(node)
    finally:
        for d in (f"{UNIFIED}{want}/left-by-a-manager", f"{UNIFIED}{want}",
                  f"{UNIFIED}/icdtest"):
            with contextlib.suppress(OSError):
                os.rmdir(d)
    assert not leaked, node
