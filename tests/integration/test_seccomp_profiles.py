"""The container's own seccomp profile through interceptd-runc, over real runc and crun:
kept unweakened (argument conditions included), composed with the daemon's notify and
deny rules; a config with its own listener refused; a config without a profile given
the daemon's default profile."""

# ruff: noqa: F811
from __future__ import annotations

import errno

import pytest

from tests.harness import seccompprofiles as profiles
from tests.harness.bundle import bounding_caps
from tests.integration.policy_support import parse, probe

# The `shim` fixture (interceptd-runc over runc and crun, with a daemon); the tests
# below take it as a parameter, which ruff reads as a redefinition.
from tests.integration.test_runtime_shim import (
    assert_nothing_left,
    plain_bundle,
    refused,
    shim,  # noqa: F401
)

pytestmark = pytest.mark.integration

CLONE_NEWUSER, CLONE_FS, CLONE_SIGHAND = 0x10000000, 0x200, 0x800
# Probes whose outcome only the profile decides, each paired so that the kernel fails
# the call cheaply when the filter lets it through (no child, no state change).
DOCKER_PROBES = {
    # personality: Docker allows 0, 8, 0x20000, 0x20008 and the query 0xffffffff.
    "pers_query": "sys personality 0xffffffff",
    "pers_other": "sys personality 0x0040000",  # ADDR_NO_RANDOMIZE: refused
    # clone: without CAP_SYS_ADMIN no namespace flag. NEWUSER|FS and SIGHAND without VM
    # are EINVAL in the kernel, so EPERM can only come from the filter.
    "clone_newuser": f"sys clone {CLONE_NEWUSER | CLONE_FS} 0 0 0 0",
    "clone_plain": f"sys clone {CLONE_SIGHAND} 0 0 0 0",
    "clone3": "sys clone3 0 0",  # ENOSYS by Docker's rule: libc falls back to clone
    "socket_unix": "sys socket 1 1 0",
    "unshare": "sys unshare 0x20000",  # CAP_SYS_ADMIN-gated: refused
    "mount": "sys mount s:none s:/mnt s:tmpfs 0 0",  # same
    "keyctl": "sys keyctl 0 -3 0",
    "kexec_load": "sys kexec_load 0 0 0 0",
    "seccomp_avail": "sys seccomp 2 0 b:4",  # SECCOMP_GET_ACTION_AVAIL: allowed
}
# What interceptd adds to Docker's profile: io_uring and AF_VSOCK (dockerd 20.10's
# profile allows both), AF_VSOCK with the register's upper half set too, a nested listener.
ADDED = {
    "io_uring_setup": "sys io_uring_setup 1 b:120",
    "vsock": "sys socket 40 1 0",
    "vsock_hi": "sys socket 0x100000028 1 0",
    "listener": "policy_misc listener",
}


def script(probes: dict[str, str]) -> str:
    # policy_misc is a multi-step helper: report its first failing step.
    return "\n".join(probe(k, v, last=v.startswith("policy_misc")) for k, v in probes.items())


def docker_bundle(bundle_factory, probes: dict[str, str], profile: dict):
    b = plain_bundle(bundle_factory, ["sh", "-c", script(probes)])
    b.config["linux"]["seccomp"] = profile
    b.write_config()
    return b


def test_docker_default_profile_unchanged_and_composed(shim, runtime_factory,
                                                       bundle_factory, new_id):
    """Each probe answers through the shim as under the plain runtime with the same
    profile; what interceptd adds is refused on top."""
    plain = runtime_factory(shim.name)
    b = docker_bundle(bundle_factory, DOCKER_PROBES, profiles.resolved())
    res = plain.run(b, new_id("mobyraw"), timeout=60)
    assert res.rc == 0, res.stderr
    want = parse(res.stdout)
    assert want.keys() == DOCKER_PROBES.keys(), res.stdout
    # The profile does refuse these (a control for the comparison below).
    for k in ("pers_other", "clone_newuser", "unshare", "mount", "keyctl"):
        assert want[k] == (-1, errno.EPERM), (k, want)
    assert want["clone3"] == (-1, errno.ENOSYS)
    assert want["clone_plain"] == (-1, errno.EINVAL) and want["pers_query"][0] >= 0
    assert want["socket_unix"][0] >= 0 and want["seccomp_avail"] == (0, 0)

    b2 = docker_bundle(bundle_factory, {**DOCKER_PROBES, **ADDED}, profiles.resolved())
    res = shim.run(b2, new_id("moby"), timeout=60)
    assert res.rc == 0, res.stderr
    got = parse(res.stdout)
    assert {k: got[k] for k in DOCKER_PROBES} == want, res.stdout
    assert got["io_uring_setup"] == (-1, errno.EPERM)
    assert got["vsock"] == got["vsock_hi"] == (-1, errno.EPERM)
    assert got["listener"] == (-1, errno.EINVAL)
    assert "syscall=mount" not in shim.daemon.log()  # refused by the profile, not vetted
    assert_nothing_left(shim)


