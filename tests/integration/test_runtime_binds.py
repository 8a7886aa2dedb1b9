"""Host bind mounts, the rootfs view and the upper-dir shift through interceptd-runc,
over real runc and crun with a real daemon (issue 8, items 1, 2, 7 and the hooks)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration import test_runtime_shim as base
from tests.integration.test_runtime_shim import assert_nothing_left, plain_bundle

pytestmark = pytest.mark.integration
shim = base.shim  # the same fixture: interceptd-runc over runc and crun, a live daemon

HOST_USER = 4242  # a non-root host owner, as /home/alice would be


@pytest.fixture
def shared(monkeypatch, workdir):
    """shared(*paths): run the shim with [runtime] shared_paths = paths."""
    def set_paths(*paths: Path) -> None:
        cfg = workdir / "interceptd-shared.toml"
        cfg.write_text(f"[runtime]\nshared_paths = {json.dumps([str(p) for p in paths])}\n")
        monkeypatch.setenv("INTERCEPTD_CONFIG", str(cfg))
    return set_paths


def with_bind(b, src: Path | str, dest: str = "/data", opts=("rbind", "rw")) -> None:
    b.config["mounts"].append({"destination": dest, "type": "bind", "source": str(src),
                               "options": list(opts)})
    b.write_config()


def refused(rt, b, cid: str, pattern: str) -> str:
    orig = b.config_path.read_bytes()
    res = rt.run(b, cid)
    assert res.rc != 0
    assert pattern in res.stderr, res.stderr
    assert res.stderr.startswith("interceptd-runc: ")
    assert b.config_path.read_bytes() == orig
    assert_nothing_left(rt)
    return res.stderr


# ------------------------------------------------------------------ the bind model

def test_bind_owned_by_host_user_maps_root_to_that_user(shim, bundle_factory, new_id,
                                                        workdir, shared):
    """Binding a user's directory: the container's root is that user there."""
    home = workdir / "home"
    alice = home / "alice"
    alice.mkdir(parents=True)
    os.chown(alice, HOST_USER, HOST_USER)
    (alice / "from-host").write_text("x")
    os.chown(alice / "from-host", HOST_USER, HOST_USER)
    (alice / "roots").write_text("r")  # host root's file in her directory
    shared(home)
    b = plain_bundle(bundle_factory, ["sh", "-c",
                                      "stat -c '%u:%g' /data/from-host /data/roots; "
                                      "echo v > /data/new; mkdir /data/d; "
                                      "cp /bin/busybox /data/suid; chmod 4755 /data/suid; "
                                      "echo x >> /data/roots || echo denied"])
    with_bind(b, alice)
    res = shim.run(b, new_id("alice")).check()
    lines = res.stdout.split()
    assert lines[0] == "0:0"  # her files are the container root's
    assert lines[1] == "65534:65534"  # host root's are nobody's ...
    assert "denied" in res.stdout  # ... and not writable
    for name in ("new", "d", "suid"):
        st = os.lstat(alice / name)
        assert (st.st_uid, st.st_gid) == (HOST_USER, HOST_USER), name
    st = os.stat(alice / "suid")
    assert st.st_mode & stat.S_ISUID and st.st_uid != 0  # setuid, but hers: not root's
    assert (alice / "roots").read_text() == "r"
    assert_nothing_left(shim)


def test_root_owned_bind_never_yields_host_root_files(shim, bundle_factory, new_id,
                                                      workdir, shared):
    """A root-owned directory under a shared path: nothing the container does there
    creates a file owned by host uid 0, nor a setuid-root file."""
    top = workdir / "shared"
    d = top / "rootdir"
    d.mkdir(parents=True)
    os.chmod(d, 0o777)  # writable for anyone, so the container's writes do happen
    (d / "victim").write_bytes(Path("/bin/busybox").read_bytes())
    os.chmod(d / "victim", 0o755)
    shared(top)
    script = ("stat -c '%u' /data/victim; touch /data/t; mkdir /data/dd; "
              "cp /bin/busybox /data/s; chmod 4755 /data/s; chmod 6755 /data/s; "
              "chmod u+s /data/victim 2>/dev/null || echo nochmod; "
              "chown 0:0 /data/t; ls -ln /data")
    b = plain_bundle(bundle_factory, ["sh", "-c", script])
    with_bind(b, d)
    res = shim.run(b, new_id("rootbind")).check()
    assert res.stdout.split()[0] == "65534"
    assert "nochmod" in res.stdout
    made = [p for p in d.iterdir() if p.name != "victim"]
    assert {p.name for p in made} == {"t", "dd", "s"}
    for p in d.iterdir():
        st = os.lstat(p)
        if p.name == "victim":
            assert st.st_mode & 0o7777 == 0o755 and st.st_uid == 0
            continue
        assert st.st_uid != 0 and st.st_gid != 0, (p, st)
        assert not (st.st_uid == 0 and st.st_mode & stat.S_ISUID)
    assert_nothing_left(shim)


def test_bind_outside_shared_paths_refused(shim, bundle_factory, new_id, workdir, shared):
    shared(workdir / "nothing-here")
    vol = workdir / "vol"
    vol.mkdir()
    b = plain_bundle(bundle_factory, ["true"])
    with_bind(b, vol)
    err = refused(shim, b, new_id("outside"), "outside [runtime] shared_paths")
    assert str(vol) in err


def test_symlink_source_resolving_outside_refused(shim, bundle_factory, new_id, workdir,
                                                  shared):
    top = workdir / "shared"
    top.mkdir()
    outside = workdir / "secret"
    outside.mkdir()
    (top / "link").symlink_to(outside)
    shared(top)
    b = plain_bundle(bundle_factory, ["true"])
    with_bind(b, top / "link")
    refused(shim, b, new_id("symlink"), "outside [runtime] shared_paths")


@pytest.mark.parametrize("src", ["/proc", "/sys", "/dev", "/sys/firmware", "/proc/1",
                                 "/dev/null", "/sys/fs/cgroup/unified"])
def test_host_kernel_filesystems_refused_even_when_shared(shim, bundle_factory, new_id,
                                                          src, shared):
    """Refused by what the opened source is (statfs magic, its mount's type), even
    with an admin who listed the path as shared."""
    shared(Path(src))
    b = plain_bundle(bundle_factory, ["true"])
    with_bind(b, src)
    err = refused(shim, b, new_id("kfs"), "refused by interceptd")
    assert any(f in err for f in ("proc", "sysfs", "devtmpfs", "device node", "cgroup2"))


def test_kernel_filesystem_mounted_inside_a_shared_path_refused(shim, bundle_factory, new_id,
                                                                workdir, shared):
    """A proc mount below a shared directory: refused as the bind's source, and as a
    submount a recursive bind would carry."""
    top = workdir / "shared"
    (top / "vol" / "p").mkdir(parents=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(top / "vol" / "p")], check=True)
    try:
        shared(top)
        b = plain_bundle(bundle_factory, ["true"])
        with_bind(b, top / "vol" / "p")
        refused(shim, b, new_id("procsrc"), "proc")
        b = plain_bundle(bundle_factory, ["true"])
        with_bind(b, top / "vol")
        refused(shim, b, new_id("procsub"), "proc")
    finally:
        subprocess.run(["umount", "-l", str(top / "vol" / "p")], check=False)


def test_bind_mount_of_outside_dir_inside_shared_path_refused(shim, bundle_factory, new_id,
                                                              workdir, shared):
    """What Docker's `local` volume driver does with o=bind,device=/somewhere: the
    source is under a shared path but is really another place, which is checked."""
    top = workdir / "shared"
    (top / "v").mkdir(parents=True)
    outside = workdir / "private"
    outside.mkdir()
    subprocess.run(["mount", "--bind", str(outside), str(top / "v")], check=True)
    try:
        shared(top)
        b = plain_bundle(bundle_factory, ["true"])
        with_bind(b, top / "v")
        refused(shim, b, new_id("bindvol"), "outside [runtime] shared_paths")
    finally:
        subprocess.run(["umount", "-l", str(top / "v")], check=False)


def test_host_disk_mounted_inside_shared_path_refused(shim, bundle_factory, new_id,
                                                     workdir, shared):
    """What `docker volume create -o type=ext4 -o device=<the host's disk>` makes: the
    host's root filesystem mounted again inside a shared directory (its mount root
    is "/", not a bind): it shows at / on the host, which is refused."""
    with open("/proc/self/mountinfo") as f:
        root = next(line.split() for line in f if line.split()[4] == "/")
    dev, fstype = root[root.index("-") + 2], root[root.index("-") + 1]
    top = workdir / "shared"
    (top / "disk").mkdir(parents=True)
    subprocess.run(["mount", "-t", fstype, dev, str(top / "disk")], check=True)
    try:
        shared(top)
        b = plain_bundle(bundle_factory, ["true"])
        with_bind(b, top / "disk")
        refused(shim, b, new_id("disk"), "also / on the host")
    finally:
        subprocess.run(["umount", "-l", str(top / "disk")], check=False)


def test_shared_path_that_is_itself_a_bind_mount_allowed(shim, bundle_factory, new_id,
                                                         workdir, shared):
    """An admin's /home (or data root) mounted from another disk: the shared
    directory itself is the bind, which is the admin's doing, not a way out."""
    disk = workdir / "disk"
    (disk / "alice").mkdir(parents=True)
    os.chown(disk / "alice", HOST_USER, HOST_USER)
    top = workdir / "home"
    top.mkdir()
    subprocess.run(["mount", "--bind", str(disk), str(top)], check=True)
    try:
        shared(top)
        b = plain_bundle(bundle_factory, ["sh", "-c", "touch /data/x"])
        with_bind(b, top / "alice")
        shim.run(b, new_id("sharedbind")).check()
        assert os.stat(disk / "alice" / "x").st_uid == HOST_USER
    finally:
        subprocess.run(["umount", "-l", str(top)], check=False)
    assert_nothing_left(shim)


