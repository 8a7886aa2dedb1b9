"""create/run: harden config.json (user namespace, id-mapped rootfs and volumes,
seccomp attached to the daemon, caps, masks, no host namespaces, no sensitive
mounts, own cgroup), run the real runtime, then roll back, place the cgroup or
tear down."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from .. import argv as argvmod
from .. import settings as settingsmod
from ..bundle import keep_original, read_spec, restore_config, write_atomic
from ..errors import Fail
from ..hostfacts import HostFacts
from ..procs import container_exists
from ..rewrite import bind_policy, rewrite_spec, sensitive_paths
from ..timing import Phases

if TYPE_CHECKING:
    from .. import records


def _bind_emulated(new: dict, status: dict, st: settingsmod.Settings,
                   rec: records.Record, rootfs: str) -> None:
    """The daemon's emulated /proc and /sys files, when its status says they are served:
    a clone of its tree in the container's mount dir, binds after the config's mounts,
    and the hook binding the /proc/sys values over the procfs at `rootfs`/proc."""
    from .. import emulbinds

    files = emulbinds.wanted(status)
    if not files:
        return
    # Not saved: teardown finds the tree under mount_dir (host._mount_points).
    tree = os.path.realpath(os.path.join(rec.mount_dir, "emul"))
    rec.mounts.append(tree)
    emulbinds.clone_tree(os.path.join(st.state_dir, "fs"), tree)
    emulbinds.apply(new, files, tree)
    emulbinds.add_sysctl_hook(new, files, tree, os.stat(tree).st_dev, os.path.realpath(rootfs))


class Create:
    """One create/run: prepare() the bundle and host, then finish() after the runtime.

    Used by the Python entry (main.py) and by the prepare service, which runs it in
    a long-lived process on behalf of the native launcher.
    """

    # Set by a long-lived caller (the prepare service): get(base, size) -> a user
    # namespace with that mapping (an object with .fd and .close(), ours to
    # close), from a cache (saves a fork per container).
    userns_source = None
    # Set by the prepare service too: a bpfcache.BpfCache (crun's compiled filters).
    bpf_source = None

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
        self._wants_cgroups = False  # set by prepare(): a read-write cgroup mount
        # Set by the caller to time the whole request (the service); else our own.
        self.phases = Phases()
        # The digest of a seccomp section the runtime compiles itself in this create,
        # whose result the service collects afterwards (bpfcache).
        self.bpf_digest: str | None = None
        # The time namespace the runtime runs in (timens.py): one of its own.
        self.timens: str | None = None

    def _abs(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.cwd, path))

    def _delegate_cgroups(self, new: dict, base: int) -> None:
        """The container's cgroup directories, owned by its root (cgdelegate)."""
        from .. import cgdelegate

        self._wants_cgroups = cgdelegate.wants_delegation(new)
        try:
            with open("/proc/self/mountinfo", encoding="utf-8") as f:
                self.delegated = cgdelegate.prepare(new, base, base, f)
        except OSError as e:
            if self.rec is not None:
                self.rec.warnings.append(f"cgroup delegation: {e}")

    def _undo(self) -> None:
        from .. import cgdelegate, host

        cgdelegate.undo(getattr(self, "delegated", []))
        host.teardown(self.rec)
        if self.cid:
            from .. import timens

            timens.unpin(self.st, self.inv.global_value("root"), self.cid)
        # Record first, range second: a record never outlives its hold on the id
        # range, so a stale one can never tear down the range's next holder's mounts.
        self.store.remove(self.key)
        self.pool.release(self.key)

    def _compiled_filter(self, new: dict) -> None:
        """crun's own compile of this seccomp section, kept from an earlier create."""
        from .. import bpfcache

        src = Create.bpf_source
        ann = new["annotations"]
        if src is None or any(k in ann for k in bpfcache.CALLER_ALLOWED):
            return
        value, worth = src.lookup(self.st.runtime, ann[bpfcache.DIGEST])
        if value is not None:
            ann[bpfcache.ANNOTATION] = value
        elif worth:
            self.bpf_digest = ann[bpfcache.DIGEST]

    def collect_filter(self) -> None:
        """After a successful create: keep what the runtime compiled (service only)."""
        src = Create.bpf_source
        if src is not None and self.bpf_digest and self.cid:
            src.collect(self.st.runtime, self.bpf_digest, self.inv.global_value("root"),
                        self.cwd, self.cid)

    def prepare(self) -> list[str]:
        """Rewrite bundle and host; the runtime's argv (after argv[0]) to run next."""
        from interceptd.kernel import mountapi

        from .. import daemonlink, host, idpool, policylink, records
        from .. import spec as sp

        inv, st, cid = self.inv, self.st, self.cid
        if not cid:  # argv.parse refuses this already
            raise Fail(f"{inv.command}: no container id")
        from .. import timens

        self.timens = timens.for_create(st, inv.global_value("root"), cid)
        ph = self.phases
        bundle, cfg_path, orig_bytes, spec, was_rewritten = read_spec(inv, self.cwd)
        self.cfg_path = cfg_path
        ph.mark("read")
        try:
            status = (self.daemon_status() if self.daemon_status is not None
                      else daemonlink.check(st.state_dir, st.daemon_timeout))
        except daemonlink.DaemonUnreachable as e:
            raise Fail(f"refusing to start {cid} unprotected: interceptd daemon unreachable: "
                       f"{e}") from None

        ph.mark("status")
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
            if container_exists(st, inv, cid,
                                timens.for_command(st, inv.global_value("root"), cid)):
                # Touch nothing of the live one; and never hand the runtime the
                # unrewritten config (it could be gone by the time it looks).
                raise Fail(f"container {cid} already exists")
            host.teardown(stale)
            timens.unpin(st, inv.global_value("root"), cid)
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
                                        config_rewritten=True, keep_dirs=True,
                                        config_path=cfg_path)
        store.save(rec)
        ph.mark("allocate")
        facts = HostFacts.current()
        try:
            notified, denied, _src = policylink.syscalls(st.raw, st.config_path, status)
            new = rewrite_spec(spec, cid=cid, host_base=base, st=st,
                               bounding=facts.bounding, host_ns=facts.host_ns,
                               notified=notified, denied=denied, root=root)
            sp.ensure_cgroups_path(new, cid, inv.has_global("systemd-cgroup"))
            self._compiled_filter(new)
            ph.mark("rewrite")
            self._delegate_cgroups(new, base)
            ph.mark("cgroups")
            source = Create.userns_source
            ns = (source.get(base, st.range_size) if source is not None
                  else mountapi.UserNamespace(base, st.range_size))
            ph.mark("userns")
            try:
                hs = host.HostSetup(rec, store, ns.fd)
                # The view is mounted over root.path itself; root.path changes only
                # when the container's root cannot walk there (Docker's data root).
                view = hs.rootfs(root, sensitive=sensitive_paths(st),
                                 own=[st.state_dir, st.mount_root])
                if view is not None:
                    new["root"]["path"] = view
                ph.mark("rootfs")
                hs.volumes(new, bind_policy(new, st, root), base, st.range_size,
                           st.volume_id_base)
            finally:
                ns.close()
            ph.mark("volumes")
            _bind_emulated(new, status, st, rec, view or root)
            ph.mark("emulated")
            data = json.dumps(new, separators=(",", ":")).encode()
            if not was_rewritten:
                keep_original(cfg_path, orig_bytes)
            write_atomic(cfg_path, data)
            if rec.warnings:
                store.save(rec)
            ph.mark("write")
        except sp.Refused as e:
            self._undo()
            raise Fail(f"container {cid} refused: {e}") from None
        except (host.SetupError, OSError, ValueError, KeyError, TypeError) as e:
            self._undo()
            restore_config(cfg_path)
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

        from .. import host

        st, rec = self.st, self.rec
        if rec is None:
            return rc
        if rc != 0:
            from .. import timens

            pinned = timens.for_command(st, self.inv.global_value("root"), self.cid)
            if not container_exists(st, self.inv, self.cid or "", pinned):
                self._undo()
                restore_config(self.cfg_path)
            return rc
        if self.detached:
            facts = HostFacts.held
            cg = st.cgroup2_mount or (facts.cgroup2 if facts and facts.cgroup2 else
                                      mountinfo.cgroup2_mount(mountinfo.read()))
            if cg and self.pid_file:
                try:
                    with open(self._abs(self.pid_file)) as f:
                        pid = int(f.read().strip())
                    node = host.place_in_cgroup2(rec, self.store, pid, cg, self.cid or "",
                                                 self.caller_pid)
                    if node == rec.cgroup_node and self._wants_cgroups:
                        # the shim's own node: delegated like the runtime-made ones
                        from .. import cgdelegate
                        cgdelegate.hand_over(node, rec.host_base, rec.host_base, v2=True)
                except (OSError, ValueError) as e:
                    rec.warnings.append(f"cgroup v2 placement: {e}")
                    self.store.save(rec)
        elif not self.inv.has_flag("keep"):
            self._undo()
            restore_config(self.cfg_path)
        return rc
