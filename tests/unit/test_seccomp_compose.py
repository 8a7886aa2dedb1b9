"""Composition of a container's seccomp profile with interceptd's rules (no kernel).

The real runtimes are in tests/integration/test_seccomp_profiles.py, Docker's own
(captured) profiles in tests/integration/test_seccomp_compose_docker.py; here every
touched syscall is checked on many argument vectors against what the profile decided
(tests/harness/seccompcheck.py), and the libseccomp behaviour the composer relies on is
pinned on the host's libseccomp."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import sys
import tempfile

import pytest

from interceptd import policy
from interceptd.config import Config
from interceptd.runtime import policylink, seccomp_default
from interceptd.runtime.seccomp import (
    ALWAYS,
    NOTIFY,
    Action,
    Cmp,
    compose,
    decide,
    dnf_holds,
    dnf_not,
)
from interceptd.runtime.spec import Refused
from tests.harness import seccompprofiles as profiles
from tests.harness.seccompcheck import DENY_RULES, NOTIFY_RULES, U64, check, touched

# ---------------------------------------------------------------- libseccomp facts

def _libseccomp():
    path = ctypes.util.find_library("seccomp")
    if not path:
        pytest.skip("libseccomp is not installed (the runtimes link it)")
    lib = ctypes.CDLL(path, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_export_pfc.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    return lib


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


ALLOW, SC_NOTIFY, SC_EQ = 0x7FFF0000, 0x7FC00000, 4


def _errno_act(e: int) -> int:
    return 0x00050000 | e


def _pfc(lib, default: int, rules: list[tuple[int, int | None]]) -> tuple[list[int], str]:
    """Add kcmp rules (action, arg0 == value or None for unconditional); the return
    codes and libseccomp's pseudo-code of the filter."""
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_Cmp)]
    ctx = lib.seccomp_init(default)
    nr = lib.seccomp_syscall_resolve_name(b"kcmp")
    rcs = []
    for act, val in rules:
        arr = (_Cmp * 1)(_Cmp(0, SC_EQ, val or 0, 0))
        rcs.append(lib.seccomp_rule_add_array(ctx, act, nr, 0 if val is None else 1, arr))
    with tempfile.TemporaryFile() as f:
        lib.seccomp_export_pfc(ctx, f.fileno())
        f.seek(0)
        text = f.read().decode()
    lib.seccomp_release(ctx)
    at = text.find('"kcmp"')
    return rcs, (text[at:].split("# default action")[0] if at >= 0 else "")


def test_libseccomp_unconditional_rule_overrides_conditional_ones():
    """Why compose() never writes an unconditional rule beside conditional ones."""
    lib = _libseccomp()
    for order in ([(SC_NOTIFY, None), (_errno_act(1), 5)],
                  [(_errno_act(1), 5), (SC_NOTIFY, None)]):
        rcs, kcmp = _pfc(lib, ALLOW, order)
        assert rcs == [0, 0]
        assert "a0" not in kcmp and "0x7fc00000" in kcmp, kcmp  # the ERRNO rule is gone


def test_libseccomp_same_conditions_other_action_fails():
    lib = _libseccomp()
    rcs, _ = _pfc(lib, _errno_act(1), [(ALLOW, 5), (SC_NOTIFY, 5)])
    assert rcs == [0, -errno.EEXIST]
    rcs, _ = _pfc(lib, ALLOW, [(ALLOW, None)])
    assert rcs == [-errno.EACCES]  # a rule with the default's action is refused


# ---------------------------------------------------------------- condition algebra

@pytest.mark.parametrize("cmp", [
    Cmp(0, "SCMP_CMP_EQ", 5), Cmp(0, "SCMP_CMP_NE", 5), Cmp(0, "SCMP_CMP_LT", 5),
    Cmp(0, "SCMP_CMP_LE", 5), Cmp(0, "SCMP_CMP_GT", 5), Cmp(0, "SCMP_CMP_GE", 5),
    Cmp(0, "SCMP_CMP_MASKED_EQ", 0x7E020000, 0), Cmp(0, "SCMP_CMP_MASKED_EQ", 0xFFFFFFFF, 40),
    Cmp(0, "SCMP_CMP_MASKED_EQ", 1, 3),
])
def test_complement_is_exact(cmp):
    conj = {0: cmp, 2: Cmp(2, "SCMP_CMP_MASKED_EQ", 0x8000, 0x8000)}
    neg = dnf_not([conj], limit=1000)
    vals = [0, 1, 4, 5, 6, 40, 41, 0x28 | 1 << 33, 0x10000000, 0x7E020000, 0xFFFFFFFF, U64]
    for a0, a2 in itertools.product(vals, [0, 0x8000, 0x18000]):
        args = [a0, 0, a2, 0, 0, 0]
        assert dnf_holds(neg, args) != dnf_holds([conj], args), (cmp, a0, a2)
    assert dnf_not([]) == ALWAYS and dnf_not(ALWAYS) == []


# ---------------------------------------------------------------- profiles

