"""`interceptd`: flags, state dir, wiring of listener, engine, workers and control socket."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from interceptd import config as cfgmod
from interceptd import control, fdstore, reexec, sdnotify, views
from interceptd import log as logmod
from interceptd.config import Config, ConfigError
from interceptd.dispatch import Dispatcher
from interceptd.events import Counters, EventBus
from interceptd.handlers import HandlerRegistry
from interceptd.handover import Handover, answer_through, since_start_ms
from interceptd.listener import Listener
from interceptd.liveness import Liveness
from interceptd.plugins import metrics_containers, register_policy
from interceptd.registry import Registry
from interceptd.serving import serve, start_emulation, watch_pump
from interceptd.verdict import build_table

log = logging.getLogger("interceptd.daemon")

SECCOMP_SOCK = "seccomp.sock"
CONTROL_SOCK = "control.sock"
LOCK_FILE = "daemon.lock"


@functools.cache  # a metadata lookup scans sys.path (~0.3 ms): status() runs per container
def version() -> str:
    from importlib import metadata  # 30+ ms to import: not on a restart's path

    try:
        return metadata.version("interceptd")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


class _VersionAction(argparse.Action):
    """--version, looked up only when asked (a restart must not wait for metadata)."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"interceptd {version()}")
        parser.exit()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="interceptd", description=__doc__)
    p.add_argument("--state-dir", help=f"default {cfgmod.DEFAULT_STATE_DIR}")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--metrics-address", help="HOST:PORT or 'off'")
    p.add_argument("--log-level", help=f"one of {', '.join(cfgmod.LOG_LEVELS)}")
    p.add_argument("--log-format", help="text or json")
    p.add_argument("--check-config", metavar="FILE",
                   help="check FILE (every error with its key and line), then exit")
    p.add_argument("--version", action=_VersionAction)
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> Config:
    """The file's config with flags layered over its [daemon] section."""
    cfg = Config.load(args.config)
    d = cfg.daemon
    if args.state_dir:
        d.state_dir = args.state_dir
    if args.metrics_address:
        d.metrics_address = cfgmod.parse_metrics_address(args.metrics_address)
    if args.log_level:
        d.log_level = cfgmod.parse_log_level(args.log_level)
    if args.log_format:
        d.log_format = cfgmod.parse_log_format(args.log_format)
    return cfg


class StartupError(Exception):
    pass