CLONE_NEWPID = 0x20000000
# interceptd's argument-shapes profile (tests/harness/seccompprofiles.py): every answer as
# under the plain runtime, the allowed kcmp/process_vm_readv then vetted by the daemon.
# Each call the profile lets through fails cheaply in the kernel (bad flags, no such pid).
SHAPES_PROBES = {
    "pvr_a": f"sys process_vm_readv {profiles.PVR_PIDS[0]} 0 0 0 0 -1",  # OR: EINVAL
    "pvr_b": f"sys process_vm_readv {profiles.PVR_PIDS[1]} 0 0 0 0 -1",
    "pvr_hi": f"sys process_vm_readv {profiles.PVR_PIDS[0] | 1 << 32} 0 0 0 0 -1",
    "pvr_0": "sys process_vm_readv 0 0 0 0 0 -1",  # the default
    "pvw_eq": f"sys process_vm_writev {profiles.PVW_PIDS[0]} 0 0 0 0 -1",  # the rule's errno
    "pvw_ge": f"sys process_vm_writev {profiles.PVW_PIDS[1] + 7} 0 0 0 0 -1",
    "pvw_0": "sys process_vm_writev 0 0 0 0 0 -1",
    "kcmp_and": f"sys kcmp {profiles.KCMP_PID1} 1 {profiles.KCMP_TYPE} 0 0",  # AND: 0
    "kcmp_type": f"sys kcmp {profiles.KCMP_PID1} 1 0 0 0",
    "kcmp_pid": f"sys kcmp 2 1 {profiles.KCMP_TYPE} 0 0",
    "clone_plain": f"sys clone {CLONE_SIGHAND} 0 0 0 0",  # masked: EINVAL
    "clone_newpid": f"sys clone {CLONE_NEWPID | CLONE_SIGHAND} 0 0 0 0",
    "socket_stream": "sys socket 1 1 0",
    "socket_flags": "sys socket 1 0x80801 0",  # STREAM|NONBLOCK|CLOEXEC
    "socket_dgram": "sys socket 1 2 0",
}


@pytest.mark.parametrize("default_errno", [None, errno.ENXIO])
def test_argument_shapes_answer_as_plain_runtime(shim, runtime_factory, bundle_factory,
                                                 new_id, default_errno):
    """interceptd's argument-shapes profile; with defaultErrnoRet=ENXIO the default's
    errno is kept too, and the deny list's EPERM stays distinct from it."""
    prof = profiles.argument_shapes()
    if default_errno:
        prof["defaultErrnoRet"] = default_errno
    dflt = default_errno or errno.EPERM
    plain = runtime_factory(shim.name)
    res = plain.run(docker_bundle(bundle_factory, SHAPES_PROBES, prof),
                    new_id("shapesraw"), timeout=60)
    assert res.rc == 0, res.stderr
    want = parse(res.stdout)
    assert want.keys() == SHAPES_PROBES.keys(), res.stdout
    assert want["pvr_a"] == want["pvr_b"] == (-1, errno.EINVAL), want
    assert want["pvr_hi"] == want["pvr_0"] == (-1, dflt), want
    assert want["pvw_eq"] == want["pvw_ge"] == (-1, profiles.PVW_ERRNO), want
    assert want["pvw_0"] == (-1, dflt), want
    assert want["kcmp_and"] == (0, 0), want
    assert want["kcmp_type"] == want["kcmp_pid"] == (-1, dflt), want
    assert want["clone_plain"] == (-1, errno.EINVAL), want
    assert want["clone_newpid"] == (-1, dflt), want
    assert want["socket_stream"][0] >= 0 and want["socket_flags"][0] >= 0, want
    assert want["socket_dgram"] == (-1, dflt), want
    res = shim.run(docker_bundle(bundle_factory, {**SHAPES_PROBES, **ADDED}, prof),
                   new_id("shapes"), timeout=60)
    assert res.rc == 0, res.stderr
    got = parse(res.stdout)
    assert {k: got[k] for k in SHAPES_PROBES} == want, res.stdout
    # Outside the profile's allow list and in the deny list: the deny list's EPERM.
    assert got["io_uring_setup"] == (-1, errno.EPERM), res.stdout
    assert got["vsock"] == got["vsock_hi"] == (-1, errno.EPERM), res.stdout  # deny list
    assert got["listener"] == (-1, errno.EINVAL), res.stdout
    log = shim.daemon.log()
    assert "syscall=kcmp" in log and "syscall=process_vm_readv" in log
    assert_nothing_left(shim)


