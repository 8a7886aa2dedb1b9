"""delete: the real runtime's delete, then the shim's teardown."""

from __future__ import annotations

import contextlib
import os

from .. import argv as argvmod
from .. import settings as settingsmod
from ..bundle import restore_config
from ..errors import Fail, log_error
from ..procs import container_exists


class Delete:
    def __init__(self, inv: argvmod.Invocation, st: settingsmod.Settings,
                 cwd: str | None = None) -> None:
        self.inv = inv
        self.st = st
        self.cid = inv.container_id
        # The container's time namespace, which the runtime reads its state in (timens.py).
        self.timens: str | None = None

    def prepare(self) -> list[str]:
        from .. import timens

        if not self.cid:  # argv.parse refuses this already
            raise Fail("delete: no container id")
        self.timens = timens.for_command(self.st, self.inv.global_value("root"), self.cid)
        return list(self.inv.argv)

    def finish(self, rc: int) -> int:
        from .. import host, idpool, records, timens

        st, inv, cid = self.st, self.inv, self.cid
        assert cid is not None
        if rc != 0 and container_exists(st, inv, cid, self.timens):
            return rc
        pin_problems = timens.unpin(st, inv.global_value("root"), cid)
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
        problems = host.teardown(rec) + pin_problems
        if rec.config_rewritten and (rec.config_path or rec.bundle):
            restore_config(rec.config_path or os.path.join(rec.bundle, "config.json"))
        store.remove(key)  # before the release: see Create._undo
        pool.release(key)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(st.runtime_dir, "containers", key + ".pid"))
        if problems:
            log_error(inv, f"delete {cid}: " + "; ".join(problems))
        return rc
