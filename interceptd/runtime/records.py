"""What the shim set up for one container, persisted so `delete` can undo it.

The record is written before each host-side step takes effect, so even a shim
killed half-way leaves enough to tear down.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import zlib


def container_key(runtime_root: str | None, container_id: str) -> str:
    """Ids are unique per runtime --root; the key is unique across roots."""
    h = f"{zlib.crc32((runtime_root or '').encode()):08x}"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in container_id)[:128]
    return f"{safe}.{h}"


FIELDS = ("key", "container_id", "bundle", "host_base", "mount_dir", "mounts", "shifted",
          "cgroup_node", "config_rewritten", "warnings", "keep_dirs", "config_path")


class Record:
    def __init__(self, key: str, container_id: str, bundle: str = "", host_base: int = -1,
                 mount_dir: str = "", mounts: list[str] | None = None,
                 shifted: list[list] | None = None, cgroup_node: str = "",
                 config_rewritten: bool = False, warnings: list[str] | None = None,
                 keep_dirs: bool = False, config_path: str = "") -> None:
        self.key = key
        self.container_id = container_id
        self.bundle = bundle
        self.host_base = host_base
        self.mount_dir = mount_dir
        self.mounts = list(mounts or [])  # mount points, in creation order
        self.shifted = list(shifted or [])  # [path, delta, lo, hi]
        self.cgroup_node = cgroup_node  # a v2 node the shim made itself
        self.config_rewritten = config_rewritten
        self.warnings = list(warnings or [])
        # mount_dir is the id range's (reused by its next holder): teardown unmounts
        # but leaves the empty directories. Older records own a per-container dir.
        self.keep_dirs = keep_dirs
        # The config the shim rewrote: crun's --config may name one outside the
        # bundle; "" (older records) is <bundle>/config.json.
        self.config_path = config_path

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and self.to_dict() == other.to_dict()


class RecordStore:
    def __init__(self, directory: str) -> None:
        self.dir = directory

    def path(self, key: str) -> str:
        return os.path.join(self.dir, key + ".json")

    def save(self, rec: Record) -> None:
        path = self.path(rec.key)
        data = json.dumps(rec.to_dict()).encode()
        try:
            # A new record is written straight to its place (a torn one loads as
            # an empty record, which delete tolerates): a file created and renamed
            # per container costs more than the rest of the bookkeeping.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            fd = -1
        except FileNotFoundError:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            return self.save(rec)
        if fd >= 0:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, path)

    def load(self, key: str) -> Record | None:
        try:
            with open(self.path(key)) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return Record(key=key, container_id="")
        return Record(**{k: v for k, v in data.items() if k in FIELDS})

    def remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(key))
