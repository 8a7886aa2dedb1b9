"""/proc/<pid>/mountinfo lines as entries (pure; shared by the policy and the runtime).

The runtime parses the host's whole table on every container create, so construction
stays cheap: an entry is a tuple of the line's fields, and the option sets are derived
only when asked for.
"""

from __future__ import annotations

from typing import NamedTuple

# linux/mount.h MOUNT_ATTR_* bits of the per-mount flags mountinfo shows (policy.consts
# has the same values; tests check they agree).
_OPT_ATTR = (("ro", 0x1), ("nosuid", 0x2), ("nodev", 0x4), ("noexec", 0x8))


def unescape(s: str) -> str:
    """Undo mountinfo's octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)."""
    if "\\" not in s:
        return s
    out: list[str] = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


class MountEntry(NamedTuple):
    mount_id: int
    parent_id: int
    dev: str  # "major:minor" of the superblock
    root: str  # the dentry of the filesystem shown at mountpoint
    mountpoint: str
    options: str  # per-mount options as listed ("rw,nosuid,relatime")
    optional: tuple[str, ...]  # propagation tags ("shared:4", "master:1")
    fstype: str
    source: str
    super_options: str  # superblock options as listed, order kept (overlay layers)

    @property
    def opts(self) -> frozenset[str]:
        return frozenset(self.options.split(","))

    @property
    def super_opts(self) -> frozenset[str]:
        return frozenset(self.super_options.split(","))

    @property
    def attrs(self) -> int:
        """MOUNT_ATTR_* bits among ro/nosuid/nodev/noexec set on this mount."""
        opts = self.options.split(",")
        a = 0
        for o, bit in _OPT_ATTR:
            if o in opts:
                a |= bit
        return a

    @property
    def readonly(self) -> bool:
        return "ro" in self.options.split(",")

    @property
    def key(self) -> tuple[str, str]:
        return (self.dev, self.root)


def parse_line(line: str) -> MountEntry:
    """One mountinfo line; ValueError if it is not one."""
    parts = line.rstrip("\n").split(" ")
    try:
        sep = parts.index("-", 6)
        mid, pid, dev, root, mp, opts = parts[:6]
        fstype, source, sopts = parts[sep + 1 : sep + 4]
        return MountEntry(int(mid), int(pid), dev, unescape(root), unescape(mp), opts,
                          tuple(parts[6:sep]), fstype, unescape(source), sopts)
    except ValueError as e:
        raise ValueError(f"malformed mountinfo line: {line[:200]!r}") from e


def parse(text: str, *, skip_malformed: bool = False) -> list[MountEntry]:
    """Every entry of a mountinfo text; a malformed line raises ValueError unless skipped."""
    out = []
    for ln in text.splitlines():
        if not ln.strip():
            continue
        try:
            out.append(parse_line(ln))
        except ValueError:
            if not skip_malformed:
                raise
    return out
