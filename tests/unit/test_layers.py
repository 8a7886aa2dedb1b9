"""The import direction between the daemon's layers (docs/DESIGN.md "Layers"), from the
source: every `import` and `from ... import` under interceptd/ (function-level ones too;
`if TYPE_CHECKING:` blocks are not imports at run time and are skipped).

    kernel/ (+ syscalls.py)  mechanism only: imports nothing of interceptd above it
    policy/                  pure deciders: policy/ and kernel constants and types only
    handlers/                per-family orchestration: policy, kernel, the model, the core
    edges                    daemon, listener, control, cli, reload, runtime/...: on top,
                             imported by nothing below them
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "interceptd"

KERNEL = ("interceptd.kernel", "interceptd.syscalls")
EDGES = ("interceptd.daemon", "interceptd.listener", "interceptd.control", "interceptd.cli",
         "interceptd.unixserver",  # the three socket servers' accept loop
         "interceptd.reload", "interceptd.runtime", "interceptd.checkconfig",
         "interceptd.sdnotify", "interceptd.liveness", "interceptd.metrics",
         "interceptd.metrics_http",
         # the daemon's parts and its restarts (handover, fd store, journal, re-exec)
         "interceptd.plugins", "interceptd.serving", "interceptd.views",
         "interceptd.handover", "interceptd.fdstore", "interceptd.journal",
         "interceptd.reexec", "interceptd.procscan")
DISPATCH = ("interceptd.dispatch",)

# Known exceptions, each with its reason; the test fails if one is no longer needed, so
# the list only shrinks.
EXEMPT: dict[tuple[str, str], str] = {}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(imported module, names taken from it) for every run-time import in `path`."""
    mod = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, tuple[str, ...]]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, ()) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (child.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                names = tuple(a.name for a in child.names)
                # `from pkg import submodule` imports the submodule
                subs = [n for n in names if (PKG.parent / (base + "." + n).replace(".", "/")
                                             ).with_suffix(".py").exists()
                        or (PKG.parent / (base + "." + n).replace(".", "/")).is_dir()]
                out.extend((f"{base}.{n}", ()) for n in subs)
                rest = tuple(n for n in names if n not in subs)
                if rest or not subs:
                    out.append((base, rest))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return [(m, n) for m, n in out if m == "interceptd" or m.startswith("interceptd.")]


def _edges() -> list[tuple[str, str, tuple[str, ...]]]:
    return [(_module_name(p), m, names)
            for p in sorted(PKG.rglob("*.py")) for m, names in _imports(p)]


ALL = _edges()


def _constant_or_type(module: str, name: str) -> bool:
    obj = getattr(importlib.import_module(module), name)
    return inspect.isclass(obj) or (name.isupper() and isinstance(obj, (int, str, tuple,
                                                                        frozenset)))


def _exempt(src: str, dst: str) -> bool:
    return any(src == s and _within(dst, (d,)) for s, d in EXEMPT)


def test_the_parser_sees_imports() -> None:
    """A guard against a test that passes by seeing nothing."""
    got = {(s, d) for s, d, _ in ALL}
    assert ("interceptd.handlers.scope", "interceptd.policystore") in got
    assert ("interceptd.kernel.mountapi", "interceptd.syscalls") in got
    assert any(s == "interceptd.handlers.table" and d == "interceptd.handlers.mount"
               for s, d in got)  # `from interceptd.handlers import mount`


def test_kernel_imports_nothing_above_it() -> None:
    bad = [(s, d) for s, d, _ in ALL if _within(s, KERNEL) and not _within(d, KERNEL)]
    assert bad == []


def test_policy_imports_only_policy_and_kernel_constants_and_types() -> None:
    bad = []
    for src, dst, names in ALL:
        if not _within(src, ("interceptd.policy",)) or _exempt(src, dst):
            continue
        if _within(dst, ("interceptd.policy",)):
            continue
        if dst == "interceptd.kernel.consts":
            continue
        if _within(dst, KERNEL) and names and all(_constant_or_type(dst, n) for n in names):
            continue
        bad.append((src, dst, names))
    assert bad == []


def test_handlers_sit_below_dispatch_and_the_edges() -> None:
    bad = [(s, d) for s, d, _ in ALL if _within(s, ("interceptd.handlers",))
           and _within(d, (*EDGES, *DISPATCH))]
    assert bad == []


def test_nothing_below_the_edges_imports_them() -> None:
    bad = [(s, d) for s, d, _ in ALL
           if not _within(s, EDGES) and _within(d, EDGES) and not _exempt(s, d)]
    assert bad == []


def test_nothing_below_handlers_imports_them() -> None:
    below = (*KERNEL, "interceptd.policy", "interceptd.policystore", "interceptd.seams",
             "interceptd.registry", "interceptd.verdict", "interceptd.events",
             "interceptd.config", "interceptd.ocistate")
    bad = [(s, d) for s, d, _ in ALL if _within(s, below)
           and _within(d, ("interceptd.handlers",)) and not _exempt(s, d)]
    assert bad == []


def test_every_exemption_is_still_needed() -> None:
    gone = [(src, dst) for src, dst in sorted(EXEMPT)
            if not any(s == src and _within(d, (dst,)) for s, d, _ in ALL)]
    assert gone == [], "gone: remove them from EXEMPT"


def test_no_import_cycles() -> None:
    """No two modules import each other, directly or around a loop, at run time (imports
    inside functions count; `if TYPE_CHECKING:` ones do not): a cycle is two layers, or
    two parts of one, that each need the other."""
    mods = {_module_name(p) for p in PKG.rglob("*.py")}

    def module_of(name: str) -> str:
        while name and name not in mods:  # `from pkg.mod import name`: the module
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for src, dst, _ in ALL:
        d = module_of(dst)
        if d and d != src:
            graph.setdefault(src, set()).add(d)
    cycles = []
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            cycles.append([*path[path.index(node):], node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            walk(nxt, [*path, node])
        done.add(node)

    for m in sorted(graph):
        walk(m, [])
    assert cycles == []


def test_no_module_over_500_lines() -> None:
    long = [(str(p.relative_to(ROOT)), n) for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500]
    assert long == []


def _literal(node: ast.expr) -> bool:
    """An int written out (or an expression of ints only: 1 << 18, 0x1 | 0x2)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return _literal(node.operand)
    if isinstance(node, ast.BinOp):
        return _literal(node.left) and _literal(node.right)
    return False


def test_kernel_constants_and_syscall_numbers_are_written_once() -> None:
    """kernel/consts.py holds every kernel constant, syscalls.py every syscall number: a
    module-level name of either written out elsewhere is a second definition."""
    from interceptd import syscalls
    from interceptd.kernel import consts

    names = {n for n in vars(consts) if n.isupper()} | {
        n for n in vars(syscalls) if n.startswith(KERNEL_PREFIXES)}
    again = []
    for p in sorted(PKG.rglob("*.py")):
        mod = _module_name(p)
        if mod in ("interceptd.kernel.consts", "interceptd.syscalls"):
            continue
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.Assign):
                continue
            targets = [t for t in node.targets if isinstance(t, ast.Name)]
            for t in node.targets:
                if isinstance(t, ast.Tuple):
                    targets += [e for e in t.elts if isinstance(e, ast.Name)]
            values = (node.value.elts if isinstance(node.value, ast.Tuple)
                      else [node.value] * len(targets))
            for t, v in zip(targets, values, strict=False):
                bare = t.id.lstrip("_")
                alias = isinstance(v, (ast.Name, ast.Attribute, ast.Call))  # a reference
                if bare in names and not alias:
                    again.append(f"{mod}: {t.id}")  # written out or recomputed
                # (ebpf.NR_SLOTS is a map size, not a syscall number)
                elif (_literal(v) and bare.startswith(KERNEL_PREFIXES)
                      and bare != "NR_SLOTS"):
                    again.append(f"{mod}: {t.id}")  # a kernel constant kept aside
    assert again == []


# Prefixes of the kernel's constant names: one of them given a number outside
# kernel/consts.py or syscalls.py is a second definition, whatever its exact name.
KERNEL_PREFIXES = ("NR_", "SYS_", "O_", "MS_", "MNT_", "MOVE_MOUNT_", "SECCOMP_", "CAP_",
                   "CLONE_", "AT_", "FSCONFIG_", "FSOPEN_", "FSMOUNT_", "FSPICK_",
                   "MOUNT_ATTR_", "OPEN_TREE_", "STATX_", "AUDIT_ARCH_", "BPF_", "BTF_",
                   "PROG_TYPE_", "PR_", "RESOLVE_", "PIDFD_", "UMOUNT_", "PTRACE_", "KCMP_")


def test_libc_is_loaded_once() -> None:
    """kernel/libc.py holds the one ctypes handle on libc and the one `syscall` with its
    return type: another CDLL(None) or restype set elsewhere is a second wrapper."""
    again = []
    for p in sorted(PKG.rglob("*.py")):
        if _module_name(p) == "interceptd.kernel.libc":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "CDLL" and node.args
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value is None):
                again.append(f"{_module_name(p)}:{node.lineno} CDLL(None)")
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if (isinstance(t, ast.Attribute) and t.attr == "restype"
                            and "syscall" in ast.unparse(t.value)):
                        again.append(f"{_module_name(p)}:{node.lineno} {ast.unparse(t)}")
    assert again == []


def test_c_and_python_share_the_journal_layout_constants() -> None:
    """The receive journal's magic, version and landing slots come from csrc/icd.h
    (ICD_JOURNAL_*), not from a copy on either side."""
    from interceptd import journal
    from interceptd._corelib import lib

    assert (journal.MAGIC, journal.VERSION, journal.LANDING) == (
        lib.ICD_JOURNAL_MAGIC, lib.ICD_JOURNAL_VERSION, lib.ICD_JOURNAL_LANDING)
    text = (ROOT / "csrc" / "journal.c").read_text(encoding="utf-8")
    assert "0x314c4e524a444349" not in text.lower()


def test_design_names_only_modules_that_exist() -> None:
    """docs/DESIGN.md's layer table and debts name modules of this tree (a renamed or
    removed module must be renamed there too)."""
    import re

    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    layers = text[text.index("## Layers"):text.index("## Flow of a container start")]
    names = set(re.findall(r"`([\w./-]+\.py)`", layers))
    assert len(names) > 20  # the parse found the table
    basenames = {p.name for p in PKG.rglob("*.py")}
    missing = [n for n in sorted(names)
               if not ((PKG / n).exists() or (ROOT / n).exists()
                       or ("/" not in n and n in basenames))]
    assert missing == []


# The FUSE server's C files, top down (csrc/fusefs_int.h): each calls only files below it.
FUSEFS_ORDER = ("fusefs.c", "fusefs_proto.c", "fusefs_ctr.c", "fusefs_tree.c", "fusefs_reply.c")


def test_fusefs_calls_go_one_way() -> None:
    """Which file defines each internal `fs_*` function, from the sections of
    csrc/fusefs_int.h; no file calls one defined in a file above it."""
    import re

    csrc = ROOT / "csrc"
    header = (csrc / "fusefs_int.h").read_text(encoding="utf-8")
    owner: dict[str, str] = {}
    section = ""
    for line in header.splitlines():
        if m := re.fullmatch(r"/\* (fusefs\w*\.c) \*/", line.strip()):
            section = m.group(1)
        elif section and (m := re.search(r"\b(fs_\w+)\(", line)):
            owner[m.group(1)] = section
    assert set(owner.values()) == set(FUSEFS_ORDER) - {"fusefs.c"}  # the parse saw them
    assert sorted(p.name for p in csrc.glob("fusefs*.c")) == sorted(FUSEFS_ORDER)
    up = []
    for caller in FUSEFS_ORDER:
        text = (csrc / caller).read_text(encoding="utf-8")
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        for name in sorted(set(re.findall(r"\b(fs_\w+)\(", text))):
            callee = owner.get(name)
            if callee is not None and callee != caller and (
                    FUSEFS_ORDER.index(callee) < FUSEFS_ORDER.index(caller)):
                up.append(f"{caller} -> {callee}: {name}")
    assert up == []
