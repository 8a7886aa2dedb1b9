"""The daemon's per-container views for the control socket and the metrics endpoint:
network interfaces and the eBPF counters (moved out of daemon.py)."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interceptd.daemon import Daemon


def pidfds(d: Daemon, only: tuple[str, ...] | None = None) -> list[tuple[str, int]]:
    """(id, a dup of its init's pidfd) per container (or per configured one): taken
    under the registry's lock while the container is registered, so the fd is not
    one a release closed meanwhile (and maybe reused). The caller closes them."""
    from interceptd.metrics import OTHER, container_label

    out = []
    with d.registry.lock:
        for c in d.registry.list():
            if only is not None and container_label(c.id, (), only) == OTHER:
                continue
            with contextlib.suppress(OSError):
                out.append((c.id, os.dup(c.pidfd)))
    return out


def network(d: Daemon, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """{container: [interfaces with their counters] or {"error": why}} (netview.py)."""
    from interceptd import netview

    view = d._parts.get("netview")
    if view is None:
        view = d._parts["netview"] = netview.NetView()
    out: dict[str, Any] = {}
    for cid, fd in pidfds(d, only):
        try:
            out[cid] = [i.to_dict() for i in view.get(cid, fd)]
        except (OSError, ImportError, TimeoutError) as e:
            out[cid] = {"error": str(e)}
        finally:
            os.close(fd)
    return out


def network_totals(d: Daemon, configured: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Per configured container label, the sums over its interfaces but lo."""
    from interceptd import metrics, netview

    sums: dict[str, dict[str, int]] = {}
    for cid, ifaces in network(d, configured).items():
        if isinstance(ifaces, dict):
            continue
        label = metrics.container_label(cid, (), configured)
        t = netview.totals([netview.Iface(**i) for i in ifaces])
        acc = sums.setdefault(label, dict.fromkeys(netview.STATS, 0))
        for k, v in t.items():
            acc[k] += v
        acc["interfaces"] = acc.get("interfaces", 0) + sum(
            1 for i in ifaces if i["name"] != "lo")
    return sums


def stats(d: Daemon) -> dict[str, Any]:
    """Per container, {syscall: [calls, errors]} as the eBPF counters have them."""
    layer = d._parts.get("bpf")
    if layer is None or not layer.up:
        return {"ebpf": d._ebpf_status(), "containers": {}}
    return {"ebpf": d._ebpf_status(), "containers": {
        cid: {name: list(v) for name, v in layer.counts(cid).items()}
        for cid in layer.tracked()}}