def test_default_allow_profile_with_conditional_denies():
    prof = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["kcmp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
         "args": [{"index": 2, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
         "args": [{"index": 3, "value": 0x20, "valueTwo": 0x20, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["ptrace"], "action": "SCMP_ACT_KILL",
         "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]},
        {"names": ["userfaultfd"], "action": "SCMP_ACT_ALLOW"},
    ]}
    out = check(prof)
    assert decide(out, "kcmp", [1, 1, 1, 0, 0, 0]) == Action("SCMP_ACT_ERRNO", 13)
    assert decide(out, "kcmp", [1, 1, 0, 0, 0, 0]).name == NOTIFY
    assert decide(out, "mount", [0, 0, 0, 0x21, 0, 0]) == Action("SCMP_ACT_ERRNO", 13)
    assert decide(out, "mount", [0, 0, 0, 0x1, 0, 0]).name == NOTIFY
    assert decide(out, "ptrace", [16, 0, 0, 0, 0, 0]) == Action("SCMP_ACT_KILL")
    assert decide(out, "userfaultfd", [0] * 6).denies
    assert decide(out, "userfaultfd", [1, 0, 0, 0, 0, 0]) == Action("SCMP_ACT_ALLOW")


def test_argument_shapes_profile():
    """interceptd's own argument-shapes profile (default deny): an OR on one argument, an
    AND on two, a conditional ERRNO, masked compares; on vetted calls and others."""
    out = check(profiles.argument_shapes())
    eperm = Action("SCMP_ACT_ERRNO", errno.EPERM)
    for pid in profiles.PVR_PIDS:
        assert decide(out, "process_vm_readv", [pid, 0, 0, 0, 0, 0]).name == NOTIFY
    assert decide(out, "process_vm_readv", [0] * 6) == eperm
    assert decide(out, "process_vm_readv", [profiles.PVR_PIDS[0] | 1 << 32, 0, 0, 0, 0, 0]
                  ) == eperm
    pvw = Action("SCMP_ACT_ERRNO", profiles.PVW_ERRNO)
    assert decide(out, "process_vm_writev", [profiles.PVW_PIDS[0], 0, 0, 0, 0, 0]) == pvw
    assert decide(out, "process_vm_writev", [profiles.PVW_PIDS[1] + 9, 0, 0, 0, 0, 0]) == pvw
    assert decide(out, "process_vm_writev", [601, 0, 0, 0, 0, 0]) == eperm
    kcmp = [profiles.KCMP_PID1, 5, profiles.KCMP_TYPE, 0, 0, 0]
    assert decide(out, "kcmp", kcmp).name == NOTIFY
    assert decide(out, "kcmp", [*kcmp[:2], 0, 0, 0, 0]) == eperm  # one side of the AND
    assert decide(out, "kcmp", [2, *kcmp[1:]]) == eperm
    assert decide(out, "clone", [0x11, 0, 0, 0, 0, 0]) == Action("SCMP_ACT_ALLOW")
    assert decide(out, "clone", [0x11 | 0x20000000, 0, 0, 0, 0, 0]) == eperm
    assert decide(out, "socket", [1, 0x80001, 0, 0, 0, 0]) == Action("SCMP_ACT_ALLOW")
    assert decide(out, "socket", [1, 2, 0, 0, 0, 0]) == eperm
    # AF_VSOCK stream: allowed by the profile, refused by the deny list.
    assert decide(out, "socket", [40, 1, 0, 0, 0, 0]).denies
    # Composed rules keep one comparison per argument (what runc and crun both express).
    assert not any(len({a["index"] for a in r.get("args", [])}) != len(r.get("args", []))
                   for r in out["syscalls"] if set(r["names"]) & touched())


def test_profile_denying_a_notified_call_keeps_its_action():
    prof = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mount", "umount2"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}]}
    out = check(prof)
    assert [r for r in out["syscalls"] if "mount" in r["names"]] == [
        {"names": ["mount"], "action": "SCMP_ACT_KILL_PROCESS"}]


def test_narrowed_notify_in_default_allow_profile():
    out = check({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []})
    ptrace = [r for r in out["syscalls"] if "ptrace" in r["names"]]
    assert len(ptrace) == 5 and all(r["action"] == NOTIFY for r in ptrace)
    assert decide(out, "ptrace", [2, 0, 0, 0, 0, 0]) == Action("SCMP_ACT_ALLOW")


def test_default_profile():
    prof = seccomp_default.profile()
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO"
    assert prof["defaultErrnoRet"] == errno.ENOSYS
    out = check(prof)
    allowed = set(seccomp_default.allowed_names())
    # What runtimes, dockerd and systemd inside need.
    for n in ("mount", "umount2", "unshare", "setns", "clone", "clone3", "pivot_root",
              "chroot", "keyctl", "add_key", "fsopen", "move_mount", "open_tree", "reboot",
              "sethostname", "seccomp", "prctl", "capset"):
        assert n in allowed, n
    for n in ("io_uring_setup", "io_uring_enter", "io_uring_register", "umount", "sysfs"):
        assert n not in allowed, n
    assert decide(out, "io_uring_setup", [0] * 6) == Action("SCMP_ACT_ERRNO", 1)
    assert decide(out, "umount", [0] * 6) == Action("SCMP_ACT_ERRNO", 1)
    assert decide(out, "sysfs", [0] * 6) == Action("SCMP_ACT_ERRNO", errno.ENOSYS)
    assert decide(out, "userfaultfd", [0] * 6) == Action("SCMP_ACT_ERRNO", 1)
    assert decide(out, "userfaultfd", [1 | 1 << 40, 0, 0, 0, 0, 0]) == Action("SCMP_ACT_ALLOW")
    assert decide(out, "keyctl", [0] * 6) == Action("SCMP_ACT_ALLOW")  # keyring: default
    assert decide(out, "request_key", [0] * 6).denies
    assert decide(out, "socket", [40, 1, 0, 0, 0, 0]).denies
    assert decide(out, "socket", [40 | 1 << 32, 1, 0, 0, 0, 0]).denies
    assert decide(out, "socket", [1, 1, 0, 0, 0, 0]) == Action("SCMP_ACT_ALLOW")
    cfg = Config(sections={"policy": {"keyring": False}})
    out = check(prof, policy.notify_rules(cfg), policy.denied_syscalls(cfg))
    assert decide(out, "keyctl", [0] * 6) == Action("SCMP_ACT_ERRNO", 1)
    assert decide(out, "request_key", [0] * 6).denies


def test_every_default_name_is_a_syscall():
    from interceptd.syscalls import NUMBERS

    i386_only = {"chown32", "fchown32", "fcntl64", "fstat64", "fstatat64", "fstatfs64",
                 "ftruncate64", "getegid32", "geteuid32", "getgid32", "getgroups32",
                 "getresgid32", "getresuid32", "getuid32", "lchown32", "_llseek", "lstat64",
                 "mmap2", "_newselect", "recv", "send", "setfsgid32", "setfsuid32",
                 "setgid32", "setgroups32", "setregid32", "setresgid32", "setresuid32",
                 "setreuid32", "setuid32", "sigprocmask", "sigreturn", "socketcall", "stat64",
                 "statfs64", "truncate64", "ugetrlimit", "waitpid", "ipc", "stime",
                 "sendfile64", "fadvise64_64", "epoll_ctl_old", "epoll_wait_old"}
    unknown = [n for n in seccomp_default.allowed_names()
               if n not in NUMBERS and n not in i386_only and not n.endswith("time64")
               and n not in ("clock_adjtime64", "clock_settime64", "futex_time64")]
    assert unknown == []


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("extra", [{"listenerPath": "/run/agent.sock"},
                                   {"listenerMetadata": "x"}])
def test_own_listener_refused(extra):
    prof = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [], **extra}
    with pytest.raises(Refused, match="one seccomp listener per filter chain"):
        compose(prof, NOTIFY_RULES, DENY_RULES, "/l", "m")


def test_notify_rules_in_profile_refused():
    prof = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["sysfs"], "action": "SCMP_ACT_NOTIFY"}]}
    with pytest.raises(Refused, match="SCMP_ACT_NOTIFY rules for sysfs"):
        compose(prof, NOTIFY_RULES, DENY_RULES, "/l", "m")


