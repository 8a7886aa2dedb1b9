"""The prepare service: the create/run rewrite done by a long-lived process.

The native launcher asks `<state-dir>/runtime.sock` to prepare a create/run/exec/delete
(the same jobs, interceptd.runtime.jobs, as the Python entry), runs the real runtime itself,
then reports its exit status so the service can finish (roll back, place the
cgroup, tear down). This saves starting an interpreter per container. When the
service is absent, or the caller is in another mount namespace (mounts made
here would not be the caller's) or has another root directory (its paths would
name other files here), the launcher falls back to the Python entry.

Protocol (one connection per container start):
  -> {"argv": [...], "cwd": "...", "env": {"INTERCEPTD_RUNTIME": ...}}\\n
  <- "OK <n>[ timens=<what>]\\n" + n NUL-terminated strings (runtime path, argv0,
     args...); timens: the time namespace the runtime's process makes or joins
     before its exec (timens.py: "new:<pin>" or "join:<pin>")
     | "ERR <message>\\n" (a refusal: argv.parse's, or the rewrite's)
     | "FALLBACK\\n" (run the Python entry instead)
  -> "RC <status>\\n"          (after the runtime exited)
  <- "DONE <status>\\n"
  or, after a create whose init the launcher found in a cgroup v2 node of its own
  (all that a successful create's finish checks), without waiting for a reply:
  -> "RC 0 placed\\n"
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import socket
import struct
import sys
import threading

from interceptd.kernel.mountapi import UserNamespace
from interceptd.unixserver import UnixServer

from . import argv as argvmod
from . import settings as settingsmod
from .bpfcache import BpfCache
from .errors import Fail, log_file_error, refusal
from .hostfacts import HostFacts
from .jobs.create import Create
from .jobs.delete import Delete
from .jobs.exec import Exec
from .procs import runtime_cmd
from .timing import Phases

log = logging.getLogger("interceptd.runtime.service")

SOCK_NAME = "runtime.sock"
ENV_KEYS = ("INTERCEPTD_RUNTIME", "INTERCEPTD_STATE_DIR", "INTERCEPTD_CONFIG")
MAX_REQUEST = 1 << 20


def _peer_pid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    if uid != 0:
        raise PermissionError("only root may prepare containers")
    return pid


def _mount_ns(pid: int | str) -> tuple[int, int, int, int]:
    """pid's view of paths: its mount namespace and its root directory (a chrooted
    caller's paths mean something else here, even in the same namespace)."""
    s = os.stat(f"/proc/{pid}/ns/mnt")
    r = os.stat(f"/proc/{pid}/root")
    return s.st_dev, s.st_ino, r.st_dev, r.st_ino


def _request(line: bytes) -> tuple[list[str], str, dict[str, str]]:
    """The launcher's request, checked: a malformed one is refused with what is wrong,
    not with a Python error's text."""
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("malformed request: not a JSON line") from None
    if not isinstance(req, dict):
        raise ValueError("malformed request: not a JSON object")
    args, cwd, env = req.get("argv"), req.get("cwd"), req.get("env") or {}
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("malformed request: argv must be a list of strings")
    if not isinstance(cwd, str):
        raise ValueError("malformed request: cwd must be a string")
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ValueError("malformed request: env must map names to strings")
    return args, cwd, {k: v for k, v in env.items() if k in ENV_KEYS}


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


