"""Seccomp profiles real configs carry, for tests.

`resolved(caps)`: Docker's default profile exactly as the installed dockerd hands it to
its runtime for a container with these capabilities (dockerd resolves the profile's
per-capability, per-architecture and per-kernel parts itself for each container). It is
captured, not reproduced: a private dockerd (tests/harness/dockerd.py) runs busybox
through a capture runtime, a script that keeps each `create`'s config.json and then is
runc with the same arguments. The `linux.seccomp` of those configs is cached in
tests/.build/seccomp/, keyed by dockerd's version and the capability set, so a clean
build starts dockerd once (for every set in `CAPTURED` plus whatever was asked).

`argument_shapes()`: interceptd's own test profile for argument-conditioned rules over a
default-deny base (the allow list of interceptd's default profile): two comparisons on
one argument (runc and crun read them as an OR), two arguments ANDed, a conditional
ERRNO with its own errno, masked compares on flag words; on the calls the daemon vets
(process_vm_readv/writev, kcmp) and on calls it does not (clone, socket).
"""

from __future__ import annotations

import copy
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from interceptd.runtime import seccomp_default
from interceptd.runtime.seccomp import DEFAULT_ARCHES
from tests.harness import dockerd

CACHE = Path(__file__).resolve().parents[1] / ".build" / "seccomp"
# Docker's default capability set (`docker run` without --cap-add).
DOCKER_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
               "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
               "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
# docker.io 20.10 does not know CAP_PERFMON (`unknown capability`).
ADMIN_PTRACE = (*DOCKER_CAPS, "CAP_SYS_ADMIN", "CAP_SYS_PTRACE")
# The sets the tests ask for, captured together on a cache miss.
CAPTURED = (DOCKER_CAPS, ADMIN_PTRACE)

# Written into the capture directory; @OUT@ and @RUNC@ are filled in. containerd's shim
# calls `<runtime> [globals] create --bundle DIR [options] ID`.
CAPTURE_SCRIPT = """#!/bin/sh
bundle=. prev= id=
for a in "$@"; do
  case "$prev" in --bundle|-b) bundle=$a ;; esac
  case "$a" in --bundle=*) bundle=${a#--bundle=} ;; esac
  prev=$a id=$a
done
for a in "$@"; do
  if [ "$a" = create ]; then
    cp "$bundle/config.json" "@OUT@/$id.json.tmp" && mv "@OUT@/$id.json.tmp" "@OUT@/$id.json"
    break
  fi
done
exec @RUNC@ "$@"
"""

_memo: dict[tuple[str, ...], dict] = {}


def key(caps: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(caps)))


def _cache_dir() -> Path:
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", dockerd.version())
    return CACHE / slug


def cache_file(caps: tuple[str, ...]) -> Path:
    return _cache_dir() / (hashlib.sha256(",".join(caps).encode()).hexdigest()[:16] + ".json")


def _load(caps: tuple[str, ...]) -> dict | None:
    path = cache_file(caps)
    if not path.exists():
        return None
    entry = json.loads(path.read_text())
    assert tuple(entry["caps"]) == caps, (path, entry["caps"], caps)
    return entry["seccomp"]


@contextmanager
def _locked() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cap_flags(caps: tuple[str, ...]) -> list[str]:
    if caps == key(DOCKER_CAPS):
        return []  # Docker's own default, asked for as a user would
    return ["--cap-drop=ALL", *(f"--cap-add={c}" for c in caps)]


