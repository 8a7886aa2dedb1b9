"""Issue 8's mount holes, tried from inside real containers (runc and crun, the real
daemon): masks read through open_tree clones (item 3), the superblock remount race
(item 6) and FUSE mounts (item 9).

Where it shows something, the same script in an unvetted container (no filter at all)
proves the attempt would otherwise succeed, so the policy is what stops it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import interceptd.policy as policy
from tests.harness import Bundle, Daemon, Runtime
from tests.integration.policy_support import EPERM, parse, privileged, run_script

pytestmark = pytest.mark.integration

ENOENT = 2
MS_REMOUNT, MS_UNBINDABLE = 0x20, 1 << 17
FIRMWARE = "firmware/memmap/0/type"  # readable by anyone on this host, masked in /sys


@pytest.fixture(params=["runc", "crun"])
def rt(request: pytest.FixtureRequest, runtime_factory: Callable[[str], Runtime]) -> Runtime:
    return runtime_factory(request.param)


def filtered(bundle_factory: Callable[..., Bundle], daemon: Daemon, script: str,
             composition: str, **kw: Any) -> Bundle:
    """A --privileged-shape bundle whose filter is the policy's, composed either from the
    notified names (one unconditional NOTIFY rule: libseccomp then drops the conditional
    open_tree deny, and the daemon refuses instead) or from notify_rules (argument-narrowed:
    the deny rule is in the filter)."""
    if composition == "names":
        return privileged(bundle_factory, daemon, script, **kw)
    return bundle_factory(
        args=["sh", "-c", script], caps="all",
        seccomp_rules=policy.notify_rules(None) + policy.denied_syscalls(None), seccomp=True,
        listener_path=daemon.listener_path, **kw)


def steps(label: str, cmd: str) -> str:
    """Every "STEP ret=R errno=E" line of a policy_holes/policy_mntapi run as
    "label_STEP ret=..."."""
    return f"{cmd} 2>&1 | sed 's/^/{label}_/'"


def call(label: str, cmd: str) -> str:
    """The `sys` probe's "ret=R errno=E" as "label ret=R errno=E"."""
    return f"echo \"{label} $({cmd} 2>&1 | tail -1)\""


CLONES = "\n".join([
    "mkdir -p /mnt/s /mnt/r",
    # A flat clone carries none of the masks.
    steps("flat", f"policy_holes clone_read /sys {FIRMWARE} flat"),
    steps("rec", f"policy_holes clone_read /sys {FIRMWARE} rec"),
    steps("timer", "policy_holes clone_read /proc timer_list rec"),
    # An unbindable mask is left out of a recursive copy.
    call("ub_mount", f"sys mount 0 s:/sys/firmware 0 {MS_UNBINDABLE} 0"),
    steps("ub_setattr", "policy_holes unbindable /sys/firmware"),
    steps("ub_rec", f"policy_holes clone_read /sys {FIRMWARE} rec"),
    call("ub_rbind", "sys mount s:/sys s:/mnt/r 0 0x5000 0"),  # MS_BIND | MS_REC
    f"if [ -e /mnt/r/{FIRMWARE} ]; then echo 'ub_rbind_seen ret=1 errno=0'; "
    "else echo 'ub_rbind_seen ret=0 errno=0'; fi",
    # Take a mask off a detached recursive clone, then read through a clone of it.
    steps("cu", f"policy_holes clone_umount /sys firmware {FIRMWARE}"),
    # ... or off the clone once attached.
    steps("mv", "policy_mntapi clone_move /sys /mnt/s rec"),
    call("mv_umount", "sys umount2 s:/mnt/s/firmware 0"),
    call("mv_umount_lazy", "sys umount2 s:/mnt/s/firmware 2"),
    call("mv_unbindable", f"sys mount 0 s:/mnt/s/firmware 0 {MS_UNBINDABLE} 0"),
    steps("mv_clone", f"policy_holes clone_read /mnt/s {FIRMWARE} rec"),
    # Reconfiguring the procfs/sysfs superblocks.
    steps("fspick_proc", "policy_mntapi fspick /proc"),
    steps("fspick_sys", "policy_mntapi fspick /sys"),
    steps("fspick_clone", "policy_holes clone_fspick /proc"),
    call("remount_hidepid", f"sys mount 0 s:/proc 0 {MS_REMOUNT | 0xe} s:hidepid=2"),
    steps("own_clone", "policy_holes clone_read /tmp x flat"),
])


