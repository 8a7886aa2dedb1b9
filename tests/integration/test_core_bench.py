"""The benchmark's C programs build and measure what they claim (tiny runs)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from interceptd import core
from tests.integration import test_core_support as sup

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def progs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bench")
    built = {}
    for name in ("syscall_loop", "agent_minimal"):
        built[name] = out / name
        subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
                        str(built[name]), str(BENCH / f"{name}.c")], check=True)
    return built


def test_syscall_loop_unfiltered(progs: dict[str, Path]) -> None:
    r = json.loads(subprocess.run([progs["syscall_loop"], "-n", "2000"], check=True,
                                  capture_output=True, text=True).stdout)
    assert r["n"] == 2000 and r["nr"] == 139
    assert 0 < r["min_ns"] <= r["p50_ns"] <= r["p99_ns"]
    assert r["ret"] > 0  # sysfs(3): the number of filesystem types


def test_minimal_agent_answers_every_call(progs: dict[str, Path]) -> None:
    r = json.loads(subprocess.run(
        [progs["agent_minimal"], "-v", "4242", progs["syscall_loop"], "-n", "2000"],
        check=True, capture_output=True, text=True, timeout=60).stdout)
    assert (r["n"], r["ret"], r["errno"]) == (2000, 4242, 0)


def test_launcher_mode_feeds_the_engine(progs: dict[str, Path]) -> None:
    e = core.Engine()
    ch = e.channel(1)
    ch.set_rule(139, core.ACT_VALUE, 99)
    mine, theirs = socket.socketpair()
    p = subprocess.Popen([progs["agent_minimal"], "-f", str(theirs.fileno()),
                          progs["syscall_loop"], "-n", "2000"],
                         pass_fds=[theirs.fileno()], stdout=subprocess.PIPE, text=True)
    theirs.close()
    try:
        e.attach(ch, sup.recv_fd(mine))
        out, _ = p.communicate(timeout=60)
    finally:
        mine.close()
        e.close()
    r = json.loads(out)
    assert (r["n"], r["ret"], p.returncode) == (2000, 99, 0)
    assert ch.stats()["fast"] == 3000  # 1000 warm-up calls + 2000 timed