def test_interceptd_own_dirs_refused(shim, bundle_factory, new_id, shared):
    state = Path(shim.daemon.state_dir)  # type: ignore[attr-defined]
    views = Path(str(state) + "-rootfs")
    views.mkdir(exist_ok=True)
    for src in (state, views):
        shared(src)
        b = plain_bundle(bundle_factory, ["true"])
        with_bind(b, src)
        refused(shim, b, new_id("own"), "sensitive")


def test_root_path_checked(shim, bundle_factory, new_id):
    b = plain_bundle(bundle_factory, ["true"])
    b.config["root"]["path"] = "/"
    b.write_config()
    refused(shim, b, new_id("hostroot"), "root.path / contains")
    b = plain_bundle(bundle_factory, ["true"])
    b.config["root"]["path"] = "/proc"
    b.write_config()
    refused(shim, b, new_id("procroot"), "proc")


def test_rootfs_submounts_kept_in_view(shim, bundle_factory, new_id):
    """The view over root.path is recursive: a mount inside the rootfs stays visible."""
    b = plain_bundle(bundle_factory, ["cat", "/mnt/marker"])
    (b.rootfs / "mnt").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "sub", str(b.rootfs / "mnt")], check=True)
    try:
        (b.rootfs / "mnt" / "marker").write_text("sub\n")
        res = shim.run(b, new_id("submnt")).check()
        assert res.stdout == "sub\n"
    finally:
        subprocess.run(["umount", "-l", str(b.rootfs / "mnt")], check=False)
    assert_nothing_left(shim)


