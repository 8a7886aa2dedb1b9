"""The C core's ABI is written once: in csrc/icd.h and csrc/fusefs.h.

interceptd/_build_core.py derives the cffi cdef from those headers; the Python face
(_corelib, core, core_exec, core_fuse) reads struct layouts, field names and the ops'
argument kinds from the binding instead of writing them out again.
"""

from __future__ import annotations

import re
from pathlib import Path

from interceptd import _build_core, core, core_exec, core_fuse
from interceptd._corelib import ffi, lib

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
PROTO = re.compile(r"^[A-Za-z_][\w \*]*?\b(icd_\w+)\s*\(", re.M)
DEFINE = re.compile(r"^#define\s+(ICD_\w+)\s+(-?\d+)\b", re.M)


def _header(name: str) -> str:
    return re.sub(r"/\*.*?\*/", "", (CSRC / name).read_text(), flags=re.S)


def test_every_api_function_and_constant_is_bound_from_the_headers():
    for h in _build_core.API_HEADERS:
        text = _header(h)
        names = PROTO.findall(text)
        assert names, h
        for name in names:
            assert hasattr(lib, name), (h, name)
        for name, value in DEFINE.findall(text):
            assert getattr(lib, name) == int(value), (h, name)


def test_the_cdef_is_the_headers():
    cdef = _build_core.cdef()
    for h in _build_core.API_HEADERS:
        for name in PROTO.findall(_header(h)):
            assert re.search(rf"\b{name}\s*\(", cdef), name
    # Nothing internal leaks into the API: the internal headers' functions are not bound.
    for h in ("engine.h", "native.h", "nsops.h", "rules.h", "internal.h"):
        for name in PROTO.findall(_header(h)):
            assert not hasattr(lib, name), (h, name)


def test_no_python_copy_of_the_structs_or_ops():
    src = "".join(Path(m.__file__).read_text() for m in (core, core_exec, core_fuse))
    assert not re.search(r"struct icd_\w+\s*\{", src)
    assert "_build_core" not in src
    # The item layout is the header's, and so are the ops' argument kinds.
    assert core._ITEM.size == ffi.sizeof("struct icd_item")
    name, kinds = ffi.new("const char **"), ffi.new("const char **")
    assert lib.icd_op_info(lib.ICD_OP_MOUNT, name, kinds) == 0
    assert core.OPS["mount"] == (lib.ICD_OP_MOUNT, ffi.string(kinds[0]).decode())
    assert len(core.OPS) == lib.ICD_OP_LAST
    assert lib.icd_op_info(lib.ICD_OP_LAST + 1, name, kinds) < 0


def test_derivation_rules():
    got = _build_core.cdef_of("""
/* x */
#ifndef G
#define G
#define A 1 /* one */
#define B (1 << 3)
#define F(x) ((x) + 1)
struct s { int n; uint64_t h[A]; };  // tail
int f(int x, char out[16]);
#endif
""")
    assert got.split("\n") == ["#define A ...", "#define B ...",
                               "struct s { int n; uint64_t h[...]; };",
                               "int f(int x, char out[16]);", ""]


def test_the_native_side_never_calls_into_the_engine():
    """The engine drives the native helper (native.h); the helper and what it uses
    (rules, vet, mounts, nsops, notify, target) know nothing of the engine, so the two
    no longer call each other in a circle."""
    engine_names = re.compile(r'\b(icd_(engine|channel|direct|queue|wake)_\w+|icd_fast_answer'
                              r'|icd_filter_orphaned)\b|#include "engine\.h"')
    for name in ("native.c", "native.h", "rules.c", "rules.h", "vet.c", "mounts.c", "nsops.c",
                 "nsops.h", "notify.c", "target.c", "internal.h"):
        code = _header(name)
        assert not engine_names.search(code), (name, engine_names.search(code))


def test_no_c_file_over_800_lines():
    for p in CSRC.iterdir():
        if p.suffix in (".c", ".h") and p.name not in ("fusefs.c",):  # helper emul's
            assert len(p.read_text().splitlines()) <= 800, p.name
