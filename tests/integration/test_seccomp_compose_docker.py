"""Composition with Docker's default profile as the installed dockerd really hands it to
its runtime (captured once per clean build by tests/harness/seccompprofiles.py): every
syscall interceptd touches checked on many argument vectors against the profile's own
answer (tests/harness/seccompcheck.py). No kernel filter here; the same profiles through
runc and crun are in tests/integration/test_seccomp_profiles.py."""

from __future__ import annotations

import errno
import json

import pytest

from interceptd.runtime.seccomp import NOTIFY, Action, decide
from tests.harness import dockerd
from tests.harness import seccompprofiles as profiles
from tests.harness.seccompcheck import check

pytestmark = [pytest.mark.integration, pytest.mark.docker]

EPERM = Action("SCMP_ACT_ERRNO", errno.EPERM)
ALLOW = Action("SCMP_ACT_ALLOW")


def test_docker_default_profile():
    prof = profiles.resolved()
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO"
    out = check(prof)
    # Docker's argument conditions are untouched (personality, clone).
    pers = [r for r in out["syscalls"] if r["names"] == ["personality"]]
    assert pers == [r for r in prof["syscalls"] if r["names"] == ["personality"]]
    assert len(pers) == 5 and all(r["args"] for r in pers)
    clone = [r for r in out["syscalls"] if "clone" in r["names"]]
    assert clone == [r for r in prof["syscalls"] if "clone" in r["names"]]
    assert len(clone) == 1 and clone[0]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    assert decide(out, "mount", [0] * 6) == EPERM  # refused by the profile, not notified
    assert decide(out, "kcmp", [0] * 6) == EPERM  # CAP_SYS_PTRACE-gated
    # seccomp: allowed by the profile, the listener flag refused beside it.
    assert decide(out, "seccomp", [1, 8, 0, 0, 0, 0]) == Action("SCMP_ACT_ERRNO", 22)
    assert decide(out, "seccomp", [1, 0, 0, 0, 0, 0]) == ALLOW
    # What dockerd 20.10 lets through and interceptd's deny list takes out.
    for name, args in (("io_uring_setup", [1, 0]), ("socket", [40, 1, 0])):
        assert decide(prof, name, [*args, 0, 0, 0, 0][:6]) == ALLOW, name
        assert decide(out, name, [*args, 0, 0, 0, 0][:6]).denies, name
    assert decide(out, "socket", [1, 1, 0, 0, 0, 0]) == ALLOW


def test_docker_profile_with_admin_and_ptrace():
    """`--cap-add SYS_ADMIN --cap-add SYS_PTRACE`: dockerd's profile for that container
    allows the mount family and the ptrace family, which the daemon then vets."""
    prof = profiles.resolved(profiles.ADMIN_PTRACE)
    assert prof != profiles.resolved()
    out = check(prof)
    assert decide(prof, "mount", [0] * 6) == ALLOW
    assert decide(out, "mount", [0] * 6).name == NOTIFY
    assert decide(out, "kcmp", [0] * 6).name == NOTIFY
    assert decide(out, "perf_event_open", [0, 0xFFFFFFFF, 0, 0, 0, 0]).denies
    assert decide(out, "perf_event_open", [0, 7, 0, 0, 0, 0]) == ALLOW


def test_docker_profile_with_conditional_allows():
    """Docker's profile with kcmp and process_vm_readv allowed only for some arguments
    (default deny): the profile's refusals kept, the allowed region vetted."""
    prof = profiles.resolved()
    prof["syscalls"] = [dict(r, names=[n for n in r["names"] if n != "process_vm_readv"])
                        for r in prof["syscalls"]] + [
        {"names": ["kcmp"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 2, "value": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["process_vm_readv"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"names": ["process_vm_readv"], "action": "SCMP_ACT_LOG",
         "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
    ]
    out = check(prof)
    assert decide(out, "kcmp", [1, 1, 1, 0, 0, 0]) == EPERM
    assert decide(out, "kcmp", [1, 1, 0, 0, 0, 0]).name == NOTIFY
    assert decide(out, "process_vm_readv", [3, 0, 0, 0, 0, 0]).denies
    kcmp = [r for r in out["syscalls"] if "kcmp" in r["names"]]
    assert kcmp == [{"names": ["kcmp"], "action": NOTIFY,
                     "args": [{"index": 2, "value": 0, "op": "SCMP_CMP_EQ"}]}]


def test_capture_cached_per_version_and_caps():
    """The suite starts dockerd once per clean build: one file per capability set, under
    the installed dockerd's version."""
    for caps in profiles.CAPTURED:
        prof = profiles.resolved(caps)
        entry = json.loads(profiles.cache_file(profiles.key(caps)).read_text())
        assert entry["dockerd"] == dockerd.version()
        assert entry["caps"] == sorted(caps) and entry["seccomp"] == prof
