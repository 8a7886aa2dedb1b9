"""The daemon's wiring (state dir, lock, sockets, status, shutdown) with a fake core."""

import json
import os
import re
import socket
import stat
import sys
import time

import fakecore
import pytest

from interceptd import control, daemon
from interceptd.config import Config
from interceptd.daemon import Daemon, StartupError, resolve_config


def cfg_for(path):
    c = Config.load(None)
    c.daemon.state_dir = str(path)
    c.daemon.metrics_address = None
    return c


@pytest.fixture(autouse=True)
def keep_root_logger():
    """daemon.main() installs its stderr handler; put pytest's back afterwards."""
    import logging
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def fake_core(monkeypatch):
    monkeypatch.setitem(sys.modules, "interceptd.core", fakecore)
    import interceptd
    monkeypatch.setattr(interceptd, "core", fakecore, raising=False)


def test_state_dir_created_private_with_lock(tmp_path):
    sd = tmp_path / "state"
    d = Daemon(cfg_for(sd))
    d.prepare_state_dir()
    assert stat.S_IMODE(os.stat(sd).st_mode) == 0o700
    assert (sd / "daemon.lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(StartupError, match="another interceptd holds"):
        Daemon(cfg_for(sd)).prepare_state_dir()
    d.shutdown()
    again = Daemon(cfg_for(sd))
    again.prepare_state_dir()  # the lock died with its holder's fd
    again.shutdown()


def test_stale_sockets_removed(tmp_path):
    for name in ("seccomp.sock", "control.sock"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(tmp_path / name))
        s.close()  # bound, never listening: what a killed daemon leaves
    d = Daemon(cfg_for(tmp_path))
    d.prepare_state_dir()
    assert not (tmp_path / "seccomp.sock").exists()
    assert not (tmp_path / "control.sock").exists()
    d.shutdown()


def test_live_daemon_on_control_sock_refused(tmp_path):
    srv = control.ControlServer(str(tmp_path / "control.sock"), status=lambda: {"pid": 99},
                                containers=list, bus=None, counters=fakecore_counters())
    srv.start()
    d = Daemon(cfg_for(tmp_path))
    try:
        with pytest.raises(StartupError, match=r"another interceptd \(pid 99\)"):
            d.prepare_state_dir()
        assert (tmp_path / "control.sock").exists()  # not taken from the live one
    finally:
        d.shutdown()
        srv.stop()


def fakecore_counters():
    from interceptd.events import Counters
    return Counters()


def test_flags_override_config(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[daemon]\nstate_dir = "/x"\nlog_level = "error"\nmetrics_address = "off"\n')
    args = daemon.parse_args(["--config", str(p), "--state-dir", "/y",
                              "--metrics-address", "127.0.0.1:1234", "--log-format", "json"])
    c = resolve_config(args)
    assert (c.daemon.state_dir, c.daemon.log_level, c.daemon.log_format) == ("/y", "error", "json")
    assert str(c.daemon.metrics_address) == "127.0.0.1:1234"


@pytest.mark.parametrize("argv", [["--metrics-address", "bogus"], ["--log-level", "x"]])
def test_bad_flags_exit_2(argv, capsys):
    assert daemon.main(argv) == 2
    assert "config error" in capsys.readouterr().err


def test_bad_rule_syscall_refuses_start(tmp_path, fake_core, capsys):
    p = tmp_path / "c.toml"
    p.write_text('[[rules]]\nsyscall = "no_such_call"\naction = "continue"\n')
    sd = tmp_path / "s"
    assert daemon.main(["--state-dir", str(sd), "--config", str(p)]) == 1
    assert "unknown syscall 'no_such_call'" in capsys.readouterr().err
    assert not (sd / "seccomp.sock").exists()


def test_start_status_listener_and_shutdown(tmp_path, fake_core):
    d = Daemon(cfg_for(tmp_path))
    d.prepare_state_dir()
    d.start()
    try:
        for name in ("seccomp.sock", "control.sock"):
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
        # a bad client on the listener shows up in status
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(tmp_path / "seccomp.sock"))
        s.sendall(b"garbage")
        s.close()
        deadline = time.monotonic() + 5
        while True:
            st = control.request(str(tmp_path / "control.sock"), {"cmd": "status"})
            if st["counters"].get("listener_errors") or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert st["ok"] and st["pid"] == os.getpid() and st["containers"] == 0
        assert st["counters"]["listener_errors"] == {"not json": 1}
        # The core's own probe, then the rest of interceptd/probe.py's (this kernel's).
        assert fakecore.notify_probe().items() <= st["features"].items()
        assert {"wait_killable_recv", "cgroup2", "bpf_tracepoints"} <= set(st["features"])
        assert st["metrics_address"] == "off"
        assert {"version", "uptime", "dropped_events", "state_dir"} <= set(st)
        assert control.request(str(tmp_path / "control.sock"),
                               {"cmd": "containers"}) == {"ok": True, "containers": []}
        json.dumps(st)
    finally:
        d.shutdown()
    assert not (tmp_path / "seccomp.sock").exists()
    assert not (tmp_path / "control.sock").exists()


@pytest.mark.parametrize("section,error", [
    ({"sensitive": ["mount", "no_such_call"]}, "unknown syscall(s) no_such_call"),
    ({"enabled": "yes"}, "must be true or false"),
    ({"sensitve": []}, "unknown key(s) sensitve"),
])
def test_bad_ebpf_section_refuses_start(tmp_path, fake_core, section, error):
    from interceptd.config import ConfigError

    c = cfg_for(tmp_path / "state")
    c.sections["ebpf"] = section
    d = Daemon(c)
    d.prepare_state_dir()
    try:
        with pytest.raises(ConfigError, match=re.escape(error)):
            d.start()
    finally:
        d.shutdown()