KCMP_VM, KCMP_FILE = 1, 0
# Docker's default profile (default deny) narrowed to allow kcmp only for KCMP_FILE and
# process_vm_readv only on pid 1 (the container's init).
CONDITIONAL = [
    {"names": ["kcmp"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 2, "value": KCMP_FILE, "op": "SCMP_CMP_EQ"}]},
    {"names": ["process_vm_readv"], "action": "SCMP_ACT_ALLOW",
     "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
]


def test_argument_conditions_kept(shim, bundle_factory, new_id):
    prof = profiles.resolved()
    only = {"kcmp", "process_vm_readv"}
    prof["syscalls"] = [dict(r, names=[n for n in r["names"] if n not in only])
                        for r in prof["syscalls"]] + CONDITIONAL
    probes = {
        "kcmp_vm": f"sys kcmp 1 1 {KCMP_VM} 0 0",  # the profile refuses this type
        "kcmp_file": f"sys kcmp 1 1 {KCMP_FILE} 0 0",  # allowed, then vetted
        "pvr_pid2": "sys process_vm_readv 2 0 0 0 0 0",  # the profile refuses pid 2
        "pvr_pid1": "sys process_vm_readv 1 0 0 0 0 0",  # allowed: 0 iovecs -> 0
    }
    b = docker_bundle(bundle_factory, probes, prof)
    res = shim.run(b, new_id("cond"), timeout=60)
    assert res.rc == 0, res.stderr
    got = parse(res.stdout)
    assert got["kcmp_vm"] == (-1, errno.EPERM), res.stdout
    assert got["pvr_pid2"] == (-1, errno.EPERM), res.stdout
    assert got["kcmp_file"] == (0, 0), res.stdout
    assert got["pvr_pid1"] == (0, 0), res.stdout
    # The allowed ones went through the daemon (vetted), the refused ones never did.
    log = shim.daemon.log()
    assert "syscall=kcmp" in log and "syscall=process_vm_readv" in log
    assert_nothing_left(shim)


def test_default_allow_profile_conditional_errno_kept(shim, bundle_factory, new_id):
    """A default-allow profile refusing a vetted call for some arguments: those still get
    the profile's errno from the filter, the others are vetted by the daemon."""
    caps = bounding_caps()
    probes = {
        "mount_tmpfs": "sys mount s:t s:/mnt s:tmpfs 0 0",  # vetted, performed
        "mount_remount": "sys mount s:t s:/mnt s:tmpfs 0x20 0",  # the profile: EACCES
        "kcmp_vm": f"sys kcmp 1 1 {KCMP_VM} 0 0",  # the profile: EACCES
        "kcmp_file": f"sys kcmp 1 1 {KCMP_FILE} 0 0",  # vetted, 0
    }
    b = plain_bundle(bundle_factory, ["sh", "-c", script(probes)])
    b.config["process"]["capabilities"] = {k: caps for k in ("bounding", "effective",
                                                             "permitted")}
    b.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
             "args": [{"index": 3, "value": 0x20, "valueTwo": 0x20,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["kcmp"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
             "args": [{"index": 2, "value": KCMP_VM, "op": "SCMP_CMP_EQ"}]},
        ]}
    b.write_config()
    res = shim.run(b, new_id("dallow"), timeout=60)
    assert res.rc == 0, res.stderr
    got = parse(res.stdout)
    assert got["mount_remount"] == (-1, errno.EACCES) and got["kcmp_vm"] == (-1, errno.EACCES)
    assert got["mount_tmpfs"] == (0, 0) and got["kcmp_file"] == (0, 0), res.stdout
    log = shim.daemon.log()
    assert "syscall=mount" in log and "syscall=kcmp" in log
    assert_nothing_left(shim)