@pytest.mark.parametrize("composition", ["names", "rules"])
def test_masks_hold_through_clones(rt, bundle_factory, daemon, new_id, composition):
    out = run_script(rt, filtered(bundle_factory, daemon, CLONES, composition), new_id("pol"))
    # A non-recursive clone is refused (the whole call: even of the container's own /tmp).
    assert out["flat_open_tree"] == (-1, EPERM)
    assert out["own_clone_open_tree"] == (-1, EPERM)
    # A recursive clone keeps the masks: the firmware mask is an empty tmpfs, timer_list
    # /dev/null.
    assert out["rec_open_tree"][0] >= 0 and out["rec_open"] == (-1, ENOENT)
    assert out["timer_read"] == (0, 0)
    # No mask becomes unbindable, so copies keep them.
    assert out["ub_mount"] == (-1, EPERM) and out["ub_setattr_setattr"] == (-1, EPERM)
    assert out["ub_rec_open"] == (-1, ENOENT)
    assert out["ub_rbind"] == (0, 0) and out["ub_rbind_seen"] == (0, 0)
    # Nothing takes the mask off a clone, detached or attached.
    assert out["cu_umount_self"][0] == -1 and out["cu_umount_pid"][0] == -1
    assert out["cu_unbindable"] == (-1, EPERM)
    assert out["cu_open"] == (-1, ENOENT)
    assert out["mv_move_mount"] == (0, 0)
    assert out["mv_umount"] == (-1, EPERM) and out["mv_umount_lazy"] == (-1, EPERM)
    assert out["mv_unbindable"] == (-1, EPERM) and out["mv_clone_open"] == (-1, ENOENT)
    for k in ("fspick_proc_fspick", "fspick_sys_fspick", "fspick_clone_fspick",
              "remount_hidepid"):
        assert out[k] == (-1, EPERM), (k, out)
    log = daemon.log()
    if composition == "rules":
        # Refused in the filter: the daemon never saw a flat clone.
        assert not re.search(r"open_tree clone without AT_RECURSIVE", log)
    else:
        assert "open_tree clone without AT_RECURSIVE" in log


def test_clone_holes_are_real_without_the_policy(rt, bundle_factory, new_id):
    """The same attempts in a container without a filter: what the policy stops."""
    out = run_script(rt, privileged(bundle_factory, None, CLONES), new_id("raw"))
    assert out["flat_read"][0] > 0  # the flat clone reads the masked firmware map
    assert out["ub_mount"] == (0, 0)
    assert out["ub_rec_read"][0] > 0  # the recursive clone left the unbindable mask out
    assert out["ub_rbind_seen"] == (1, 0)
    assert out["fspick_proc_fspick"][0] >= 0 and out["remount_hidepid"] == (0, 0)


def _flags(mountinfo: str, points: tuple[str, ...]) -> dict[str, set[str]]:
    """Per-mount options of the mount points (mountinfo field 6), last one listed."""
    got: dict[str, set[str]] = {}
    for line in mountinfo.splitlines():
        f = line.split()
        if len(f) > 5 and f[4] in points:
            got[f[4]] = set(f[5].split(","))
    return got


RACE_TRIES = 5000  # per target: /proc/sys and /sys, 10,000 in all


