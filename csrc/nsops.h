/* Internal to csrc/: the pieces the one-shot executor (nsexec.c), the
 * persistent one (executor.c) and the native helper (native.c) share; they
 * are in nsops.c, but for icd_nsop_do and its tables (nsexec.c) and the
 * vetted umount (mounts.c). */
#ifndef ICD_NSOPS_H
#define ICD_NSOPS_H

#include <stdint.h>
#include <sys/types.h>

#define NR_open_tree 428
#define NR_move_mount 429
#define NR_fsopen 430
#define NR_fsconfig 431
#define NR_fsmount 432
#define NR_fspick 433
#define NR_pidfd_send_signal 424
#define NR_mount_setattr 442
#define NR_close_range 436

/* An operation's result as the executors' helpers send it back. */
struct icd_nsop_wire {
  int64_t ret;
  int32_t err;
  int32_t has_fd;
};

/* Integer arguments of `op` that are fds (bit i = a[i]). */
unsigned icd_nsop_fd_args(int op);
/* Whether a successful `op` returns an fd. */
int icd_nsop_makes_fd(int op);
/* Performs `op`; -1 with errno on failure. */
int64_t icd_nsop_do(int op, const char *const s[4], const int64_t a[6]);
/* sendmsg of len bytes and, if fd >= 0, that fd by SCM_RIGHTS (through
 * EINTR, no SIGPIPE): bytes sent or -1. */
ssize_t icd_nsop_send_fd(int sock, const void *buf, size_t len, int fd);
/* The fd a received message carried, or -1; any further ones are closed. */
struct msghdr;
int icd_nsop_take_fd(struct msghdr *mh);
/* (ret, err) and, if fd >= 0, the fd by SCM_RIGHTS. */
void icd_nsop_send_result(int sock, int64_t ret, int err, int fd);
int icd_nsop_same_ns(int pid, const char *name);
int icd_nsop_unshared(int pid, int nsflags);
int icd_nsop_pidfd_pid(int pidfd);
int icd_nsop_close_others(int *keep, int n);
/* 0 if the pidfd still names the live process `pid`, else a positive errno
 * (ESRCH: gone or reused). Call it after opening anything by pid. */
int icd_nsop_check_pid(int pidfd, int pid);
/* setns into the pidfd's namespaces and become root there where mapped:
 * 0 or a positive errno. */
int icd_nsop_enter(int pidfd, int nsflags);
/* In a forked helper: dies with its parent, becomes non-dumpable, opens the
 * host's /proc (*procfd, kept), keeps only sock, pidfd and that, then enters
 * pidfd's namespaces among nsflags that differ from ours (pidfd is closed
 * after).  0 or a positive errno. */
int icd_nsop_become_helper(pid_t parent, int pidfd, int pid, int nsflags, int sock,
                           int *procfd);
/* waitpid on our own child, through EINTR. */
void icd_nsop_reap(pid_t child);
/* fork() with a SEQPACKET socketpair between parent and child: the child's
 * pid (0 in the child) with *sock set to this side's end, or -errno. */
int icd_nsop_fork_joined(int *sock);

#define ICD_EPOLICY 4000 /* not an errno: "let the Python policy decide" */
/* mounts.c: umount2(path, flags) of a mount that is neither a procfs/sysfs
 * nor sits on one (the only umounts the native helper performs); anything
 * else fails with ICD_EPOLICY and nothing done, for the Python policy to
 * decide.  -1 with errno on failure. */
int64_t icd_nsop_umount_vetted(const char *path, int flags);

#endif
