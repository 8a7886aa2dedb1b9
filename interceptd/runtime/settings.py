"""The shim's settings: the `[runtime]` section of interceptd.toml, then the environment."""

from __future__ import annotations

import os

DEFAULT_CONFIG = "/etc/interceptd/interceptd.toml"
DEFAULT_STATE_DIR = "/run/interceptd"
# Docker's named volumes and users' homes; Docker's per-container files (and the
# volumes of a dockerd with another data root) are derived from each config.
DEFAULT_SHARED_PATHS = ("/var/lib/docker/volumes", "/home")


class SettingsError(Exception):
    pass


class Settings:
    # A plain class: importing dataclasses costs more than a container start can spare.
    def __init__(self, raw: dict | None = None, config_path: str | None = None) -> None:
        self.runtime = ""  # absolute path of the real runc/crun
        self.state_dir = DEFAULT_STATE_DIR
        self.config_path = config_path
        # First host id handed out and how many 65536-id ranges the pool has.
        self.id_pool_start = 1 << 20
        self.id_pool_ranges = 1024
        self.range_size = 65536
        # Image names / digests allowed to bind-mount sensitive paths (e.g. docker.sock),
        # matched on annotations: honoured only when the admin trusts those.
        self.sensitive_mount_allow: list[str] = []
        self.sensitive_mount_trust_annotations = False
        # Where bind mount sources may come from (the positive model).
        self.shared_paths: list[str] = list(DEFAULT_SHARED_PATHS)
        # Docker named volumes' own id range (None: the range right after the pool).
        self._volume_id_base: int | None = None
        self.extra_sensitive_paths: list[str] = []
        self.daemon_timeout = 2.0
        self.cgroup2_mount: str | None = None  # autodetected when None
        self.mount_dir: str | None = None
        self.raw: dict = raw or {}  # the whole TOML file, for policy

    @property
    def volume_id_base(self) -> int:
        if self._volume_id_base is not None:
            return self._volume_id_base
        return self.id_pool_start + self.id_pool_ranges * self.range_size

    @property
    def runtime_dir(self) -> str:
        """Where the shim keeps its own state (id pool, per-container records, mounts)."""
        return os.path.join(self.state_dir, "runtime")

    @property
    def mount_root(self) -> str:
        """Where container rootfs views are mounted. Not under the state dir: the
        daemon keeps that 0700, and a container's (unprivileged) root must be able
        to walk to its rootfs."""
        if self.mount_dir:
            return self.mount_dir
        return self.state_dir.rstrip("/") + "-rootfs"


def _find_runtime(name: str) -> str:
    if os.path.isabs(name):
        return name
    dirs = [*os.environ.get("PATH", "").split(":"),
            "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    for d in dirs:
        if not d.startswith("/"):
            continue  # a relative PATH entry depends on the caller's cwd
        p = os.path.join(d, name)
        # A set-up puts interceptd-runc first in dockerd's and containerd's PATH
        # as `runc` (a link to it): that is not the real runtime.
        if os.path.isfile(p) and os.access(p, os.X_OK) and not _is_shim(p):
            return p
    raise SettingsError(f"real runtime {name!r} not found in PATH (interceptd-runc skipped)")


def _is_shim(path: str) -> bool:
    return os.path.basename(os.path.realpath(path)) == "interceptd-runc"


def load(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    path = env.get("INTERCEPTD_CONFIG") or DEFAULT_CONFIG
    raw: dict = {}
    explicit = "INTERCEPTD_CONFIG" in env
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if explicit:
            raise SettingsError(f"config file {path} not found") from None
        data = None
    except OSError as e:
        raise SettingsError(f"cannot read config file {path}: {e}") from None
    if data is not None:
        import tomllib  # only when there is a file: it is slow to import

        try:
            raw = tomllib.loads(data.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise SettingsError(f"cannot read config file {path}: {e}") from None
    return from_dict(raw, env, path if raw or explicit else None)


def from_dict(raw: dict, env: dict[str, str], path: str | None = None) -> Settings:
    rt = raw.get("runtime", {}) or {}
    daemon = raw.get("daemon", {}) or {}
    if not isinstance(rt, dict):
        raise SettingsError("[runtime] must be a table")
    s = Settings(raw, path)
    s.state_dir = env.get("INTERCEPTD_STATE_DIR") or rt.get("state_dir") or daemon.get(
        "state_dir", DEFAULT_STATE_DIR
    )
    s.runtime = _find_runtime(env.get("INTERCEPTD_RUNTIME") or rt.get("runtime") or "runc")
    if _is_shim(s.runtime):
        raise SettingsError(f"real runtime {s.runtime} is interceptd-runc itself")
    for key in ("id_pool_start", "id_pool_ranges"):
        if key in rt:
            val = rt[key]
            if not isinstance(val, int) or val <= 0:
                raise SettingsError(f"[runtime] {key} must be a positive integer")
            setattr(s, key, val)
    if s.id_pool_start + s.id_pool_ranges * s.range_size > 0xFFFFFFFF:
        raise SettingsError("[runtime] id pool exceeds the 32-bit id space")
    allow = rt.get("sensitive_mount_allow", [])
    extra = rt.get("sensitive_paths", [])
    if not all(isinstance(x, str) for x in [*allow, *extra]):
        raise SettingsError("[runtime] sensitive_mount_allow / sensitive_paths must be strings")
    s.sensitive_mount_allow = list(allow)
    trust = rt.get("sensitive_mount_trust_annotations", False)
    if not isinstance(trust, bool):
        raise SettingsError("[runtime] sensitive_mount_trust_annotations must be true or false")
    s.sensitive_mount_trust_annotations = trust
    shared = rt.get("shared_paths", list(DEFAULT_SHARED_PATHS))
    if not isinstance(shared, list) or not all(
            isinstance(x, str) and x.startswith("/") for x in shared):
        raise SettingsError("[runtime] shared_paths must be a list of absolute paths")
    s.shared_paths = [os.path.normpath(x) for x in shared]
    if "volume_id_base" in rt:
        vb = rt["volume_id_base"]
        if not isinstance(vb, int) or isinstance(vb, bool) or vb <= 0:
            raise SettingsError("[runtime] volume_id_base must be a positive integer")
        s._volume_id_base = vb
    vb = s.volume_id_base
    pool_end = s.id_pool_start + s.id_pool_ranges * s.range_size
    if vb + s.range_size > 0xFFFFFFFF or (vb < pool_end and s.id_pool_start < vb + s.range_size):
        raise SettingsError("[runtime] volume_id_base must leave a range outside the id pool "
                            "and the 32-bit id space")
    s.extra_sensitive_paths = list(extra)
    s.daemon_timeout = float(rt.get("daemon_timeout", 2.0))
    s.cgroup2_mount = rt.get("cgroup2_mount")
    s.mount_dir = rt.get("mount_dir")
    return s
