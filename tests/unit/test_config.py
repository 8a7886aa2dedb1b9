import errno

import pytest

from interceptd.config import (
    Config,
    ConfigError,
    MetricsAddress,
    parse_errno,
    parse_metrics_address,
)


def load(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return Config.load(p)


def test_defaults():
    c = Config.load(None)
    assert c.daemon.state_dir == "/run/interceptd"
    assert c.daemon.log_level == "info"
    assert c.daemon.log_format == "text"
    assert c.rules == []


def test_rules_and_daemon(tmp_path):
    c = load(tmp_path, """
[daemon]
state_dir = "/tmp/x"
metrics_address = "off"
log_level = "DEBUG"
log_format = "json"

[[rules]]
syscall = "sysfs"
action = "value"
value = 42

[[rules]]
syscall = "uselib"
action = "errno"
errno = "ENOSYS"

[[rules]]
syscall = "ustat"
action = "errno"
errno = 13

[[rules]]
syscall = "getpid"
action = "continue"

[policy]
anything = [1, 2]

[runtime]
runtime = "/usr/sbin/runc"
""")
    assert c.daemon.state_dir == "/tmp/x"
    assert c.daemon.metrics_address is None
    assert c.daemon.log_level == "debug"
    assert c.daemon.log_format == "json"
    assert [(r.syscall, r.action, r.errno, r.value) for r in c.rules] == [
        ("sysfs", "value", 0, 42),
        ("uselib", "errno", errno.ENOSYS, 0),
        ("ustat", "errno", 13, 0),
        ("getpid", "continue", 0, 0),
    ]
    assert c.policy == {"anything": [1, 2]}
    assert c.runtime == {"runtime": "/usr/sbin/runc"}


def test_unknown_sections_allowed(tmp_path):
    c = load(tmp_path, "[emulation]\nx = 1\n")
    assert c.sections["emulation"] == {"x": 1}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[rules]]\nsyscall = "x"\naction = "kill"\n', "'action' must be one of"),
        ('[[rules]]\nsyscall = "x"\naction = "errno"\nerrno = "EWHAT"\n', "unknown errno name"),
        ('[[rules]]\nsyscall = "x"\naction = "errno"\n', "needs 'errno'"),
        ('[[rules]]\nsyscall = "x"\naction = "errno"\nerrno = 0\n', "between 1 and 4095"),
        ('[[rules]]\nsyscall = "x"\naction = "errno"\nerrno = true\n', "expected a name"),
        ('[[rules]]\nsyscall = "x"\naction = "value"\n', "integer 'value'"),
        ('[[rules]]\nsyscall = "x"\naction = "value"\nvalue = "1"\n', "integer 'value'"),
        ('[[rules]]\nsyscall = "x"\naction = "value"\nvalue = 1\nerrno = 1\n', "not used"),
        ('[[rules]]\nsyscall = "x"\naction = "continue"\nvalue = 1\n', "takes neither"),
        ('[[rules]]\naction = "continue"\n', "'syscall' must be"),
        ('[[rules]]\nsyscall = "x"\naction = "continue"\nfoo = 1\n', "unknown key"),
        ('[[rules]]\nsyscall = "x"\naction = "continue"\n[[rules]]\nsyscall = "x"\n'
         'action = "continue"\n', "more than one rule"),
        ('rules = 3\n', "array of tables"),
        ('[daemon]\nlog_level = "loud"\n', "log_level"),
        ('[daemon]\nlog_format = "xml"\n', "log_format"),
        ('[daemon]\nmetrics_address = "nope"\n', "HOST:PORT"),
        ('[daemon]\nmetrics_address = "h:0"\n', "port must be"),
        ('[daemon]\nstate_dir = 1\n', "state_dir"),
        ('[daemon]\nbogus = 1\n', "unknown key"),
        ('this is = not toml =\n', "not valid TOML"),
    ],
)
def test_bad_values(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle) as ei:
        load(tmp_path, text)
    assert str(tmp_path) in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(tmp_path / "absent.toml")


def test_parse_errno():
    assert parse_errno("eperm") == errno.EPERM
    assert parse_errno(22) == 22
    with pytest.raises(ConfigError):
        parse_errno("errorcode")


def test_metrics_address():
    assert parse_metrics_address("off") is None
    assert parse_metrics_address("127.0.0.1:9477") == MetricsAddress("127.0.0.1", 9477)
    assert parse_metrics_address("[::1]:80") == MetricsAddress("::1", 80)
    assert str(MetricsAddress("h", 1)) == "h:1"
