"""interceptd-runc's command-line parsing (no kernel)."""

from interceptd.runtime import argv


def test_docker_create_line():
    a = ["--root", "/run/docker/runtime-runc/moby", "--log", "/b/log.json", "--log-format",
         "json", "--systemd-cgroup", "create", "--bundle", "/b", "--pid-file", "/b/init.pid",
         "--console-socket", "/tmp/pty.sock", "abc123"]
    inv = argv.parse(a)
    assert inv.command == "create"
    assert inv.global_value("root") == "/run/docker/runtime-runc/moby"
    assert inv.global_value("log-format") == "json"
    assert inv.has_global("systemd-cgroup")
    assert inv.flag_values("bundle", "b") == ["/b"]
    assert inv.container_id == "abc123"
    assert argv.rebuild(inv) == a


def test_equals_and_short_forms():
    inv = argv.parse(["--root=/r", "--debug", "run", "-b", "/x", "-d", "--keep", "id1"])
    assert inv.global_value("root") == "/r"
    assert inv.has_global("debug")
    assert inv.flag_values("bundle", "b") == ["/x"]
    assert inv.has_flag("detach", "d") and inv.has_flag("keep")
    assert inv.container_id == "id1"


def test_crun_style_flags_after_id():
    inv = argv.parse(["create", "id2", "--bundle", "/y", "--config=/y/c.json"])
    assert inv.container_id == "id2"
    assert inv.flag_values("bundle") == ["/y"]
    assert inv.flag_values("config", "f") == ["/y/c.json"]


def test_exec_command_is_operands():
    inv = argv.parse(["--root", "/r", "exec", "-t", "--cap", "CAP_SYS_RESOURCE", "c1",
                      "sh", "-c", "echo --bundle x"])
    assert inv.container_id == "c1"
    assert inv.operands == ["c1", "sh", "-c", "echo --bundle x"]
    assert inv.flag_values("cap", "c") == ["CAP_SYS_RESOURCE"]
    kept = [f for f in inv.flags if f.name != "cap"]
    assert argv.rebuild(inv, kept) == ["--root", "/r", "exec", "-t", "c1", "sh", "-c",
                                       "echo --bundle x"]


def test_with_value_keeps_spelling():
    inv = argv.parse(["exec", "--process=/p.json", "-p", "/q.json", "c"])
    f1, f2 = inv.flags
    assert argv.with_value(f1, "/n").tokens == ["--process=/n"]
    assert argv.with_value(f2, "/n").tokens == ["-p", "/n"]


def test_no_command_and_unknown_flags():
    inv = argv.parse(["--version"])
    assert inv.command is None and inv.decision == argv.PASS
    inv = argv.parse(["--bogus-flag", "state", "c"])
    assert inv.decision == argv.REFUSE and "unknown global option '--bogus-flag'" in inv.reason
    inv = argv.parse(["delete", "--force", "c9"])
    assert inv.command == "delete" and inv.container_id == "c9" and inv.has_flag("force")
    assert inv.decision == argv.SHIM