class UsernsCache:
    """A few id-mapping user namespaces kept for reuse. The fd only carries the
    mapping an id-mapped mount needs; holding it gives nobody any privilege.

    `warm()` makes one ahead of time on a background thread (a fork, an unshare
    and two map writes: milliseconds a create would otherwise wait for): the
    service asks for the range after the one a create just took, which is the
    one the id pool hands out next on a sequence of starts."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[tuple[int, int], UserNamespace] = (
            collections.OrderedDict())
        self._warming: set[tuple[int, int]] = set()

    def _put(self, key: tuple[int, int], ns: UserNamespace) -> None:
        self._items[key] = ns
        while len(self._items) > self.size:
            self._items.popitem(last=False)[1].close()

    def get(self, base: int, rng: int) -> _Fd:
        """A dup of the cached fd: eviction never closes one a caller still uses."""
        with self._lock:
            ns = self._items.pop((base, rng), None)
            if ns is None:
                ns = UserNamespace(base, rng)
            self._put((base, rng), ns)
            return _Fd(os.dup(ns.fd))

    def warm(self, base: int, rng: int) -> None:
        """Make (base, rng)'s namespace in the background, unless cached or under way."""
        key = (base, rng)
        with self._lock:
            if key in self._items or key in self._warming:
                return
            self._warming.add(key)
        threading.Thread(target=self._make, args=(key,), name="userns-warm",
                         daemon=True).start()

    def _make(self, key: tuple[int, int]) -> None:
        try:
            ns = UserNamespace(*key)
        except OSError as e:
            log.debug("user namespace ahead of time: %s", e)
            ns = None
        with self._lock:
            self._warming.discard(key)
            if ns is None:
                return
            if key in self._items:
                ns.close()
            else:
                self._put(key, ns)

    def close(self) -> None:
        with self._lock:
            for ns in self._items.values():
                ns.close()
            self._items.clear()


