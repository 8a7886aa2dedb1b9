"""What the shim set up for one container, persisted so `delete` can undo it.

The record is written before each host-side step takes effect, so even a shim
killed half-way leaves enough to tear down.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field


def container_key(runtime_root: str | None, container_id: str) -> str:
    """Ids are unique per runtime --root; the key is unique across roots."""
    h = hashlib.sha1((runtime_root or "").encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in container_id)[:128]
    return f"{safe}.{h}"


@dataclass
class Record:
    key: str
    container_id: str
    bundle: str = ""
    host_base: int = -1
    mount_dir: str = ""
    mounts: list[str] = field(default_factory=list)  # mount points, in creation order
    shifted: list[list] = field(default_factory=list)  # [path, delta, lo, hi]
    cgroup_node: str = ""  # a v2 node the shim made itself
    config_rewritten: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class RecordStore:
    def __init__(self, directory: str) -> None:
        self.dir = directory

    def path(self, key: str) -> str:
        return os.path.join(self.dir, key + ".json")

    def save(self, rec: Record) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        tmp = self.path(rec.key) + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(rec.to_dict(), f)
        os.rename(tmp, self.path(rec.key))

    def load(self, key: str) -> Record | None:
        try:
            with open(self.path(key)) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return Record(key=key, container_id="")
        return Record(**{k: v for k, v in data.items() if k in Record.__dataclass_fields__})

    def remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(key))
