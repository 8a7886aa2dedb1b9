/* The pieces the one-shot executor (nsexec.c), the persistent one
 * (executor.c) and the native helper (native.c) share: fd passing over their
 * socketpairs, and forking a helper that enters a target's namespaces. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "icd.h"
#include "nsops.h"

static const struct {
  int flag;
  const char *name;
} ns_names[] = {
  { CLONE_NEWUSER, "user" },     { CLONE_NEWNS, "mnt" },  { CLONE_NEWPID, "pid" },
  { CLONE_NEWNET, "net" },       { CLONE_NEWIPC, "ipc" }, { CLONE_NEWUTS, "uts" },
  { CLONE_NEWCGROUP, "cgroup" },
};

ssize_t icd_nsop_send_fd(int sock, const void *buf, size_t len, int fd)
{
  union {
    char b[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } cbuf;
  struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
  struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
  ssize_t n;

  if (fd >= 0) {
    struct cmsghdr *c;
    memset(cbuf.b, 0, sizeof cbuf.b);
    mh.msg_control = cbuf.b;
    mh.msg_controllen = sizeof cbuf.b;
    c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  do
    n = sendmsg(sock, &mh, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n < 0 ? -errno : n;
}

int icd_nsop_take_fd(struct msghdr *mh)
{
  struct cmsghdr *c;
  int fd = -1, got;

  for (c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int i, k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (i = 0; i < k; i++) {
        memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
        if (fd < 0)
          fd = got;
        else
          close(got); /* nobody sends more than one: never leak them */
      }
    }
  return fd;
}

void icd_nsop_send_result(int sock, int64_t ret, int err, int fd)
{
  struct icd_nsop_wire w = { .ret = ret, .err = err, .has_fd = fd >= 0 };
  (void)icd_nsop_send_fd(sock, &w, sizeof w, fd);
}

int icd_nsop_same_ns(int pid, const char *name)
{
  char path[64];
  struct stat a, b;
  snprintf(path, sizeof path, "/proc/%d/ns/%s", pid, name);
  if (stat(path, &a) < 0)
    return -errno;
  snprintf(path, sizeof path, "/proc/self/ns/%s", name);
  if (stat(path, &b) < 0)
    return -errno;
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* `nsflags` without the namespaces `pid` shares with us: setns refuses to
 * "enter" the user namespace one is already in. */
int icd_nsop_unshared(int pid, int nsflags)
{
  int i, r;
  for (i = 0; i < (int)(sizeof ns_names / sizeof ns_names[0]); i++)
    if (nsflags & ns_names[i].flag) {
      r = icd_nsop_same_ns(pid, ns_names[i].name);
      if (r < 0)
        return r;
      if (r)
        nsflags &= ~ns_names[i].flag;
    }
  return nsflags;
}

/* PIDFD_GET_INFO (Linux 6.13) on a pidfs file: the pid without opening and
 * parsing fdinfo. */
#define PID_FS_MAGIC_ 0x50494446
#define PIDFD_INFO_PID_ 1ULL
struct icd_pidfd_info { /* PIDFD_INFO_SIZE_VER0 */
  uint64_t mask, cgroupid;
  uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  int32_t exit_code;
};
#define PIDFD_GET_INFO_ _IOWR(0xFF, 11, struct icd_pidfd_info)

#define PIDFD_INFO_KNOWN 1   /* *pid set (0: exited) */
#define PIDFD_INFO_UNKNOWN 0 /* older kernel, not a pidfs file: ask fdinfo */

static int pidfd_info_pid(int pidfd, int *pid)
{
  struct icd_pidfd_info info;
  struct statfs sfs;

  /* Only on a pidfs file: the ioctl number means nothing elsewhere. */
  if (fstatfs(pidfd, &sfs) < 0 || sfs.f_type != PID_FS_MAGIC_)
    return PIDFD_INFO_UNKNOWN;
  memset(&info, 0, sizeof info);
  info.mask = PIDFD_INFO_PID_;
  if (ioctl(pidfd, PIDFD_GET_INFO_, &info) < 0) {
    if (errno != ESRCH) /* ESRCH: exited (and reaped) */
      return PIDFD_INFO_UNKNOWN;
    *pid = 0;
    return PIDFD_INFO_KNOWN;
  }
  if (!(info.mask & PIDFD_INFO_PID_) || !info.pid)
    return PIDFD_INFO_UNKNOWN;
  *pid = (int)info.pid;
  return PIDFD_INFO_KNOWN;
}

int icd_nsop_pidfd_pid(int pidfd)
{
  char path[64], buf[512], *p;
  ssize_t n;
  int fd, pid;

  if (pidfd_info_pid(pidfd, &pid) == PIDFD_INFO_KNOWN)
    return pid;
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n < 0)
    return -errno;
  buf[n] = 0;
  p = strstr(buf, "\nPid:\t");
  if (!p)
    return -EBADF; /* not a pidfd */
  pid = atoi(p + 6);
  return pid > 0 ? pid : 0; /* fdinfo says -1 once it exited */
}

int icd_nsop_check_pid(int pidfd, int pid)
{
  int r = icd_nsop_pidfd_pid(pidfd);
  if (r < 0)
    return r;
  if (r != pid)
    return -ESRCH;
  if (syscall(NR_pidfd_send_signal, pidfd, 0, NULL, 0) < 0)
    return -errno;
  return 0;
}