# ------------------------------------------------------------------ hooks

@pytest.mark.parametrize("how", ["container-namespace", "host-namespace"])
def test_create_runtime_hook_bind_reaches_container(shim, bundle_factory, new_id, workdir,
                                                    how):
    """A createRuntime hook binding a file into <bundle>/rootfs reaches the container:
    entering the container's mount namespace (as GPU hooks do), with runc and crun;
    in the host's namespace, with runc (propagated through the shared view; plain
    runc on this host, whose / is private, does not get it; crun's container mounts
    are private). root.path is unchanged."""
    src = workdir / "hooked-src"
    src.write_text("from-hook\n")
    b = plain_bundle(bundle_factory, ["cat", "/hooked"])
    (b.rootfs / "hooked").write_text("")
    seen = workdir / "hook-saw"
    hook = workdir / "hook.sh"
    enter = 'nsenter -t "$pid" -m ' if how == "container-namespace" else ""
    hook.write_text(f"""#!/bin/sh
set -e
st=$(cat)
bundle=$(echo "$st" | sed -n 's/.*"bundle":"\\([^"]*\\)".*/\\1/p')
pid=$(echo "$st" | sed -n 's/.*"pid":\\([0-9]*\\).*/\\1/p')
grep -o '"root":{{[^}}]*}}' "$bundle/config.json" > {seen}
{enter}mount --bind {src} "$bundle/rootfs/hooked"
""")
    hook.chmod(0o755)
    b.config["hooks"] = {"createRuntime": [{"path": str(hook)}]}
    b.write_config()
    try:
        res = shim.run(b, new_id("hook")).check()
    finally:
        subprocess.run(["umount", "-l", str(b.rootfs / "hooked")], capture_output=True)
    if how == "host-namespace" and shim.name == "crun":
        assert res.stdout == ""  # as with plain crun
    else:
        assert res.stdout == "from-hook\n"
    assert json.loads("{" + seen.read_text().strip() + "}")["root"]["path"] == "rootfs"
    assert (b.rootfs / "hooked").read_text() == ""  # the host's file untouched
    assert_nothing_left(shim)


