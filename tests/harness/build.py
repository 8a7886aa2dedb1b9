"""Static test binaries: every tests/helpers/*.c compiled once per session."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

HELPERS_DIR = Path(__file__).resolve().parent.parent / "helpers"
CFLAGS = ["-static", "-O2", "-Wall", "-Wextra", "-Werror"]


def _write_syscall_names(out: Path) -> None:
    """Generate syscall_names.h (name -> number) from the libc headers."""
    macros = subprocess.run(
        ["gcc", "-E", "-dM", "-include", "sys/syscall.h", "-"],
        input="", capture_output=True, text=True, check=True,
    ).stdout
    numbers = dict(re.findall(r"^#define __NR_(\w+) (\d+)$", macros, re.M))
    lines = ["static const struct { const char *name; long nr; } syscall_names[] = {"]
    lines += [f'\t{{"{name}", {nr}}},' for name, nr in sorted(numbers.items())]
    lines.append("};")
    out.write_text("\n".join(lines) + "\n")


def build_helpers(outdir: Path, sources: list[Path] | None = None) -> dict[str, Path]:
    """Compile each helper source into outdir/<stem>; returns {stem: path}."""
    outdir.mkdir(parents=True, exist_ok=True)
    _write_syscall_names(outdir / "syscall_names.h")
    built: dict[str, Path] = {}
    for src in sources if sources is not None else sorted(HELPERS_DIR.glob("*.c")):
        exe = outdir / src.stem
        subprocess.run(
            ["gcc", *CFLAGS, f"-I{outdir}", "-o", str(exe), str(src)],
            check=True, capture_output=True, text=True,
        )
        built[src.stem] = exe
    return built
