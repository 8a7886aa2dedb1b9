"""Hostile input on the daemon's three sockets (issue 14, Tests: hostile input).

Hypothesis generates 10,000 messages in all: on the listenerPath socket (OCI state
JSON, mutated or not, with 0-3 fds that are not seccomp notify fds), on control.sock
(JSON lines, known and unknown commands, garbage) and on runtime.sock (the launcher's
prepare protocol). Meanwhile a container attached to the same daemon loops over a
notified call; every answer it got must be the right one, the daemon stays up and its
fd count is back to where it was.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.harness import Bundle, Daemon, Runtime
from tests.harness.runtime import output

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "unit" / "data"
RULES = [{"syscall": "sysfs", "action": "value", "value": 77}]
TOTAL = 10_000
PER_SOCKET = {"listener": 4000, "control": 3000, "runtime": 3000}
assert sum(PER_SOCKET.values()) == TOTAL
ANSWER = "ret=77 errno=0"
# Messages per generated example: hypothesis's per-example cost (milliseconds on a
# loaded machine) would otherwise dominate the run.
BATCH = 10


def batch(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(strategy, min_size=BATCH, max_size=BATCH)

SETTINGS = dict(database=None, deadline=None, derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck))

json_scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=10)
# Cheaper to draw than json_values, for the fields a message has several of.
cheap_json = json_scalars | st.lists(json_scalars, max_size=3)
odd_text = st.sampled_from(["", "..", "/", "../../etc", "a" * 300, "\0", "x\ny", "ic-victim",
                            "/proc/self/fd/0", "é", " "])
pids = st.sampled_from([0, -1, 1, os.getpid(), 2 ** 31, 2 ** 63, 4194304])


def _base_state() -> dict:
    return json.loads((DATA / "runc-init.json").read_bytes())


@st.composite
def oci_state(draw) -> bytes:
    """The runtimes' message, with some fields replaced, removed or given odd values."""
    doc = _base_state()
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.sampled_from(["top", "state"]))
        target = doc if where == "top" or not isinstance(doc.get("state"), dict) else doc["state"]
        key = draw(st.sampled_from(["ociVersion", "fds", "pid", "metadata", "state", "id",
                                    "status", "bundle", "annotations", "extra"]))
        op = draw(st.sampled_from(["drop", "value", "pid", "text", "status"]))
        if op == "drop":
            target.pop(key, None)
        elif op == "pid":
            target[key] = draw(pids)
        elif op == "text":
            target[key] = draw(odd_text | st.text(max_size=64))
        elif op == "status":
            target[key] = draw(st.sampled_from(["creating", "created", "running", "stopped",
                                                "paused", ""]))
        else:
            target[key] = draw(json_values)
    text = json.dumps(doc, indent=draw(st.sampled_from([None, 2])))
    cut = draw(st.sampled_from([None, None, None, 0.5]))
    data = text.encode("utf-8", "surrogatepass")
    return data[: int(len(data) * cut)] if cut else data


listener_payloads = oci_state() | st.binary(max_size=2048) | json_values.map(
    lambda v: json.dumps(v).encode())

CONTROL_CMDS = ["status", "containers", "reload", "stats", "network", "trace", "nope", "",
                "STATUS"]


@st.composite
def control_line(draw) -> bytes:
    kind = draw(st.sampled_from(["json", "json", "json", "raw", "value"]))
    if kind == "raw":
        return draw(st.binary(max_size=1024))
    if kind == "value":
        return json.dumps(draw(json_values)).encode() + b"\n"
    req: dict = {"cmd": draw(st.sampled_from(CONTROL_CMDS) | st.text(max_size=10)
                             | json_values)}
    for key in draw(st.lists(st.sampled_from(["container", "syscall", "verdict", "source",
                                              "pid", "comm", "count", "x"]), max_size=4)):
        req[key] = draw(cheap_json | pids | st.integers(-5, 5))
    return json.dumps(req).encode() + draw(st.sampled_from([b"\n", b"\n\n", b"", b"\r\n"]))


RUNTIME_WORDS = ["create", "run", "exec", "delete", "start", "state", "kill", "--bundle",
                 "--root", "--pid-file", "--console-socket", "--log", "--force", "-d",
                 "--process", "/nonexistent-ic-dir/bundle", "ic-nope", "--", "-", "spec"]


