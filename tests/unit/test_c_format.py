"""csrc/ has one C style, .clang-format's.

clang-format is in the Makefile's APT_PACKAGES: its absence is a failure, not a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXCLUDED: set[str] = set()


def sources() -> list[Path]:
    return sorted(p for p in (ROOT / "csrc").iterdir()
                  if p.suffix in (".c", ".h") and p.name not in EXCLUDED)


def test_csrc_follows_clang_format():
    binary = shutil.which("clang-format")
    assert binary, "clang-format is missing: `make setup` installs it (APT_PACKAGES)"
    files = sources()
    assert len(files) > 10
    r = subprocess.run([binary, "--style=file", "--dry-run", "-Werror", *map(str, files)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
