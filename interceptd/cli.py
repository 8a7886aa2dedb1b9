"""`interceptctl`: talk to a running interceptd over its control socket."""

from __future__ import annotations

import argparse
import errno as errno_mod
import json
import os
import sys
import time
from typing import Any, TextIO

from interceptd import control
from interceptd.config import DEFAULT_STATE_DIR


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="interceptctl")
    p.add_argument("--state-dir", default=os.environ.get("INTERCEPTD_STATE_DIR",
                                                         DEFAULT_STATE_DIR))
    p.add_argument("--timeout", type=float, default=5.0, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("status", "the daemon's state and counters"),
                        ("containers", "the containers attached to the daemon"),
                        ("probe", "kernel features on this host (no daemon needed)"),
                        ("policy", "what interceptd-runc adds to every container's filter")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("-o", "--output", choices=("table", "json"), default="table")
        if name == "containers":
            s.add_argument("-v", "--verbose", action="store_true",
                           help="also cgroups, id maps and the eBPF counts")
    st = sub.add_parser("stats", help="top syscalls per container (the eBPF counters)")
    st.add_argument("-o", "--output", choices=("table", "json"), default="table")
    st.add_argument("-n", "--top", type=int, default=10, help="syscalls per container")
    st.add_argument("-w", "--watch", type=float, nargs="?", const=2.0, default=None,
                    metavar="SECONDS", help="refresh like top (default every 2 s)")
    r = sub.add_parser("reload", help="re-read the config file; apply what can change live")
    r.add_argument("-o", "--output", choices=("table", "json"), default="table")
    sub.add_parser("restart", help="hand every fd to a new daemon process (loss-free; "
                                   "an upgrade's new code)")
    t = sub.add_parser("trace", help="stream decisions as they happen")
    t.add_argument("-o", "--output", choices=("compact", "json"), default="compact")
    t.add_argument("--container")
    t.add_argument("--syscall")
    t.add_argument("--verdict")
    t.add_argument("--source", choices=("seccomp", "bpf"))
    t.add_argument("--pid", type=int, help="the caller's pid (thread id) as the host sees it")
    t.add_argument("--comm", help="the caller's command name")
    t.add_argument("--count", type=int, default=0, help="stop after N events (0: forever)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = parse_args(argv)
    out = out or sys.stdout
    sock = os.path.join(args.state_dir, "control.sock")
    if args.cmd == "probe":
        return _probe(args, out)
    try:
        if args.cmd == "trace":
            return _trace(sock, args, out)
        if args.cmd == "stats":
            return _stats(sock, args, out)
        if args.cmd == "restart":
            return _restart(sock, args, out)
        cmd = "status" if args.cmd == "policy" else args.cmd
        resp = control.request(sock, {"cmd": cmd}, timeout=args.timeout)
        if args.cmd == "containers" and args.verbose and resp.get("ok"):
            st = control.request(sock, {"cmd": "stats"}, timeout=args.timeout)
            counts = st.get("containers", {}) if st.get("ok") else {}
            net = control.request(sock, {"cmd": "network"}, timeout=args.timeout)
            nets = net.get("containers", {}) if net.get("ok") else {}
            for c in resp["containers"]:
                c["ebpf"] = counts.get(c.get("id"), {})
                c["network"] = nets.get(c.get("id"))
    except (OSError, ConnectionError, ValueError) as e:
        print(f"interceptctl: cannot reach interceptd at {sock}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if not resp.get("ok"):
        print(f"interceptctl: {resp.get('error', 'request failed')}", file=sys.stderr)
        return 1
    resp.pop("ok", None)
    if args.cmd == "policy":
        resp = resp.get("runtime_policy") or {"notified": [], "denied": []}
    if args.output == "json":
        out.write(json.dumps(resp, indent=2, sort_keys=True) + "\n")
    elif args.cmd == "policy":
        out.write(format_policy(resp))
    elif args.cmd == "status":
        out.write(format_status(resp))
    elif args.cmd == "reload":
        out.write(format_reload(resp))
    elif args.verbose:
        out.write(format_containers_verbose(resp["containers"]))
    else:
        out.write(format_containers(resp["containers"]))
    return 0


def _restart(sock: str, args: argparse.Namespace, out: TextIO) -> int:
    """Ask for the hand-over, then wait until the successor answers (docs/operations.md)."""
    resp = control.request(sock, {"cmd": "restart"}, timeout=max(args.timeout, 60.0))
    if not resp.get("ok"):
        print(f"interceptctl: {resp.get('error', 'restart failed')}", file=sys.stderr)
        return 1
    new = resp.get("successor")
    deadline = time.monotonic() + max(args.timeout, 30.0)
    while time.monotonic() < deadline:
        try:
            st = control.request(sock, {"cmd": "status"}, timeout=args.timeout)
        except (OSError, ValueError):
            st = {}
        if st.get("pid") == new:
            h = st.get("handover") or {}
            out.write(f"restarted: pid {resp.get('pid')} -> {new}; "
                      f"{h.get('containers', 0)} container(s) kept, "
                      f"{h.get('replayed', 0)} pending call(s) answered\n")
            return 0
        time.sleep(0.05)
    print(f"interceptctl: successor {new} did not answer in time", file=sys.stderr)
    return 1


def format_status(s: dict[str, Any]) -> str:
    lines = [
        f"version         {s.get('version')}",
        f"pid             {s.get('pid')}",
        f"uptime          {_duration(float(s.get('uptime', 0)))}",
        f"state dir       {s.get('state_dir')}",
        f"metrics         {s.get('metrics_address')}",
        f"containers      {s.get('containers')}",
        f"dropped events  {s.get('dropped_events', 0)}",
    ]
    eb = s.get("ebpf")
    if isinstance(eb, dict):
        lines.append("ebpf            " + (
            f"up ({eb.get('tracked', 0)} containers tracked, loaded in {eb.get('seconds')} s, "
            f"headers {eb.get('headers')})" if eb.get("up")
            else f"off: {_clean(eb.get('reason') or 'unknown')}"))
    ho = s.get("handover")
    if isinstance(ho, dict) and (ho.get("containers") or ho.get("discarded")):
        lines.append(f"restarted       kept {ho.get('containers', 0)} container(s), "
                     f"answered {ho.get('replayed', 0)} pending call(s), "
                     f"discarded {len(ho.get('discarded') or [])}, "
                     f"adoption {ho.get('pause_ms', 0)} ms")
    feats = s.get("features") or {}
    if feats:
        lines.append("features        " + " ".join(
            f"{k}={_yes_no(v)}"
            for k, v in sorted(feats.items())))
    counters = s.get("counters") or {}
    if counters:
        lines.append("counters")
        for name in sorted(counters):
            for label, n in sorted(counters[name].items()):
                lines.append(f"  {name}{'{' + label + '}' if label else ''}  {n}")
    return "\n".join(lines) + "\n"


def format_reload(r: dict[str, Any]) -> str:
    lines = [f"applied: {', '.join(r.get('applied') or []) or 'nothing changed'}"]
    if r.get("restart_needed"):
        lines.append("needs a restart (running values kept): "
                     + ", ".join(r["restart_needed"]))
    lines += [f"warning: {w}" for w in r.get("warnings") or []]
    return "\n".join(lines) + "\n"


def _yes_no(v: Any) -> str:
    return "yes" if v is True else "no" if v is False else str(v)


def format_probe(feats: dict[str, Any]) -> str:
    reasons = feats.get("reasons") or {}
    rows = {k: v for k, v in feats.items() if k != "reasons"}
    width = max((len(k) for k in rows), default=0)
    return "".join(
        f"{k.ljust(width)}  {_yes_no(v)}"
        + (f" ({reasons[k]})" if v is False and k in reasons else "") + "\n"
        for k, v in rows.items())


def _probe(args: argparse.Namespace, out: TextIO) -> int:
    from interceptd.probe import probe

    feats = probe()
    if args.output == "json":
        out.write(json.dumps(feats, indent=2, sort_keys=True) + "\n")
    else:
        out.write(format_probe(feats))
    return 0


def format_policy(p: dict[str, Any]) -> str:
    lines = ["notified (vetted by the daemon):"]
    lines += [f"  {name}" for name in p.get("notified", [])]
    lines.append("denied in the filter:")
    for rule in p.get("denied", []):
        names = ",".join(rule.get("names", []))
        cond = " (with argument conditions)" if rule.get("args") else ""
        lines.append(f"  {names} -> errno {rule.get('errnoRet')}{cond}")
    return "\n".join(lines) + "\n"


def format_containers(cs: list[dict[str, Any]]) -> str:
    rows = [("ID", "INIT PID", "FDS", "AGE", "CALLS FAST/PY/NATIVE", "BUNDLE")]
    now = time.time()
    for c in cs:
        calls = c.get("calls") or {}
        rows.append((
            str(c.get("id")), str(c.get("init_pid")), str(len(c.get("notify_fds", []))),
            _duration(now - float(c.get("started_at", now))),
            "/".join(str(calls.get(k, 0)) for k in ("fast", "python", "native")),
            str(c.get("bundle")),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        + "\n"
        for r in rows
    )


_RED, _GREEN, _CYAN, _DIM, _RESET = "\x1b[31m", "\x1b[32m", "\x1b[36m", "\x1b[2m", "\x1b[0m"


def format_containers_verbose(cs: list[dict[str, Any]], top: int = 5) -> str:
    """The table, then per container its cgroup v2 path, id maps and eBPF counts."""
    lines = [format_containers(cs).rstrip("\n")]
    for c in cs:
        lines.append("")
        lines.append(f"{c.get('id')}")
        cg = (c.get("cgroup_paths") or {}).get("")
        lines.append(f"  cgroup v2   {cg if cg is not None else '-'}")
        for key in ("uid_map", "gid_map"):
            maps = "; ".join(" ".join(str(x) for x in m) for m in c.get(key) or []) or "-"
            lines.append(f"  {key.replace('_', ' '):<11} {maps}")
        counts = c.get("ebpf") or {}
        if counts:
            total = sum(v[0] for v in counts.values())
            errs = sum(v[1] for v in counts.values())
            best = sorted(counts.items(), key=lambda kv: -kv[1][0])[:top]
            lines.append(f"  syscalls    {total} ({errs} failed); top: "
                         + ", ".join(f"{k} {v[0]}" for k, v in best))
        else:
            lines.append("  syscalls    - (not counted: see `interceptctl stats`)")
        net = c.get("network")
        if isinstance(net, dict):
            lines.append(f"  network     - ({_clean(net.get('error'))})")
        elif net:
            lines.append("  network     IFACE            RX BYTES   RX PKTS  RX DROP"
                         "     TX BYTES   TX PKTS  TX DROP")
            for i in net:
                lines.append(
                    f"              {_clean(i['name']):<12} {i['rx_bytes']:>12} "
                    f"{i['rx_packets']:>9} {i['rx_dropped']:>8} {i['tx_bytes']:>12} "
                    f"{i['tx_packets']:>9} {i['tx_dropped']:>8}")
    return "\n".join(lines) + "\n"


def format_event(ev: dict[str, Any], colour: bool = False) -> str:
    """One line: time, source, container, pid/comm, the call, its outcome, why."""
    t = float(ev.get("time", 0))
    ts = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    outcome = str(ev.get("verdict", "?"))
    err = int(ev.get("errno") or 0)
    if outcome == "errno":
        outcome = f"errno={err}" + (f"({errno_mod.errorcode[err]})"
                                    if err in errno_mod.errorcode else "")
    elif "value" in ev:
        outcome = f"{outcome}={ev['value']}"
    # Decoded arguments (path, fstype, flags…) read better than raw pointers.
    details = {k: v for k, v in (ev.get("details") or {}).items()
               if k not in ("tgid", "args_seen")}
    if details:
        args = ", ".join(f"{k}={v!r}" for k, v in details.items())
    elif (ev.get("details") or {}).get("args_seen") is False:
        args = "?"
    else:
        args = ",".join(hex(a) for a in ev.get("args", []))
    source = str(ev.get("source", "seccomp"))
    if colour:
        hue = _RED if ev.get("verdict") == "errno" else _GREEN
        outcome = f"{hue}{outcome}{_RESET}"
        source = f"{_CYAN if source == 'bpf' else ''}{source:<7}{_RESET}"
        ts = f"{_DIM}{ts}{_RESET}"
    else:
        source = f"{source:<7}"
    return (f"{ts} {source} {_clean(ev.get('container'))} {ev.get('pid')}/"
            f"{_clean(ev.get('comm'))} {_clean(ev.get('syscall'))}({_clean(args)}) -> "
            f"{outcome} [{_clean(ev.get('reason'))}]\n")


def _clean(v: Any) -> str:
    """A container chooses its comm (prctl) and much of what reasons quote: escape
    control characters so a trace line cannot drive the operator's terminal."""
    text = str(v)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _colour(out: TextIO) -> bool:
    return out.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _trace(sock: str, args: argparse.Namespace, out: TextIO) -> int:
    req: dict[str, Any] = {"cmd": "trace", "count": args.count}
    for key in ("container", "syscall", "verdict", "source", "pid", "comm"):
        if getattr(args, key) is not None and getattr(args, key) != "":
            req[key] = getattr(args, key)
    colour = _colour(out)
    try:
        for i, obj in enumerate(control.stream(sock, req, timeout=args.timeout)):
            if i == 0:
                if not obj.get("ok"):
                    print(f"interceptctl: {obj.get('error')}", file=sys.stderr)
                    return 1
                continue
            if obj.get("end"):
                if obj.get("dropped"):
                    print(f"interceptctl: {obj['dropped']} events dropped", file=sys.stderr)
                return 0
            out.write(json.dumps(obj) + "\n" if args.output == "json"
                      else format_event(obj, colour))
            out.flush()
    except KeyboardInterrupt:
        return 0
    return 0


def format_stats(s: dict[str, Any], top: int, previous: dict[str, Any] | None = None,
                 interval: float = 0.0) -> str:
    """Per container its `top` syscalls by count (and per second since `previous`)."""
    eb = s.get("ebpf") or {}
    if not eb.get("up"):
        return f"eBPF layer off: {eb.get('reason') or 'unknown'}\n"
    lines = []
    before = (previous or {}).get("containers", {})
    for cid, calls in sorted(s.get("containers", {}).items()):
        total = sum(v[0] for v in calls.values())
        errs = sum(v[1] for v in calls.values())
        lines.append(f"{cid}  calls {total}  errors {errs}")
        rows = sorted(calls.items(), key=lambda kv: -kv[1][0])[:max(1, top)]
        for name, (n, err) in rows:
            rate = ""
            if previous is not None and interval > 0:
                old = before.get(cid, {}).get(name, [0, 0])[0]
                rate = f"  {(n - old) / interval:>10.0f}/s"
            lines.append(f"  {name:<20} {n:>12}  {err:>8} err{rate}")
    return "\n".join(lines) + "\n" if lines else "no container tracked\n"


def _stats(sock: str, args: argparse.Namespace, out: TextIO) -> int:
    previous = None
    while True:
        resp = control.request(sock, {"cmd": "stats"}, timeout=args.timeout)
        if not resp.get("ok"):
            print(f"interceptctl: {resp.get('error', 'request failed')}", file=sys.stderr)
            return 1
        resp.pop("ok", None)
        if args.output == "json":
            out.write(json.dumps(resp, indent=2, sort_keys=True) + "\n")
        else:
            if args.watch and out.isatty():
                out.write("\x1b[H\x1b[2J")
            out.write(format_stats(resp, args.top, previous, args.watch or 0.0))
        out.flush()
        if not args.watch:
            return 0
        previous = resp
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def _duration(sec: float) -> str:
    sec = max(0.0, sec)
    if sec < 60:
        return f"{sec:.0f}s"
    if sec < 3600:
        return f"{sec // 60:.0f}m{sec % 60:.0f}s"
    return f"{sec // 3600:.0f}h{sec % 3600 // 60:.0f}m"


if __name__ == "__main__":
    sys.exit(main())