@st.composite
def runtime_request(draw, state_dir: str) -> bytes:
    kind = draw(st.sampled_from(["json", "json", "json", "raw", "value"]))
    if kind == "raw":
        return draw(st.binary(max_size=1024))
    if kind == "value":
        return json.dumps(draw(cheap_json)).encode() + b"\n"
    req: dict = {
        # No word is an absolute path whose parent exists: the service appends refusals
        # to the --log file it is given (as root; relative ones it ignores).
        "argv": draw(st.lists(st.sampled_from(RUNTIME_WORDS)
                              | st.text(max_size=20).filter(lambda t: not t.startswith("/")),
                              max_size=8) | cheap_json),
        "cwd": draw(st.sampled_from(["/", "/nonexistent", ""]) | cheap_json),
    }
    if draw(st.booleans()):
        req["env"] = draw(st.dictionaries(
            st.sampled_from(["INTERCEPTD_RUNTIME", "INTERCEPTD_STATE_DIR", "INTERCEPTD_CONFIG",
                             "PATH", "LD_PRELOAD"]),
            st.sampled_from([state_dir, "runc", "crun", "/bin/false", "/nonexistent.toml"])
            | st.text(max_size=20), max_size=4) | cheap_json)
    for key in draw(st.lists(st.sampled_from(["x", "argv0", "fds"]), max_size=2)):
        req[key] = draw(cheap_json)
    tail = draw(st.sampled_from([b"", b"", b"RC 0\n", b"RC 0 placed\n", b"RC x\n", b"RC\n"]))
    return json.dumps(req).encode() + b"\n" + tail


def _fd_of(kind: str, keep: list[int]) -> int:
    if kind == "pipe":
        r, w = os.pipe()
        keep += [r, w]
        return w
    if kind == "devnull":
        fd = os.open("/dev/null", os.O_RDONLY)
    else:
        a, b = socket.socketpair()
        fd = a.detach()
        b.close()
    keep.append(fd)
    return fd


