"""The Prometheus endpoint: `/metrics` served by prometheus_client's WSGI app over the
daemon's Collector (metrics.py), a thread per request."""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler

from interceptd.metrics import Collector, Sources, fuse_source

if TYPE_CHECKING:
    from interceptd.daemon import Daemon
    from interceptd.dispatch import Dispatcher

log = logging.getLogger("interceptd.metrics")


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # a client that stalls mid-request loses its connection, not a thread forever

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """`/metrics` on HOST:PORT, served by a thread per request (loopback by default)."""

    def __init__(self, host: str, port: int, src: Sources) -> None:
        from wsgiref.simple_server import make_server

        from prometheus_client import CollectorRegistry, make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(src))
        ProcessCollector(registry=self.registry)

        class Server(ThreadingWSGIServer):
            address_family = _family(host)

        self._httpd = make_server(host, port, make_wsgi_app(self.registry), Server,
                                  handler_class=_QuietHandler)
        self.address = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics",
                                        kwargs={"poll_interval": 0.25}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(2.0)


def _family(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def start_endpoint(d: Daemon, dispatcher: Dispatcher, version: str,
                   configured: tuple[str, ...]) -> MetricsServer | None:
    """`--metrics-address`: /metrics for Prometheus. A missing prometheus-client or a
    taken port costs the metrics, not the daemon (logged; None)."""
    addr = d.cfg.daemon.metrics_address
    if addr is None:
        return None
    parts = d._parts
    try:
        src = Sources(
            version=version, started=d.started, counters=d.counters, bus=d.bus,
            dispatcher=dispatcher, registry=d.registry, bpf=parts.get("bpf"),
            containers=configured,
            network=functools.partial(d.network_totals, configured),
            fuse=(fuse_source(parts["emulation"].service.stats)
                  if "emulation" in parts else None),
        )
        return MetricsServer(addr.host, addr.port, src).start()
    except (ImportError, OSError) as e:
        log.error("metrics endpoint not started", extra={"fields": {
            "address": str(addr), "error": str(e)}})
        return None
