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
/* Performs `op`: its result (an fd for fd-making ops), or -errno. */
int64_t icd_nsop_do(int op, const char *const s[4], const int64_t a[6]);
/* sendmsg of len bytes and, if fd >= 0, that fd by SCM_RIGHTS (through
 * EINTR, no SIGPIPE): bytes sent or -errno. */
ssize_t icd_nsop_send_fd(int sock, const void *buf, size_t len, int fd);
/* The fd a received message carried, or -1; any further ones are closed. */
struct msghdr;
int icd_nsop_take_fd(struct msghdr *mh);
/* (ret, err) and, if fd >= 0, the fd by SCM_RIGHTS; err is the positive
 * errno the executor's caller gets in icd_exec_result. */
void icd_nsop_send_result(int sock, int64_t ret, int err, int fd);
/* Whether pid is in our namespace `name` ("mnt", ...): 1, 0 or -errno. */
int icd_nsop_same_ns(int pid, const char *name);
/* nsflags without those pid shares with us, or -errno. */
int icd_nsop_unshared(int pid, int nsflags);
/* The pid a pidfd names, 0 once it exited, or -errno (EBADF: no pidfd). */
int icd_nsop_pidfd_pid(int pidfd);
/* Closes every fd from 3 up but those in keep[0..n) (sorted in place): 0 or
 * -errno. */
int icd_nsop_close_others(int *keep, int n);
/* 0 if the pidfd still names the live process `pid`, else -errno (ESRCH:
 * gone or reused).  Call it after opening anything by pid. */
int icd_nsop_check_pid(int pidfd, int pid);
/* setns into the pidfd's namespaces and become root there where mapped:
 * 0 or -errno. */
int icd_nsop_enter(int pidfd, int nsflags);
/* In a forked helper: dies with its parent (armed again after the
 * credential change, which clears it), becomes non-dumpable, opens the
 * host's /proc (*procfd, kept), keeps only sock, pidfd and that, then enters
 * pidfd's namespaces among nsflags that differ from ours (pidfd is closed
 * after).  0 or -errno. */
int icd_nsop_become_helper(pid_t parent, int pidfd, int pid, int nsflags, int sock, int *procfd);
/* waitpid on our own child, through EINTR. */
void icd_nsop_reap(pid_t child);
/* fork() with a SEQPACKET socketpair between parent and child: the child's
 * pid (0 in the child) with *sock set to this side's end, or -errno. */
int icd_nsop_fork_joined(int *sock);
/* icd_nsop_fork_joined done by a thread that lives as long as the process, so
 * that the child's PR_SET_PDEATHSIG fires with the process, not with the
 * calling thread; the child runs child(arg, its socket end) (a copy of the caller's memory
 * as of the fork) and exits.  The child's pid, or -errno. */
int icd_nsop_fork_lasting(int *sock, void (*child)(void *, int), void *arg);

#endif
