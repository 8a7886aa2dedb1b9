"""What a handler answers, and the fast-path verdict table built from the config."""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from interceptd.config import ConfigError, Rule

NO_DETAILS: Mapping[str, Any] = MappingProxyType({})


class Verdict(NamedTuple):
    """The answer to one notification. `kind` is one of events.VERDICTS.

    A NamedTuple rather than a frozen dataclass: immutable just the same, and
    made on every Python-path call, where a frozen dataclass costs 3x more.
    For `fd`, the daemon injects `inject_fd` into the target (ADDFD with SEND, so the
    syscall returns the new number) and then closes its own copy.
    `details` are the arguments as the handler decoded them (path, fstype,
    flags...: JSON-ready values); they go into the decision's event, so the
    reason text need not carry them. Empty by default.
    """

    kind: str
    reason: str
    val: int = 0  # return value for "value"
    error: int = 0  # errno for "errno"
    inject_fd: int = -1  # daemon's fd to inject for "fd"
    fd_flags: int = 0
    details: Mapping[str, Any] = NO_DETAILS

    @classmethod
    def cont(cls, reason: str, details: Mapping[str, Any] | None = None) -> Verdict:
        return cls("continue", reason, details=details or NO_DETAILS)

    @classmethod
    def errno(cls, e: int, reason: str, details: Mapping[str, Any] | None = None) -> Verdict:
        if e <= 0:
            raise ValueError(f"errno must be positive, got {e}")
        return cls("errno", reason, error=e, details=details or NO_DETAILS)

    @classmethod
    def value(cls, v: int, reason: str, details: Mapping[str, Any] | None = None) -> Verdict:
        return cls("value", reason, val=v, details=details or NO_DETAILS)

    @classmethod
    def fd(cls, fd: int, reason: str, flags: int = 0,
           details: Mapping[str, Any] | None = None) -> Verdict:
        """`flags` are the new fd's flags in the target (e.g. O_CLOEXEC)."""
        return cls("fd", reason, inject_fd=fd, fd_flags=flags, details=details or NO_DETAILS)

    def with_details(self, **details: Any) -> Verdict:
        """This verdict with `details` added (e.g. to a shared constant verdict)."""
        return self._replace(details={**self.details, **details})


EPERM_UNHANDLED = Verdict.errno(errno_mod.EPERM, "unhandled")

# Actions of the fast path, by name; dispatch maps them onto the core's ACT_*.
FAST_CONTINUE = "continue"
FAST_ERRNO = "errno"
FAST_VALUE = "value"
FAST_PYTHON = "python"


@dataclass(frozen=True)
class TableEntry:
    syscall: str
    nr: int
    action: str
    value: int


def build_table(
    rules: Iterable[Rule],
    handled: Iterable[str],
    nr_of: Callable[[str], int],
) -> list[TableEntry]:
    """The per-channel table: config rules, then Python handlers.

    A syscall with a Python handler always goes to Python, even if a rule names
    it: the handler is the more specific decision. Unknown names are a config
    error (the operator meant something, and silently ignoring it fails open).
    """
    table: dict[str, TableEntry] = {}
    for r in rules:
        nr = _lookup(nr_of, r.syscall, "rules")
        value = r.errno if r.action == FAST_ERRNO else r.value
        table[r.syscall] = TableEntry(r.syscall, nr, r.action, value)
    for name in handled:
        nr = _lookup(nr_of, name, "handlers")
        table[name] = TableEntry(name, nr, FAST_PYTHON, 0)
    return list(table.values())


def _lookup(nr_of: Callable[[str], int], name: str, where: str) -> int:
    try:
        return nr_of(name)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{where}: unknown syscall {name!r}") from e
