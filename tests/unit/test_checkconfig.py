"""interceptd --check-config: every error, each with its key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from interceptd import checkconfig, daemon
from interceptd.config import Config, unknown_keys

REPO = Path(__file__).resolve().parents[2]

BAD = """\
[daemon]
log_level = "loud"
colour = "blue"

[[rules]]
syscall = "sysfs"
action = "value"
value = 42

[[rules]]
syscall = "sysfs"
action = "errno"
errno = "EWHAT"
extra = 1

[[rules]]
syscall = "nosuchcall"
action = "continue"

[policy]
mounts = "yes"
natve = true

[runtime]
shared_paths = ["relative"]

[emulaton]
x = 1
"""


def test_every_error_with_key_and_line():
    got = [(p.line, p.key) for p in checkconfig.check_text(BAD)]
    assert got == [
        (2, "daemon.log_level"),
        (3, "daemon.colour"),
        (13, "rules[1].errno"),
        (14, "rules[1].extra"),
        (17, "rules[2].syscall"),
        (21, "policy.mounts"),
        (22, "policy.natve"),
        (25, "runtime.shared_paths"),
        (27, "emulaton"),
    ]


def test_duplicate_rule_and_syntax_error():
    dup = '[[rules]]\nsyscall = "sysfs"\naction = "continue"\n' * 2
    assert [(p.line, p.key) for p in checkconfig.check_text(dup)] == [(5, "rules[1].syscall")]
    [p] = checkconfig.check_text('[daemon]\nlog_level = "info"\nx = \n')
    assert p.line == 3 and "not valid TOML" in p.message


def test_dotted_and_inline_tables():
    text = 'daemon.log_level = "loud"\npolicy = { ptrace = 1 }\n'
    assert [(p.line, p.key) for p in checkconfig.check_text(text)] == [
        (1, "daemon.log_level"), (2, "policy.ptrace")]


@pytest.mark.parametrize("path", ["packaging/interceptd.toml"])
def test_shipped_config_is_clean(path, capsys):
    assert daemon.main(["--check-config", str(REPO / path)]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")


def test_cli_exit_code_and_format(tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_text(BAD)
    assert daemon.main(["--check-config", str(f)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{f}:2: daemon.log_level: ")
    assert err[-1] == f"{f}: 9 error(s)"


def test_daemon_load_keeps_unknown_sections_but_names_them():
    cfg = Config.from_dict({"policy": {"mounts": True, "nope": 1}, "extra": {}})
    assert unknown_keys(cfg) == ["policy.nope", "extra"]
