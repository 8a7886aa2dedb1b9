"""Caller-relative paths (/proc/self/fd/N, /proc/thread-self, /proc/<pid>/fd/N, cwd) from
inside real containers: the daemon acts on the caller's own object, and the object behind
such a path is vetted exactly as its plain path is (masks and /proc stay)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Daemon, Runtime
from tests.integration.policy_support import EBUSY, EPERM, privileged, probe, run_script

pytestmark = pytest.mark.integration

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT_BIND = 0x20 | 0x1000
MS_BIND, MS_MOVE, MNT_DETACH = 0x1000, 0x2000, 0x2


@pytest.fixture(params=["runc", "crun"])
def rt(request: pytest.FixtureRequest, runtime_factory: Callable[[str], Runtime]) -> Runtime:
    return runtime_factory(request.param)


def mounted(label: str, path: str) -> str:
    """`label ret=0` when a mount sits at `path`, ret=-1 when none does."""
    return (f"if grep -q ' {path} ' /proc/self/mountinfo; then echo '{label} ret=0 errno=0'; "
            f"else echo '{label} ret=-1 errno=0'; fi")


OWN = "\n".join([
    "mkdir -p /mnt/a /mnt/b /mnt/c /mnt/p /mnt/d /mnt/e",
    # runc's and crun's shape: an fd opened beneath the rootfs, the mount onto its /proc path
    probe("tmpfs_fd", "sh -c 'exec 6</mnt/a; sys mount s:t s:/proc/self/fd/6 s:tmpfs 0 0'"),
    # the new filesystem's root is the container root's, as with a plain mount(2)
    probe("tmpfs_fd_owner", "sh -c 'echo ret=$(stat -c %u /mnt/a) errno=0'"),
    probe("ramfs_fd_write", "sh -c 'mkdir -p /mnt/r && exec 3</mnt/r && "
                            "sys mount s:ramfs s:/proc/self/fd/3 s:ramfs 14 s:mode=0700 "
                            ">/dev/null && echo x > /mnt/r/f && echo ret=0 errno=0'"),
    mounted("tmpfs_fd_is", "/mnt/a"),
    probe("thread_self", "sh -c 'exec 5</mnt/e; "
                         "sys mount s:t s:/proc/thread-self/fd/5 s:tmpfs 0 0'"),
    probe("pid_fd", "sh -c 'exec 7</mnt/d; exec sys mount s:t s:/proc/$$/fd/7 s:tmpfs 0 0'"),
    mounted("pid_fd_is", "/mnt/d"),
    probe("cwd", "sh -c 'cd /mnt/c && sys mount s:t s:/proc/self/cwd s:tmpfs 0 0'"),
    mounted("cwd_is", "/mnt/c"),
    probe("proc_fd", "sh -c 'exec 6</mnt/p; sys mount s:proc s:/proc/self/fd/6 s:proc 0 0'"),
    "if [ -c /mnt/p/timer_list ]; then echo 'proc_fd_masked ret=1 errno=0'; "
    "else echo 'proc_fd_masked ret=0 errno=0'; fi",
    probe("bind_fd", f"sh -c 'exec 6</etc; exec 7</mnt/b; "
                     f"sys mount s:/proc/self/fd/6 s:/proc/self/fd/7 0 {MS_BIND} 0'"),
    probe("bind_fd_sees", "sh -c 'test -e /mnt/b/passwd && echo ret=0 errno=0'"),
    probe("remount_ro_fd", f"sh -c 'exec 6</mnt/a; "
                           f"sys mount 0 s:/proc/self/fd/6 0 {MS_REMOUNT_BIND | MS_RDONLY} 0'"),
    probe("write_ro", "sh -c 'echo x > /mnt/a/f && echo ret=0 errno=0 || echo ret=-1 errno=30'"),
    probe("umount_fd", "sh -c 'exec 6</mnt/c; sys umount2 s:/proc/self/fd/6 2'"),
    probe("missing_fd", "sys mount s:t s:/proc/self/fd/99 s:tmpfs 0 0"),
])


def test_own_fd_targets(rt, bundle_factory, daemon: Daemon, new_id):
    out = run_script(rt, privileged(bundle_factory, daemon, OWN), new_id("cpath"))
    for k in ("tmpfs_fd", "tmpfs_fd_owner", "ramfs_fd_write", "tmpfs_fd_is",
              "thread_self", "pid_fd", "pid_fd_is", "cwd", "cwd_is", "proc_fd", "bind_fd",
              "bind_fd_sees", "remount_ro_fd", "umount_fd"):
        assert out[k] == (0, 0), (k, out)
    assert out["proc_fd_masked"] == (1, 0)  # the new procfs got its masks
    assert out["write_ro"] == (-1, 30)
    assert out["missing_fd"] == (-1, 2)


MASKS = "\n".join([
    "touch /tmp/k",
    # /proc/self/fd/N pointing at a mask, a read-only path, /proc itself
    probe("umount_mask_fd", f"sh -c 'exec 6</proc/timer_list; "
                            f"sys umount2 s:/proc/self/fd/6 {MNT_DETACH}'"),
    "grep -q ' /proc/timer_list ' /proc/self/mountinfo || mount --bind /dev/null /proc/timer_list",
    probe("move_mask_fd", f"sh -c 'exec 6</proc/timer_list; "
                          f"sys mount s:/proc/self/fd/6 s:/tmp/k 0 {MS_MOVE} 0'"),
    "grep -q ' /proc/timer_list ' /proc/self/mountinfo || mount --bind /dev/null /proc/timer_list",
    probe("rw_ro_path_fd", f"sh -c 'exec 6</proc/sys; "
                           f"sys mount 0 s:/proc/self/fd/6 0 {MS_REMOUNT_BIND} 0'"),
    probe("umount_sys_mask_fd", f"sh -c 'exec 6</sys/firmware; "
                                f"sys umount2 s:/proc/self/fd/6 {MNT_DETACH}'"),
    # a plain bind of /proc through its fd is made recursive: the masks come along
    "mkdir -p /mnt/p",
    probe("bind_proc_fd", f"sh -c 'exec 6</proc; exec 7</mnt/p; "
                          f"sys mount s:/proc/self/fd/6 s:/proc/self/fd/7 0 {MS_BIND} 0'"),
    "if [ -c /mnt/p/timer_list ]; then echo 'bind_proc_masked ret=1 errno=0'; "
    "else echo 'bind_proc_masked ret=0 errno=0'; fi",
    probe("move_api_mask_fd", "sh -c 'exec 6</proc/timer_list; "
                              "policy_mntapi move /proc/self/fd/6 /tmp/k'", last=True),
    # last: unvetted, it takes /proc (and every /proc/self path) away
    probe("umount_proc_fd", f"sh -c 'exec 6</proc; sys umount2 s:/proc/self/fd/6 {MNT_DETACH}'"),
])


def test_own_fd_pointing_at_masks_is_refused(rt, bundle_factory, daemon: Daemon, new_id):
    vetted = run_script(rt, privileged(bundle_factory, daemon, MASKS), new_id("cpm"))
    plain = run_script(rt, privileged(bundle_factory, None, MASKS), new_id("cpr"))
    assert vetted["move_api_mask_fd"] == (-1, EPERM), vetted
    for k in ("umount_mask_fd", "move_mask_fd", "rw_ro_path_fd", "umount_sys_mask_fd"):
        assert vetted[k] == (-1, EPERM), (k, vetted)
        assert plain[k] == (0, 0), (k, plain)  # without the policy it would work
    assert vetted["umount_proc_fd"] == (-1, EBUSY) and plain["umount_proc_fd"] == (0, 0)
    assert vetted["bind_proc_fd"] == (0, 0)
    assert vetted["bind_proc_masked"] == (1, 0)


SYSCTL = "\n".join([
    "mkdir -p /mnt/p",
    "unshare -n sh -c 'mount -t proc proc /mnt/p && "
    "echo 0 > /mnt/p/sys/net/ipv4/ip_unprivileged_port_start && "
    "echo \"net_rw ret=$(cat /mnt/p/sys/net/ipv4/ip_unprivileged_port_start) errno=0\"; "
    # a host-wide knob: the fresh procfs's /sys is read-only but for the namespace's
    # own net/* and the served values (kernel/domainname is the UTS namespace's own)
    "e=$( { echo 77 > /mnt/p/sys/vm/swappiness; } 2>&1 ) && echo \"kernel_rw ret=0 errno=0\" "
    "|| case \"$e\" in *Read-only*) echo \"kernel_rw ret=-1 errno=30\";; "
    "*) echo \"kernel_rw ret=-1 errno=0\";; esac'",
])


def test_nested_proc_net_sysctls_writable_rest_read_only(rt, bundle_factory, daemon, new_id):
    """A procfs the daemon mounts for a container with its own network namespace: the
    network sysctls are the container's to set (nested runtimes do), host-wide ones are not."""
    swappiness = Path("/proc/sys/vm/swappiness").read_text()
    out = run_script(rt, privileged(bundle_factory, daemon, SYSCTL), new_id("sysctl"))
    assert out["net_rw"] == (0, 0), out
    assert out["kernel_rw"] == (-1, 30), out
    assert Path("/proc/sys/vm/swappiness").read_text() == swappiness