int icd_nsop_enter(int pidfd, int nsflags)
{
  if (nsflags && setns(pidfd, nsflags) < 0)
    return -errno;
  if (nsflags & CLONE_NEWUSER) {
    /* Act as the container's root where it is mapped; stay unmapped otherwise. */
    if (setresgid(0, 0, 0) < 0 && errno != EINVAL)
      return -errno;
    if (setresuid(0, 0, 0) < 0 && errno != EINVAL)
      return -errno;
    /* The kernel clears the parent-death signal when the euid changes: a
     * helper that outlived a killed daemon went on receiving its container's
     * notifications and dropped them. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
      return -errno;
  }
  return 0;
}

int icd_nsop_become_helper(pid_t parent, int pidfd, int pid, int nsflags, int sock, int *procfd)
{
  int keep[3], r;

  if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
    return -errno;
  if (getppid() != parent) /* the daemon thread is gone already */
    return -ESRCH;
  /* Non-dumpable, with the host's mm->user_ns: the container's root cannot
   * ptrace it or read its memory or fds. */
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
    return -errno;
  /* The host's procfs, opened before the mount namespace changes. */
  *procfd = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (*procfd < 0)
    return -errno;
  nsflags = icd_nsop_unshared(pid, nsflags);
  if (nsflags < 0)
    return nsflags == -ENOENT ? -ESRCH : nsflags;
  if ((r = icd_nsop_check_pid(pidfd, pid)))
    return r;
  keep[0] = sock;
  keep[1] = pidfd;
  keep[2] = *procfd;
  if ((r = icd_nsop_close_others(keep, 3)))
    return r;
  if ((r = icd_nsop_enter(pidfd, nsflags)))
    return r;
  if (getppid() != parent) /* died before the signal was armed again */
    return -ESRCH;
  if (close(pidfd) < 0)
    return -errno;
  return 0;
}

void icd_nsop_reap(pid_t child)
{
  int status;
  while (waitpid(child, &status, 0) < 0)
    if (errno != EINTR)
      break; /* ECHILD: SIGCHLD is ignored and the kernel reaped it */
}

/* PR_SET_PDEATHSIG fires when the *thread* that forked exits, and helpers are
 * started from short-lived daemon threads (attach hooks, workers): one keeper
 * thread, alive as long as the process, does every such fork. */
struct lasting_req {
  void (*child)(void *, int);
  void *arg;
  int sock;
  int ret;
  int done;
};

static pthread_mutex_t keeper_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t keeper_cond = PTHREAD_COND_INITIALIZER;
static struct lasting_req *keeper_req;
static pthread_t keeper;
static int keeper_up;

static void *keeper_main(void *unused)
{
  (void)unused;
  pthread_mutex_lock(&keeper_lock);
  for (;;) {
    struct lasting_req *q;
    while (!keeper_req)
      pthread_cond_wait(&keeper_cond, &keeper_lock);
    q = keeper_req;
    keeper_req = NULL;
    q->ret = icd_nsop_fork_joined(&q->sock);
    if (q->ret == 0) {
      q->child(q->arg, q->sock);
      _exit(0);
    }
    q->done = 1;
    pthread_cond_broadcast(&keeper_cond);
  }
  return NULL;
}

int icd_nsop_fork_lasting(int *sock, void (*child)(void *, int), void *arg)
{
  struct lasting_req q = { .child = child, .arg = arg, .sock = -1 };
  sigset_t all, old;
  int r = 0;

  pthread_mutex_lock(&keeper_lock);
  if (!keeper_up) {
    /* Signals stay with the daemon's own threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    r = -pthread_create(&keeper, NULL, keeper_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!r && (r = -pthread_detach(keeper)) == 0)
      keeper_up = 1;
  }
  if (r) {
    pthread_mutex_unlock(&keeper_lock);
    return r;
  }
  while (keeper_req) /* one request at a time */
    pthread_cond_wait(&keeper_cond, &keeper_lock);
  keeper_req = &q;
  pthread_cond_broadcast(&keeper_cond);
  while (!q.done)
    pthread_cond_wait(&keeper_cond, &keeper_lock);
  pthread_mutex_unlock(&keeper_lock);
  *sock = q.sock;
  return q.ret;
}

int icd_nsop_fork_joined(int *sock)
{
  int sv[2], ret;
  pid_t child;

  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return -errno;
  child = fork();
  if (child < 0) {
    ret = -errno;
    close(sv[0]);
    close(sv[1]);
    return ret;
  }
  close(child == 0 ? sv[0] : sv[1]);
  *sock = child == 0 ? sv[1] : sv[0];
  return child;
}

/* Keeps only the fds the child needs, so nothing of the daemon's (notify
 * fds, sockets) is reachable once it stands inside the container. */
int icd_nsop_close_others(int *keep, int n)
{
  int i, j, lo = 3;
  for (i = 1; i < n; i++) /* insertion sort; n is tiny */
    for (j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
      int t = keep[j];
      keep[j] = keep[j - 1];
      keep[j - 1] = t;
    }
  for (i = 0; i < n; i++) {
    if (keep[i] < lo)
      continue;
    if (keep[i] > lo && syscall(NR_close_range, lo, keep[i] - 1, 0) < 0)
      return -errno;
    lo = keep[i] + 1;
  }
  if (syscall(NR_close_range, lo, ~0U, 0) < 0)
    return -errno;
  return 0;
}
