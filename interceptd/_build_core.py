"""cffi API-mode build of csrc/ into interceptd._core (named by setup.py).

The cdef is derived from the C headers that make up the cffi API (csrc/icd.h and
csrc/fusefs.h), so the ABI is written once: comments, include guards and #includes
are dropped, every object-like #define becomes `#define NAME ...` (its value is
taken from C), and array sizes given by a macro become `[...]`. cffi checks the
structs' fields against the compiled headers, so a mismatch fails the build.
"""

import re
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parent.parent / "csrc"
API_HEADERS = ("icd.h", "fusefs.h")

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"#\s*define\s+([A-Za-z_]\w*)(\(?)(.*)")
_MACRO_SIZE = re.compile(r"\[\s*[A-Za-z_]\w*\s*\]")


def cdef_of(text: str) -> str:
    """The cdef for one API header's text."""
    out: list[str] = []
    for line in _COMMENT.sub("", text).replace("\\\n", " ").splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            m = _DEFINE.match(s)
            # Include guards (no value) and function-like macros are not API.
            if m and not m.group(2) and m.group(3).strip():
                out.append(f"#define {m.group(1)} ...")
            continue
        out.append(_MACRO_SIZE.sub("[...]", line.rstrip()))
    return "\n".join(out) + "\n"


def cdef() -> str:
    return "".join(cdef_of((CSRC / h).read_text()) for h in API_HEADERS)


ffibuilder = FFI()
ffibuilder.cdef(cdef())
ffibuilder.set_source(
    "interceptd._core",
    "".join(f'#include "{h}"\n' for h in API_HEADERS),
    sources=[str(p.relative_to(CSRC.parent)) for p in sorted(CSRC.glob("*.c"))],
    include_dirs=[str(CSRC)],
    libraries=["pthread"],
    extra_compile_args=["-Wall", "-Wextra", "-Werror", "-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
