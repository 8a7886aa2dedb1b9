"""The shared mountinfo parser and the runtime's lookups on its entries (no kernel)."""

from __future__ import annotations

import pytest

from interceptd.kernel import consts as c
from interceptd.kernel import mountinfo
from interceptd.kernel import mountinfo as rt
from interceptd.kernel.mountinfo import parse, parse_line, unescape

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 27 0:50 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay \
rw,lowerdir=/var/lib/docker/overlay2/l/AAA:l/BBB,upperdir=/var/lib/docker/overlay2/abc/diff,\
workdir=/var/lib/docker/overlay2/abc/work,index=off
91 27 0:51 / /tmp/with\\040space rw - tmpfs tmpfs rw
"""


def test_parse_line_fields_and_escapes():
    e = parse_line("103 67 254:0 /srv/ro\\040vol /da\\134ta ro,nosuid - ext4 /dev/vda rw,x")
    assert (e.mount_id, e.parent_id, e.dev) == (103, 67, "254:0")
    assert e.root == "/srv/ro vol" and e.mountpoint == "/da\\ta"
    assert e.readonly and e.attrs == c.MOUNT_ATTR_RDONLY | c.MOUNT_ATTR_NOSUID
    assert e.opts == {"ro", "nosuid"} and e.options == "ro,nosuid"
    assert e.fstype == "ext4" and "x" in e.super_opts and e.super_options == "rw,x"
    assert e.key == ("254:0", "/srv/ro vol")


def test_parse_optional_fields():
    e = parse_line("36 35 98:0 /mnt1 /mnt/2 rw,noatime master:1 shared:4 - ext3 /dev/root rw")
    assert e.optional == ("master:1", "shared:4") and e.fstype == "ext3"
    assert not e.readonly and e.attrs == 0


def test_parse_rejects_garbage():
    with pytest.raises(ValueError):
        parse_line("1 2 3")
    with pytest.raises(ValueError):
        parse_line("x 2 0:1 / / rw - tmpfs tmpfs rw")
    assert unescape("a\\04") == "a\\04"
    assert unescape("\\011tab\\012") == "\ttab\n"


def test_parse_text_strict_or_skipping():
    text = MOUNTINFO + "\nnot a mountinfo line\n"
    with pytest.raises(ValueError):
        parse(text)
    assert [e.mount_id for e in parse(text, skip_malformed=True)] == [27, 41, 90, 91]


def test_attr_bits_agree_with_policy_consts():
    e = parse_line("1 0 0:1 / / ro,nosuid,nodev,noexec - tmpfs tmpfs rw")
    assert e.attrs == c.MOUNT_ATTR_LOCKED
    assert dict(mountinfo._OPT_ATTR) == {
        "ro": c.MOUNT_ATTR_RDONLY, "nosuid": c.MOUNT_ATTR_NOSUID,
        "nodev": c.MOUNT_ATTR_NODEV, "noexec": c.MOUNT_ATTR_NOEXEC,
    }


def test_runtime_lookups_and_overlay_layers():
    ents = parse(MOUNTINFO)
    assert rt.cgroup2_mount(ents) == "/sys/fs/cgroup/unified"
    assert rt.mount_at(ents, "/tmp/with space").fstype == "tmpfs"
    ov = rt.mount_at(ents, "/var/lib/docker/overlay2/abc/merged")
    lay = rt.overlay_layers(ov.super_options, "/var/lib/docker/overlay2")
    assert lay.lowers == ["/var/lib/docker/overlay2/l/AAA", "/var/lib/docker/overlay2/l/BBB"]
    assert lay.upper == "/var/lib/docker/overlay2/abc/diff"
    assert lay.work == "/var/lib/docker/overlay2/abc/work"
    assert lay.other == ["index=off"]
    with pytest.raises(ValueError):
        rt.overlay_layers("rw,upperdir=/u", "/")


def test_runtime_read_of_this_process(tmp_path):
    f = tmp_path / "mountinfo"
    f.write_text(MOUNTINFO + "garbage\n")
    assert [e.mountpoint for e in rt.read(str(f))][-1] == "/tmp/with space"
    assert rt.mount_at(rt.read(), "/") is not None
