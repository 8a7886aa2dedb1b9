"""The syscalls the daemon vets and the static deny list, from the daemon's own policy.

Until interceptd.policy is importable, a minimal built-in list keeps containers
attached (so the runtime and daemon never disagree, the policy module wins).
"""

from __future__ import annotations

FALLBACK_NOTIFIED = [
    "mount", "umount2", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr",
]
FALLBACK_DENIED = [
    {
        "names": ["kexec_load", "kexec_file_load", "init_module", "finit_module",
                  "delete_module", "open_by_handle_at", "iopl", "ioperm", "swapon",
                  "swapoff", "acct", "lookup_dcookie", "nfsservctl", "vm86", "vm86old"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": 1,
    }
]


class _Sections:
    """What interceptd.policy reads from a Config (its `sections`), without
    importing interceptd.config on every container start."""

    def __init__(self, raw: dict) -> None:
        self.sections = raw


def syscalls(raw: dict, path: str | None, status: dict | None = None
             ) -> tuple[list[str], list[dict], str]:
    """(notified, denied, source) where source says where the lists came from.

    The running daemon's own lists win (its status reply may carry
    `runtime_policy: {notified, denied}`): then the two cannot disagree, and the
    shim does not pay for importing the policy package on every start.
    """
    rp = (status or {}).get("runtime_policy")
    if isinstance(rp, dict) and isinstance(rp.get("notified"), list) \
            and isinstance(rp.get("denied"), list):
        return [str(n) for n in rp["notified"]], [dict(d) for d in rp["denied"]], "daemon"
    try:
        from interceptd import policy  # type: ignore[attr-defined]

        notified_fn = policy.notified_syscalls
        denied_fn = policy.denied_syscalls
    except (ImportError, AttributeError):
        return list(FALLBACK_NOTIFIED), [dict(d) for d in FALLBACK_DENIED], "builtin"
    cfg = _Sections(raw)
    return list(notified_fn(cfg)), list(denied_fn(cfg)), "policy"