def test_inexpressible_profile_refused_not_weakened():
    # A default-allow profile refusing mount on two unmergeable ranges of one argument:
    # the NOTIFY region would need "a3 >= 8 and a3 <= 3 ..." per rule: refused.
    prof = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 3, "value": 4, "op": "SCMP_CMP_LT"}]},
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 3, "value": 8, "op": "SCMP_CMP_GT"}]}]}
    with pytest.raises(Refused, match="cannot be combined"):
        compose(prof, NOTIFY_RULES, DENY_RULES, "/l", "m")


def test_input_profile_not_changed():
    prof = profiles.argument_shapes()
    before = repr(prof)
    compose(prof, NOTIFY_RULES, DENY_RULES, "/l", "m")
    assert repr(prof) == before


# ---------------------------------------------------------------- policylink

def test_policylink_prefers_daemon_rules_and_has_no_fallback(monkeypatch):
    status = {"runtime_policy": {"notify": NOTIFY_RULES, "notified": ["x"],
                                 "denied": DENY_RULES}}
    notify, denied, src = policylink.syscalls({}, None, status)
    assert src == "daemon" and notify == NOTIFY_RULES and denied == DENY_RULES
    notify, denied, src = policylink.syscalls({}, None, None)
    assert src == "policy" and notify == NOTIFY_RULES and denied == DENY_RULES
    monkeypatch.setitem(sys.modules, "interceptd.policy", None)
    monkeypatch.delattr(sys.modules["interceptd"], "policy", raising=False)
    with pytest.raises(Refused, match="cannot be imported"):
        policylink.syscalls({}, "/etc/interceptd/config.toml", None)
    assert not hasattr(policylink, "FALLBACK_DENIED")

