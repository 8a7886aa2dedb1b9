"""interceptd-runc's fail-closed command table, and the launcher's parity with it.

The native launcher (launcher.c) decides pass / shim / refuse from argv alone,
with tables rendered from argv.py at build time. Here the built launcher (its
decide-only variant: the same decide() and tables, printing instead of acting)
and argv.decide() are run over many argv shapes and must agree on every one.
"""

from __future__ import annotations

import itertools
import random
import subprocess
from pathlib import Path

import pytest

from interceptd.runtime import argv
from interceptd.runtime.argv import PASS, REFUSE, SHIM


def kind(args: list[str]) -> str:
    return argv.decide(args)[0]


@pytest.mark.parametrize("args", [
    ["restore", "c1"],
    ["--root", "/r", "restore", "--bundle", "/b", "c1"],
    ["init"],
    ["frobnicate", "c1"],
    ["mounts", "add", "c1"],  # a crun command this shim does not know
    ["--deb", "list"],  # argp would take the prefix of --debug
    ["--log-lev", "warn", "list"],
    ["--no-such-flag", "list"],
    ["---root", "/r", "list"],
    ["-", "list"],
    ["--=x", "list"],
    ["--root"],  # a value missing
    ["--root", "/r"],  # no command
    ["--debug"],
    ["--"],
    ["--help", "create", "c1"],  # help only alone
    ["-v", "state", "c1"],
    ["--version=false", "create", "c1"],
    ["-dt", "list"],
])
def test_refused(args):
    k, reason, _ = argv.decide(args)
    assert k == REFUSE and reason, args
    inv = argv.parse(args)
    assert inv.decision == REFUSE and inv.reason == reason


def test_refusal_reasons_name_the_problem():
    assert "restore" in argv.decide(["restore", "c"])[1]
    assert "unknown command 'frob'" in argv.decide(["frob", "c"])[1]
    assert "unknown global option '--deb'" in argv.decide(["--deb", "list"])[1]
    assert "needs a value" in argv.decide(["--root"])[1]
    assert "no command" in argv.decide(["--root", "/r"])[1]


@pytest.mark.parametrize("args,expect", [
    ([], PASS),
    (["--version"], PASS),
    (["-v"], PASS),
    (["-V"], PASS),
    (["--help"], PASS),
    (["-?"], PASS),
    (["state", "c1"], PASS),
    (["--root", "/r", "--log", "/l", "--log-format", "json", "kill", "c1", "KILL"], PASS),
    (["--root=/r", "--systemd-cgroup", "start", "c1"], PASS),
    (["-root", "/r", "list"], PASS),  # urfave/cli's single dash
    (["--log-level", "warn", "state", "c1"], PASS),  # crun's, with a separate value
    (["--log-level=warn", "ps", "c1"], PASS),
    (["--cgroup-manager", "systemd", "pause", "c1"], PASS),
    (["--criu", "/usr/sbin/criu", "checkpoint", "c1"], PASS),
    (["--rootless", "false", "update", "--memory", "1M", "c1"], PASS),
    (["--debug=false", "events", "c1"], PASS),
    (["--", "list"], PASS),
    (["--root", "--weird-but-a-value", "list"], PASS),  # the value is taken as is
    (["create", "c1"], SHIM),
    (["--log-level", "warn", "create", "c1"], SHIM),
    (["run", "-d", "c1"], SHIM),
    (["exec", "c1", "ls"], SHIM),
    (["delete", "-f", "c1"], SHIM),
])
def test_decisions(args, expect):
    assert kind(args) == expect, args


def test_log_level_value_is_not_the_command():
    inv = argv.parse(["--log-level", "warn", "--root", "/r", "create", "--bundle", "/b", "c1"])
    assert inv.decision == SHIM
    assert inv.command == "create" and inv.container_id == "c1"
    assert inv.global_value("log-level") == "warn" and inv.global_value("root") == "/r"