def capture(capsets: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], dict]:
    """Run a container per capability set on a private dockerd; {caps: linux.seccomp}."""
    runc = shutil.which("runc")
    assert dockerd.DOCKERD and dockerd.DOCKER and runc, "docker.io and runc are installed"
    top = Path(tempfile.mkdtemp(prefix="icd-sc-", dir="/tmp"))  # short: socket paths
    os.chmod(top, 0o711)
    out_dir = top / "configs"
    out_dir.mkdir()
    script = top / "capture-runc"
    script.write_text(CAPTURE_SCRIPT.replace("@OUT@", str(out_dir)).replace("@RUNC@", runc))
    script.chmod(0o755)
    d = dockerd.Dockerd(top)
    got: dict[tuple[str, ...], dict] = {}
    try:
        d.launch({"runtimes": {"capture": {"path": str(script)}}})
        d.import_busybox()
        for caps in capsets:
            cid = d.docker("create", "--network=none", "--runtime=capture", *_cap_flags(caps),
                           dockerd.IMAGE, "true").stdout.strip()
            try:
                d.docker("start", "-a", cid)
            finally:
                d.docker("rm", "-f", cid, check=False)
            config = json.loads((out_dir / f"{cid}.json").read_text())
            # The container really had this set: the profile was resolved for it.
            assert key(config["process"]["capabilities"]["bounding"]) == caps, config
            got[caps] = config["linux"]["seccomp"]
    except Exception as e:
        raise RuntimeError(f"capturing Docker's seccomp profile failed: {e}\n"
                           f"dockerd's log ends:\n{d.log()[-3000:]}") from e
    finally:
        d.stop()
        dockerd.unmount_under(str(top))
        shutil.rmtree(top, ignore_errors=True)
    return got


def resolved(caps: Iterable[str] = DOCKER_CAPS) -> dict:
    """The `linux.seccomp` the installed dockerd writes for a container with these
    capabilities (a fresh copy: callers may change it)."""
    want = key(caps)
    if want not in _memo:
        with _locked():
            prof = _load(want)
            if prof is None:
                wanted = [k for k in {key(c) for c in CAPTURED} | {want} if _load(k) is None]
                version = dockerd.version()
                for k, sc in capture(sorted(wanted)).items():
                    path = cache_file(k)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"dockerd": version, "caps": list(k),
                                               "seccomp": sc}, indent=1))
                    tmp.replace(path)
                prof = _load(want)
                assert prof is not None
        _memo[want] = prof
    return copy.deepcopy(_memo[want])


# argument_shapes(): the values are arbitrary; each probe in the tests picks a side.
PVR_PIDS = (64, 4000)  # process_vm_readv allowed for either pid (one argument, OR)
PVW_ERRNO = errno.ENOMSG  # process_vm_writev refused with this for pid 600 or pids >= 50000
PVW_PIDS = (600, 50000)
KCMP_PID1, KCMP_TYPE = 1, 3  # kcmp allowed only for pid1 == 1 AND type == KCMP_FS
CLONE_NS_MASK = 0x10000000 | 0x20000000 | 0x00020000  # NEWUSER|NEWPID|NEWNS: none may be set
SOCK_TYPE_MASK, SOCK_STREAM = 0xF, 1  # socket allowed for stream sockets, any flags/family


def argument_shapes() -> dict:
    """A default-deny profile (interceptd's default allow list, EPERM otherwise) whose
    rules for a few calls are argument-conditioned in the shapes real profiles use."""
    own = {"process_vm_readv", "process_vm_writev", "kcmp", "clone", "socket"}
    base = [n for n in seccomp_default.allowed_names() if n not in own]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": list(DEFAULT_ARCHES),
        "syscalls": [
            {"names": base, "action": "SCMP_ACT_ALLOW"},
            {"names": ["process_vm_readv"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": PVR_PIDS[0], "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": PVR_PIDS[1], "op": "SCMP_CMP_EQ"}]},
            {"names": ["process_vm_writev"], "action": "SCMP_ACT_ERRNO",
             "errnoRet": PVW_ERRNO,
             "args": [{"index": 0, "value": PVW_PIDS[0], "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": PVW_PIDS[1], "op": "SCMP_CMP_GE"}]},
            {"names": ["kcmp"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": KCMP_PID1, "op": "SCMP_CMP_EQ"},
                      {"index": 2, "value": KCMP_TYPE, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": CLONE_NS_MASK, "valueTwo": 0,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 1, "value": SOCK_TYPE_MASK, "valueTwo": SOCK_STREAM,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
        ],
    }
