"""The rules the shim adds to every container's filter, from the daemon's own policy.

There is no built-in fallback: a list kept here would drift from interceptd.policy (it
did: issue 9), and a container must never start with a filter the daemon did not vet.
When the policy cannot be imported, the container is refused with the reason.
"""

from __future__ import annotations

from .errors import Refused


class _Sections:
    """What interceptd.policy reads from a Config (its `sections`), without
    importing interceptd.config on every container start."""

    def __init__(self, raw: dict) -> None:
        self.sections = raw


def syscalls(raw: dict, path: str | None, status: dict | None = None
             ) -> tuple[list[dict | str], list[dict], str]:
    """(notify, denied, source): notify is a list of OCI SCMP_ACT_NOTIFY rules (or bare
    names from a daemon that predates the rules), denied the deny list's rules, and
    source says where they came from.

    The running daemon's own lists win (its status reply carries
    `runtime_policy: {notify, notified, denied}`): then the two cannot disagree, and the
    shim does not pay for importing the policy package on every start.
    """
    rp = (status or {}).get("runtime_policy")
    if isinstance(rp, dict) and isinstance(rp.get("denied"), list):
        if isinstance(rp.get("notify"), list):
            return [dict(r) for r in rp["notify"]], [dict(d) for d in rp["denied"]], "daemon"
        if isinstance(rp.get("notified"), list):
            return [str(n) for n in rp["notified"]], [dict(d) for d in rp["denied"]], "daemon"
    try:
        from interceptd import policy
    except ImportError as e:
        raise Refused(f"interceptd's policy package cannot be imported ({e}): refusing to "
                      f"start a container without its seccomp rules (config {path})") from None
    cfg = _Sections(raw)
    return list(policy.notify_rules(cfg)), list(policy.denied_syscalls(cfg)), "policy"
