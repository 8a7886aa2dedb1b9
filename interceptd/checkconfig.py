"""`interceptd --check-config FILE`: every error of a config file, each with its key and line.

The daemon stops at the first error; an operator editing the file wants them all. Each
section's keys are checked one by one with the parsers the daemon and the shim use, and
unknown sections and keys (config.KNOWN_KEYS) are errors. tomllib gives a line only for
syntax errors, so a key's line is found by scanning the text for its table header and
its `key =` line (a key inside an inline table gets its table's line).
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass
from typing import Any

from interceptd import config as cfgmod
from interceptd.config import KNOWN_KEYS, ConfigError

_HEADER = re.compile(r"^\[(\[)?\s*([^\]]+?)\s*\]")


@dataclass(frozen=True)
class Problem:
    key: str
    line: int  # 0: not found in the text
    message: str

    def format(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line else path
        return f"{where}: {self.key}: {self.message}"


class _Locator:
    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()

    def line(self, table: str, index: int | None = None, key: str | None = None) -> int:
        """The line of `key` in table `table` (the index-th `[[table]]`), or of the
        table's header, or 0."""
        seen: dict[str, int] = {}
        inside = False
        header = 0
        for n, raw in enumerate(self._lines, 1):
            text = raw.strip()
            m = _HEADER.match(text)
            if m:
                name = m.group(2).replace('"', "").replace(" ", "")
                pos = seen.get(name, -1) + 1 if m.group(1) else None
                if m.group(1):
                    seen[name] = pos  # type: ignore[assignment]
                inside = name == table and pos == index
                if inside:
                    header = n
                continue
            if key is not None:
                if inside and re.match(rf'^"?{re.escape(key)}"?\s*=', text):
                    return n
                # `table.key = ...` or `table = {...}` at the top level
                if not seen and header == 0 and re.match(
                        rf'^{re.escape(table)}\s*(\.\s*"?{re.escape(key)}"?\s*)?=', text):
                    return n
        return header


def check_text(text: str) -> list[Problem]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        return [Problem("-", int(m.group(1)) if m else 0, f"not valid TOML: {e}")]
    loc = _Locator(text)
    out: list[Problem] = []
    for name, value in data.items():
        if name not in KNOWN_KEYS:
            out.append(Problem(name, loc.line(name, None, None) or loc.line(name, 0, None),
                               f"unknown section (known: {', '.join(sorted(KNOWN_KEYS))})"))
            continue
        if name == "rules":
            out += _check_rules(value, loc)
            continue
        if not isinstance(value, dict):
            out.append(Problem(name, loc.line(name, None, ""), "must be a table"))
            continue
        for key in value:
            if key not in KNOWN_KEYS[name]:
                out.append(Problem(f"{name}.{key}", loc.line(name, None, key),
                                   f"unknown key (known: {', '.join(sorted(KNOWN_KEYS[name]))})"))
        checker = {"daemon": _check_daemon, "policy": _check_policy,
                   "handlers": _check_handlers, "runtime": _check_runtime,
                   "ebpf": _check_ebpf, "metrics": _check_metrics}[name]
        for key, msg in checker(value, data):
            out.append(Problem(f"{name}.{key}" if key else name,
                               loc.line(name, None, key or None), msg))
    return sorted(out, key=lambda p: (p.line, p.key))


def _check_daemon(d: dict[str, Any], _data: dict[str, Any]) -> list[tuple[str, str]]:
    parsers = {"metrics_address": cfgmod.parse_metrics_address,
               "log_level": cfgmod.parse_log_level, "log_format": cfgmod.parse_log_format}
    out = []
    for key, parse in parsers.items():
        if key in d:
            try:
                parse(d[key])
            except ConfigError as e:
                out.append((key, str(e)))
    if "state_dir" in d and (not isinstance(d["state_dir"], str)
                             or not d["state_dir"].startswith("/")):
        out.append(("state_dir", "must be an absolute path"))
    return out


def _check_policy(p: dict[str, Any], _data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, "must be true or false") for k, v in p.items()
            if k in KNOWN_KEYS["policy"] and not isinstance(v, bool)]