@pytest.mark.parametrize("args,why", [
    (["create"], "no container id"),
    (["create", "--bundle", "/b"], "no container id"),
    (["run", "--detach"], "no container id"),
    (["delete"], "no container id"),
    (["exec"], "no container id"),
    (["exec", "-t"], "no container id"),
    (["create", "c1", "c2"], "exactly one container id"),
    (["create", "--bundle"], "needs a value"),
    (["create", "--frob", "c1"], "unknown create option '--frob'"),
    (["create", "-bX", "c1"], "unknown create option"),  # argp would read bundle=X
    (["exec", "--ca", "CAP_SYS_ADMIN", "c1", "sh"], "unknown exec option '--ca'"),
    (["exec", "-tc", "CAP_SYS_ADMIN", "c1", "sh"], "unknown exec option"),
    (["delete", "--regex", "c.*"], "unknown delete option"),
    (["create", "--", "../x"], "invalid container id"),
    (["create", "--", "a/b"], "invalid container id"),
    (["create", "--", "-b"], "invalid container id"),
    (["create", "--", ""], "invalid container id"),
    (["create", "--help"], "unknown create option"),
])
def test_shim_command_lines_refused(args, why):
    inv = argv.parse(args)
    assert inv.decision == REFUSE, args
    assert why in inv.reason and inv.reason.startswith(args[0] + ":"), inv.reason


def test_shim_command_lines_understood():
    inv = argv.parse(["create", "c1", "--bundle", "/y", "--config=/y/c.json", "--no-pivot"])
    assert inv.decision == SHIM and inv.container_id == "c1"
    assert inv.flag_values("bundle") == ["/y"] and inv.has_flag("no-pivot")
    inv = argv.parse(["run", "-b", "/x", "--keep", "-d", "--", "c2"])
    assert inv.decision == SHIM and inv.operands == ["c2"] and inv.has_flag("keep", "detach")
    inv = argv.parse(["exec", "--process", "/p.json", "c3"])
    assert inv.decision == SHIM and inv.operands == ["c3"]


# ------------------------------------------------------------------ the C side

def test_header_lists_every_entry():
    h = argv.c_header()
    for name in argv.GLOBAL_OPTIONS:
        assert f'"{name}", ' in h
    for name, (k, _) in argv.COMMANDS.items():
        assert f'{{"{name}", CMD_{k.upper()}}}' in h
    for a in argv.INFO_ARGS:
        assert f'"{a}",' in h


TOKENS = [
    "--root", "/r", "--root=/r", "-root", "--log", "--log=/l", "--log-format", "json",
    "--log-level", "warn", "--log-level=warn", "--debug", "--debug=false", "-debug",
    "--systemd-cgroup", "--cgroup-manager", "systemd", "--criu", "--rootless", "auto",
    "--deb", "--log-lev", "---root", "--", "-", "--=x", "-?", "--help", "-h", "--version",
    "-v", "-V", "--usage", "--help=1", "", "x",
    *argv.COMMANDS, "frob", "CREATE", "Create", "create ", "c1",
]


def _shapes() -> list[list[str]]:
    shapes = [[]] + [[t] for t in TOKENS]
    shapes += [list(p) for p in itertools.product(TOKENS, repeat=2)]
    rnd = random.Random(8)
    for _ in range(1500):
        shapes.append([rnd.choice(TOKENS) for _ in range(rnd.randint(3, 7))])
    return shapes


@pytest.fixture(scope="module")
def decide_launcher(tmp_path_factory) -> Path:
    from interceptd.runtime.launcher import build

    return Path(build(str(tmp_path_factory.mktemp("launcher") / "decide"), decide_only=True))


def test_launcher_decides_like_python(decide_launcher):
    shapes = _shapes()
    assert len(shapes) > 3000
    seen = set()
    for args in shapes:
        p = subprocess.run([str(decide_launcher), *args], capture_output=True, text=True,
                           check=True)
        py = kind(args)
        assert p.stdout.strip() == py, (args, p.stdout, py)
        seen.add(py)
        # The full parse never passes through what decide() does not, nor lets
        # through what it refuses (it may only refuse more, for SHIM commands).
        full = argv.parse(args).decision
        assert full == py or (py == SHIM and full == REFUSE), args
    assert seen == {PASS, SHIM, REFUSE}
