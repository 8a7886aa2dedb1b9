"""The message runc and crun send to the seccomp `listenerPath` (the OCI runtime-spec's
ContainerProcessState): parsed and validated, pure. The listener (listener.py) receives
it; the dispatcher (dispatch.py) and the hand-over (handover.py) take the parsed state
and refuse a connection by raising ListenerReject, so the types live here, below all
three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE = 256 * 1024
INIT_STATUSES = ("creating", "created")
EXEC_STATUSES = ("running",)


class ListenerReject(Exception):
    """A connection refused for `reason` (a short, bounded counter label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ContainerState:
    oci_version: str
    id: str
    status: str
    pid: int
    bundle: str
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessState:
    oci_version: str
    fds: list[str]
    pid: int
    metadata: str
    state: ContainerState

    @property
    def is_init(self) -> bool:
        return self.state.status in INIT_STATUSES

    @property
    def init_pid(self) -> int:
        # runc and crun both fill state.pid with the container's init; the
        # top-level pid is the process that owns this filter.
        return self.state.pid or self.pid


def parse_state(data: bytes) -> ProcessState:
    """Parse and validate one ContainerProcessState message; pure."""
    if len(data) > MAX_MESSAGE:
        raise ListenerReject("too large", f"{len(data)} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ListenerReject("not json", str(e)) from None
    if not isinstance(doc, dict):
        raise ListenerReject("bad message", "top level is not an object")
    fds = _field(doc, "fds", list)
    if not all(isinstance(x, str) for x in fds):
        raise ListenerReject("bad message", "fds must be a list of strings")
    if fds != ["seccompFd"]:
        raise ListenerReject("bad message", f"fds must be ['seccompFd'], got {fds!r}")
    st = _field(doc, "state", dict)
    annotations = st.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise ListenerReject("bad message", "state.annotations must map strings to strings")
    status = _field(st, "status", str, "state.")
    if status not in INIT_STATUSES + EXEC_STATUSES:
        raise ListenerReject("bad message", f"state.status {status!r} unexpected")
    cid = _field(st, "id", str, "state.")
    if not cid or len(cid) > 1024 or any(ord(ch) < 0x20 for ch in cid):
        raise ListenerReject("bad message", "state.id empty, too long or with control chars")
    metadata = doc.get("metadata", "")
    if not isinstance(metadata, str):
        raise ListenerReject("bad message", "metadata must be a string")
    # crun sends pid 0 (and bundle ".") for exec'd processes: such messages are
    # matched to their container by state.id alone.
    if "pid" not in doc:
        raise ListenerReject("missing field", "pid")
    pid = _pid(doc, "pid", allow_zero=True)
    state_pid = _pid(st, "pid", "state.", allow_zero=True)
    if status in INIT_STATUSES and not (state_pid or pid):
        raise ListenerReject("bad message", "no pid for the container's init")
    return ProcessState(
        oci_version=_field(doc, "ociVersion", str),
        fds=fds,
        pid=pid,
        metadata=metadata,
        state=ContainerState(
            oci_version=_field(st, "ociVersion", str, "state."),
            id=cid,
            status=status,
            pid=state_pid,
            bundle=_field(st, "bundle", str, "state."),
            annotations=dict(annotations),
        ),
    )


def _field(d: dict[str, Any], key: str, typ: type, prefix: str = "") -> Any:
    if key not in d:
        raise ListenerReject("missing field", f"{prefix}{key}")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool):
        raise ListenerReject("bad message", f"{prefix}{key} must be {typ.__name__}")
    return v


def _pid(d: dict[str, Any], key: str, prefix: str = "", allow_zero: bool = False) -> int:
    if key not in d:
        if allow_zero:
            return 0
        raise ListenerReject("missing field", f"{prefix}{key}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (v == 0 and not allow_zero):
        raise ListenerReject("bad message", f"{prefix}{key} must be a positive pid")
    if v > 2**22:
        raise ListenerReject("bad message", f"{prefix}{key} out of range")
    return v
