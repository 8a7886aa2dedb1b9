"""interceptd-runc: rewrite the bundle, then hand over to the real runc/crun.

create/run: harden config.json (user namespace, id-mapped rootfs and volumes,
seccomp attached to the daemon, caps, masks, no host namespaces, no sensitive
mounts, own cgroup). exec: clamp the process spec. delete: undo the host-side
set-up. The commands argv.py lists as pass-through are an execv of the real
runtime, untouched; everything else is refused (fail closed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import TYPE_CHECKING

from . import argv as argvmod
from . import settings as settingsmod

if TYPE_CHECKING:
    from . import records

PROG = "interceptd-runc"
# See launcher.c: the pid of each process turned into the real runtime, or
# "py:<pid>" for this interpreter started by the launcher.
GUARD_ENV = "INTERCEPTD_RUNC_GUARD"
MARKER = "io.interceptd.runtime"
NS_PROC_NAME = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
                "cgroup": "cgroup", "time": "time"}


class Fail(Exception):
    """Our own refusal/error: printed, logged for the caller, exit 1."""


def _log_error(inv: argvmod.Invocation, msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    _log_file_error(inv, msg)


def _log_file_error(inv: argvmod.Invocation, msg: str) -> None:
    """The runtime's --log file: containerd shows its last error line to the user."""
    log = inv.global_value("log")
    if log and log.startswith("file:"):  # crun's spelling of a file
        log = log[5:]
    if not log or log.startswith(("journald:", "syslog:")):
        return
    import datetime

    fmt = inv.global_value("log-format") or "text"
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    line = (json.dumps({"level": "error", "msg": f"{PROG}: {msg}", "time": now})
            if fmt == "json" else f'time="{now}" level=error msg="{PROG}: {msg}"')
    try:
        with open(log, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def _spawn(cmd: list[str], executable: str, quiet: bool = False) -> int:
    # fork+exec by hand: the subprocess module costs more to import than it saves.
    pid = os.fork()
    if pid == 0:
        try:
            if quiet:
                fd = os.open(os.devnull, os.O_RDWR)
                for n in (0, 1, 2):
                    os.dup2(fd, n)
            _exec_runtime(executable, cmd)
        finally:
            os._exit(127)
    return pid


def _exec_runtime(executable: str, cmd: list[str]) -> None:
    """execv the real runtime, marked (GUARD_ENV) so that a runtime that turns out
    to be interceptd-runc itself refuses instead of looping."""
    os.environ[GUARD_ENV] = str(os.getpid())
    os.execv(executable, cmd)


def _wait(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.waitstatus_to_exitcode(status)


def _run_forwarding(cmd: list[str], executable: str) -> int:
    """Run the real runtime as a child with our fds, relaying signals; its exit status."""
    pid = _spawn(cmd, executable)
    relayed = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
               signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
    old = {s: signal.signal(s, lambda n, _f: os.kill(pid, n)) for s in relayed}
    try:
        rc = _wait(pid)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return rc if rc >= 0 else 128 - rc


def _runtime_cmd(st: settingsmod.Settings, args: list[str]) -> list[str]:
    # argv[0] as a caller would spell it: crun prints it in its messages.
    return [os.path.basename(st.runtime), *args]


def _container_exists(st: settingsmod.Settings, inv: argvmod.Invocation, cid: str) -> bool:
    cmd = [st.runtime]
    root = inv.global_value("root")
    if root:
        cmd += ["--root", root]
    cmd += ["state", cid]
    return _wait(_spawn([os.path.basename(st.runtime), *cmd[1:]], st.runtime, quiet=True)) == 0


# ------------------------------------------------------------------ create / run

def _host_namespaces() -> dict[str, set[tuple[int, int]]]:
    out: dict[str, set[tuple[int, int]]] = {}
    for oci, proc in NS_PROC_NAME.items():
        ids = set()
        for pid in ("1", "self"):
            try:
                s = os.stat(f"/proc/{pid}/ns/{proc}")
                ids.add((s.st_dev, s.st_ino))
            except OSError:
                pass
        out[oci] = ids
    return out


def _read_spec(inv: argvmod.Invocation, cwd: str) -> tuple[str, str, bytes, dict, bool]:
    # As runc and crun do: chdir(bundle) (relative to the caller's cwd, through
    # symlinks), then read config.json there. realpath resolves `link/..` as
    # chdir does, which a textual normpath does not; the runtime is then given
    # this resolved path (Create.prepare), so it reads what was checked.
    bundle = os.path.realpath(os.path.join(cwd, (inv.flag_values("bundle", "b") or ["."])[-1]))
    if not os.path.isdir(bundle):
        raise Fail(f"bundle {bundle}: no such directory")
    given = inv.flag_values("config", "f")
    # crun's --config (runc has none) is taken relative to the caller's cwd, not
    # the bundle (crun realpath()s it before its chdir); config.json is the bundle's.
    path = (os.path.realpath(os.path.join(cwd, given[-1])) if given
            else os.path.join(bundle, "config.json"))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise Fail(f"{path}: no such file (not an OCI bundle?)") from None
    except OSError as e:
        raise Fail(f"cannot read {path}: {e}") from None
    spec = _parse(data, path)
    rewritten = bool((spec.get("annotations") or {}).get(MARKER))
    if rewritten:
        # Already rewritten by a previous create on this bundle: start from the original.
        try:
            with open(path + ".orig", "rb") as f:
                data = f.read()
        except OSError as e:
            raise Fail(f"{path} was rewritten by interceptd but {path}.orig is gone: {e}") from None
        spec = _parse(data, path + ".orig")
    return bundle, path, data, spec, rewritten


def _parse(data: bytes, path: str) -> dict:
    try:
        spec = json.loads(data)
    except ValueError as e:
        raise Fail(f"{path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise Fail(f"{path} is not a JSON object")
    return spec


def _write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.interceptd.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _keep_original(cfg_path: str, orig_bytes: bytes) -> None:
    """config.json.orig = the caller's config: a hard link when possible (the
    rewrite is then renamed over config.json), else a copy."""
    orig = cfg_path + ".orig"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(orig)
    try:
        os.link(cfg_path, orig)
    except OSError:
        _write_atomic(orig, orig_bytes)


class HostFacts:
    """What the rewrite needs from the host: the bounding set, host namespaces,
    where the cgroup v2 hierarchy is mounted (None: not found)."""

    __slots__ = ("bounding", "cgroup2", "host_ns")

    def __init__(self, bounding: set[str], host_ns: dict[str, set[tuple[int, int]]],
                 cgroup2: str | None = None) -> None:
        self.bounding = bounding
        self.host_ns = host_ns
        self.cgroup2 = cgroup2

    @classmethod
    def read(cls) -> HostFacts:
        from interceptd.kernel import mountinfo

        from .caps import host_bounding_set

        return cls(host_bounding_set(), _host_namespaces(),
                   mountinfo.cgroup2_mount(mountinfo.read()))


def sensitive_paths(st: settingsmod.Settings) -> list[str]:
    """Never bound into a container (nor a parent of them), nor a container's root:
    the engines' sockets and state, interceptd's state, config and rootfs views."""
    from . import spec as sp

    out = [*sp.SENSITIVE_PATHS, st.state_dir, st.mount_root, *st.extra_sensitive_paths]
    if st.config_path:
        out.append(st.config_path)
    return out


def shared_paths(st: settingsmod.Settings) -> list[str]:
    """[runtime] shared_paths as written and as resolved (either may be what a
    bind source resolves under)."""
    return list(dict.fromkeys([*st.shared_paths,
                               *(os.path.realpath(p) for p in st.shared_paths)]))


def rewrite_spec(spec: dict, *, cid: str, host_base: int, st: settingsmod.Settings,
                 bounding: set[str], host_ns: dict, notified: list[str],
                 denied: list[dict], root: str | None = None) -> dict:
    """All pure rewrites, in order, on spec itself (raises spec.Refused)."""
    from . import spec as sp

    new = spec
    sp.check_namespaces(new, host_ns)
    sp.check_mounts(new, sensitive_paths(st), st.sensitive_mount_allow,
                    shared=shared_paths(st), root=root,
                    trust_annotations=st.sensitive_mount_trust_annotations)
    sp.ensure_user_namespace(new, host_base, st.range_size)
    sp.fit_sysctls(new, st.range_size)
    sp.clamp_capabilities(new.setdefault("process", {}), bounding)
    sp.apply_masks(new)
    sp.add_seccomp(new, notified, denied, os.path.join(st.state_dir, "seccomp.sock"), cid)
    ann = new.setdefault("annotations", {})
    ann[MARKER] = "rewritten"
    ann["io.interceptd.host-base"] = str(host_base)
    return new


def bind_policy(spec: dict, st: settingsmod.Settings, root: str):
    from . import spec as sp

    return sp.bind_policy(spec, shared_paths(st), sensitive_paths(st),
                          st.sensitive_mount_allow, root, st.sensitive_mount_trust_annotations)


def _bind_emulated(new: dict, status: dict, st: settingsmod.Settings,
                   rec: records.Record, store: records.RecordStore) -> None:
    """The daemon's emulated /proc and /sys files, when its status says they are served:
    a clone of its tree in the container's mount dir, binds after the config's mounts."""
    from . import emulbinds

    files = emulbinds.wanted(status)
    if not files:
        return
    tree = os.path.join(rec.mount_dir, "emul")
    rec.mounts.append(tree)
    store.save(rec)
    emulbinds.clone_tree(os.path.join(st.state_dir, "fs"), tree)
    emulbinds.apply(new, files, tree)


class Create:
    """One create/run: prepare() the bundle and host, then finish() after the runtime.

    Used by the Python entry (cmd_create) and by the prepare service, which runs
    it in a long-lived process on behalf of the native launcher.
    """

    # Set by a long-lived caller (the prepare service): get(base, size) -> a user
    # namespace with that mapping (an object with .fd and .close(), ours to
    # close), from a cache (saves a fork per container).
    userns_source = None
    # Also set by a long-lived caller: host facts that do not change while it
    # runs (its capability bounding set, the host's namespace identities).
    host_facts: HostFacts | None = None

    def __init__(self, inv: argvmod.Invocation, st: settingsmod.Settings,
                 cwd: str | None = None, daemon_status=None) -> None:
        self.inv = inv
        self.st = st
        self.cwd = cwd or os.getcwd()
        # daemon_status() -> the daemon's status dict, when the caller lives in
        # the daemon itself (no control-socket round trip needed).
        self.daemon_status = daemon_status
        self.cid = inv.container_id
        self.rec = None
        self.cfg_path = ""
        self.pid_file: str | None = None
        self.detached = inv.command == "create" or inv.has_flag("detach", "d")
        # Who runs the real runtime (its cgroup is what the init inherits): this
        # process, or the launcher the service prepares for (service.py sets it).
        self.caller_pid = os.getpid()

    def _abs(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.cwd, path))

    def _delegate_cgroups(self, new: dict, base: int) -> None:
        """The container's cgroup directories, owned by its root (cgdelegate)."""
        from . import cgdelegate

        try:
            with open("/proc/self/mountinfo", encoding="utf-8") as f:
                self.delegated = cgdelegate.prepare(new, base, base, f)
        except OSError as e:
            if self.rec is not None:
                self.rec.warnings.append(f"cgroup delegation: {e}")

    def _undo(self) -> None:
        from . import cgdelegate, host

        cgdelegate.undo(getattr(self, "delegated", []))
        host.teardown(self.rec)
        # Record first, range second: a record never outlives its hold on the id
        # range, so a stale one can never tear down the range's next holder's mounts.
        self.store.remove(self.key)
        self.pool.release(self.key)

    def prepare(self) -> list[str]:
        """Rewrite bundle and host; the runtime's argv (after argv[0]) to run next."""
        from interceptd.kernel import mountapi

        from . import daemonlink, host, idpool, policylink, records
        from . import spec as sp
        from .caps import host_bounding_set

        inv, st, cid = self.inv, self.st, self.cid
        if not cid:  # argv.parse refuses this already
            raise Fail(f"{inv.command}: no container id")
        bundle, cfg_path, orig_bytes, spec, was_rewritten = _read_spec(inv, self.cwd)
        self.cfg_path = cfg_path
        try:
            status = (self.daemon_status() if self.daemon_status is not None
                      else daemonlink.check(st.state_dir, st.daemon_timeout))
        except daemonlink.DaemonUnreachable as e:
            raise Fail(f"refusing to start {cid} unprotected: interceptd daemon unreachable: "
                       f"{e}") from None

        try:
            root = sp.root_path(spec, bundle)
        except sp.Refused as e:
            raise Fail(f"container {cid} refused: {e}") from None

        self.key = key = records.container_key(inv.global_value("root"), cid)
        self.store = store = records.RecordStore(os.path.join(st.runtime_dir, "containers"))
        self.pool = pool = idpool.IdPool(st.runtime_dir, st.id_pool_start, st.id_pool_ranges,
                                         st.range_size)
        stale = store.load(key)
        if stale is not None:
            if _container_exists(st, inv, cid):
                # Touch nothing of the live one; and never hand the runtime the
                # unrewritten config (it could be gone by the time it looks).
                raise Fail(f"container {cid} already exists")
            host.teardown(stale)
            store.remove(key)
            pool.release(key)

        try:
            base = pool.allocate(key)
        except (idpool.PoolExhausted, OSError) as e:
            raise Fail(f"cannot allocate a user-namespace id range for {cid}: {e}") from None
        # config_rewritten from the start: delete restores config.json only when
        # it carries our marker, so a create killed before the rewrite is safe;
        # and the record is written once (mounts all live under mount_dir, which
        # teardown scans), not again after every step. The mount dir belongs to
        # the id range, not the container: it is kept (empty) for the range's next
        # holder, which saves creating directories on every start.
        self.rec = rec = records.Record(key=key, container_id=cid, bundle=bundle,
                                        host_base=base,
                                        mount_dir=os.path.join(st.mount_root, f"r{base}"),
                                        config_rewritten=True, keep_dirs=True)
        store.save(rec)
        facts = Create.host_facts or HostFacts(host_bounding_set(), _host_namespaces())
        try:
            notified, denied, _src = policylink.syscalls(st.raw, st.config_path, status)
            new = rewrite_spec(spec, cid=cid, host_base=base, st=st,
                               bounding=facts.bounding, host_ns=facts.host_ns,
                               notified=notified, denied=denied, root=root)
            sp.ensure_cgroups_path(new, cid, inv.has_global("systemd-cgroup"))
            self._delegate_cgroups(new, base)
            source = Create.userns_source
            ns = (source.get(base, st.range_size) if source is not None
                  else mountapi.UserNamespace(base, st.range_size))
            try:
                hs = host.HostSetup(rec, store, ns.fd)
                # The view is mounted over root.path itself; root.path changes only
                # when the container's root cannot walk there (Docker's data root).
                view = hs.rootfs(root, sensitive=sensitive_paths(st),
                                 own=[st.state_dir, st.mount_root])
                if view is not None:
                    new["root"]["path"] = view
                hs.volumes(new, bind_policy(new, st, root), base, st.range_size,
                           st.volume_id_base)
            finally:
                ns.close()
            _bind_emulated(new, status, st, rec, store)
            data = json.dumps(new, separators=(",", ":")).encode()
            if not was_rewritten:
                _keep_original(cfg_path, orig_bytes)
            _write_atomic(cfg_path, data)
            if rec.warnings:
                store.save(rec)
        except sp.Refused as e:
            self._undo()
            raise Fail(f"container {cid} refused: {e}") from None
        except (host.SetupError, OSError, ValueError, KeyError, TypeError) as e:
            self._undo()
            _restore_config(cfg_path)
            raise Fail(f"cannot prepare container {cid}: {e}") from None

        self.pid_file = (inv.flag_values("pid-file") or [None])[-1]
        # The bundle the runtime chdirs to, and the config it reads, are the ones
        # resolved and rewritten here. --no-new-keyring is dropped: with keyctl allowed
        # (docs/policy.md "Keyrings") the container would possess the keys of whoever ran
        # the runtime; a new session keyring is charged to the container's own uid.
        flags = [f for f in inv.flags
                 if f.name not in ("bundle", "b", "config", "f", "no-new-keyring")]
        flags.append(argvmod.Flag("bundle", bundle, ["--bundle", bundle]))
        if inv.flag_values("config", "f"):
            flags.append(argvmod.Flag("config", cfg_path, ["--config", cfg_path]))
        if self.detached and not self.pid_file:
            self.pid_file = os.path.join(st.runtime_dir, "containers", key + ".pid")
            flags.append(argvmod.Flag("pid-file", self.pid_file, ["--pid-file", self.pid_file]))
        return argvmod.rebuild(inv, flags)

    def finish(self, rc: int) -> int:
        """After the runtime exited with rc: roll back, place the cgroup, or tear down."""
        from interceptd.kernel import mountinfo

        from . import host

        st, rec = self.st, self.rec
        if rec is None:
            return rc
        if rc != 0:
            if not _container_exists(st, self.inv, self.cid):
                self._undo()
                _restore_config(self.cfg_path)
            return rc
        if self.detached:
            facts = Create.host_facts
            cg = st.cgroup2_mount or (facts.cgroup2 if facts and facts.cgroup2 else
                                      mountinfo.cgroup2_mount(mountinfo.read()))
            if cg and self.pid_file:
                try:
                    with open(self._abs(self.pid_file)) as f:
                        pid = int(f.read().strip())
                    host.place_in_cgroup2(rec, self.store, pid, cg, self.cid,
                                          self.caller_pid)
                except (OSError, ValueError) as e:
                    rec.warnings.append(f"cgroup v2 placement: {e}")
                    self.store.save(rec)
        elif not self.inv.has_flag("keep"):
            self._undo()
            _restore_config(self.cfg_path)
        return rc


def cmd_create(inv: argvmod.Invocation, st: settingsmod.Settings) -> int:
    job = Create(inv, st)
    args = job.prepare()
    rc = _run_forwarding(_runtime_cmd(st, args), st.runtime)
    return job.finish(rc)


def _restore_config(cfg_path: str) -> None:
    """Put the original config.json back if the current one is our rewrite."""
    orig = cfg_path + ".orig"
    try:
        with open(cfg_path, "rb") as f:
            cur = json.loads(f.read())
        if (cur.get("annotations") or {}).get(MARKER) and os.path.exists(orig):
            os.rename(orig, cfg_path)
    except (OSError, ValueError, AttributeError):
        pass


# ------------------------------------------------------------------ exec

class Exec:
    """One exec: caps the host cannot grant are dropped from --cap and --process.

    The exec'd process needs nothing else: runc and crun apply the container's
    seccomp filter and send its notify fd to the listener themselves.
    """

    def __init__(self, inv: argvmod.Invocation, st: settingsmod.Settings,
                 cwd: str | None = None, in_place: bool = False) -> None:
        self.inv = inv
        self.st = st
        self.cwd = cwd or os.getcwd()
        # in_place: rewrite the --process file itself (atomically), for a caller in
        # another process (the prepare service); otherwise hand a memfd over.
        self.in_place = in_place

    def prepare(self) -> list[str]:
        from . import spec as sp
        from .caps import host_bounding_set

        facts = Create.host_facts
        bounding = facts.bounding if facts is not None else host_bounding_set()
        flags: list[argvmod.Flag] = []
        for f in self.inv.flags:
            if f.name in ("cap", "c") and f.value is not None and \
                    not sp.clamp_cap_list([f.value], bounding):
                continue  # a capability the host cannot grant: runc would fail on it
            if f.name in ("process", "p") and f.value is not None:
                path = os.path.join(self.cwd, f.value)
                new = _rewrite_process(path, bounding, self.in_place)
                if new != path:
                    f = argvmod.with_value(f, new)
            flags.append(f)
        return argvmod.rebuild(self.inv, flags)

    def finish(self, rc: int) -> int:
        return rc


def cmd_exec(inv: argvmod.Invocation, st: settingsmod.Settings) -> int:
    _exec_runtime(st.runtime, _runtime_cmd(st, Exec(inv, st).prepare()))
    return 1  # not reached


def _rewrite_process(path: str, bounding: set[str], in_place: bool = False) -> str:
    """The process spec with clamped caps: in place, or in a memfd read via /proc."""
    from . import spec as sp

    try:
        with open(path, "rb") as f:
            proc = json.loads(f.read())
    except FileNotFoundError:
        return path  # the runtime reports it
    except (OSError, ValueError) as e:
        raise Fail(f"process spec {path}: {e}") from None
    if not isinstance(proc, dict):
        raise Fail(f"process spec {path} is not a JSON object")
    if not sp.clamp_capabilities(proc, bounding):
        return path
    data = json.dumps(proc).encode()
    if in_place:
        _write_atomic(path, data, 0o600)
        return path
    fd = os.memfd_create("interceptd-process.json", 0)
    os.write(fd, data)
    return f"/proc/self/fd/{fd}"


# ------------------------------------------------------------------ delete

class Delete:
    """One delete: the real runtime's delete, then the shim's teardown."""

    def __init__(self, inv: argvmod.Invocation, st: settingsmod.Settings,
                 cwd: str | None = None) -> None:
        self.inv = inv
        self.st = st
        self.cid = inv.container_id

    def prepare(self) -> list[str]:
        if not self.cid:  # argv.parse refuses this already
            raise Fail("delete: no container id")
        return list(self.inv.argv)

    def finish(self, rc: int) -> int:
        from . import host, idpool, records

        st, inv, cid = self.st, self.inv, self.cid
        if rc != 0 and _container_exists(st, inv, cid):
            return rc
        key = records.container_key(inv.global_value("root"), cid)
        store = records.RecordStore(os.path.join(st.runtime_dir, "containers"))
        pool = idpool.IdPool(st.runtime_dir, st.id_pool_start, st.id_pool_ranges,
                             st.range_size)
        rec = store.load(key)
        if rec is None:
            # A create killed between taking the range and writing its record.
            if os.path.exists(pool.path):
                pool.release(key)
            return rc
        problems = host.teardown(rec)
        if rec.bundle and rec.config_rewritten:
            _restore_config(os.path.join(rec.bundle, "config.json"))
        store.remove(key)  # before the release: see Create._undo
        pool.release(key)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(st.runtime_dir, "containers", key + ".pid"))
        if problems:
            _log_error(inv, f"delete {cid}: " + "; ".join(problems))
        return rc


def cmd_delete(inv: argvmod.Invocation, st: settingsmod.Settings) -> int:
    job = Delete(inv, st)
    args = job.prepare()
    return job.finish(_run_forwarding(_runtime_cmd(st, args), st.runtime))


# ------------------------------------------------------------------ entry

def refusal(inv: argvmod.Invocation) -> str:
    """The message for a command line argv.parse refused."""
    return (f"refused: {inv.reason} (interceptd-runc passes to the real runtime only "
            "commands that cannot start a container from a config, and runs nothing "
            "it cannot parse)")


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    trace = os.environ.get("INTERCEPTD_RUNC_TRACE")
    if trace:  # debugging aid: what did the caller (containerd, docker) really run?
        with contextlib.suppress(OSError), open(trace, "a") as f:
            f.write(json.dumps({"argv": args, "cwd": os.getcwd(), "pid": os.getpid()}) + "\n")
    inv = argvmod.parse(args)
    if os.environ.get(GUARD_ENV) == str(os.getpid()):
        _log_error(inv, "refusing to run as its own real runtime (the real runtime "
                        "resolves to interceptd-runc; set [runtime] runtime to the path "
                        "of runc or crun)")
        return 1
    if inv.decision == argvmod.REFUSE:
        _log_error(inv, refusal(inv))
        return 1
    try:
        st = settingsmod.load()
    except settingsmod.SettingsError as e:
        _log_error(inv, str(e))
        return 1
    try:
        if inv.command in ("create", "run"):
            return cmd_create(inv, st)
        if inv.command == "exec":
            return cmd_exec(inv, st)
        if inv.command == "delete":
            return cmd_delete(inv, st)
        if inv.decision != argvmod.PASS:
            raise Fail(refusal(inv))
        _exec_runtime(st.runtime, _runtime_cmd(st, args))
    except Fail as e:
        _log_error(inv, str(e))
        return 1
    except OSError as e:
        _log_error(inv, f"cannot run {st.runtime}: {e}")
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