class Service(UnixServer):
    """The prepare service on <state_dir>/runtime.sock.

    Hosted by the daemon, it gets `status` (the daemon's own status function):
    then a create needs no control-socket round trip to learn that the daemon
    is up and which syscalls it vets. Standing alone, it asks control.sock.
    """

    name = "runtime-service"
    backlog = 64
    # A `run` keeps its connection for the container's life: no cap (runtime.sock is
    # root's only, 0600).
    max_clients = None

    def __init__(self, state_dir: str, status=None) -> None:
        self.state_dir = os.path.realpath(state_dir)
        super().__init__(os.path.join(state_dir, SOCK_NAME))
        self.status = status
        self._mnt_ns = (0, 0, 0, 0)
        self._settings_cache: dict[tuple, tuple[settingsmod.Settings, str]] = {}
        self._cache_lock = threading.Lock()

    def start(self, sock: socket.socket | None = None) -> Service:
        """Serve runtime.sock: `sock`, a predecessor's listening socket (still bound
        there; launchers that connected during the restart wait in its backlog), or
        a new one."""
        if Create.userns_source is None:
            Create.userns_source = UsernsCache()
        if Create.bpf_source is None:
            Create.bpf_source = BpfCache()
        # Read once: a long-lived root process's bounding set and the host's
        # namespaces do not change while it runs.
        HostFacts.held = HostFacts.read()
        self._mnt_ns = _mount_ns("self")
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        if sock is None and os.path.exists(self.path):
            os.unlink(self.path)
        super().start(sock)
        return self

    def stop(self, wait: float | None = None) -> None:
        """Stop at once: the requests being served (a `run` lasts as long as its
        container) are not waited for."""
        if isinstance(Create.userns_source, UsernsCache):
            Create.userns_source.close()
            Create.userns_source = None
        Create.bpf_source = None
        HostFacts.held = None
        if self.sock is not None:
            self._stop.set()
            # Wakes the acceptors now, and refuses the launchers in the backlog.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        super().stop(0.0 if wait is None else wait)

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            self._handle(conn, conn.makefile("rb"))
        except (OSError, ValueError, KeyError, TypeError, settingsmod.SettingsError) as e:
            with contextlib.suppress(OSError):
                conn.sendall(f"ERR prepare service: {e}\n".replace("\n", " ")
                             .rstrip().encode() + b"\n")
        except Exception:
            # Never let one request take its host (the daemon) down; the
            # launcher falls back to the Python entry on a closed socket.
            log.exception("prepare service: internal error")

    def _settings(self, env: dict[str, str]) -> tuple[settingsmod.Settings, str]:
        """Settings for these variables, parsed again only when the config file changed
        (callers only read them)."""
        path = env.get("INTERCEPTD_CONFIG") or settingsmod.DEFAULT_CONFIG
        try:
            s = os.stat(path)
            sig: tuple | None = (s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size)
        except OSError:
            sig = None
        key = (tuple(sorted(env.items())), sig)
        with self._cache_lock:
            hit = self._settings_cache.get(key)
        if hit is None:
            st = settingsmod.load(env)
            hit = (st, os.path.realpath(st.state_dir))
            with self._cache_lock:
                if len(self._settings_cache) >= 16:
                    self._settings_cache.clear()
                self._settings_cache[key] = hit
        return hit

    def _handle(self, conn: socket.socket, rfile) -> None:
        ph = Phases()
        pid = _peer_pid(conn)
        args, cwd, env = _request(rfile.readline(MAX_REQUEST))
        env["PATH"] = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        st, state_dir = self._settings(env)
        inv = argvmod.parse(args)
        if inv.decision == argvmod.REFUSE:
            self._refuse(conn, inv, refusal(inv))
            return
        if (_mount_ns(pid) != self._mnt_ns or state_dir != self.state_dir
                or inv.decision != argvmod.SHIM):
            conn.sendall(b"FALLBACK\n")
            return
        ph.mark("request")
        if inv.command == "delete":
            job = Delete(inv, st, cwd)
        elif inv.command == "exec":
            job = Exec(inv, st, cwd, in_place=True)
        else:
            job = Create(inv, st, cwd, daemon_status=self.status)
            job.caller_pid = pid
            job.phases = ph
        try:
            run_args = job.prepare()
        except Fail as e:
            self._refuse(conn, inv, str(e))
            return
        cmd = runtime_cmd(st, run_args)
        out = [st.runtime, *cmd]
        ns = getattr(job, "timens", None)
        head = f"OK {len(out)}" + (f" timens={ns}" if ns else "")
        conn.sendall(f"{head}\n".encode() + b"".join(os.fsencode(a) + b"\0" for a in out))
        ph.mark("reply")
        ph.write(cid=inv.container_id or "", command=inv.command or "")
        if isinstance(job, Create) and job.rec is not None and \
                isinstance(Create.userns_source, UsernsCache):
            # After the reply: the launcher runs the runtime meanwhile.
            nxt = job.rec.host_base + st.range_size
            if nxt < st.id_pool_start + st.id_pool_ranges * st.range_size:
                Create.userns_source.warm(nxt, st.range_size)
        conn.settimeout(None)  # `run` lasts as long as the container
        line = rfile.readline(64).split()
        try:
            rc = int(line[1])
        except (IndexError, ValueError):
            # The launcher went away without a status (killed?): the runtime may
            # still be working on the container, so undo nothing; `delete` (or a
            # new create of the same id) cleans up from the record.
            return
        if rc == 0 and line[2:] == [b"placed"] and inv.command == "create":
            # The launcher saw the init in a cgroup v2 node of its own, which is
            # all a successful create's finish checks, and did not wait for us.
            job.collect_filter()
            return
        rc = job.finish(rc)
        conn.sendall(f"DONE {rc}\n".encode())
        if rc == 0 and isinstance(job, Create):
            job.collect_filter()

    @staticmethod
    def _refuse(conn: socket.socket, inv: argvmod.Invocation, msg: str) -> None:
        """ERR: the launcher prints it and exits 1; the runtime's --log gets it too."""
        log_file_error(inv, msg, cwd_is_callers=False)
        conn.sendall(f"ERR {msg}\n".replace("\n", " ").rstrip().encode() + b"\n")


def main() -> int:
    ap = argparse.ArgumentParser(description="interceptd-runc prepare service")
    ap.add_argument("--state-dir", default=settingsmod.DEFAULT_STATE_DIR)
    a = ap.parse_args()
    svc = Service(a.state_dir).start()
    print(f"serving {svc.path}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
