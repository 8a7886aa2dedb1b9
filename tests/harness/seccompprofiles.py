"""Seccomp profiles real configs carry, for tests.

Docker's default profile as dockerd hands it to runc: tests/data/moby-default-seccomp.json
is moby's profiles/seccomp/default.json (its 2023
content, archMap reduced to x86_64): rules carry `includes`/`excludes` on capabilities,
architectures and kernel versions, which dockerd resolves for each container before
writing config.json. `resolved(caps)` does the same for an x86_64 host.

`runc_test1()`: the argument-conditioned rules of runc's own seccomp test profile
(tests/integration/testdata/seccomp_syscall_test1.json: two comparisons on one argument
as an OR, two arguments as an AND, a conditional ERRNO in a default-deny profile, masked
compares) over Docker's allow set.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "moby-default-seccomp.json"
# Docker's default capability set (`docker run` without --cap-add).
DOCKER_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
               "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
               "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
ARCH = "amd64"


def raw() -> dict:
    return json.loads(DATA.read_text())


def _kernel_ok(min_kernel: str | None) -> bool:
    return True if not min_kernel else tuple(map(int, min_kernel.split("."))) <= (6, 0)


def resolved(caps: tuple[str, ...] | list[str] = DOCKER_CAPS) -> dict:
    """The OCI `linux.seccomp` dockerd writes for a container with these capabilities."""
    prof = raw()
    out = []
    for r in prof["syscalls"]:
        inc, exc = r.get("includes") or {}, r.get("excludes") or {}
        if inc.get("caps") and not all(c in caps for c in inc["caps"]):
            continue
        if inc.get("arches") and ARCH not in inc["arches"]:
            continue
        if not _kernel_ok(inc.get("minKernel")):
            continue
        if exc.get("caps") and any(c in caps for c in exc["caps"]):
            continue
        if exc.get("arches") and ARCH in exc["arches"]:
            continue
        out.append({k: v for k, v in r.items() if k not in ("includes", "excludes", "comment")})
    arches = [prof["archMap"][0]["architecture"], *prof["archMap"][0]["subArchitectures"]]
    return {"defaultAction": prof["defaultAction"], "defaultErrnoRet": prof["defaultErrnoRet"],
            "architectures": arches, "syscalls": out}


def runc_test1() -> dict:
    prof = resolved()
    prof.pop("defaultErrnoRet")
    own = {"dup3", "kcmp", "process_vm_readv", "process_vm_writev", "clone", "socket"}
    prof["syscalls"] = [dict(r, names=[n for n in r["names"] if n not in own])
                        for r in prof["syscalls"]]
    prof["syscalls"] = [r for r in prof["syscalls"] if r["names"]] + [
        {"action": "SCMP_ACT_ALLOW", "names": ["dup3"],
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
        {"action": "SCMP_ACT_ALLOW", "names": ["dup3"],
         "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_GT"}]},
        {"action": "SCMP_ACT_ALLOW", "names": ["kcmp"],
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                  {"index": 1, "value": 1337, "op": "SCMP_CMP_EQ"}]},
        {"action": "SCMP_ACT_ALLOW", "names": ["process_vm_readv"],
         "args": [{"index": 0, "value": 100, "op": "SCMP_CMP_EQ"},
                  {"index": 0, "value": 9001, "op": "SCMP_CMP_EQ"}]},
        {"action": "SCMP_ACT_ERRNO", "errnoRet": 55, "names": ["process_vm_writev"],
         "args": [{"index": 0, "value": 1337, "op": "SCMP_CMP_EQ"},
                  {"index": 0, "value": 2020, "op": "SCMP_CMP_EQ"}]},
        {"action": "SCMP_ACT_ALLOW", "names": ["clone"],
         "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"action": "SCMP_ACT_ALLOW", "names": ["socket"],
         "args": [{"index": 2, "value": 3840, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
    ]
    return prof
