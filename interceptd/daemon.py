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
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from interceptd import config as cfgmod
from interceptd import control, sdnotify
from interceptd import log as logmod
from interceptd.config import Config, ConfigError
from interceptd.dispatch import Dispatcher
from interceptd.events import Counters, EventBus
from interceptd.handlers import HandlerRegistry
from interceptd.listener import Listener
from interceptd.liveness import Liveness
from interceptd.registry import Registry
from interceptd.verdict import build_table

log = logging.getLogger("interceptd.daemon")

SECCOMP_SOCK = "seccomp.sock"
CONTROL_SOCK = "control.sock"
LOCK_FILE = "daemon.lock"


@functools.cache  # a metadata lookup scans sys.path (~0.3 ms): status() runs per container
def version() -> str:
    try:
        return metadata.version("interceptd")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="interceptd", description=__doc__)
    p.add_argument("--state-dir", help=f"default {cfgmod.DEFAULT_STATE_DIR}")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--metrics-address", help="HOST:PORT or 'off'")
    p.add_argument("--log-level", help=f"one of {', '.join(cfgmod.LOG_LEVELS)}")
    p.add_argument("--log-format", help="text or json")
    p.add_argument("--check-config", metavar="FILE",
                   help="check FILE (every error with its key and line), then exit")
    p.add_argument("--version", action="version", version=f"interceptd {version()}")
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
        if os.path.exists(ctl):
            try:
                other = control.request(ctl, {"cmd": "status"}, timeout=1.0)
            except (OSError, ValueError):
                other = None
            if other is not None:
                raise StartupError(f"another interceptd (pid {other.get('pid')}) answers on {ctl}")
        for name in (SECCOMP_SOCK, CONTROL_SOCK):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(name))
                log.info("removed stale socket", extra={"fields": {"path": self.path(name)}})

    def start(self) -> None:
        from interceptd import core, syscalls  # the C build; imported late for a clear error

        self.features = dict(core.notify_probe())
        handlers = HandlerRegistry(self.counters)
        _register_policy(handlers, self.cfg)
        table = build_table(self.cfg.rules, handlers.names(), syscalls.nr)
        engine = core.Engine()
        self._parts["engine"] = engine
        dispatcher = Dispatcher(
            core, engine, self.registry, handlers, table, self.bus, self.counters,
            name_of=syscalls.name,
            native_arch=syscalls.AUDIT_ARCH_X86_64,
        )
        _watch_pump(dispatcher, self.liveness)
        dispatcher.start()
        self._parts["dispatcher"] = dispatcher
        ctl = control.ControlServer(
            self.path(CONTROL_SOCK), status=self.status, containers=self.containers,
            bus=self.bus, counters=self.counters, reload=self.reload,
        )
        self.liveness.watch("control")
        ctl.on_tick = functools.partial(self.liveness.beat, "control")
        ctl.start()
        self._parts["control"] = ctl
        listener = Listener(self.path(SECCOMP_SOCK), dispatcher.on_message, self.counters)
        self.liveness.watch("listener")
        listener.on_tick = functools.partial(self.liveness.beat, "listener")
        listener.start()
        self._parts["listener"] = listener
        self._start_runtime_service()
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
            "features": self.features,
            "runtime_policy": self._runtime_policy(),
        }

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

    def _start_runtime_service(self) -> None:
        """runtime.sock: interceptd-runc's launcher has creates prepared here
        instead of starting an interpreter. Optional: without it the launcher
        falls back to its Python entry."""
        from interceptd.runtime.service import Service

        try:
            self._parts["runtime"] = Service(self.state_dir, status=self.status).start()
        except OSError as e:
            log.warning("runtime prepare service not started",
                        extra={"fields": {"error": str(e)}})

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

    def status_line(self) -> str:
        return (f"serving {len(self.registry)} container(s); "
                f"listener {self.path(SECCOMP_SOCK)}")

    def containers(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.registry.list()]

    def shutdown(self) -> None:
        if self._parts:
            log.info("shutting down", extra={"fields": {"containers": len(self.registry)}})
        for name in ("runtime", "listener", "dispatcher", "engine", "control"):
            part = self._parts.pop(name, None)
            if part is None:
                continue
            try:
                part.stop() if hasattr(part, "stop") else part.close()
            except Exception:
                log.exception("shutdown step failed", extra={"fields": {"part": name}})
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
            log.info("stopped")


def _register_policy(handlers: HandlerRegistry, cfg: Config) -> None:
    try:
        import interceptd.policy as policy
    except ModuleNotFoundError as e:
        if e.name != "interceptd.policy":
            raise
    else:
        register = getattr(policy, "register", None)
        if register is not None:
            register(handlers, cfg)
    _register_plugins(handlers, cfg)


def _register_plugins(handlers: HandlerRegistry, cfg: Config) -> None:
    """`[handlers] modules = ["pkg.mod", ...]`: extra handler modules (site
    policy, tests), each with `register(handlers, cfg)`, loaded after the
    built-in policy so registering a syscall twice is a start-up error."""
    import importlib

    modules = cfg.sections.get("handlers", {}).get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError("handlers.modules: must be a list of module names")
    for name in modules:
        try:
            importlib.import_module(name).register(handlers, cfg)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"handlers.modules: {name}: {e}") from e


def _watch_pump(dispatcher: Dispatcher, liveness: Liveness) -> None:
    """The decision pump beats once per turn (it turns every PUMP_INTERVAL)."""
    pump_once = dispatcher.pump_once

    def beating() -> int:
        liveness.beat("pump")
        return pump_once()

    liveness.watch("pump")
    dispatcher.pump_once = beating  # type: ignore[method-assign]


def serve(d: Daemon, notifier: sdnotify.Notifier) -> None:
    """The main thread until a stop signal: STATUS= updates and watchdog pings, sent
    only while every serving loop is turning (a stuck one stops the pings)."""
    interval = notifier.watchdog_interval()
    tick = min(1.0, interval) if interval else 1.0
    # Loops turn at least every 0.25 s; one that missed this long is stuck.
    max_age = max(1.0, min(5.0, (notifier.watchdog_timeout or 10.0) / 2))
    last_status = ""
    stuck: list[str] = []
    while not d.stop_event.wait(tick):
        now_stuck = d.liveness.stale(max_age)
        if now_stuck != stuck:
            stuck = now_stuck
            if stuck:
                log.error("serving loop stuck: not pinging the watchdog",
                          extra={"fields": {"loops": ",".join(stuck)}})
        if stuck:
            line = f"stuck: {', '.join(stuck)}"
        else:
            line = d.status_line()
            if interval:
                notifier.watchdog()
        if line != last_status:
            notifier.status(line)
            last_status = line


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

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        d.prepare_state_dir()
        d.start()
    except (StartupError, ConfigError, ImportError, OSError, ValueError) as e:
        log.error("cannot start", extra={"fields": {"error": str(e)}})
        notifier.status(f"cannot start: {e}")
        d.shutdown()
        return 1
    # Every socket accepts now (listen() precedes this), and the runtime service was tried.
    notifier.ready(status=d.status_line())
    serve(d, notifier)
    notifier.stopping(status=f"stopping; {len(d.registry)} container(s) attached")
    d.shutdown()
    notifier.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