# Another process's objects through the caller's /proc, and the caller's own binary.
OTHERS = "\n".join([
    "mkdir -p /mnt/o /mnt/q /mnt/k /mnt/t1 && touch /tmp/e /tmp/e2",
    "(exec 7</mnt/k; exec 8</mnt/o; exec 9</mnt/q; exec sleep 60) & bg=$!; sleep 0.5",
    probe("other_fd", "sys mount s:t s:/proc/$bg/fd/8 s:tmpfs 0 0"),
    mounted("other_fd_is", "/mnt/o"),
    # runc binds /proc/self/exe (its own binary) before it re-executes itself
    probe("self_exe", f"sys mount s:/proc/self/exe s:/tmp/e 0 {MS_BIND} 0"),
    probe("self_exe_is", "sh -c 'cmp -s /tmp/e /bin/sys && echo ret=0 errno=0'"),
    probe("other_exe", f"sys mount s:/proc/$bg/exe s:/tmp/e2 0 {MS_BIND} 0"),
    probe("other_exe_is", "sh -c 'cmp -s /tmp/e2 /bin/busybox && echo ret=0 errno=0'"),
    probe("missing_pid", "sys mount s:t s:/proc/999999/fd/1 s:tmpfs 0 0"),
    # a thread's fd table through task/<tid>: another process's, the caller's own
    probe("other_task_fd", "sys mount s:t s:/proc/$bg/task/$bg/fd/7 s:tmpfs 0 0"),
    mounted("other_task_fd_is", "/mnt/k"),
    probe("self_task_fd", "sh -c 'exec 6</mnt/t1; "
                          "exec sys mount s:t s:/proc/self/task/$$/fd/6 s:tmpfs 0 0'"),
    mounted("self_task_fd_is", "/mnt/t1"),
    # a caller in a nested pid namespace whose /proc is still the container's: $bg is
    # outside its namespace, so it may not reach its fds through that /proc
    probe("outside_pidns", "unshare -p -f sys mount s:t s:/proc/$bg/fd/9 s:tmpfs 0 0"),
    mounted("outside_is", "/mnt/q"),
    "kill $bg",
])


def test_other_process_paths(rt, bundle_factory, daemon: Daemon, new_id):
    out = run_script(rt, privileged(bundle_factory, daemon, OTHERS), new_id("cpother"))
    for k in ("other_fd", "other_fd_is", "self_exe", "self_exe_is", "other_exe",
              "other_exe_is", "other_task_fd", "other_task_fd_is", "self_task_fd",
              "self_task_fd_is"):
        assert out[k] == (0, 0), (k, out)
    assert out["missing_pid"] == (-1, 2)
    assert out["outside_pidns"] == (-1, 13), out
    assert out["outside_is"] == (-1, 0)
    assert "outside the caller's pid or user namespace" in daemon.log()