# ------------------------------------------------------------------ the upper-dir shift

@pytest.fixture
def overlay_bundle(bundle_factory, workdir):
    """A bundle whose rootfs is an overlay (like Docker's overlay2): lower = the
    busybox copy, its own upper and work dirs."""
    made = []

    def make(args: list[str]):
        b = plain_bundle(bundle_factory, args)
        n = len(made)
        lower = workdir / f"lower{n}"
        b.rootfs.rename(lower)
        upper, work = workdir / f"upper{n}", workdir / f"work{n}"
        for d in (b.rootfs, upper, work):
            d.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={upper},workdir={work}", str(b.rootfs)],
                       check=True)
        made.append(b.rootfs)
        return b, upper
    yield make
    for p in made:
        subprocess.run(["umount", "-l", str(p)], check=False)


def test_shift_leaves_mounts_devices_and_symlinks_in_upper_alone(
        shim, overlay_bundle, new_id, workdir):
    """Bind mounts, device nodes and symlinks planted in the upper dir: the host's
    files behind them are untouched by the create-time shift (checked while the
    container runs: the shift back at delete would hide it) and the delete-time one.
    Without the fix (os.walk + chown) the victim's files and the node were owned by
    the container's range while it ran."""
    b, upper = overlay_bundle(["sleep", "60"])
    victim = workdir / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "f").write_text("host")
    (upper / "mnt").mkdir()
    subprocess.run(["mount", "--bind", str(victim), str(upper / "mnt")], check=True)
    vfile = upper / "file-mnt"
    vfile.write_text("")
    hostfile = workdir / "hostfile"
    hostfile.write_text("h")
    subprocess.run(["mount", "--bind", str(hostfile), str(vfile)], check=True)
    os.mknod(upper / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (upper / "link").symlink_to(victim / "sub")
    host_files = (victim, victim / "sub", victim / "sub" / "f", hostfile, upper / "null")

    def untouched() -> None:
        for p in host_files:
            st = os.lstat(p)
            assert (st.st_uid, st.st_gid) == (0, 0), p
        assert stat.S_ISCHR(os.lstat(upper / "null").st_mode)

    try:
        with shim.started(b, new_id("shift")):
            assert os.lstat(upper / "link").st_uid != 0  # the link itself is the layer's
            untouched()
    finally:
        subprocess.run(["umount", "-l", str(upper / "mnt")], check=False)
        subprocess.run(["umount", "-l", str(vfile)], check=False)
    untouched()
    assert_nothing_left(shim)


def test_shift_tracks_mounts_while_container_runs(shim, overlay_bundle, new_id, workdir):
    """Mid-run, the upper dir's own entries are in the container's range; a mount in
    it (created before) is not."""
    b, upper = overlay_bundle(["sleep", "60"])
    victim = workdir / "victim2"
    victim.mkdir()
    (upper / "mnt").mkdir()
    subprocess.run(["mount", "--bind", str(victim), str(upper / "mnt")], check=True)
    try:
        with shim.started(b, new_id("shiftrun")):
            assert os.stat(upper).st_uid != 0  # shifted into the range
            assert os.stat(upper / "mnt").st_uid == 0  # the mount's root: untouched
    finally:
        subprocess.run(["umount", "-l", str(upper / "mnt")], check=False)
    assert os.stat(victim).st_uid == 0
    assert_nothing_left(shim)


def test_setuid_file_from_container_root_not_setuid_root_after_delete(
        shim, overlay_bundle, new_id):
    """The container's root makes setuid/setgid files in its
    own layer; once shifted back at delete none is a set-id file of host
    root's. Without the fix the shift back restored S_ISUID on a root-owned file."""
    b, upper = overlay_bundle(["sh", "-c",
                               "cp /bin/busybox /s; chmod 6755 /s; "
                               "cp /bin/busybox /u; chown 0:5 /u; chmod 4755 /u; "
                               "mkdir /sgd; chmod 2775 /sgd; ls -ln /s /u"])
    res = shim.run(b, new_id("suid")).check()
    assert res.stdout.count("rws") == 2  # set inside the container
    for name in ("s", "u"):
        st = os.lstat(upper / name)
        assert st.st_uid == 0  # back to the image's owner ...
        assert not st.st_mode & stat.S_ISUID, oct(st.st_mode)  # ... without setuid
    assert not os.lstat(upper / "s").st_mode & stat.S_ISGID  # group root: no setgid
    assert os.lstat(upper / "u").st_gid == 5
    assert os.lstat(upper / "sgd").st_mode & stat.S_ISGID  # a directory keeps it
    assert_nothing_left(shim)


@pytest.mark.parametrize("how", ["host-namespace", "container-namespace"])
def test_hook_reaches_container_when_root_is_not_walkable(shim, bundle_factory, new_id,
                                                          workdir, how):
    """A rootfs the container's root cannot walk to (Docker's data root is 0710):
    root.path becomes the view's own path, and the original is covered by a shared
    peer of the view. A hook binding into the original path in the host's mount
    namespace reaches a runc container (propagated to the view; plain runc on this
    host, whose / is private, does not manage that); one that enters the container's
    mount namespace and uses root.path from config.json reaches it with either runtime."""
    src = workdir / "hooked-src"
    src.write_text("from-hook\n")
    b = plain_bundle(bundle_factory, ["cat", "/hooked"])
    locked = workdir / "locked"
    locked.mkdir(mode=0o700)
    os.chmod(locked, 0o710)
    root = locked / "rootfs"
    b.rootfs.rename(root)
    (root / "hooked").write_text("")
    b.config["root"]["path"] = str(root)
    if how == "host-namespace":
        action = f'mount --bind {src} {root}/hooked'
    else:
        action = ('r=$(grep -o \'"root":{"path":"[^"]*"\' "$bundle/config.json" | '
                  'cut -d\'"\' -f6)\n'
                  f'nsenter -t "$pid" -m mount --bind {src} "$r/hooked"')
    hook = workdir / "hook.sh"
    hook.write_text(f"""#!/bin/sh
set -e
st=$(cat)
bundle=$(echo "$st" | sed -n 's/.*"bundle":"\\([^"]*\\)".*/\\1/p')
pid=$(echo "$st" | sed -n 's/.*"pid":\\([0-9]*\\).*/\\1/p')
{action}
""")
    hook.chmod(0o755)
    b.config["hooks"] = {"createRuntime": [{"path": str(hook)}]}
    b.write_config()
    try:
        res = shim.run(b, new_id("hooklocked")).check()
        if how == "host-namespace" and shim.name == "crun":
            # crun makes the container's mounts private (runc: rslave), so a mount
            # made in the host's namespace after the container's was copied never
            # reaches it, with or without interceptd.
            assert res.stdout == ""
        else:
            assert res.stdout == "from-hook\n"
    finally:
        subprocess.run(["umount", "-l", str(root / "hooked")], capture_output=True)
    assert (root / "hooked").read_text() == ""
    assert_nothing_left(shim)


# ------------------------------------------------------------------ non-bind mounts (issue 8)

def test_overlay_mount_entry_naming_host_paths_refused(shim, bundle_factory, new_id, workdir):
    """An overlay entry's lowerdir/upperdir name host paths the runtime would resolve
    with the host's tree in view: refused like a bind from outside shared_paths."""
    up, wk = workdir / "ovl-up", workdir / "ovl-work"
    up.mkdir()
    wk.mkdir()
    b = plain_bundle(bundle_factory, ["cat", "/x/shadow"])
    b.config["mounts"].append({"destination": "/x", "type": "overlay", "source": "overlay",
                               "options": ["lowerdir=/etc", f"upperdir={up}",
                                           f"workdir={wk}"]})
    b.write_config()
    err = refused(shim, b, new_id("ovlentry"), "mount of type 'overlay' at /x refused")
    assert "lowerdir" in err


def test_device_filesystem_entry_refused(shim, bundle_factory, new_id):
    b = plain_bundle(bundle_factory, ["true"])
    b.config["mounts"].append({"destination": "/x", "type": "ext4", "source": "/dev/sda1"})
    b.write_config()
    refused(shim, b, new_id("ext4entry"), "mount of type 'ext4' at /x refused")


def test_crun_config_outside_bundle_restored_after_delete(shim, bundle_factory, new_id,
                                                          workdir):
    """crun's --config may name a file outside the bundle: the shim rewrites that file,
    and delete (a detached create, so not the create's own finish) puts it back."""
    if os.path.basename(os.environ.get("INTERCEPTD_RUNTIME", "")) != "crun":
        pytest.skip("--config is crun's option (runc has none)")
    b = plain_bundle(bundle_factory, ["sleep", "60"])
    elsewhere = workdir / "configs" / "c.json"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b.config_path.read_bytes())
    b.config_path.unlink()  # only the outside config exists
    orig = elsewhere.read_bytes()
    cid = new_id("cfgout")
    shim._ids.add(cid)
    try:
        # The container's stdio go to files (a pipe would stay open while it runs).
        with open(b.path / "stdout", "wb") as out, open(b.path / "stderr", "wb") as e:
            p = subprocess.run(shim.cmd("create", "--bundle", str(b.path), "--config",
                                        str(elsewhere), cid),
                               stdin=subprocess.DEVNULL, stdout=out, stderr=e, timeout=30)
        assert p.returncode == 0, (b.path / "stderr").read_text()
        assert b"io.interceptd.runtime" in elsewhere.read_bytes()  # rewritten while it lives
    finally:
        shim.delete(cid)
    assert elsewhere.read_bytes() == orig
    assert not (elsewhere.parent / "c.json.orig").exists()
    assert not (b.path / "config.json").exists()
    assert_nothing_left(shim)
