"""Per-container policy state: snapshotted once, kept across a daemon restart, dropped
when the container is gone."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

from interceptd.config import Config
from interceptd.policy import glue


class FakeContainer:
    def __init__(self, cid: str, init_pid: int):
        self.id = cid
        self.init_pid = init_pid
        self.bundle = ""


def test_state_saved_reloaded_and_kept_while_the_init_lives(tmp_path: Path):
    cfg = Config()
    cfg.daemon.state_dir = str(tmp_path)
    glue.configure(cfg)
    try:
        c = FakeContainer("ct-1", os.getpid())
        st = glue.state_of(c)
        path = tmp_path / "policy" / "ct-1.json"
        saved = json.loads(path.read_text())
        assert saved["init_pid"] == os.getpid()
        assert saved["immutable"] == st.imm.to_dict()
        # A "restarted daemon" (new container object) reloads the saved snapshot.
        saved["masked"] = ["/proc/marker"]
        path.write_text(json.dumps(saved))
        del c
        gc.collect()
        assert path.exists()  # the init (this process) is alive: kept
        again = glue.state_of(FakeContainer("ct-1", os.getpid()))
        assert again.masked == ("/proc/marker",)
    finally:
        glue.configure(None)


def test_state_of_a_reused_id_is_not_reloaded(tmp_path: Path):
    cfg = Config()
    cfg.daemon.state_dir = str(tmp_path)
    glue.configure(cfg)
    try:
        (tmp_path / "policy").mkdir()
        (tmp_path / "policy" / "ct-2.json").write_text(json.dumps(
            {"init_pid": os.getpid(), "init_start": -1, "immutable": {}, "masked": ["/x"],
             "readonly": []}))
        st = glue.state_of(FakeContainer("ct-2", os.getpid()))
        assert "/x" not in st.masked
    finally:
        glue.configure(None)


def test_state_dropped_with_the_container(tmp_path: Path):
    import subprocess

    cfg = Config()
    cfg.daemon.state_dir = str(tmp_path)
    glue.configure(cfg)
    p = subprocess.Popen(["sleep", "30"])
    try:
        c = FakeContainer("ct-3", p.pid)
        glue.state_of(c)
        path = tmp_path / "policy" / "ct-3.json"
        assert path.exists()
        p.kill()
        p.wait()
        del c
        gc.collect()
        assert not path.exists()
    finally:
        if p.poll() is None:
            p.kill()
        glue.configure(None)
