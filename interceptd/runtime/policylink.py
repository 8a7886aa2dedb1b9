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


def _policy_config(raw: dict, path: str | None):
    try:
        from interceptd.config import Config  # type: ignore[import-not-found]
    except ImportError:
        return raw
    try:
        return Config.load(path)
    except Exception:
        return raw


def syscalls(raw: dict, path: str | None) -> tuple[list[str], list[dict], str]:
    """(notified, denied, source) where source says where the lists came from."""
    try:
        from interceptd import policy  # type: ignore[attr-defined]

        notified_fn = policy.notified_syscalls
        denied_fn = policy.denied_syscalls
    except (ImportError, AttributeError):
        return list(FALLBACK_NOTIFIED), [dict(d) for d in FALLBACK_DENIED], "builtin"
    cfg = _policy_config(raw, path)
    return list(notified_fn(cfg)), list(denied_fn(cfg)), "policy"
