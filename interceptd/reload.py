"""`interceptctl reload`: apply what can change while containers run, name the rest.

Applied at once, to running containers too: the static `[[rules]]` (each attached
channel's table is rewritten under the registry lock, so a container attaching meanwhile
gets either the old or the new table, never half), `[daemon] log_level`, and
`[policy] native` (read when a container attaches). Read per container start without a
reload: `[runtime]` (interceptd-runc and the prepare service re-read the file when it
changes). Everything else decides the seccomp filters already installed in running
containers or the daemon's sockets, and needs a restart: the reply names each such key
whose value differs from the running one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from interceptd.config import Config
from interceptd.verdict import FAST_PYTHON, TableEntry, build_table

if TYPE_CHECKING:
    from interceptd.daemon import Daemon
    from interceptd.dispatch import Dispatcher

log = logging.getLogger("interceptd.reload")

# [policy] keys that only steer what happens at a container's attach.
LIVE_POLICY_KEYS = ("native",)


def changed_needing_restart(old: Config, new: Config) -> list[str]:
    out = []
    for key in ("state_dir", "metrics_address", "log_format"):
        if getattr(old.daemon, key) != getattr(new.daemon, key):
            out.append(f"daemon.{key}")
    sections = set(old.sections) | set(new.sections)
    for name in sorted(sections - {"runtime"}):
        a, b = old.sections.get(name, {}), new.sections.get(name, {})
        if name == "policy" and isinstance(a, dict) and isinstance(b, dict):
            keys = sorted((set(a) | set(b)) - set(LIVE_POLICY_KEYS))
            out += [f"policy.{k}" for k in keys if a.get(k) != b.get(k)]
        elif a != b:
            out.append(name)
    return out


def apply(daemon: Daemon, new: Config) -> dict[str, Any]:
    """Make `new` the running config where it can be; the control socket's answer."""
    from interceptd import syscalls

    old: Config = daemon.cfg
    applied: list[str] = []
    dispatcher = daemon._parts.get("dispatcher")
    restart = changed_needing_restart(old, new)
    if dispatcher is not None and old.rules != new.rules:
        handled = {e.syscall for e in dispatcher.table if e.action == FAST_PYTHON}
        # Built first: an unknown syscall name refuses the reload before anything changes.
        table = build_table(new.rules, sorted(handled), syscalls.nr)
        _swap_rules(daemon, dispatcher, table)
        applied.append(f"rules ({len(new.rules)})")
    if old.daemon.log_level != new.daemon.log_level:
        logging.getLogger().setLevel(new.daemon.log_level.upper())
        applied.append(f"daemon.log_level={new.daemon.log_level}")
    old_pol, new_pol = old.sections.get("policy", {}), new.sections.get("policy", {})
    if any(old_pol.get(k) != new_pol.get(k) for k in LIVE_POLICY_KEYS):
        from interceptd.handlers import scope

        scope.configure(new)
        applied.append("policy.native (containers attached from now on)")
    if old.sections.get("runtime") != new.sections.get("runtime"):
        applied.append("runtime (read at each container start)")
    # Keep the running values of what was not applied, so a later reload compares against
    # what really runs and `status` does not claim what is not in effect.
    new.daemon.state_dir = old.daemon.state_dir
    new.daemon.metrics_address = old.daemon.metrics_address
    new.daemon.log_format = old.daemon.log_format
    for name in restart:
        section, _, key = name.partition(".")
        if section == "policy" and key:
            pol = dict(new.sections.get("policy", {}))
            if key in old.sections.get("policy", {}):
                pol[key] = old.sections["policy"][key]
            else:
                pol.pop(key, None)
            new.sections["policy"] = pol
        elif section != "daemon":
            if section in old.sections:
                new.sections[section] = old.sections[section]
            else:
                new.sections.pop(section, None)
    daemon.cfg = new
    log.info("reloaded", extra={"fields": {"applied": ",".join(applied) or "-",
                                           "restart_needed": ",".join(restart) or "-"}})
    return {"applied": applied, "restart_needed": restart}


def _swap_rules(daemon: Daemon, dispatcher: Dispatcher, table: list[TableEntry]) -> None:
    actions = dispatcher._actions
    new_by_nr = {e.nr: e for e in table if e.action != FAST_PYTHON}
    python_nrs = {e.nr for e in table if e.action == FAST_PYTHON}
    with daemon.registry.lock:
        old_nrs = set(dispatcher._rule_nrs)
        for c in daemon.registry.list():
            ch = c.channel
            for nr in old_nrs - set(new_by_nr) - python_nrs:
                ch.clear_rule(nr)
            for e in new_by_nr.values():
                ch.set_rule(e.nr, actions[e.action], e.value)
        dispatcher.table = table
        dispatcher._rule_nrs = new_by_nr