def _exchange(path: str, payload: bytes, fds: list[int] | None = None,
              first_line: bool = False) -> bytes:
    """Send payload (with fds on the first chunk), half-close, read the reply to EOF
    (or its first line: a trace streams until the client hangs up)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        reply = b""
        try:
            anc = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                   if fds else [])
            s.sendmsg([payload[:65536] or b""], anc)
            if payload[65536:]:
                s.sendall(payload[65536:])
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                reply += chunk
                if len(reply) > 1 << 20 or (first_line and b"\n" in reply):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        return reply


def stable_fd_count(d: Daemon, samples: int = 10) -> int:
    last, same = -1, 0
    deadline = time.monotonic() + 15
    while same < samples and time.monotonic() < deadline:
        n = d.fd_count()
        same = same + 1 if n == last else 0
        last = n
        time.sleep(0.05)
    return last


@contextlib.contextmanager
def attached_looper(runtime: Runtime, bundle_factory: Callable[..., Bundle], d: Daemon,
                    cid: str) -> Iterator[Bundle]:
    """A container calling the notified sysfs(2) in a loop for as long as it runs."""
    b = bundle_factory(args=["sh", "-c", "while :; do sys -n 20 sysfs 3; done"],
                       notify=["sysfs"], listener_path=d.listener_path)
    with runtime.started(b, cid):
        d.wait_container(cid)
        yield b


def check_looper(b: Bundle, minimum: int) -> int:
    lines = output(b)[0].splitlines()
    complete = lines[:-1]  # the last line may be cut by the kill
    wrong = [ln for ln in complete if ln != ANSWER]
    assert not wrong, f"wrong answers while under hostile input: {wrong[:5]}"
    assert len(complete) >= minimum, f"the container made only {len(complete)} rounds"
    return len(complete)


@pytest.fixture
def served(runtime_factory: Callable[[str], Runtime], bundle_factory: Callable[..., Bundle],
           daemon_factory: Callable[..., Daemon], new_id: Callable[[str], str]):
    runtime = runtime_factory("runc")
    d = daemon_factory(rules=RULES)
    # Warm up whatever the daemon opens once and keeps, then take the baseline with
    # the looping container attached.
    warm = bundle_factory(args=["sys", "sysfs", "3"], notify=["sysfs"],
                          listener_path=d.listener_path)
    assert runtime.run(warm, new_id("warm")).check().stdout.strip() == ANSWER
    with attached_looper(runtime, bundle_factory, d, new_id("looper")) as b:
        baseline = stable_fd_count(d)
        yield d, b
        assert d.alive(), d.log()[-4000:]
        rounds = check_looper(b, minimum=5)
        # The container is still answered after the barrage.
        time.sleep(0.3)
        assert check_looper(b, minimum=rounds + 1) > rounds
        after = stable_fd_count(d)
        assert after == baseline, f"daemon fds: {baseline} before, {after} after: {d.fds()}"
    assert d.alive()


def test_hostile_listener_messages(served):
    d, _ = served
    sent = 0

    @settings(max_examples=PER_SOCKET["listener"] // BATCH, **SETTINGS)
    @given(msgs=batch(st.tuples(
        listener_payloads,
        st.lists(st.sampled_from(["pipe", "devnull", "socket"]), max_size=3))))
    def one(msgs: list[tuple[bytes, list[str]]]) -> None:
        nonlocal sent
        for payload, fd_kinds in msgs:
            keep: list[int] = []
            try:
                fds = [_fd_of(k, keep) for k in fd_kinds]
                assert _exchange(d.listener_path, payload, fds) == b""
            finally:
                for fd in keep:
                    os.close(fd)
            sent += 1

    one()
    assert sent == PER_SOCKET["listener"]
    errors = d.control("status")["counters"].get("listener_errors", {})
    # Every message was refused with a reason (none attached a container).
    assert sum(errors.values()) >= sent, errors
    assert d.control("status")["containers"] == 1


def test_hostile_control_messages(served):
    d, _ = served
    sent = 0

    @settings(max_examples=PER_SOCKET["control"] // BATCH, **SETTINGS)
    @given(lines=batch(control_line()))
    def one(lines: list[bytes]) -> None:
        nonlocal sent
        for line in lines:
            reply = _exchange(str(d.control_sock), line, first_line=True)
            sent += 1
            first = reply.split(b"\n", 1)[0]
            if first:
                answer = json.loads(first)  # every reply is JSON with "ok"
                assert isinstance(answer, dict) and "ok" in answer, (line[:200], reply[:200])

    one()
    assert sent == PER_SOCKET["control"]
    assert d.control("status")["containers"] == 1


def test_hostile_runtime_service_messages(served):
    d, _ = served
    path = str(d.state_dir / "runtime.sock")
    sent = 0

    @settings(max_examples=PER_SOCKET["runtime"] // BATCH, **SETTINGS)
    @given(reqs=batch(runtime_request(str(d.state_dir))))
    def one(reqs: list[bytes]) -> None:
        nonlocal sent
        for req in reqs:
            reply = _exchange(path, req)
            sent += 1
            # The launcher's protocol: nothing (a closed socket), ERR, FALLBACK, or OK.
            assert reply == b"" or reply.split(b" ", 1)[0].split(b"\n")[0] in (
                b"ERR", b"FALLBACK", b"OK"), (req[:200], reply[:200])
            # A malformed request is told what is wrong, not a Python error's text.
            for internal in (b"object is not", b"indices must be", b"codec can't",
                             b"Expecting value", b"KeyError"):
                assert internal not in reply, (req[:200], reply[:200])

    one()
    assert sent == PER_SOCKET["runtime"]
    assert d.control("status")["containers"] == 1


def test_trace_clients_gone_behind_a_busy_container(served):
    """Found by the control-socket run: a trace whose filter drops every event (here a
    pid nobody has) checked for its client's hang-up only after 0.5 s without events, so
    behind a container that keeps calling it held its thread, socket and client slot for
    ever; more of them than slots (32) locked everyone out of control.sock."""
    d, _ = served
    for _ in range(4):  # 40 in all, 10 at a time (a client is noticed gone within 0.5 s)
        for _ in range(10):
            reply = _exchange(str(d.control_sock),
                              json.dumps({"cmd": "trace", "pid": 4}).encode() + b"\n",
                              first_line=True)
            assert json.loads(reply.split(b"\n", 1)[0]) == {"ok": True, "trace": True}
        deadline = time.monotonic() + 5
        while d.control("status")["trace_clients"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.control("status")["trace_clients"] == 0
