"""The daemon's emulated /proc and /sys files bound into a container (config.json mounts).

When the daemon's status reports its FUSE tree up (`status["emulation"]`), the create
clones that tree (one detached, non-recursive clone) into the container's mount dir,
which the container's unprivileged root can traverse (the state dir cannot be), and
appends one read-only bind per file after the config's own mounts, so they land on the
container's procfs and sysfs like the masks do: the daemon's policy protects everything
on a procfs/sysfs (no umount, no move, no bind over) and gives a procfs/sysfs the
container mounts later the same binds. The sensitive /sys directories are masked (an
empty read-only tmpfs, as `maskedPaths` does for directories). The /proc/sys values the
daemon emulates cannot be config mounts (runc refuses config mounts inside /proc but for
the files LXCFS serves): a createRuntime hook (`sysctlhook.c`, `add_sysctl_hook`) binds
them in the container's namespaces once its init has made the config's mounts, before
pivot_root, so before any of the container's code runs; the daemon binds what the hook
could not when it attaches the container (`interceptd.emulation.sysctlbinds`).
/proc/sys itself is then no longer read-only when the container's root is not the
host's: the kernel lets the container write what its own namespaces hold (net.*, IPC,
...) and refuses every host-wide sysctl with EACCES, as in Sysbox.
docs/runtime.md "Emulated /proc and /sys", docs/emulation.md "/proc/sys".
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable

from interceptd.emulation import registry
from interceptd.emulation.sysfs import EMPTY_DIRS
from interceptd.kernel import mountapi

BIND_OPTIONS = ["bind", "ro", "nosuid", "nodev", "noexec"]
# Built beside this module by `make launcher` (launcher.build_hook) and the .deb.
SYSCTL_HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "interceptd-sysctl-hook")
# The runtime kills a hook still running then (and fails the create): the hook waits
# only for the daemon's FUSE server, which answers its look-ups from memory.
HOOK_TIMEOUT = 10


def wanted(status: dict) -> list[str]:
    """The container paths to bind: what the daemon serves, of what this version knows
    (an older or newer daemon may list others)."""
    em = status.get("emulation") if isinstance(status, dict) else None
    if not isinstance(em, dict) or not isinstance(em.get("files"), list):
        return []
    known = set(registry.FILES)
    return [p for p in em["files"] if isinstance(p, str) and p in known]


def _fs_mount(spec: dict, dest: str, fstype: str) -> bool:
    return any(os.path.normpath(m.get("destination", "")) == dest and m.get("type") == fstype
               for m in spec.get("mounts") or [])


def apply(spec: dict, files: Iterable[str], tree: str,
          exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """Append the binds of `files` (container paths) from `tree` (the clone of the
    daemon's FUSE tree); returns the destinations bound.

    A file is bound only where the container gets the filesystem it sits on (a procfs
    at /proc, a sysfs at /sys) and the host has it (`exists` of the host path: a sysfs
    file the host lacks cannot be a mount point). The config's own mount at the same
    place (e.g. LXCFS's) is kept. `registry.bind_target` names the real path of a file
    reached through a sysfs symlink (the runtime would resolve it anyway).
    """
    mounts = spec.setdefault("mounts", [])
    taken = {os.path.normpath(m.get("destination", "")) for m in mounts}
    has = {"/proc": _fs_mount(spec, "/proc", "proc"), "/sys": _fs_mount(spec, "/sys", "sysfs")}
    bound = []
    sysctls = [p for p in files if p in registry.WRITABLE]
    for path in files:
        if path in registry.WRITABLE:
            continue  # the daemon's to attach
        dest = registry.bind_target(path)
        top = "/" + dest.split("/", 2)[1]
        if not has.get(top) or dest in taken or not exists(dest):
            continue
        mounts.append({"destination": dest, "type": "bind",
                       "source": os.path.join(tree, path.lstrip("/")),
                       "options": list(BIND_OPTIONS)})
        bound.append(dest)
    linux = spec.setdefault("linux", {})
    if sysctls and has["/proc"] and _root_is_mapped(linux):
        linux["readonlyPaths"] = [p for p in linux.get("readonlyPaths") or []
                                  if os.path.normpath(p) != registry.SYSCTL_ROOT]
    masked = list(linux.get("maskedPaths") or [])
    if has["/sys"]:
        masked += [d for d in EMPTY_DIRS if d not in masked]
    linux["maskedPaths"] = masked
    return bound


def _root_is_mapped(linux: dict) -> bool:
    """The container has its own user namespace whose root is not the host's root (the
    kernel's sysctl permission checks then refuse it every host-wide value)."""
    if not any(n.get("type") == "user" and not n.get("path")
               for n in linux.get("namespaces") or []):
        return False
    root = [m for m in linux.get("uidMappings") or [] if int(m.get("containerID", -1)) == 0]
    return len(root) == 1 and int(root[0].get("hostID", 0)) > 0


def clone_tree(fs: str, target: str) -> None:
    """Mount a clone of the daemon's tree `fs` at `target` (created if needed; whatever
    a dead teardown left there is detached first)."""
    os.makedirs(target, mode=0o755, exist_ok=True)
    mountapi.detach_all(target)
    fd = mountapi.open_tree(fs)
    try:
        mountapi.move_mount(fd, target)
    finally:
        os.close(fd)


def add_sysctl_hook(spec: dict, files: Iterable[str], tree: str, dev: int, rootfs: str,
                    hook: str = SYSCTL_HOOK) -> list[str]:
    """Add the createRuntime hook that binds the served /proc/sys values of `files`
    from `tree` (the clone of the daemon's tree, of st_dev `dev`) over
    `<rootfs>/proc/sys/...`, last of the config's createRuntime hooks (a later one
    could undo its binds); returns the paths it binds, [] when it is not added: no
    procfs at /proc, or no hook binary that only root can change (the daemon then
    binds them at attach)."""
    sysctls = [p for p in files if p in registry.WRITABLE]
    if not sysctls or not _fs_mount(spec, "/proc", "proc") or not hook_usable(hook):
        return []
    hooks = spec.get("hooks")
    if not isinstance(hooks, dict):
        hooks = spec["hooks"] = {}
    chain = hooks.get("createRuntime")
    hooks["createRuntime"] = [*(chain if isinstance(chain, list) else []), {
        "path": hook,
        "args": [os.path.basename(hook), tree, str(dev), rootfs, *sysctls],
        "env": ["LC_ALL=C"],  # not the runtime's own environment
        "timeout": HOOK_TIMEOUT,
    }]
    return sysctls


def hook_usable(path: str) -> bool:
    """A root-owned executable in root-owned directories nobody else may write: the
    runtime runs it as the host's root."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022 \
            or not st.st_mode & stat.S_IXUSR:
        return False
    d = os.path.dirname(path)
    while True:
        try:
            ds = os.stat(d)
        except OSError:
            return False
        if ds.st_uid != 0 or ds.st_mode & 0o022:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)
