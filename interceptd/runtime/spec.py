"""Pure rewrites of an OCI runtime spec (config.json as a dict).

Each function takes the spec and what it needs from the host, changes the spec in
place, and raises `Refused` with a reason when the container must not start.
None of them weakens the container's own configuration.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable

from .caps import CAP_NUMBERS, normalise
from .errors import Refused

# ---------------------------------------------------------------- user namespace

def ensure_user_namespace(spec: dict, host_base: int, size: int = 65536) -> None:
    """Every container gets its own user namespace mapping 0..size-1 to host_base...

    Whatever the config asked for (no userns, Docker's --userns=host, a joined userns
    path, other maps) is replaced: the mapping is the shim's to choose.
    """
    linux = spec.setdefault("linux", {})
    nss = [ns for ns in linux.get("namespaces", []) if ns.get("type") != "user"]
    nss.append({"type": "user"})
    linux["namespaces"] = nss
    linux["uidMappings"] = [{"containerID": 0, "hostID": host_base, "size": size}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": host_base, "size": size}]


def fit_sysctls(spec: dict, size: int = 65536) -> None:
    """Sysctls naming ids must stay inside the container's mapping (Docker sets
    ping_group_range to "0 2147483647", which the kernel rejects in a userns)."""
    sysctl = (spec.get("linux") or {}).get("sysctl") or {}
    val = sysctl.get("net.ipv4.ping_group_range")
    if val is None:
        return
    try:
        lo, hi = (int(x) for x in str(val).split())
    except ValueError:
        return  # the runtime reports a malformed value itself
    lo, hi = min(lo, size - 1), min(hi, size - 1)
    sysctl["net.ipv4.ping_group_range"] = f"{lo} {hi}"


# ---------------------------------------------------------------- namespaces

REQUIRED_NAMESPACES = ("pid", "network", "ipc", "uts", "mount")
# Docker on cgroup v1 shares the host's cgroup namespace by default: add one
# instead of refusing (it only adds isolation).
ADDED_NAMESPACES = ("cgroup",)
HOST_FLAG = {"pid": "--pid=host", "network": "--network=host", "ipc": "--ipc=host",
             "uts": "--uts=host", "cgroup": "--cgroupns=host", "mount": "a host mount namespace"}


def check_namespaces(spec: dict, host_ns: dict[str, set[tuple[int, int]]],
                     ns_identity=None) -> None:
    """Refuse host namespaces: a missing pid/net/ipc/uts/mount entry, or a path to a host ns.

    host_ns maps a namespace type to the (st_dev, st_ino) identities of the host's
    namespaces of that type; ns_identity(path) -> (dev, ino) resolves a path.
    """
    linux = spec.setdefault("linux", {})
    nss = linux.setdefault("namespaces", [])
    types = {ns.get("type") for ns in nss}
    for t in REQUIRED_NAMESPACES:
        if t not in types:
            raise Refused(f"container shares the host's {t} namespace ({HOST_FLAG[t]}): "
                          "refused by interceptd")
    for t in ADDED_NAMESPACES:
        if t not in types:
            nss.append({"type": t})
    ident = ns_identity or _ns_identity
    for ns in nss:
        path = ns.get("path")
        t = ns.get("type")
        if not path or t == "user":
            continue
        try:
            who = ident(path)
        except OSError as e:
            raise Refused(f"cannot inspect {t} namespace path {path}: {e}") from None
        if who in host_ns.get(t, set()):
            raise Refused(f"{t} namespace path {path} is the host's ({HOST_FLAG.get(t, t)}): "
                          "refused by interceptd")


def _ns_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


# ---------------------------------------------------------------- capabilities

CAP_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")


def clamp_capabilities(process: dict, bounding: set[str]) -> list[str]:
    """Drop capabilities the host cannot grant (unknown names too); return what was dropped."""
    caps = process.get("capabilities")
    dropped: set[str] = set()
    if not caps:
        return []
    for key in CAP_SETS:
        if key not in caps or caps[key] is None:
            continue
        kept = []
        for name in caps[key]:
            n = normalise(name)
            if n in CAP_NUMBERS and n in bounding:
                kept.append(name)
            else:
                dropped.add(name)
        caps[key] = kept
    return sorted(dropped)


def clamp_cap_list(names: Iterable[str], bounding: set[str]) -> list[str]:
    return [n for n in names if normalise(n) in bounding and normalise(n) in CAP_NUMBERS]


# ---------------------------------------------------------------- masked paths

DOCKER_MASKED = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]
DOCKER_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def apply_masks(spec: dict) -> None:
    linux = spec.setdefault("linux", {})
    for key, defaults in (("maskedPaths", DOCKER_MASKED), ("readonlyPaths", DOCKER_READONLY)):
        cur = list(linux.get(key) or [])
        for p in defaults:
            if p not in cur:
                cur.append(p)
        linux[key] = cur


# ---------------------------------------------------------------- sensitive mounts

SENSITIVE_PATHS = [
    "/var/run/docker.sock", "/run/docker.sock", "/run/containerd", "/var/run/containerd",
    "/etc/docker", "/var/lib/docker", "/var/lib/containerd", "/run/docker",
    "/var/run/docker", "/etc/interceptd", "/run/crun", "/run/runc",
]
SENSITIVE_NAMES = ("docker.sock", "containerd.sock", "containerd.sock.ttrpc")
# Where an image name or digest shows up in annotations, depending on the caller.
IMAGE_ANNOTATIONS = (
    "org.opencontainers.image.ref.name", "org.opencontainers.image.base.name",
    "org.opencontainers.image.base.digest", "io.kubernetes.cri.image-name",
    "io.containerd.image.name", "com.docker.image.name", "com.docker.image.digest",
)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


_HEX = frozenset("0123456789abcdef")
_DOCKER_CONTAINER_FILES = ("resolv.conf", "hostname", "hosts", "mounts/shm")


def _docker_own(rel: str) -> bool:
    """Per-container files and volumes that Docker itself binds from its data root
    (rel is the normalised path below the data root)."""
    parts = rel.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "containers":
        return (len(parts[1]) == 64 and set(parts[1]) <= _HEX
                and "/".join(parts[2:]) in _DOCKER_CONTAINER_FILES)
    return len(parts) >= 3 and parts[0] == "volumes" and parts[2] == "_data"


def _is_sensitive(source: str, sensitive: list[str]) -> str | None:
    real = source
    for top in sensitive:
        if _under(real, top) and real != top and _docker_own(real[len(top.rstrip("/")):]):
            continue
        # Also a parent of a sensitive path: binding / or /var exposes the socket too.
        if _under(real, top) or (real != "" and _under(top, real)):
            return top
    if posixpath.basename(real) in SENSITIVE_NAMES:
        return real
    return None


def image_refs(spec: dict) -> set[str]:
    ann = spec.get("annotations") or {}
    return {str(ann[k]) for k in IMAGE_ANNOTATIONS if k in ann}


def is_bind(m: dict) -> bool:
    opts = m.get("options") or []
    return m.get("type") in ("bind", None, "") or "bind" in opts or "rbind" in opts


def bind_indexes(spec: dict) -> list[int]:
    """Indexes of every bind mount in the config (all are checked and re-sourced)."""
    return [i for i, m in enumerate(spec.get("mounts") or []) if is_bind(m)]


# Storage drivers whose rootfs dockerd places at <data-root>/<driver>/... ("rootfs":
# dockerd with the containerd image store, <data-root>/rootfs/<snapshotter>/<id>).
DOCKER_DRIVERS = frozenset({"overlay2", "overlay", "fuse-overlayfs", "vfs", "btrfs", "zfs",
                            "devicemapper", "aufs", "rootfs"})
_DOCKER_NET_FILES = ("resolv.conf", "hostname", "hosts")


def docker_data_root(spec: dict, root: str) -> str | None:
    """The data root of the dockerd that wrote this config, or None.

    Derived only from what dockerd writes and a `docker run` user cannot choose:
    root.path is `<D>/<driver>/...` and Docker binds its own per-container files
    `<D>/containers/<64 hex>/{hostname,hosts,resolv.conf}` (also with --network=none).
    """
    for m in spec.get("mounts") or []:
        if not is_bind(m):
            continue
        src = posixpath.normpath(m.get("source") or "/")
        parts = src.rsplit("/", 3)
        if (len(parts) != 4 or parts[1] != "containers" or len(parts[2]) != 64
                or not set(parts[2]) <= _HEX or parts[3] not in _DOCKER_NET_FILES):
            continue
        top = parts[0]
        if not top.startswith("/") or not _under(root, top) or root == top:
            continue
        if root[len(top):].strip("/").split("/")[0] in DOCKER_DRIVERS:
            return top
    return None


class BindPolicy:
    """Where bind sources may come from: the positive model.

    shared: the admin's [runtime] shared_paths (resolved); docker_root: the data root
    derived from the config (docker_data_root), whose named volumes and per-container
    files are allowed too; sensitive: never, unless `allow` (the image allow-list).
    """

    def __init__(self, shared: Iterable[str], sensitive: list[str], allow: bool = False,
                 docker_root: str | None = None) -> None:
        self.shared = [posixpath.normpath(p) for p in shared if p.startswith("/")]
        self.sensitive = sensitive
        self.allow = allow
        self.docker_root = docker_root

    def docker_own(self, path: str) -> bool:
        d = self.docker_root
        if d is None or not _under(path, d) or path == d:
            return False
        parts = path[len(d.rstrip("/")):].strip("/").split("/")
        if parts[0] == "containers":
            return (len(parts) >= 3 and len(parts[1]) == 64 and set(parts[1]) <= _HEX
                    and "/".join(parts[2:]) in _DOCKER_CONTAINER_FILES)
        # <D>/volumes/<name>/_data and below (volume subpaths)
        return len(parts) >= 3 and parts[0] == "volumes" and parts[2] == "_data"

    def docker_net_file(self, path: str) -> bool:
        """`<D>/containers/<64 hex>/{hosts,hostname,resolv.conf}` of the derived data root."""
        if not self.docker_own(path):
            return False
        parts = path[len((self.docker_root or "").rstrip("/")):].strip("/").split("/")
        return len(parts) == 3 and parts[0] == "containers" and parts[2] in _DOCKER_NET_FILES

    def docker_volume(self, path: str) -> str | None:
        """The `<D>/volumes/<name>/_data` a source lies in (D the derived data root)."""
        d = self.docker_root
        if d is None or not _under(path, d):
            return None
        parts = path[len(d.rstrip("/")):].strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "volumes" and parts[2] == "_data":
            return "/".join([d.rstrip("/"), *parts[:3]])
        return None

    def area(self, path: str) -> str | None:
        """The shared directory (or Docker data root) that allows `path`."""
        if self.docker_own(path):
            return self.docker_root
        tops = [t for t in self.shared if _under(path, t)]
        return max(tops, key=len) if tops else None

    def check(self, path: str, src: str, dest: str | None) -> None:
        """Refuse a bind whose source really is `path` (resolved); `src` as configured."""
        if not path.startswith("/"):
            raise Refused(f"bind mount source {src!r} into {dest} is not an absolute path")
        own = self.docker_own(path)
        if not own:
            hit = _is_sensitive(path, self.sensitive)
            if hit:
                if self.allow:
                    return
                raise Refused(f"bind mount of sensitive host path {src} ({hit}) into {dest} "
                              "is refused by interceptd (see [runtime] sensitive_mount_allow)")
        if own or any(_under(path, top) for top in self.shared):
            return
        raise Refused(f"bind mount of {src} into {dest} is refused by interceptd: its source "
                      f"{path} is outside [runtime] shared_paths "
                      f"({', '.join(self.shared) or 'empty'})")


def bind_policy(spec: dict, shared: Iterable[str], sensitive: list[str], allow: list[str],
                root: str | None, trust_annotations: bool = False) -> BindPolicy:
    """The bind policy for this config. `allow` (image names/digests) is matched on
    annotations, which whoever creates the container sets: only with trust_annotations."""
    allowed = trust_annotations and bool(image_refs(spec) & set(allow))
    return BindPolicy(shared, sensitive, allowed,
                      docker_data_root(spec, root) if root else None)


# The filesystems a config may mount other than by bind: the kernel makes them from
# nothing, and no option of theirs names a path (runc and crun mount them before the
# container's filter exists, with the host's tree still in view). Anything else is
# refused: overlay (lowerdir=/upperdir=/workdir= are host paths, resolved by the
# runtime, not checked and re-sourced as a bind's fd is), a device's filesystem
# (its source is a host block device), and any type this list does not know.
PATHLESS_TYPES = frozenset({"proc", "sysfs", "tmpfs", "ramfs", "devpts", "mqueue",
                            "cgroup", "cgroup2"})


def check_other_mounts(spec: dict) -> None:
    """Refuse non-bind mounts that could name a host path (positive model)."""
    for m in spec.get("mounts") or []:
        if is_bind(m):
            continue
        kind, dest = m.get("type"), m.get("destination")
        if kind not in PATHLESS_TYPES:
            why = ("its lowerdir/upperdir/workdir options are host paths; bind the "
                   "directory from a [runtime] shared_paths place instead, or build the "
                   "overlay inside the container" if kind == "overlay" else
                   "only binds (checked against [runtime] shared_paths) and "
                   + ", ".join(sorted(PATHLESS_TYPES)) + " are mounted from a config")
            raise Refused(f"mount of type {kind!r} at {dest} refused by interceptd: {why}")
        for opt in m.get("options") or []:
            _, eq, value = str(opt).partition("=")
            if eq and "/" in value:
                raise Refused(f"mount of type {kind!r} at {dest}: option {opt!r} names a "
                              "path: refused by interceptd")


def check_mounts(spec: dict, sensitive: list[str], allow: list[str],
                 resolve=os.path.realpath, shared: Iterable[str] = (),
                 root: str | None = None, trust_annotations: bool = False) -> BindPolicy:
    """Refuse binds from outside the shared paths, and of the runtime's sockets and
    state; returns the policy, which the host side applies again to each source it
    opens (the decision that counts is the one on the opened fd).

    `allow` (image names/digests) is matched on annotations, which whoever creates
    the container sets: it is honoured only with `trust_annotations`.
    """
    check_other_mounts(spec)
    policy = bind_policy(spec, shared, sensitive, allow, root, trust_annotations)
    for m in spec.get("mounts") or []:
        if not is_bind(m):
            continue
        src = m.get("source") or ""
        dest = m.get("destination")
        if not src.startswith("/"):
            raise Refused(f"bind mount source {src!r} into {dest} is not an absolute path")
        # The literal path too: a sensitive name behind an innocent symlink, and the
        # other way round, are both refused.
        for cand in dict.fromkeys((posixpath.normpath(src), resolve(src))):
            policy.check(cand, src, dest)
    return policy


def check_root(path: str, sensitive: list[str], own: list[str]) -> None:
    """Refuse a root.path (resolved) that is the host's root, a parent of a sensitive
    path, or interceptd's own state / rootfs views (another container's view)."""
    for top in own:
        if _under(path, top):
            raise Refused(f"root.path {path} is inside interceptd's own directory {top}")
        if _under(top, path):
            raise Refused(f"root.path {path} contains interceptd's own directory {top}")
    for top in sensitive:
        if _under(top, path):
            raise Refused(f"root.path {path} contains sensitive host path {top}")


# Kernel filesystems of the host that a bind must never expose (statfs magic, and
# the mount table's type names for those statfs cannot tell apart: devtmpfs is tmpfs).
PSEUDO_FS_MAGIC = {
    0x9FA0: "proc", 0x62656572: "sysfs", 0x64626720: "debugfs", 0x74726163: "tracefs",
    0x73636673: "securityfs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2",
    0xCAFE4A11: "bpf", 0x62656570: "configfs", 0x6165676C: "pstore",
    0xDE5E81E4: "efivarfs", 0x65735543: "fusectl", 0x1CD1: "devpts",
    0x6E736673: "nsfs", 0x42494E4D: "binfmt_misc", 0xF97CFF8C: "selinuxfs",
    0x73727279: "smackfs", 0x19800202: "mqueue", 0x67596969: "rpc_pipefs",
    0x0187: "autofs", 0x50495045: "pipefs", 0x534F434B: "sockfs", 0x09041934: "anon_inode",
}
PSEUDO_FS_NAMES = frozenset({*PSEUDO_FS_MAGIC.values(), "devtmpfs", "hugetlbfs"})


def volume_maps(volume_base: int, host_base: int, size: int) -> tuple[str, str]:
    """A Docker named volume's maps: the volume range (volume_base..+size, shared by
    every container, as dockerd's userns-remap shares one range) is the container's
    0..size-1."""
    line = f"{volume_base} {host_base} {size}\n"
    return line, line


def bind_maps(uid: int, gid: int, host_base: int, size: int) -> tuple[str | None, str | None]:
    """The id-mapped mount's uid_map and gid_map for a bind whose source is owned by
    uid:gid (None: no mapping needed, the container's own range applies).

    The container's root is the source's owner, never host root: a root-owned source
    (or an owner inside the container's own range) keeps the container's own range,
    so what the container's root creates there belongs to host_base, and host root's
    files are nobody's to it. The container's other ids keep their own range.
    """
    def one(owner: int) -> str | None:
        if owner == 0 or host_base <= owner < host_base + size:
            return None
        return f"{owner} {host_base} 1\n{host_base + 1} {host_base + 1} {size - 1}\n"

    return one(uid), one(gid)


# ---------------------------------------------------------------- seccomp

def add_seccomp(spec: dict, notify: list, denied: list[dict], listener_path: str,
                metadata: str) -> str:
    """Attach the container to the daemon: its own profile unweakened (or the daemon's
    default profile when it has none) plus the notify and deny rules. `notify` holds OCI
    SCMP_ACT_NOTIFY rules or bare syscall names. interceptd/runtime/seccomp.py.
    Returns the section's digest (bpfcache.section_digest)."""
    import json

    from . import bpfcache, seccomp, seccomp_default

    linux = spec.setdefault("linux", {})
    own = linux.get("seccomp")
    # Composed once per (profile, rules, listener): every container of an image brings
    # the same profile, and composing Docker's costs about a millisecond. The cached
    # section is shared by the specs it goes into (they are only serialised after).
    key = (json.dumps(own, sort_keys=True) if own else "",
           json.dumps(notify, sort_keys=True), json.dumps(denied, sort_keys=True),
           listener_path)
    hit = _COMPOSED.get(key)
    if hit is None:
        done = seccomp.compose(own or seccomp_default.profile(), notify, denied,
                               listener_path, "")
        hit = (done, bpfcache.section_digest(done))
        if len(_COMPOSED) >= 16:
            _COMPOSED.clear()
        _COMPOSED[key] = hit
    linux["seccomp"] = dict(hit[0], listenerMetadata=metadata)
    return hit[1]


_COMPOSED: dict[tuple[str, str, str, str], tuple[dict, str]] = {}


# ---------------------------------------------------------------- cgroup

def ensure_cgroups_path(spec: dict, container_id: str, systemd: bool) -> bool:
    """Give the container its own cgroup when the config leaves it to the runtime's default.

    Returns True when the shim chose the path (so it owns the node at delete).
    """
    linux = spec.setdefault("linux", {})
    if linux.get("cgroupsPath"):
        return False
    linux["cgroupsPath"] = (f"system.slice:interceptd:{container_id}" if systemd
                            else f"/interceptd/{container_id}")
    return True


# ---------------------------------------------------------------- rootfs / mounts

def root_path(spec: dict, bundle: str) -> str:
    root = (spec.get("root") or {}).get("path")
    if not root:
        raise Refused("config.json has no root.path")
    return root if os.path.isabs(root) else os.path.normpath(os.path.join(bundle, root))