@pytest.mark.parametrize("key", ["listenerPath", "listenerMetadata"])
def test_own_listener_refused(shim, bundle_factory, new_id, workdir, key):
    b = plain_bundle(bundle_factory, ["true"])
    b.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["sysfs"], "action": "SCMP_ACT_NOTIFY"}],
        key: str(workdir / "agent.sock") if key == "listenerPath" else "agent",
    }
    b.write_config()
    cid = new_id("ownlis")
    refused(shim, b, cid, "its own listener")
    assert cid not in shim.list()


# ---------------------------------------------------------------- default profile

NO_PROFILE_PROBES = {
    "io_uring_setup": "sys io_uring_setup 1 b:120",
    "io_uring_enter": "sys io_uring_enter -1 0 0 0 0 0",
    "io_uring_register": "sys io_uring_register -1 0 0 0",
    "uffd_kernel": "sys userfaultfd 0",
    "uffd_user_only": "sys userfaultfd 1",  # UFFD_USER_MODE_ONLY
    "vsock": "sys socket 40 1 0",  # AF_VSOCK
    "vsock_hi": "sys socket 0x100000028 1 0",  # the same int with the upper half set
    "unix_socket": "sys socket 1 1 0",
    "sysfs": "sys sysfs 3",  # outside the allow list
    "kexec_load": "sys kexec_load 0 0 0 0",
    # What system containers (runc, dockerd, systemd inside) need:
    "unshare": "sys unshare 0x20000",  # CLONE_NEWNS
    "mount_tmpfs": "sys mount s:t s:/mnt s:tmpfs 0 0",  # vetted, performed
    "pivot_root": "sys pivot_root s:/nonexistent s:/nonexistent",  # ENOENT, not filtered
    "clone_newuser": f"sys clone {CLONE_NEWUSER | CLONE_FS} 0 0 0 0",  # EINVAL: allowed
    "setns": "sys setns -1 0",  # EBADF: allowed
}


def test_no_profile_gets_default_profile(shim, bundle_factory, new_id):
    caps = bounding_caps()
    b = plain_bundle(bundle_factory, ["sh", "-c", script(NO_PROFILE_PROBES)
                                      + "; ls / >/dev/null && echo busybox ok"])
    b.config["process"]["capabilities"] = {k: caps for k in ("bounding", "effective",
                                                             "permitted")}
    b.write_config()
    assert "seccomp" not in b.config["linux"]
    res = shim.run(b, new_id("noprof"), timeout=60)
    assert res.rc == 0, res.stderr
    got = parse(res.stdout)
    assert "busybox ok" in res.stdout
    for k in ("io_uring_setup", "io_uring_enter", "io_uring_register", "uffd_kernel",
              "kexec_load", "vsock", "vsock_hi"):
        assert got[k] == (-1, errno.EPERM), (k, res.stdout)
    assert got["uffd_user_only"][0] >= 0 and got["unix_socket"][0] >= 0, res.stdout
    assert got["sysfs"] == (-1, errno.ENOSYS), res.stdout
    assert got["unshare"] == (0, 0) and got["mount_tmpfs"] == (0, 0), res.stdout
    assert got["pivot_root"] == (-1, errno.ENOENT), res.stdout
    assert got["clone_newuser"] == (-1, errno.EINVAL), res.stdout
    assert got["setns"] == (-1, errno.EBADF), res.stdout
    assert_nothing_left(shim)
