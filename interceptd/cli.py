"""`interceptctl`: talk to a running interceptd over its control socket."""

from __future__ import annotations

import argparse
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
    r = sub.add_parser("reload", help="re-read the config file; apply what can change live")
    r.add_argument("-o", "--output", choices=("table", "json"), default="table")
    t = sub.add_parser("trace", help="stream decisions as they happen")
    t.add_argument("-o", "--output", choices=("compact", "json"), default="compact")
    t.add_argument("--container")
    t.add_argument("--syscall")
    t.add_argument("--verdict")
    t.add_argument("--source", choices=("seccomp",))  # "bpf" once the eBPF layer exists
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
        cmd = "status" if args.cmd == "policy" else args.cmd
        resp = control.request(sock, {"cmd": cmd}, timeout=args.timeout)
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
    else:
        out.write(format_containers(resp["containers"]))
    return 0


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
    width = max((len(k) for k in feats), default=0)
    return "".join(f"{k.ljust(width)}  {_yes_no(v)}\n" for k, v in feats.items())


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


def format_event(ev: dict[str, Any]) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(float(ev.get("time", 0))))
    outcome = ev.get("verdict", "?")
    if outcome == "errno":
        outcome = f"errno={ev.get('errno')}"
    elif "value" in ev:
        outcome = f"{outcome}={ev['value']}"
    # Decoded arguments (path, fstype, flags…) read better than raw pointers.
    details = ev.get("details") or {}
    if details:
        args = ", ".join(f"{k}={v!r}" for k, v in details.items())
    else:
        args = ",".join(hex(a) for a in ev.get("args", []))
    return (f"{ts} {ev.get('container')} {ev.get('pid')}/{ev.get('comm')} "
            f"{ev.get('syscall')}({args}) -> {outcome} [{ev.get('reason')}]\n")


def _trace(sock: str, args: argparse.Namespace, out: TextIO) -> int:
    req: dict[str, Any] = {"cmd": "trace", "count": args.count}
    for key in ("container", "syscall", "verdict", "source"):
        if getattr(args, key):
            req[key] = getattr(args, key)
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
            out.write(json.dumps(obj) + "\n" if args.output == "json" else format_event(obj))
            out.flush()
    except KeyboardInterrupt:
        return 0
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
