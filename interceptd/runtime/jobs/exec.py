"""exec: caps the host cannot grant are dropped from --cap and --process, and the
runtime joins the container's time namespace (timens.py) before it runs.

The exec'd process needs nothing else: runc and crun apply the container's
seccomp filter and send its notify fd to the listener themselves, and join its
other namespaces.
"""

from __future__ import annotations

import json
import os

from .. import argv as argvmod
from .. import settings as settingsmod
from ..bundle import write_atomic
from ..errors import Fail
from ..hostfacts import HostFacts


class Exec:
    def __init__(self, inv: argvmod.Invocation, st: settingsmod.Settings,
                 cwd: str | None = None, in_place: bool = False) -> None:
        self.inv = inv
        self.st = st
        self.cwd = cwd or os.getcwd()
        # in_place: rewrite the --process file itself (atomically), for a caller in
        # another process (the prepare service); otherwise hand a memfd over.
        self.in_place = in_place
        # The container init's time namespace, which the runtime joins (timens.py).
        self.timens: str | None = None

    def prepare(self) -> list[str]:
        from .. import spec as sp
        from .. import timens

        self.timens = timens.for_command(self.st, self.inv.global_value("root"),
                                         self.inv.container_id)

        bounding = HostFacts.bounding_set()
        flags: list[argvmod.Flag] = []
        for f in self.inv.flags:
            if f.name in ("cap", "c") and f.value is not None and \
                    not sp.clamp_cap_list([f.value], bounding):
                continue  # a capability the host cannot grant: runc would fail on it
            if f.name in ("process", "p") and f.value is not None:
                path = os.path.join(self.cwd, f.value)
                new = rewrite_process(path, bounding, self.in_place)
                if new != path:
                    f = argvmod.with_value(f, new)
            flags.append(f)
        return argvmod.rebuild(self.inv, flags)

    def finish(self, rc: int) -> int:
        return rc


def rewrite_process(path: str, bounding: set[str], in_place: bool = False) -> str:
    """The process spec with clamped caps: in place, or in a memfd read via /proc."""
    from .. import spec as sp

    try:
        with open(path, "rb") as f:
            proc = json.loads(f.read())
    except FileNotFoundError:
        return path  # the runtime reports it
    except (OSError, ValueError) as e:
        raise Fail(f"process spec {path}: {e}") from None
    if not isinstance(proc, dict):
        raise Fail(f"process spec {path} is not a JSON object")
    if not sp.clamp_capabilities(proc, bounding):
        return path
    data = json.dumps(proc).encode()
    if in_place:
        write_atomic(path, data, 0o600)
        return path
    fd = os.memfd_create("interceptd-process.json", 0)
    os.write(fd, data)
    return f"/proc/self/fd/{fd}"
