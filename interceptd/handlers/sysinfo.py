"""sysinfo(2), answered with the container's figures (policy/sysinfo.py renders them)."""

from __future__ import annotations

from interceptd.handlers import scope
from interceptd.kernel.targetmem import write_target
from interceptd.policy import sysinfo
from interceptd.seams import Request
from interceptd.verdict import Verdict


def handle_sysinfo(req: Request) -> Verdict:
    addr = req.args[0]
    st = scope.state_of(req.container)
    if st.sysinfo is None:
        st.sysinfo = sysinfo.Source.of(req.container.init_pid)
    info = st.sysinfo.gather()
    err = write_target(req.pid, addr, info.pack(), req.valid)
    if err:
        return Verdict.errno(err, "sysinfo: bad buffer")
    return Verdict.value(0, f"sysinfo emulated [uptime={info.uptime} "
                            f"totalram={info.totalram} procs={info.procs}]")
