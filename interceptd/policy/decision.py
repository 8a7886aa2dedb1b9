"""The outcome of a pure policy decision, independent of the daemon's Verdict type.

Decisions are plain data so that the decision modules can be unit-tested without a kernel
and without the daemon. `interceptd/handlers/` (scope.py) turns them into
`interceptd.verdict.Verdict`s, running the executor operations of a `perform` decision first.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExecOp:
    """One namespace-executor operation (`Request.exec(namespaces, op, *args)`)."""

    op: str
    args: tuple[Any, ...]
    # The result fd of this op is injected into the caller and returned as the syscall value.
    inject_fd: bool = False


@dataclass(frozen=True)
class Decision:
    kind: str  # "errno" | "value" | "continue" | "perform"
    reason: str
    errno: int = 0
    value: int = 0
    ops: tuple[ExecOp, ...] = ()
    # Facts for the event (decoded arguments, matched mount, ...).
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def errno_name(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno)) if self.errno else ""


def deny(err: int, reason: str, **details: Any) -> Decision:
    return Decision("errno", reason, errno=err, details=details)


def allow_continue(reason: str, **details: Any) -> Decision:
    return Decision("continue", reason, details=details)


def value(v: int, reason: str, **details: Any) -> Decision:
    return Decision("value", reason, value=v, details=details)


def perform(reason: str, *ops: ExecOp, **details: Any) -> Decision:
    return Decision("perform", reason, ops=tuple(ops), details=details)