def race_script(tries: int) -> str:
    """Plain remounts racing /proc/sys and /sys, then (a few) MS_UNBINDABLE racing the
    /sys/firmware mask."""
    return "\n".join([
        "echo BEFORE; cat /proc/self/mountinfo; echo END",
        *[f"mkdir -p /tmp/{n}/d/{sub} && mount -t tmpfs t /tmp/{n}/d/{sub} && "
          f"policy_holes remount_race /tmp/{n} {link} {sub} {count} {mode}"
          for n, link, sub, count, mode in (("rp", "/proc", "sys", tries, "remount"),
                                            ("rs", "/", "sys", tries, "remount"),
                                            ("ru", "/sys", "firmware", 1000, "unbindable"))],
        "echo AFTER; cat /proc/self/mountinfo; echo END",
    ])


def _between(text: str, start: str) -> str:
    return text.split(start + "\n", 1)[1].split("\nEND", 1)[0]


@pytest.mark.parametrize("rtname", ["runc", "crun"])
def test_remount_race_never_clears_proc_or_sys_flags(rtname, runtime_factory, bundle_factory,
                                                     daemon, new_id):
    """Two threads: one swaps a directory holding the container's own tmpfs with a
    symlink to /proc (or /), so that the remount target is now the tmpfs, now /proc/sys
    (or /sys); the other remounts it without flags. The daemon checks one resolution and
    acts on that same mount (an fd), so /proc/sys and /sys keep ro,nosuid,nodev,noexec.
    The same race with MS_UNBINDABLE never makes the /sys/firmware mask unbindable."""
    b = privileged(bundle_factory, daemon, race_script(RACE_TRIES))
    res = runtime_factory(rtname).run(b, new_id("race"), timeout=120)
    assert res.rc == 0, res.stderr
    races = re.findall(r"race ok=(\d+) eperm=(\d+) other=(\d+) first_errno=(\d+) swaps=(\d+)",
                       res.stdout)
    assert len(races) == 3, res.stdout
    for (ok, eperm, other, _, swaps), tries in zip(races, (RACE_TRIES, RACE_TRIES, 1000),
                                                   strict=True):
        assert int(ok) + int(eperm) + int(other) == tries
        # Both ways were taken: the race was really run. How often each lands depends on
        # the scheduler (one run of 1,000 unbindable tries landed on the harmless side
        # once), so at least one of each, and the swapper ran throughout.
        assert int(ok) > 0 and int(eperm) > 0 and int(swaps) > 1000, races
    points = ("/proc/sys", "/sys", "/proc", "/sys/firmware", "/proc/bus")
    before = _flags(_between(res.stdout, "BEFORE"), points)
    after = _flags(_between(res.stdout, "AFTER"), points)
    assert before == after, (before, after)
    assert "ro" in after["/proc/sys"]
    # The /sys/firmware mask never became unbindable (mountinfo's optional fields).
    firmware = [ln for ln in _between(res.stdout, "AFTER").splitlines()
                if ln.split()[4] == "/sys/firmware"]
    assert firmware and not any("unbindable" in ln.split(" - ")[0] for ln in firmware)
    assert {"ro", "nosuid", "nodev", "noexec"} <= after["/sys"]
    print(races)


def fuse_bundle(bundle_factory: Callable[..., Bundle], daemon: Daemon | None, script: str,
                workdir: Path) -> Bundle:
    """A bundle with /dev/fuse: a node of our own (char 10:229, owned by the container's
    root: the host's is root's, 0600) bound in, and the device cgroup allowing it."""
    b = privileged(bundle_factory, daemon, script)
    node = workdir / f"fuse-{b.id_base}"
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(10, 229))
    os.chown(node, b.id_base, b.id_base)
    b.config["mounts"].append({"destination": "/dev/fuse", "type": "bind",
                               "source": str(node), "options": ["bind"]})
    b.config["linux"].setdefault("resources", {})["devices"] = [
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}]
    b.write_config()
    return b