def _check_handlers(h: dict[str, Any], _data: dict[str, Any]) -> list[tuple[str, str]]:
    mods = h.get("modules", [])
    if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
        return [("modules", "must be a list of module names")]
    return []


def _check_ebpf(e: dict[str, Any], _data: dict[str, Any]) -> list[tuple[str, str]]:
    """What Daemon._start_ebpf refuses."""
    from interceptd import syscalls

    out = []
    if "enabled" in e and not isinstance(e["enabled"], bool):
        out.append(("enabled", "must be true or false"))
    names = e.get("sensitive", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        out.append(("sensitive", "must be a list of syscall names"))
    elif bad := [n for n in names if n not in syscalls.NUMBERS]:
        out.append(("sensitive", f"unknown syscall(s) {', '.join(bad)}"))
    return out


def _check_metrics(m: dict[str, Any], _data: dict[str, Any]) -> list[tuple[str, str]]:
    """What plugins.metrics_containers (the daemon's reading of [metrics]) refuses."""
    from interceptd.plugins import metrics_containers

    try:
        metrics_containers(cfgmod.Config(sections={"metrics": m}))
    except ConfigError as e:
        return [("containers", str(e).split(": ", 1)[-1])]
    return []


def _check_runtime(rt: dict[str, Any], data: dict[str, Any]) -> list[tuple[str, str]]:
    """The shim's own parser, which stops at its first error: its message names the key."""
    from interceptd.runtime import settings

    known = {k: v for k, v in rt.items() if k in KNOWN_KEYS["runtime"]}
    try:
        settings.from_dict({**data, "runtime": known}, {})
    except settings.SettingsError as e:
        msg = str(e)
        m = re.search(r"\[runtime\] (\w+)", msg)
        key = m.group(1) if m and m.group(1) in KNOWN_KEYS["runtime"] else (
            "runtime" if "runtime" in msg else "")
        return [(key, msg)]
    return []


def _check_rules(rules: Any, loc: _Locator) -> list[Problem]:
    if not isinstance(rules, list):
        return [Problem("rules", loc.line("rules", None, ""),
                        "must be an array of tables ([[rules]])")]
    from interceptd import syscalls

    out: list[Problem] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(rules):
        where = f"rules[{i}]"
        if not isinstance(r, dict):
            out.append(Problem(where, loc.line("rules", i), "must be a table"))
            continue
        for key in r:
            if key not in KNOWN_KEYS["rules"]:
                out.append(Problem(f"{where}.{key}", loc.line("rules", i, key), "unknown key"))
        known = {k: v for k, v in r.items() if k in KNOWN_KEYS["rules"]}
        try:
            rule = cfgmod._parse_rule(i, known)
        except ConfigError as e:
            msg = str(e)
            key = _rule_key(msg.split(": ", 1)[-1])
            out.append(Problem(f"{where}.{key}", loc.line("rules", i, key)
                               or loc.line("rules", i), msg))
            continue
        try:
            syscalls.nr(rule.syscall)
        except (KeyError, ValueError):
            out.append(Problem(f"{where}.syscall", loc.line("rules", i, "syscall"),
                               f"unknown syscall {rule.syscall!r}"))
        if rule.syscall in seen:
            out.append(Problem(f"{where}.syscall", loc.line("rules", i, "syscall"),
                               f"syscall {rule.syscall!r} already has rules[{seen[rule.syscall]}]"))
        seen.setdefault(rule.syscall, i)
    return out


def _rule_key(msg: str) -> str:
    """The key a rule's error is about: its first quoted key name, else the first named."""
    quoted = [k for k in re.findall(r"'(\w+)'", msg) if k in KNOWN_KEYS["rules"]]
    if quoted:
        return quoted[0]
    words = re.findall(r"\w+", msg)
    return next((w for w in words if w in KNOWN_KEYS["rules"]), "action")


def main(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        print(f"{path}: cannot read: {e}", file=sys.stderr)
        return 2
    problems = check_text(text)
    for p in problems:
        print(p.format(path), file=sys.stderr)
    if problems:
        print(f"{path}: {len(problems)} error(s)", file=sys.stderr)
        return 1
    print(f"{path}: OK")
    return 0
