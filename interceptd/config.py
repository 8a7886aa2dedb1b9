"""The daemon's TOML configuration: `[daemon]`, `[[rules]]`; other sections are kept raw.

`[runtime]` and `[policy]` belong to the shim and the policy modules; this module
only hands them over as dictionaries so that adding a section never breaks loading.
"""

from __future__ import annotations

import errno as errno_mod
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "/run/interceptd"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
RULE_ACTIONS = ("errno", "value", "continue")


# Every key a section may hold; `interceptd --check-config` reports any other as an
# error (the daemon logs a warning: a [handlers] module may read a section of its own).
# A module that reads a new key adds it here, in the same commit.
KNOWN_KEYS: dict[str, frozenset[str]] = {
    "daemon": frozenset({"state_dir", "metrics_address", "log_level", "log_format"}),
    "rules": frozenset({"syscall", "action", "errno", "value"}),
    # interceptd/runtime/settings.py
    "runtime": frozenset({
        "runtime", "state_dir", "id_pool_start", "id_pool_ranges", "sensitive_mount_allow",
        "sensitive_paths", "sensitive_mount_trust_annotations", "shared_paths",
        "volume_id_base", "daemon_timeout", "cgroup2_mount", "mount_dir",
    }),
    # interceptd/policy/__init__.py, deny.py, handlers/scope.py
    "policy": frozenset({"mounts", "ptrace", "sysinfo", "clock", "keyring", "bpf", "native"}),
    "handlers": frozenset({"modules"}),
    # interceptd/daemon.py: the eBPF layer (docs/observability.md), per-container metrics
    "ebpf": frozenset({"enabled", "sensitive"}),
    "metrics": frozenset({"containers"}),
}


def unknown_keys(cfg: Config) -> list[str]:
    """Sections and keys of `cfg.sections` that nothing reads ([daemon] and [[rules]]
    refuse unknown keys when parsed)."""
    out = []
    for name, table in cfg.sections.items():
        known = KNOWN_KEYS.get(name)
        if known is None:
            out.append(name)
        elif isinstance(table, dict):
            out += [f"{name}.{k}" for k in table if k not in known]
    return out


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


@dataclass(frozen=True)
class Rule:
    """One fast-path verdict: `syscall` answered by `action` with `errno` or `value`."""

    syscall: str
    action: str
    errno: int = 0
    value: int = 0


@dataclass(frozen=True)
class MetricsAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


DEFAULT_METRICS_ADDRESS = MetricsAddress("127.0.0.1", 9477)


@dataclass
class DaemonConfig:
    state_dir: str = DEFAULT_STATE_DIR
    metrics_address: MetricsAddress | None = DEFAULT_METRICS_ADDRESS  # None: off
    log_level: str = "info"
    log_format: str = "text"


@dataclass
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    rules: list[Rule] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def policy(self) -> dict[str, Any]:
        return dict(self.sections.get("policy", {}))

    @property
    def runtime(self) -> dict[str, Any]:
        return dict(self.sections.get("runtime", {}))

    @classmethod
    def load(cls, path: str | Path | None) -> Config:
        """Read `path` (TOML); None gives the defaults."""
        if path is None:
            return cls.from_dict({})
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        daemon = _parse_daemon(data.get("daemon", {}))
        raw_rules = data.get("rules", [])
        if not isinstance(raw_rules, list):
            raise ConfigError("rules: must be an array of tables ([[rules]])")
        rules = [_parse_rule(i, r) for i, r in enumerate(raw_rules)]
        seen: set[str] = set()
        for r in rules:
            if r.syscall in seen:
                raise ConfigError(f"rules: syscall {r.syscall!r} has more than one rule")
            seen.add(r.syscall)
        sections = {k: v for k, v in data.items() if k not in ("daemon", "rules")}
        return cls(daemon=daemon, rules=rules, sections=sections)


def _parse_daemon(d: Any) -> DaemonConfig:
    if not isinstance(d, dict):
        raise ConfigError("daemon: must be a table")
    out = DaemonConfig()
    unknown = set(d) - {"state_dir", "metrics_address", "log_level", "log_format"}
    if unknown:
        raise ConfigError(f"daemon: unknown key(s) {', '.join(sorted(unknown))}")
    if "state_dir" in d:
        if not isinstance(d["state_dir"], str) or not d["state_dir"]:
            raise ConfigError("daemon.state_dir: must be a non-empty string")
        out.state_dir = d["state_dir"]
    if "metrics_address" in d:
        out.metrics_address = parse_metrics_address(d["metrics_address"])
    if "log_level" in d:
        out.log_level = parse_log_level(d["log_level"])
    if "log_format" in d:
        out.log_format = parse_log_format(d["log_format"])
    return out


def parse_metrics_address(value: Any) -> MetricsAddress | None:
    """`HOST:PORT` or `off` (None). IPv6 hosts are written `[::1]:9464`."""
    if not isinstance(value, str):
        raise ConfigError("metrics_address: must be a string HOST:PORT or 'off'")
    if value == "off":
        return None
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"metrics_address {value!r}: expected HOST:PORT or 'off'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ConfigError(f"metrics_address {value!r}: port must be 1-65535")
    return MetricsAddress(host, int(port_s))


def parse_log_level(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level {value!r}: expected one of {', '.join(LOG_LEVELS)}")
    return value.lower()


def parse_log_format(value: Any) -> str:
    if value not in LOG_FORMATS:
        raise ConfigError(f"log_format {value!r}: expected one of {', '.join(LOG_FORMATS)}")
    return str(value)


def parse_errno(value: Any) -> int:
    """An errno given by name ("EPERM") or positive number."""
    if isinstance(value, bool):
        raise ConfigError(f"errno {value!r}: expected a name like 'EPERM' or a number")
    if isinstance(value, int):
        if not 0 < value < 4096:
            raise ConfigError(f"errno {value}: must be between 1 and 4095")
        return value
    if isinstance(value, str):
        code = getattr(errno_mod, value.upper(), None)
        if isinstance(code, int) and value.upper() in errno_mod.errorcode.values():
            return code
        raise ConfigError(f"errno {value!r}: unknown errno name")
    raise ConfigError(f"errno {value!r}: expected a name like 'EPERM' or a number")


def _parse_rule(i: int, r: Any) -> Rule:
    where = f"rules[{i}]"
    if not isinstance(r, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(r) - {"syscall", "action", "errno", "value"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    syscall = r.get("syscall")
    if not isinstance(syscall, str) or not syscall:
        raise ConfigError(f"{where}: 'syscall' must be a syscall name")
    where = f"{where} ({syscall})"
    action = r.get("action")
    if action not in RULE_ACTIONS:
        raise ConfigError(f"{where}: 'action' must be one of {', '.join(RULE_ACTIONS)}")
    if action == "errno":
        if "value" in r:
            raise ConfigError(f"{where}: 'value' is not used with action 'errno'")
        if "errno" not in r:
            raise ConfigError(f"{where}: action 'errno' needs 'errno'")
        try:
            return Rule(syscall, action, errno=parse_errno(r["errno"]))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
    if action == "value":
        if "errno" in r:
            raise ConfigError(f"{where}: 'errno' is not used with action 'value'")
        v = r.get("value")
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}: action 'value' needs an integer 'value'")
        if not -(2**63) <= v < 2**63:
            raise ConfigError(f"{where}: 'value' does not fit in 64 bits")
        return Rule(syscall, action, value=v)
    if "errno" in r or "value" in r:
        raise ConfigError(f"{where}: action 'continue' takes neither 'errno' nor 'value'")
    return Rule(syscall, action)
