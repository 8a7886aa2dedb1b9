"""The seccomp profile of a container whose config brings none (Docker's --privileged,
`--security-opt seccomp=unconfined`, a hand-written config).

A default-deny allow list modelled on Docker's default profile: its unconditional allow
set plus every capability-gated group, because a capability here only counts in the
container's own user namespace (a system container may mount, unshare, setns, clone
namespaces, chroot and pivot_root: the daemon vets the mount family, the deny list in
interceptd/policy/deny.py takes out what stays kernel-global). Anything else gets
ENOSYS, so glibc and musl fall back from a syscall they do not find (clone3, faccessat2,
fchmodat2, ...) as they would on an older kernel; the deny list answers EPERM.
docs/policy.md lists the groups and the reasons.
"""

from __future__ import annotations

import errno
from functools import lru_cache

from .seccomp import DEFAULT_ARCHES


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Docker's unconditional allow set, as of its 2023 profile, without the io_uring calls
# (Docker's current profile dropped them too: an io_uring operation never passes the
# filter) and without i386's `umount`, which the daemon does not vet.
BASE = _words(
    "accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown "
    "chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime "
    "clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect "
    "copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old "
    "epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2 execve execveat "
    "exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark "
    "fchdir fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr "
    "flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs "
    "fstatfs64 fsync ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu "
    "getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 "
    "getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority "
    "getrandom getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list "
    "getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid "
    "getuid32 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch "
    "io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get "
    "ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset "
    "landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr "
    "llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier "
    "memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall "
    "mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive "
    "mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget "
    "msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat "
    "_newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc "
    "pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 "
    "process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read readahead "
    "readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg "
    "remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq "
    "rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend "
    "rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity "
    "sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min "
    "sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 "
    "sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp "
    "select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 "
    "sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 "
    "setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid "
    "setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid "
    "setsockopt set_thread_area set_tid_address setuid setuid32 setxattr shmat shmctl shmdt "
    "shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn socket socketcall "
    "socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync "
    "sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete "
    "timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 "
    "timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 "
    "times tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat "
    "utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev "
    "arch_prctl modify_ldt"
)

# Docker gates these on a capability. Here every capability is the container's own user
# namespace's, and the kernel checks them there; what remains kernel-global is in the
# deny list (which wins over this list), what touches mounts is vetted by the daemon.
CAPABILITY_GATED = {
    "CAP_SYS_ADMIN": ("bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick "
                      "lookup_dcookie mount mount_setattr move_mount open_tree "
                      "perf_event_open quotactl quotactl_fd setdomainname sethostname "
                      "setns syslog umount2 unshare"),
    # reboot in a pid namespace other than the host's ends that namespace's init
    # (the kernel checks CAP_SYS_BOOT in the namespace's owner): systemd needs it.
    "CAP_SYS_BOOT": "reboot",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_MODULE": "delete_module init_module finit_module",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_PTRACE": ("kcmp pidfd_getfd process_madvise process_vm_readv "
                       "process_vm_writev ptrace"),
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_TIME": "settimeofday stime clock_settime clock_settime64",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_SYS_NICE": "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    "CAP_DAC_READ_SEARCH": "open_by_handle_at",
}

# Not in Docker's list, needed by runtimes and init systems inside (issue 12 runs runc,
# crun, dockerd and systemd in containers): pivot_root (runc, crun), the key calls (the
# deny list applies `[policy] keyring`), userfaultfd (the deny list keeps only
# UFFD_USER_MODE_ONLY), and syscalls newer than Docker's list that libc uses with a
# fallback (unknown to the host's libseccomp, they are skipped by the runtime and get
# ENOSYS like any other unknown number).
EXTRA = _words("pivot_root add_key keyctl request_key userfaultfd cachestat fchmodat2 "
               "futex_wake futex_wait futex_requeue map_shadow_stack mseal statmount listmount "
               "lsm_get_self_attr lsm_list_modules setxattrat getxattrat listxattrat "
               "removexattrat")

# personality(2): Docker's values (PER_LINUX, PER_LINUX32, UNAME26 with either, and the
# query 0xffffffff); others change the ABI of address-space layout (ADDR_NO_RANDOMIZE,
# READ_IMPLIES_EXEC).
PERSONALITY = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

DEFAULT_ERRNO = errno.ENOSYS


@lru_cache(maxsize=1)
def allowed_names() -> tuple[str, ...]:
    names = set(BASE) | set(EXTRA)
    for group in CAPABILITY_GATED.values():
        names.update(_words(group))
    return tuple(sorted(names))


def profile() -> dict:
    """A fresh copy of the default profile (OCI `linux.seccomp`, without listener)."""
    rules: list[dict] = [{"names": list(allowed_names()), "action": "SCMP_ACT_ALLOW"}]
    rules += [{"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}]} for v in PERSONALITY]
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": DEFAULT_ERRNO,
            "architectures": list(DEFAULT_ARCHES), "syscalls": rules}