@dataclass
class Daemon:
    cfg: Config
    counters: Counters = field(default_factory=Counters)
    bus: EventBus = field(default_factory=EventBus)
    registry: Registry = field(default_factory=Registry)
    started: float = field(default_factory=time.monotonic)
    features: dict[str, Any] = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)
    _parts: dict[str, Any] = field(default_factory=dict)
    _lock_fd: int = -1
    # The command line, kept so a reload layers the same flags over the re-read file.
    args: argparse.Namespace | None = None
    liveness: Liveness = field(default_factory=Liveness)
    # systemd's notify socket; a no-op unless main() is started by systemd (or a test peer).
    notifier: sdnotify.Notifier = field(default_factory=lambda: sdnotify.Notifier({}))
    _runtime_policy_lists: dict[str, Any] | None = None
    # What a predecessor left and what a successor gets (handover.py); made by start().
    handover: Handover | None = None
    restart_requested: threading.Event = field(default_factory=threading.Event)
    # The listener's callback, set by start() (the socket may listen before that).
    _on_message: Callable[[Any, int], None] = field(default=lambda _st, _fd: None)

    @property
    def state_dir(self) -> str:
        return self.cfg.daemon.state_dir

    def path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    def prepare_state_dir(self) -> None:
        d = self.state_dir
        os.makedirs(d, mode=0o700, exist_ok=True)
        st = os.stat(d)
        if stat.S_IMODE(st.st_mode) & 0o077:
            log.warning("state dir was accessible to others; tightening to 0700",
                        extra={"fields": {"state_dir": d}})
            os.chmod(d, 0o700)
        ho = self._handover()
        # A hand-over passes the lock's open file itself: its flock is ours already.
        fd = ho.inherited.pop("lock", None)
        if fd is None:
            fd = os.open(self.path(LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(f"another interceptd holds {self.path(LOCK_FILE)}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        ctl = self.path(CONTROL_SOCK)
        if os.path.exists(ctl) and "control" not in ho.inherited:
            try:
                other = control.request(ctl, {"cmd": "status"}, timeout=1.0)
            except (OSError, ValueError):
                other = None
            if other is not None:
                raise StartupError(f"another interceptd (pid {other.get('pid')}) answers on {ctl}")
        for name, kept in ((SECCOMP_SOCK, "listener"), (CONTROL_SOCK, "control")):
            if kept in ho.inherited:
                continue  # still bound to the socket we go on serving
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(name))
                log.info("removed stale socket", extra={"fields": {"path": self.path(name)}})

    def _handover(self) -> Handover:
        if self.handover is None:
            self.handover = Handover(self.state_dir, self.notifier)
        return self.handover

    def build(self) -> None:
        """What needs no fd of a predecessor: imports, handlers, the engine (a successor
        does this before it asks for the fds, so containers do not wait for it)."""
        if "engine" in self._parts:
            return
        from interceptd import core, syscalls  # the C build; imported late for a clear error

        self.features = dict(core.notify_probe())
        handlers = self._parts["handlers"] = HandlerRegistry(self.counters)
        register_policy(handlers, self.cfg)
        table = build_table(self.cfg.rules, handlers.names(), syscalls.nr)
        engine = self._parts["engine"] = core.Engine()
        dispatcher = Dispatcher(
            core, engine, self.registry, handlers, table, self.bus, self.counters,
            name_of=syscalls.name,
            native_arch=syscalls.AUDIT_ARCH_X86_64,
        )
        watch_pump(dispatcher, self.liveness)
        self._parts["dispatcher"] = dispatcher
        log.debug("built", extra={"fields": {"since_start_ms": since_start_ms()}})

    def bind_listener(self) -> None:
        """Listen on the seccomp socket before the policy's imports (~100 ms; see
        Listener.bind): runc and crun hand over without waiting for an answer."""
        if "listener" not in self._parts:
            listener = Listener(self.path(SECCOMP_SOCK),
                                lambda st, fd: self._on_message(st, fd), self.counters)
            listener.bind(self._handover().socket("listener"))
            self._parts["listener"] = listener

    def start(self) -> None:
        self.build()
        handlers, dispatcher = self._parts.pop("handlers"), self._parts["dispatcher"]
        ho = self._handover()
        ho.open_journal()  # before any notify fd is attached
        dispatcher.watchers.append(ho)
        dispatcher.start()
        self._on_message = ho.wrap(dispatcher.on_message)
        if ho.inherited or os.path.isdir(ho.dir):  # no fds: stale records are dropped
            t0 = time.monotonic()
            dispatcher.hold()
            try:
                ho.adopt(dispatcher.on_message)  # records and store entries exist already
                ho.replay(answer_through(dispatcher))
            finally:
                dispatcher.release()
            ho.adopted.pause_ms = round((time.monotonic() - t0) * 1000, 1)
            ho.adopted.since_exec_ms = since_start_ms()
            log.info("re-adopted", extra={"fields": vars(ho.adopted)})
        ctl = control.ControlServer(
            self.path(CONTROL_SOCK), status=self.status, containers=self.containers,
            bus=self.bus, counters=self.counters, stats=self.stats, network=self.network,
            reload=self.reload, restart=self.restart,
        )
        self.liveness.watch("control")
        ctl.on_tick = functools.partial(self.liveness.beat, "control")
        ctl.start(ho.socket("control"))
        self._parts["control"] = ctl
        self.bind_listener()
        listener = self._parts["listener"]
        self.liveness.watch("listener")
        listener.on_tick = functools.partial(self.liveness.beat, "listener")
        listener.start()
        for name, part in (("control", ctl), ("listener", listener)):
            ho.keep_socket(name, part.sock)
        self._start_emulation(dispatcher, handlers)
        self._start_runtime_service()
        ho.close_unused()
        self._start_ebpf(dispatcher)
        self._start_metrics(dispatcher)
        self._probe_features()
        log.info("ready", extra={"fields": {
            "version": version(), "pid": os.getpid(), "state_dir": self.state_dir,
            "listener": listener.path, "control": ctl.path,
            "metrics_address": str(self.cfg.daemon.metrics_address or "off"),
            "rules": len(self.cfg.rules), "handlers": ",".join(handlers.names()) or "-",
            "features": ",".join(k for k, v in self.features.items() if v is True) or "-",
        }})

    def status(self) -> dict[str, Any]:
        dispatcher: Dispatcher | None = self._parts.get("dispatcher")
        dropped = self.bus.dropped + (dispatcher.dropped_decisions() if dispatcher else 0)
        return {
            "version": version(),
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self.started, 3),
            "state_dir": self.state_dir,
            "metrics_address": str(self.cfg.daemon.metrics_address or "off"),
            "containers": len(self.registry),
            "counters": self.counters.snapshot(),
            "dropped_events": dropped,
            "trace_clients": self.bus.subscribers,
            "features": self.features,
            "ebpf": self._ebpf_status(),
            "runtime_policy": self._runtime_policy(),
            "emulation": (em.status() if (em := self._parts.get("emulation")) is not None
                          else None),
            "handover": vars(self.handover.adopted) if self.handover else None,
        }

    def _probe_features(self) -> None:
        """The kernel's other features (interceptd/probe.py, but for the bcc checks the
        eBPF layer makes itself and the BTF ones `interceptctl probe` makes), once the
        listener serves: status shows them, the log names the missing ones once."""
        from interceptd import probe

        try:
            found = probe.probe(bcc=False, btf=False)
        except Exception:
            log.exception("feature probe failed")
            return
        reasons = found.pop("reasons", {})
        self.features = {**found, **self.features}
        if reasons:
            log.info("kernel features missing", extra={"fields": reasons})

    def _ebpf_status(self) -> dict[str, Any]:
        layer = self._parts.get("bpf")
        if layer is None:
            return {"up": False, "reason": "disabled in the configuration ([ebpf] enabled)"}
        return dict(layer.status())

    def network(self, only: tuple[str, ...] | None = None) -> dict[str, Any]:
        return views.network(self, only)

    def network_totals(self, configured: tuple[str, ...]) -> dict[str, dict[str, int]]:
        return views.network_totals(self, configured)

    def stats(self) -> dict[str, Any]:
        return views.stats(self)

    # -- interceptd-runc's prepare service, hosted here (interceptd/runtime) --

    def _runtime_policy(self) -> dict[str, Any]:
        """What interceptd-runc adds to each container's filter: the daemon's own lists."""
        if self._runtime_policy_lists is None:
            from interceptd.runtime import policylink

            notify, denied, _src = policylink.syscalls(self.cfg.sections, None)
            names = sorted({n for r in notify for n in
                            ([r] if isinstance(r, str) else r.get("names", []))})
            self._runtime_policy_lists = {"notified": names, "notify": notify,
                                          "denied": denied}
        return self._runtime_policy_lists

    def _start_emulation(self, dispatcher: Dispatcher, handlers: HandlerRegistry) -> None:
        """The emulated /proc and /sys files (FUSE at <state-dir>/fs), optional:
        serving.start_emulation."""
        start_emulation(self, dispatcher, handlers)

    def _start_runtime_service(self) -> None:
        """runtime.sock: interceptd-runc's launcher has creates prepared here
        instead of starting an interpreter (the predecessor's socket when it left
        one: launchers connecting meanwhile waited in its backlog). Optional:
        without it the launcher falls back to its Python entry."""
        from interceptd.runtime.service import Service

        ho = self._handover()
        try:
            svc = Service(self.state_dir, status=self.status).start(ho.socket("runtime"))
        except OSError as e:
            log.warning("runtime prepare service not started",
                        extra={"fields": {"error": str(e)}})
            return
        self._parts["runtime"] = svc
        if svc.sock is not None:
            ho.keep_socket("runtime", svc.sock)

    def _start_ebpf(self, dispatcher: Dispatcher) -> None:
        """The eBPF layer (interceptd/ebpf.py), loaded in the background: the
        listener already serves; without bcc or headers the daemon runs without it."""
        section = self.cfg.sections.get("ebpf", {})
        unknown = set(section) - {"enabled", "sensitive"}
        if unknown:
            raise ConfigError(f"ebpf: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(section.get("enabled", True), bool):
            raise ConfigError("ebpf.enabled: must be true or false")
        if section.get("enabled", True) is False:
            return
        from interceptd import ebpf, metrics, probe, syscalls

        sensitive = section.get("sensitive", list(metrics.SENSITIVE_SYSCALLS))
        if not isinstance(sensitive, list) or not all(isinstance(n, str) for n in sensitive):
            raise ConfigError("ebpf.sensitive: must be a list of syscall names")
        bad = [n for n in sensitive if n not in syscalls.NUMBERS]
        if bad:
            raise ConfigError(f"ebpf.sensitive: unknown syscall(s) {', '.join(bad)}")
        configured = metrics_containers(self.cfg)
        layer = ebpf.BpfLayer(
            self.bus, sensitive=sensitive, cgroup2_mount=probe.cgroup2_mount(),
            label_of=lambda cid: metrics.container_label(cid, (), configured))
        dispatcher.watchers.append(layer)
        self._parts["bpf"] = layer.start()

    def _start_metrics(self, dispatcher: Dispatcher) -> None:
        from interceptd import metrics_http

        server = metrics_http.start_endpoint(self, dispatcher, version(),
                                             metrics_containers(self.cfg))
        if server is not None:
            self._parts["metrics"] = server

    def reload(self) -> dict[str, Any]:
        """Re-read the config file (flags still override it); apply what can change live.
        A config with an error changes nothing."""
        from interceptd import reload as reloadmod

        args = self.args or parse_args([])
        new = resolve_config(args)
        unknown = cfgmod.unknown_keys(new)
        self.notifier.reloading()
        try:
            out = reloadmod.apply(self, new)
        finally:
            self.notifier.ready(status=self.status_line())
        out["warnings"] = [f"unknown key {k}" for k in unknown]
        return out

    def restart(self) -> dict[str, Any]:
        """`interceptctl restart`, SIGHUP: start the successor and wait for it to be
        ready; the returned `then` hands it every fd, and this process exits."""
        return reexec.start_successor(self)

    def status_line(self) -> str:
        return (f"serving {len(self.registry)} container(s); "
                f"listener {self.path(SECCOMP_SOCK)}")

    def containers(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.registry.list()]

    def shutdown(self) -> None:
        if self._parts:
            log.info("shutting down", extra={"fields": {"containers": len(self.registry)}})
        for name in ("metrics", "runtime", "listener", "dispatcher", "engine", "emulation",
                     "control", "bpf"):
            part = self._parts.pop(name, None)
            if part is None:
                continue
            if name == "emulation" and self.handover is not None:
                self.handover.drop_fuse()  # for good: the mount goes, its binds fail
            try:
                part.stop() if hasattr(part, "stop") else part.close()
            except Exception:
                log.exception("shutdown step failed", extra={"fields": {"part": name}})
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
            log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_config:
        from interceptd import checkconfig

        return checkconfig.main(args.check_config)
    try:
        cfg = resolve_config(args)
    except ConfigError as e:
        print(f"interceptd: config error: {e}", file=sys.stderr)
        return 2
    logmod.setup(cfg.daemon.log_level, cfg.daemon.log_format)
    for key in cfgmod.unknown_keys(cfg):
        log.warning("unknown config key (interceptd --check-config reports it as an error)",
                    extra={"fields": {"key": key}})
    d = Daemon(cfg, args=args)
    notifier = d.notifier = sdnotify.Notifier()
    notifier.status("starting")

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal", extra={"fields": {"signal": signal.Signals(signum).name}})
        d.stop_event.set()

    def on_hup(_signum: int, _frame: object) -> None:
        d.restart_requested.set()
        d.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        chan = reexec.successor_channel()
        if chan is not None:  # `interceptctl restart`: the predecessor's fds, then its exit
            d.build()  # before the hand-over: containers do not wait for the imports
            pred, fds = reexec.ask_fds(chan)
            d._handover().take(fds)
            if not reexec.wait_exit(pred):
                raise StartupError(f"predecessor {pred} did not exit")
            d.prepare_state_dir()
        else:
            d._handover().take(fdstore.listen_fds())
            d.prepare_state_dir()
            d.bind_listener()  # listening before the imports
        d.start()
    except (StartupError, ConfigError, ImportError, OSError, ValueError) as e:
        log.error("cannot start", extra={"fields": {"error": str(e)}})
        notifier.status(f"cannot start: {e}")
        d.shutdown()
        return 1
    # Every socket accepts now (listen() precedes this), and the runtime service was tried.
    notifier.send(READY=1, STATUS=d.status_line(), MAINPID=os.getpid())
    while True:
        serve(d, notifier)
        if not d.restart_requested.is_set():
            break
        d.restart_requested.clear()
        d.stop_event.clear()
        try:
            d.restart().pop("then")()
        except Exception:
            log.exception("restart failed; serving on")
    notifier.stopping(status=f"stopping; {len(d.registry)} container(s) attached")
    d.shutdown()
    notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
