"""Every path interceptd emulates in a container, and what produces its bytes.

FILES are rendered per container from a `RenderInput`; EMPTY_DIRS are shown as empty
directories. Under /proc/sys only the values procsys emulates (`procsys.SERVED`) are files
of ours (WRITABLE: a write is a procsys decision, not a render); the rest of /proc/sys is
the container's own procfs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from interceptd.emulation import (
    cpu_online,
    cpuinfo,
    diskstats,
    loadavg,
    meminfo,
    procsys,
    stat,
    swaps,
    sysfs,
    uptime,
)
from interceptd.emulation.hostfacts import HostFacts
from interceptd.emulation.snapshot import CgroupSnapshot


@dataclass(frozen=True)
class RenderInput:
    snap: CgroupSnapshot
    host: HostFacts
    now: float  # the host's CLOCK_BOOTTIME, seconds
    container_id: str = ""
    load: loadavg.LoadState | None = None
    # A /proc/sys file: the container's stored values and the host's value of that file.
    sysctl_state: Mapping[str, str] = field(default_factory=dict)
    sysctl_host: str | None = None


Renderer = Callable[[RenderInput], bytes]


def _plain(fn: Callable[[CgroupSnapshot, HostFacts, float], bytes]) -> Renderer:
    return lambda i: fn(i.snap, i.host, i.now)


def _sysctl(name: str) -> Renderer:
    def render(i: RenderInput) -> bytes:
        out = procsys.render_read(name, i.sysctl_state, i.sysctl_host)
        if out is None and name in procsys.UTS and i.sysctl_host is not None:
            out = i.sysctl_host.encode()  # the container's own namespace's, read for it
        if out is None:
            raise LookupError(f"sysctl {name}: no value on this host")
        return out
    return render


SYSCTL_ROOT = "/proc/sys"
SYSCTL_FILES: dict[str, str] = {f"{SYSCTL_ROOT}/{n}": n for n in procsys.SERVED}
WRITABLE: frozenset[str] = frozenset(SYSCTL_FILES)

FILES: dict[str, Renderer] = {
    "/proc/meminfo": _plain(meminfo.render),
    "/proc/cpuinfo": _plain(cpuinfo.render),
    "/proc/stat": _plain(stat.render),
    "/proc/uptime": _plain(uptime.render),
    "/proc/loadavg": lambda i: loadavg.render(i.snap, i.host, i.now, i.load),
    "/proc/swaps": _plain(swaps.render),
    "/proc/diskstats": _plain(diskstats.render),
    **{f"/sys/devices/system/cpu/{name}": _plain(cpu_online.render)
       for name in cpu_online.FILES},
    sysfs.PRODUCT_UUID: lambda i: sysfs.product_uuid(i.container_id),
    **{path: _sysctl(name) for path, name in SYSCTL_FILES.items()},
}
EMPTY_DIRS: tuple[str, ...] = sysfs.EMPTY_DIRS


# Files reached through a sysfs symlink: a bind lands on (and mountinfo shows) the real path.
BIND_AT: dict[str, str] = {sysfs.PRODUCT_UUID: "/sys/devices/virtual/dmi/id/product_uuid"}


def bind_target(path: str) -> str:
    """Where the bind of emulated file `path` sits in the container."""
    return BIND_AT.get(path, path)


def file_at(mountpoint: str) -> str | None:
    """The emulated file whose bind sits at `mountpoint`, if any."""
    for path in FILES:
        if bind_target(path) == mountpoint:
            return path
    return None


def render(path: str, inp: RenderInput) -> bytes:
    try:
        fn = FILES[path]
    except KeyError:
        raise KeyError(f"{path} is not an emulated file") from None
    return fn(inp)


def emulated_paths() -> tuple[str, ...]:
    """Every container path interceptd puts its own content on, files then directories."""
    return (*FILES, *EMPTY_DIRS)
