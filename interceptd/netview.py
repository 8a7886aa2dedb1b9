"""A container's network as its own namespace sees it: interfaces and their counters,
read by rtnetlink (pyroute2) from inside the container's network namespace.

The query runs on a short-lived thread that enters the namespace through the
container init's pidfd (setns(2) on a network namespace changes only the
calling thread), so the daemon's other threads never leave the host's. The
container controls what is in its namespace (names, how many interfaces), so
at most MAX_IFACES are reported, results are cached for CACHE_SECONDS, and
names are never used as metric labels.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from interceptd.kernel.consts import CLONE_NEWNET
from interceptd.kernel.libc import libc

MAX_IFACES = 64
CACHE_SECONDS = 5.0
STATS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped")



@dataclass(frozen=True)
class Iface:
    name: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_dropped: int
    tx_dropped: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _setns(fd: int) -> None:
    if libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns(net): {os.strerror(e)}")


def _links_here() -> list[Iface]:
    from pyroute2 import IPRoute  # imported when first asked for: ~11 MiB resident

    out: list[Iface] = []
    with IPRoute() as ip:
        for link in ip.get_links():
            if len(out) >= MAX_IFACES:
                break
            st = link.get_attr("IFLA_STATS64") or {}
            out.append(Iface(str(link.get_attr("IFLA_IFNAME") or "?"),
                             *(int(st.get(k, 0) or 0) for k in STATS)))
    return out


def read(pidfd: int) -> list[Iface]:
    """The interfaces of the network namespace of the process `pidfd` names."""
    result: list[list[Iface]] = []
    error: list[BaseException] = []

    def work() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(pidfd)
            try:
                result.append(_links_here())
            finally:
                _setns(own)  # the thread ends next; restore anyway
        except BaseException as e:
            error.append(e)
        finally:
            os.close(own)

    t = threading.Thread(target=work, name="netview", daemon=True)
    t.start()
    t.join(10)
    if error:
        raise error[0]
    if not result:
        raise TimeoutError("network view: no answer within 10 s")
    return result[0]


def totals(ifaces: list[Iface]) -> dict[str, int]:
    """Sums over the container's interfaces but loopback."""
    return {k: sum(getattr(i, k) for i in ifaces if i.name != "lo") for k in STATS}


class NetView:
    """read() per container, cached a few seconds (scrapes and `containers -v`)."""

    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[Iface]]] = {}

    def get(self, cid: str, pidfd: int) -> list[Iface]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(cid)
            if hit is not None and now - hit[0] < self._ttl:
                return hit[1]
        ifaces = read(pidfd)
        with self._lock:
            self._cache[cid] = (now, ifaces)
            if len(self._cache) > 4096:  # forgotten containers
                self._cache = dict(list(self._cache.items())[-1024:])
        return ifaces

    def forget(self, cid: str) -> None:
        with self._lock:
            self._cache.pop(cid, None)
