"""Mount vetting from inside real containers in the --privileged shape (user namespace,
every capability the host allows, no other seccomp profile), through runc and the real
daemon with the policy registered.

Each escape attempt gets its errno under the policy; where it matters, the same script in
an unvetted container (no filter) shows the attempt would otherwise succeed, so the test
proves the policy is what stops it. The legitimate neighbours work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Daemon, Runtime
from tests.integration.policy_support import (
    EBUSY,
    EINVAL,
    EPERM,
    host_mounts,
    privileged,
    probe,
    run_script,
)

pytestmark = pytest.mark.integration

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT_BIND = 0x20 | 0x1000
MS_MOVE = 0x2000
MNT_DETACH = 0x2
def masked(label: str, path: str) -> str:
    """`label ret=1` when `path` is a mask (the /dev/null character device), ret=0 when it
    is the real file, ret=-1 when it is missing. (Contents cannot tell: procfs files owned
    by the host's root are unreadable in the container anyway.)"""
    return (f"if [ -c {path} ]; then echo '{label} ret=1 errno=0'; "
            f"elif [ -e {path} ]; then echo '{label} ret=0 errno=0'; "
            f"else echo '{label} ret=-1 errno=0'; fi")


REMASK = ("grep -q ' /proc/timer_list ' /proc/self/mountinfo || "
          "mount --bind /dev/null /proc/timer_list")
TMP_RO = MS_REMOUNT_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV


@pytest.fixture(params=["runc", "crun"])
def rt(request: pytest.FixtureRequest, runtime_factory: Callable[[str], Runtime]) -> Runtime:
    return runtime_factory(request.param)


def both(rt: Runtime, bundle_factory, daemon: Daemon, new_id, script: str,
         **kw) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """The script's probes under the policy, and in an unvetted container."""
    vetted = run_script(rt, privileged(bundle_factory, daemon, script, **kw), new_id("pol"))
    plain = run_script(rt, privileged(bundle_factory, None, script, **kw), new_id("raw"))
    return vetted, plain


def test_immutable_mounts_cannot_be_weakened(rt, bundle_factory, daemon, new_id,
                                             workdir: Path):
    before = host_mounts()
    rb = MS_REMOUNT_BIND
    script = "\n".join([
        "mkdir -p /mnt/copy",
        probe("procsys_rw", f"sys mount 0 s:/proc/sys 0 {rb} 0"),
        probe("sys_rw", f"sys mount 0 s:/sys 0 {rb | MS_NOSUID | MS_NODEV | MS_NOEXEC} 0"),
        probe("shm_suid", f"sys mount 0 s:/dev/shm 0 {rb | MS_NODEV | MS_NOEXEC} 0"),
        probe("unshared_procsys_rw", f"unshare -m sys mount 0 s:/proc/sys 0 {rb} 0"),
        "mount --bind /proc/sys /mnt/copy",
        probe("copy_rw", f"sys mount 0 s:/mnt/copy 0 {rb} 0"),
        probe("copy_write", "sh -c 'echo 1 > /mnt/copy/kernel/ns_last_pid && "
                            "echo ret=0 errno=0 || echo ret=-1 errno=30'"),
    ])
    vetted, plain = both(rt, bundle_factory, daemon, new_id, script)
    for k in ("procsys_rw", "sys_rw", "shm_suid", "unshared_procsys_rw", "copy_rw"):
        assert vetted[k] == (-1, EPERM), (k, vetted)
        assert plain[k] == (0, 0), (k, plain)  # unvetted, the kernel lets it happen
    assert vetted["copy_write"][0] == -1
    assert host_mounts() == before


def test_readonly_volume_stays_readonly(rt, bundle_factory, daemon, new_id, workdir: Path):
    vol = workdir / "vol"
    vol.mkdir()
    script = "\n".join([
        probe("vol_rw", f"sys mount 0 s:/vol 0 {MS_REMOUNT_BIND} 0"),
        probe("vol_clone_rw", "policy_mntapi clone_setattr /vol 1", last=True),
        probe("vol_setattr_rw", "policy_mntapi setattr /vol 1", last=True),
        probe("vol_write", "sh -c 'touch /vol/escaped && echo ret=0 errno=0 || "
                           "echo ret=-1 errno=30'"),
    ])

    def bundle(listener):
        b = privileged(bundle_factory, listener, script, extra_mounts=[
            {"destination": "/vol", "type": "bind", "source": str(vol),
             "options": ["rbind", "ro"]}])
        os.chown(vol, b.id_base, b.id_base)
        return b

    vetted = run_script(rt, bundle(daemon), new_id("pol"))
    assert vetted["vol_rw"] == (-1, EPERM)
    assert vetted["vol_clone_rw"] == (-1, EPERM)
    assert vetted["vol_setattr_rw"] == (-1, EPERM)
    assert vetted["vol_write"] == (-1, 30)
    assert not (vol / "escaped").exists()
    plain = run_script(rt, bundle(None), new_id("raw"))
    assert plain["vol_rw"] == (0, 0) and plain["vol_write"] == (0, 0)


def test_own_mounts_and_rw_to_ro(rt, bundle_factory, daemon, new_id):
    script = "\n".join([
        "mkdir -p /mnt/a",
        probe("tmpfs", "sys mount s:t s:/mnt/a s:tmpfs 0 s:size=1m"),
        probe("write", "sh -c 'echo hi > /mnt/a/f && echo ret=0 errno=0'"),
        probe("remount_ro", f"sys mount 0 s:/mnt/a 0 {MS_REMOUNT_BIND | MS_RDONLY} 0"),
        probe("write_ro", "sh -c 'echo hi > /mnt/a/g && echo ret=0 errno=0 || "
                          "echo ret=-1 errno=30'"),
        probe("remount_rw_again", f"sys mount 0 s:/mnt/a 0 {MS_REMOUNT_BIND} 0"),
        probe("umount", "sys umount2 s:/mnt/a 0"),
        probe("tmp_ro", f"sys mount 0 s:/tmp 0 {TMP_RO} 0"),
        probe("mqueue", "sh -c 'mkdir -p /mnt/q && sys mount s:m s:/mnt/q s:mqueue 0 0'",
              last=True),
        probe("devpts", "sh -c 'mkdir -p /mnt/pts && "
                        "sys mount s:d s:/mnt/pts s:devpts 0 s:newinstance'", last=True),
        probe("overlay", "sh -c 'mkdir -p /tmp2 && mount -t tmpfs t /tmp2 && "
                         "mkdir -p /tmp2/l /tmp2/u /tmp2/w /mnt/o && "
                         "sys mount s:o s:/mnt/o s:overlay 0 "
                         "s:lowerdir=/tmp2/l,upperdir=/tmp2/u,workdir=/tmp2/w'", last=True),
        probe("bind_own", "sh -c 'mkdir -p /mnt/b && sys mount s:/etc s:/mnt/b 0 4096 0'",
              last=True),
    ])
    out = run_script(rt, privileged(bundle_factory, daemon, script), new_id("pol"))
    for k in ("tmpfs", "write", "remount_ro", "remount_rw_again", "umount", "tmp_ro",
              "mqueue", "devpts", "overlay", "bind_own"):
        assert out[k] == (0, 0), (k, out)
    assert out["write_ro"] == (-1, 30)


def test_proc_and_masks_cannot_be_removed(rt, bundle_factory, daemon, new_id):
    script = "\n".join([
        "touch /tmp/k",
        probe("unshared_umount_mask", "unshare -m sys umount2 s:/proc/timer_list 0"),
        probe("umount_mask", "sys umount2 s:/proc/timer_list 0"),
        REMASK,  # the plain run removed it: mask it again
        probe("move_mask", f"sys mount s:/proc/timer_list s:/tmp/k 0 {MS_MOVE} 0"),
        REMASK,
        probe("move_api_mask", "policy_mntapi move /proc/timer_list /tmp/k", last=True),
        probe("umount_ro_path", f"sys umount2 s:/proc/sys {MNT_DETACH}"),
        probe("umount_sys_mask", f"sys umount2 s:/sys/firmware {MNT_DETACH}"),
        # A plain (non-recursive) bind of /proc would show what the masks cover.
        "mkdir -p /mnt/p",
        probe("bind_proc", "sys mount s:/proc s:/mnt/p 0 4096 0"),
        masked("bind_proc_masked", "/mnt/p/timer_list"),
        probe("umount_proc", f"sys umount2 s:/proc {MNT_DETACH}"),
        probe("umount_sys", f"sys umount2 s:/sys {MNT_DETACH}"),
    ])
    vetted, plain = both(rt, bundle_factory, daemon, new_id, script)
    assert vetted["umount_proc"] == (-1, EBUSY) and plain["umount_proc"] == (0, 0)
    assert vetted["umount_sys"] == (-1, EBUSY) and plain["umount_sys"] == (0, 0)
    for k in ("umount_mask", "umount_ro_path", "umount_sys_mask", "move_mask",
              "unshared_umount_mask", "move_api_mask"):
        assert vetted[k] == (-1, EPERM), (k, vetted)
        assert plain[k] == (0, 0), (k, plain)
    assert vetted["bind_proc"] == (0, 0)
    assert vetted["bind_proc_masked"] == (1, 0)
    assert plain["bind_proc_masked"] == (0, 0)  # unvetted: the real timer_list shows


@pytest.mark.parametrize(("fstype", "source"), [
    ("debugfs", "d"), ("tracefs", "t"), ("securityfs", "s"), ("bpf", "b"),
    ("configfs", "c"), ("ext4", "/dev/null"), ("btrfs", "/dev/null"),
])
def test_refused_filesystems(rt, bundle_factory, daemon, new_id, fstype, source):
    script = "mkdir -p /mnt/x\n" + probe("m", f"sys mount s:{source} s:/mnt/x s:{fstype} 0 0")
    out = run_script(rt, privileged(bundle_factory, daemon, script), new_id("pol"))
    assert out["m"] == (-1, EPERM)


def test_cgroup_v1_without_release_agent(rt, bundle_factory, daemon, new_id):
    script = "\n".join([
        "mkdir -p /mnt/cg",
        probe("cgroup", "sys mount s:c s:/mnt/cg s:cgroup 0 s:pids"),
        probe("release_agent", "sh -c 'test -e /mnt/cg/release_agent && "
                               "echo ret=1 errno=0 || echo ret=0 errno=0'"),
    ])
    out = run_script(rt, privileged(bundle_factory, daemon, script), new_id("pol"))
    # The harness gives every container its own cgroup namespace: the mount shows the
    # namespace's root, which has no release_agent.
    assert out["cgroup"] == (0, 0) and out["release_agent"] == (0, 0)


def test_procfs_mount_is_masked_and_removable(rt, bundle_factory, daemon, new_id):
    script = "\n".join([
        "mkdir -p /mnt/p",
        probe("mount_proc", "sys mount s:proc s:/mnt/p s:proc 0 0"),
        masked("masked", "/mnt/p/timer_list"),
        # a host-wide knob through the new procfs's /sys: read-only (kernel/domainname is
        # a served value of the container's own UTS namespace, writable)
        probe("ro_sys", "sh -c 'e=$( { echo 77 > /mnt/p/sys/vm/swappiness; } 2>&1 ) && "
                        "echo ret=0 errno=0 || case \"$e\" in *Read-only*) echo ret=-1 errno=30;; "
                        "*) echo ret=-1 errno=0;; esac'"),
        probe("umount_its_mask", "sys umount2 s:/mnt/p/timer_list 0"),
        probe("remount_its_sys_rw", f"sys mount 0 s:/mnt/p/sys 0 {MS_REMOUNT_BIND} 0"),
        probe("umount_it", "sys umount2 s:/mnt/p 0"),
        probe("gone", "sh -c 'echo ret=$(grep -c \" /mnt/p\" /proc/self/mountinfo) errno=0'"),
        probe("mount_proc_ro", f"sys mount s:proc s:/mnt/p s:proc {MS_RDONLY} 0"),
        probe("ro_honoured", "sh -c 'grep \" /mnt/p ro,\" /proc/self/mountinfo >/dev/null "
                             "&& echo ret=0 errno=0 || echo ret=-1 errno=0'"),
        probe("fsopen_proc", "policy_mntapi fsmount proc /mnt/p", last=True),
        probe("unshare_mount_proc",
              "unshare -m -p -f --mount-proc sh -c "
              "'[ -c /proc/timer_list ] && echo ret=$$ errno=0 || echo ret=-$$ errno=0'"),
    ])
    out = run_script(rt, privileged(bundle_factory, daemon, script), new_id("pol"))
    assert out["mount_proc"] == (0, 0)
    assert out["masked"] == (1, 0)
    assert out["ro_sys"] == (-1, 30)
    assert out["umount_its_mask"] == (-1, EPERM)
    assert out["remount_its_sys_rw"] == (-1, EPERM)
    assert out["umount_it"] == (0, 0)
    assert out["gone"] == (0, 0)
    assert out["mount_proc_ro"] == (0, 0) and out["ro_honoured"] == (0, 0)
    assert out["fsopen_proc"] == (-1, EPERM)
    # pid 1 in its new pid namespace, and the masks on its fresh /proc.
    assert out["unshare_mount_proc"] == (1, 0)


def test_new_mount_api(rt, bundle_factory, daemon, new_id):
    script = "\n".join([
        "mkdir -p /mnt/c /mnt/f /mnt/g",
        probe("clone_procsys_rw", "policy_mntapi clone_setattr /proc/sys 1", last=True),
        probe("clone_root_rec_rw", "policy_mntapi clone_setattr / 1 rec", last=True),
        probe("setattr_procsys_rw", "policy_mntapi setattr /proc/sys 1", last=True),
        probe("setattr_tmp_ro", "policy_mntapi setattr /tmp 0", last=True),
        probe("clone_proc_flat", "policy_mntapi clone_move /proc /mnt/c", last=True),
        masked("flat_masked", "/mnt/c/timer_list"),
        probe("clone_proc_rec", "policy_mntapi clone_move /proc /mnt/c rec", last=True),
        masked("clone_masked", "/mnt/c/timer_list"),
        probe("fsmount_tmpfs", "policy_mntapi fsmount tmpfs /mnt/f", last=True),
        probe("fsmount_debugfs", "policy_mntapi fsmount debugfs /mnt/g", last=True),
        probe("fspick_procsys", "policy_mntapi fspick /proc/sys", last=True),
        probe("fspick_own", "policy_mntapi fspick /mnt/f", last=True),
        # Take the mask out of a recursive clone of /, then attach the rest.
        "touch /tmp/k2; mkdir -p /mnt/r",
        probe("extract_mask", "policy_mntapi extract proc/timer_list /tmp/k2 /mnt/r",
              last=True),
        masked("extract_masked", "/mnt/r/proc/timer_list"),
    ])
    vetted, plain = both(rt, bundle_factory, daemon, new_id, script)
    for k in ("clone_procsys_rw", "clone_root_rec_rw", "setattr_procsys_rw",
              "clone_proc_flat", "fsmount_debugfs", "fspick_procsys"):
        assert vetted[k] == (-1, EPERM), (k, vetted)
    assert plain["clone_procsys_rw"] == (0, 0) and plain["setattr_procsys_rw"] == (0, 0)
    for k in ("setattr_tmp_ro", "clone_proc_rec", "fsmount_tmpfs", "fspick_own"):
        assert vetted[k] == (0, 0), (k, vetted)
    assert vetted["clone_masked"] == (1, 0)
    assert plain["clone_proc_flat"] == (0, 0)
    assert plain["flat_masked"] == (0, 0)  # unvetted, the flat clone shows the real file
    # The kernel refuses to move a mount out of the middle of a detached tree (EINVAL):
    # the mask stays, and the whole clone, masks included, can be attached.
    assert vetted["extract_mask"] == (-1, EINVAL) and vetted["extract_masked"] == (1, 0)


NESTED = r"""
set -e
mkdir -p /tmp/n
mount -t tmpfs t /tmp/n
mkdir -p /tmp/n/proc /tmp/n/sys /tmp/n/dev /tmp/n/old /tmp/n/tmp
cp -a /bin /tmp/n/
unshare -U -r -m -p -n -f sh -c '
  set +e
  mount --make-rprivate /
  mount --bind /tmp/n /tmp/n
  mount -t proc proc /tmp/n/proc; echo "nested_proc ret=$? errno=0"
  mount -t sysfs sysfs /tmp/n/sys; echo "nested_sysfs ret=$? errno=0"
  mount -t tmpfs tmpfs /tmp/n/dev; echo "nested_dev ret=$? errno=0"
  cd /tmp/n && pivot_root . old && umount -l /old; echo "nested_pivot ret=$? errno=0"
  echo "nested_pid ret=$$ errno=0"
  if [ -c /proc/timer_list ]; then echo "nested_masked ret=1 errno=0"; \
  else echo "nested_masked ret=0 errno=0"; fi
  if [ -d /sys/firmware ] && [ -z "$(ls /sys/firmware)" ]; then \
    echo "nested_sys_masked ret=1 errno=0"; else echo "nested_sys_masked ret=0 errno=0"; fi
  echo "nested_umount_mask $(sys umount2 s:/proc/timer_list 0)"
  echo "nested_umount_proc $(sys umount2 s:/proc 2)"
'
"""


def test_nested_container_shape(rt, bundle_factory, daemon, new_id):
    """What a nested runc (Docker-in-Docker) does: new user, mount, pid and network
    namespaces, procfs and sysfs on a new root, pivot_root, lazy umount of the old root."""
    out = run_script(rt, privileged(bundle_factory, daemon, NESTED), new_id("pol"))
    for k in ("nested_proc", "nested_sysfs", "nested_dev", "nested_pivot"):
        assert out[k] == (0, 0), (k, out)
    assert out["nested_pid"] == (1, 0)
    assert out["nested_masked"] == (1, 0) and out["nested_sys_masked"] == (1, 0)
    assert out["nested_umount_mask"] == (-1, EPERM)
    # The nested container's /proc (mounted through the daemon) stays, like the outer's.
    assert out["nested_umount_proc"] == (-1, EBUSY)


def test_decisions_are_events(runtime_factory, bundle_factory, daemon, new_id):
    """Every decision reaches the event bus (interceptctl trace) with its reason and the
    decoded arguments."""
    import threading

    got: list[dict] = []
    t = threading.Thread(target=lambda: got.extend(daemon.control_lines(
        "trace", timeout=30, count=3, syscall="umount2")))
    t.start()
    time.sleep(0.3)  # the subscription is in place before the container starts
    script = "\n".join([
        probe("proc", f"sys umount2 s:/proc {MNT_DETACH}"),
        probe("mask", "sys umount2 s:/proc/timer_list 0"),
    ])
    out = run_script(runtime_factory("runc"), privileged(bundle_factory, daemon, script),
                     new_id("pol"))
    t.join(timeout=30)
    assert out["proc"] == (-1, EBUSY) and out["mask"] == (-1, EPERM)
    events = [e for e in got if e.get("syscall") == "umount2"]
    assert len(events) == 2, got
    proc, mask = events
    assert proc["verdict"] == "errno" and proc["errno"] == EBUSY
    assert "target=/proc" in proc["reason"] and proc["source"] == "seccomp"
    assert mask["errno"] == EPERM and "/proc/timer_list" in mask["reason"]
    for e in events:
        assert e["container"].startswith("pol-") and e["pid"] > 0, e
        assert e["comm"] in ("sys", ""), e  # "" when the caller exited before the lookup