FUSE = "\n".join([
    "mkdir -p /mnt/fuse",
    steps("fuse", "policy_holes fuse /mnt/fuse"),
    # Not a /dev/fuse: refused with the reason (fd 0 is the container's stdin).
    call("notfuse", "sys mount s:x s:/mnt/fuse s:fuse 0 s:fd=0,rootmode=40000,user_id=0,"
                     "group_id=0"),
    call("nofd", "sys mount s:x s:/mnt/fuse s:fuse 0 s:rootmode=40000"),
])


def test_fuse_mount_inside_a_container_works(rt, bundle_factory, daemon, new_id, workdir):
    """A FUSE filesystem served by a process of the container: the daemon mounts it with
    the caller's /dev/fuse file (taken with pidfd_getfd, passed to its executor)."""
    out = run_script(rt, fuse_bundle(bundle_factory, daemon, FUSE, workdir), new_id("fuse"))
    assert out["fuse_open_dev"][0] >= 0
    assert out["fuse_mount"] == (0, 0)
    assert out["fuse_stat"] == (4242, 0)  # answered by the container's own server
    for k in ("fuse_sub_mount", "fuse_sub_remount", "fuse_sub_umount"):
        assert out[k] == (0, 0), (k, out)
    assert out["fuse_umount"] == (0, 0)
    assert out["notfuse"] == (-1, 22) and out["nofd"] == (-1, 22)
    log = daemon.log()
    assert "is not an open /dev/fuse" in log and "fuse mount needs exactly one fd=N" in log


MS_RDONLY, MS_NOSUID, MS_NOEXEC = 0x1, 0x2, 0x8
REMOUNTS = "\n".join([
    "mkdir -p /mnt/t && mount -t tmpfs -o size=1m t /mnt/t && mkdir /mnt/t/sub",
    call("ro", f"sys mount 0 s:/mnt/t 0 {MS_REMOUNT | MS_RDONLY | MS_NOSUID} s:size=2m"),
    "awk '$5 == \"/mnt/t\" {print \"MI_ro\", $6, $NF}' /proc/self/mountinfo",
    call("write_ro", "sh -c 'touch /mnt/t/x && echo ret=0 errno=0 || echo ret=-1 errno=30'"),
    call("rw", f"sys mount 0 s:/mnt/t 0 {MS_REMOUNT} 0"),
    "awk '$5 == \"/mnt/t\" {print \"MI_rw\", $6, $NF}' /proc/self/mountinfo",
    call("write_rw", "sh -c 'touch /mnt/t/x && echo ret=0 errno=0 || echo ret=-1 errno=30'"),
    call("relative", f"sh -c 'cd /mnt && sys mount 0 s:t 0 {MS_REMOUNT | MS_NOEXEC} 0'"),
    "awk '$5 == \"/mnt/t\" {print \"MI_rel\", $6, $NF}' /proc/self/mountinfo",
    call("not_root", f"sys mount 0 s:/mnt/t/sub 0 {MS_REMOUNT} 0"),
    call("bad_option", f"sys mount 0 s:/mnt/t 0 {MS_REMOUNT} s:nosuchoption"),
])


def test_plain_remount_by_fd_does_what_mount_does(rt, bundle_factory, daemon, new_id):
    """The fd-based plain remount gives the container what the kernel's own would: the
    same results and the same mount and superblock options as in an unvetted container."""
    outs = []
    for d in (daemon, None):
        res = rt.run(privileged(bundle_factory, d, REMOUNTS), new_id("rmt"), timeout=60)
        assert res.rc == 0, res.stderr
        # uid=/gid= show the bundle's own (host) id range: compare without them.
        outs.append((parse(res.stdout), sorted(re.sub(r",[ug]id=\d+", "", ln)
                                               for ln in res.stdout.splitlines()
                                               if ln.startswith("MI_"))))
    (vetted, vmi), (plain, pmi) = outs
    print(vetted, vmi)
    assert vetted == plain and vmi == pmi
    assert vetted["ro"] == (0, 0) and vetted["write_ro"] == (-1, 30)
    assert vetted["rw"] == (0, 0) and vetted["write_rw"] == (0, 0)
    assert vetted["relative"] == (0, 0)
    assert vetted["not_root"] == (-1, 22) and vetted["bad_option"] == (-1, 22)
    mi = dict(ln.split(" ", 1) for ln in vmi)
    assert mi["MI_ro"].startswith("ro,nosuid") and "size=2048k" in mi["MI_ro"]
    assert mi["MI_rw"].startswith("rw,") and "nosuid" not in mi["MI_rw"]
    assert "noexec" in mi["MI_rel"].split()[0]


OVERLAYS = "\n".join([
    "mkdir -p /tmp/l1 /tmp/l2 /tmp/u /tmp/w /tmp/e /mnt/ov /mnt/os /mnt/od /mnt/or /mnt/fo",
    "echo one > /tmp/l1/a; echo two > /tmp/l2/b",
    # An overlay layer shows its directory without the mounts beneath it.
    call("ovl_sys", "sys mount s:o s:/mnt/os s:overlay 0 s:lowerdir=/sys:/tmp/e"),
    f"cat /mnt/os/{FIRMWARE} >/dev/null 2>&1 && echo 'ovl_sys_read ret=1 errno=0' "
    "|| echo 'ovl_sys_read ret=0 errno=0'",
    call("ovl_devices", "sys mount s:o s:/mnt/od s:overlay 0 s:lowerdir=/tmp/e:/sys/devices"),
    call("ovl_copy", "sh -c 'mkdir -p /mnt/sc && mount --rbind /sys /mnt/sc && "
                     "sys mount s:o s:/mnt/od s:overlay 0 s:lowerdir=/mnt/sc:/tmp/e'"),
    # The container's own overlays work, with absolute and relative layers.
    call("ovl_rw", "sys mount s:o s:/mnt/ov s:overlay 0 "
                   "s:lowerdir=/tmp/l1:/tmp/l2,upperdir=/tmp/u,workdir=/tmp/w,userxattr"),
    "cat /mnt/ov/a /mnt/ov/b | tr '\\n' ' ' | sed 's/^/OV_read /'; echo",
    call("ovl_write", "sh -c 'echo three > /mnt/ov/c && test -f /tmp/u/c && "
                      "echo ret=0 errno=0 || echo ret=-1 errno=5'"),
    call("ovl_rel", "sh -c 'cd /tmp && sys mount s:o s:/mnt/or s:overlay 1 s:lowerdir=l2:l1'"),
    "grep -q ' /mnt/or ro,' /proc/self/mountinfo && echo 'ovl_rel_ro ret=1 errno=0' "
    "|| echo 'ovl_rel_ro ret=0 errno=0'",
    steps("ovl_fsopen", "policy_mntapi fsmount overlay /mnt/fo"),
])


def test_overlay_layers_are_checked_and_passed_by_fd(rt, bundle_factory, daemon, new_id):
    out = run_script(rt, privileged(bundle_factory, daemon, OVERLAYS), new_id("ovl"))
    raw = run_script(rt, privileged(bundle_factory, None, OVERLAYS), new_id("raw"))
    # Without the policy, /sys as a layer reads what the firmware mask hides.
    assert raw["ovl_sys"] == (0, 0) and raw["ovl_sys_read"] == (1, 0)
    assert out["ovl_sys"] == (-1, EPERM) and out["ovl_sys_read"] == (0, 0)
    assert out["ovl_devices"] == (-1, EPERM) and out["ovl_copy"] == (-1, EPERM)
    # fsopen("overlay") would take its layers from fsconfig, unseen: refused.
    assert out["ovl_fsopen_fsopen"] == (-1, EPERM)
    for k in ("ovl_rw", "ovl_write", "ovl_rel", "ovl_rel_ro"):
        assert out[k] == raw[k], (k, out, raw)
    assert out["ovl_rw"] == (0, 0) and out["ovl_write"] == (0, 0)
    assert out["ovl_rel"] == (0, 0) and out["ovl_rel_ro"] == (1, 0)
