/* The persistent namespace executor: one forked helper per (user, mount)
 * namespace pair, kept alive and asked over a SOCK_SEQPACKET socketpair, so
 * that a vetted mount costs a round trip instead of a fork + setns.
 *
 * Each request carries the requesting task's root and cwd (opened by the
 * daemon from /proc/<pid>/{root,cwd} and checked against its pidfd) by
 * SCM_RIGHTS; the helper chroots to that root and chdirs to that cwd for the
 * one operation, so paths resolve beneath the target's root as the target
 * sees them, exactly as with the one-shot ns_exec.  Ops that need the pid
 * namespace (procfs mounts) stay with ns_exec: setns(CLONE_NEWPID) only
 * applies to children. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "icd.h"
#include "nsops.h"

#define XSTR_MAX 4096 /* each string with its NUL: PATH_MAX, one page of mount data */
#define XFDS_MAX 8    /* root, cwd and at most two fd arguments; room to spare */
#define XBUF_MAX (sizeof(struct xreq) + 4 * XSTR_MAX)
/* Both sides poll (yielding the CPU) a while before they sleep: waking a task
 * on an idle virtual CPU costs more than a whole request (measured: a
 * round trip of ~15 us sleeping, ~5 us polling).  The helper keeps polling
 * a little after a reply because vetted calls come in bursts (mount, then
 * umount); 300 us measured no better than 60 us in the daemon, so it stays
 * short to leave the CPU to the container. */
#define XSPIN_HELPER_NS 100000
#define XSPIN_CALLER_NS 150000

struct xreq {
  int32_t op;
  uint32_t fdmask; /* a[i] is the (2 + k)-th received fd, k counting set bits below i */
  int64_t a[6];
  uint32_t slen[4]; /* length with the NUL, 0 for NULL */
};

struct xhello {
  int32_t err;
  int32_t pad;
  uint64_t user_dev, user_ino, mnt_dev, mnt_ino;
};

static int64_t mono_ns(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* recvmsg, polling up to spin_ns with sched_yield between tries first. */
static ssize_t recv_spin(int sock, struct msghdr *mh, int64_t spin_ns)
{
  int64_t end = spin_ns > 0 ? mono_ns() + spin_ns : 0;
  ssize_t n;

  while (spin_ns > 0) {
    n = recvmsg(sock, mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n >= 0 || (errno != EAGAIN && errno != EINTR))
      return n;
    if (mono_ns() >= end)
      break;
    sched_yield();
  }
  do
    n = recvmsg(sock, mh, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  return n;
}

static ssize_t send_all(int sock, struct msghdr *mh)
{
  ssize_t n;
  do
    n = sendmsg(sock, mh, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n;
}

/* ---- the helper ------------------------------------------------------- */

static void hello(int sock, const struct xhello *h)
{
  struct iovec iov = { .iov_base = (void *)h, .iov_len = sizeof *h };
  struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
  (void)send_all(sock, &mh);
}

static int ns_id(int procfd, const char *name, uint64_t *dev, uint64_t *ino)
{
  struct stat st;
  if (fstatat(procfd, name, &st, 0) < 0)
    return -errno;
  *dev = st.st_dev;
  *ino = st.st_ino;
  return 0;
}

/* 0, or -errno when it fails before serving. */
static int x_enter(pid_t parent, int pidfd, int pid, int nsflags, int sock, int *basefd,
                   struct xhello *h)
{
  int procfd, r;

  if ((r = icd_nsop_become_helper(parent, pidfd, pid, nsflags, sock, &procfd)))
    return r;
  /* After setns(CLONE_NEWNS) root and cwd are the namespace's root. */
  *basefd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (*basefd < 0)
    return -errno;
  /* What was entered, for the daemon to check against its cache key. */
  if ((r = ns_id(procfd, "self/ns/user", &h->user_dev, &h->user_ino)))
    return r;
  if ((r = ns_id(procfd, "self/ns/mnt", &h->mnt_dev, &h->mnt_ino)))
    return r;
  close(procfd);
  return 0;
}

static void close_fds(int *fds, int n)
{
  int i;
  for (i = 0; i < n; i++)
    close(fds[i]);
}

/* One request: returns -1 when the helper cannot go on (it then exits). */
static int x_serve_one(int sock, int basefd, char *buf)
{
  union {
    char b[CMSG_SPACE(XFDS_MAX * sizeof(int))];
    struct cmsghdr align;
  } cbuf;
  struct iovec iov = { .iov_base = buf, .iov_len = XBUF_MAX };
  struct msghdr mh = {
    .msg_iov = &iov,
    .msg_iovlen = 1,
    .msg_control = cbuf.b,
    .msg_controllen = sizeof cbuf.b,
  };
  struct cmsghdr *c;
  struct xreq rq;
  const char *s[4] = { 0 };
  int64_t a[6];
  int fds[XFDS_MAX], nfds = 0, i, k, err = 0, outfd = -1;
  size_t off;
  int64_t ret = -1;
  ssize_t n;

  n = recv_spin(sock, &mh, XSPIN_HELPER_NS);
  if (n <= 0) /* the daemon closed its end (or the socket broke) */
    return -1;
  for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int m = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (i = 0; i < m && nfds < XFDS_MAX; i++)
        memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
  if ((mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) || (size_t)n < sizeof rq) {
    err = EINVAL;
    goto reply;
  }
  memcpy(&rq, buf, sizeof rq);
  memcpy(a, rq.a, sizeof a);
  off = sizeof rq;
  for (i = 0; i < 4; i++) {
    if (!rq.slen[i])
      continue;
    if (rq.slen[i] > XSTR_MAX || off + rq.slen[i] > (size_t)n || buf[off + rq.slen[i] - 1]) {
      err = EINVAL;
      goto reply;
    }
    s[i] = buf + off;
    off += rq.slen[i];
  }
  /* Fd arguments come after root and cwd, in argument order. */
  if (rq.fdmask & ~icd_nsop_fd_args(rq.op) & 0x3f) {
    err = EINVAL;
    goto reply;
  }
  for (i = 0, k = 2; i < 6; i++)
    if (rq.fdmask & (1u << i)) {
      if (k >= nfds) {
        err = EINVAL;
        goto reply;
      }
      a[i] = fds[k++];
    }
  if (nfds != k || nfds < 2) {
    err = EINVAL;
    goto reply;
  }
  if (fchdir(fds[0]) < 0 || chroot(".") < 0 || fchdir(fds[1]) < 0) {
    err = errno;
    goto reply;
  }
  ret = icd_nsop_do(rq.op, s, a);
  err = ret < 0 ? (int)-ret : 0;
  if (ret >= 0 && icd_nsop_makes_fd(rq.op))
    outfd = (int)ret;
reply:
  icd_nsop_send_result(sock, err ? -1 : ret, err, outfd);
  if (outfd >= 0)
    close(outfd);
  close_fds(fds, nfds);
  /* Back to the namespace's root: nothing of this target stays our root. */
  if (fchdir(basefd) < 0 || chroot(".") < 0)
    return -1;
  return 0;
}

static void x_main(pid_t parent, int pidfd, int pid, int nsflags, int sock)
{
  static char buf[XBUF_MAX];
  struct xhello h = { 0 };
  int basefd = -1;

  h.err = -x_enter(parent, pidfd, pid, nsflags, sock, &basefd, &h);
  hello(sock, &h);
  if (h.err)
    return;
  while (x_serve_one(sock, basefd, buf) == 0)
    ;
}

/* ---- the daemon's side ------------------------------------------------ */

static int wait_readable(int sock, int timeout_ms)
{
  struct pollfd p = { .fd = sock, .events = POLLIN };
  int r;
  do
    r = poll(&p, 1, timeout_ms);
  while (r < 0 && errno == EINTR);
  if (r < 0)
    return -errno;
  if (r == 0)
    return -ETIMEDOUT;
  return 0;
}

int icd_exec_start(int pidfd, int pid, int nsflags, int timeout_ms, struct icd_executor *out)
{
  struct xhello h;
  int sock, ret;
  pid_t child, parent = getpid();
  ssize_t n;

  out->sock = out->pid = -1;
  if (pid <= 0 || pidfd < 0)
    return -EINVAL;
  child = icd_nsop_fork_joined(&sock);
  if (child < 0)
    return child;
  if (child == 0) {
    x_main(parent, pidfd, pid, nsflags, sock);
    _exit(0);
  }
  ret = wait_readable(sock, timeout_ms);
  if (ret == 0) {
    do
      n = recv(sock, &h, sizeof h, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
      ret = -errno;
    else if (n != sizeof h)
      ret = -EIO; /* it died before saying hello */
    else if (h.err)
      ret = -h.err;
  }
  if (ret < 0) {
    if (kill(child, SIGKILL) < 0 && errno != ESRCH)
      ret = -errno;
    close(sock);
    icd_nsop_reap(child);
    return ret;
  }
  out->sock = sock;
  out->pid = child;
  out->user_dev = h.user_dev;
  out->user_ino = h.user_ino;
  out->mnt_dev = h.mnt_dev;
  out->mnt_ino = h.mnt_ino;
  return 0;
}

/* Opens pid's root and cwd and checks that the pidfd still names a live
 * process with that pid (so they were the pidfd's, not a reused pid's).
 * Leaves *piddir open (/proc/<pid>, for same_nses).  0 or -errno. */
static int target_dirs(int pidfd, int pid, int *piddir, int *root, int *cwd)
{
  char path[64];
  int r;

  snprintf(path, sizeof path, "/proc/%d", pid);
  *piddir = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (*piddir < 0)
    return errno == ENOENT ? -ESRCH : -errno;
  *root = openat(*piddir, "root", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (*root < 0)
    return errno == ENOENT ? -ESRCH : -errno;
  *cwd = openat(*piddir, "cwd", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (*cwd < 0)
    return errno == ENOENT ? -ESRCH : -errno;
  if ((r = icd_nsop_check_pid(pidfd, pid)))
    return r;
  return 0;
}

static int recv_reply(int sock, struct icd_exec_result *out, int timeout_ms)
{
  struct icd_nsop_wire w;
  struct iovec iov = { .iov_base = &w, .iov_len = sizeof w };
  union {
    char b[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } cbuf;
  struct msghdr mh = {
    .msg_iov = &iov,
    .msg_iovlen = 1,
    .msg_control = cbuf.b,
    .msg_controllen = sizeof cbuf.b,
  };
  ssize_t n;

  int64_t end = mono_ns() + XSPIN_CALLER_NS;
  int r;

  for (;;) {
    n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n >= 0 || (errno != EAGAIN && errno != EINTR))
      break;
    if (mono_ns() < end) {
      sched_yield();
      continue;
    }
    if ((r = wait_readable(sock, timeout_ms)) < 0)
      return r;
    do
      n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    break;
  }
  if (n < 0)
    return -errno;
  out->fd = icd_nsop_take_fd(&mh);
  if (n == 0)
    return -ECONNABORTED; /* the helper died during the request */
  if (n != sizeof w || (mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC)))
    return -EIO;
  out->ret = w.ret;
  out->err = w.err;
  return 0;
}

/* Whether the process of piddir is (still) in the namespaces the helper
 * entered: a process that unshared or setns'd since its executor was picked
 * must not borrow the helper's (more privileged) user namespace. */
static int same_nses(int piddir, const struct icd_executor *x)
{
  struct stat st;

  if (fstatat(piddir, "ns/user", &st, 0) < 0)
    return errno == ENOENT ? -ESRCH : -errno;
  if (st.st_dev != x->user_dev || st.st_ino != x->user_ino)
    return 0;
  if (fstatat(piddir, "ns/mnt", &st, 0) < 0)
    return errno == ENOENT ? -ESRCH : -errno;
  return st.st_dev == x->mnt_dev && st.st_ino == x->mnt_ino;
}

int icd_exec_call(const struct icd_executor *x, int pidfd, int pid, int op, const char *s0,
                  const char *s1, const char *s2, const char *s3, int64_t a0, int64_t a1,
                  int64_t a2, int64_t a3, int64_t a4, int64_t a5, int timeout_ms,
                  struct icd_exec_result *out)
{
  const char *const s[4] = { s0, s1, s2, s3 };
  const int64_t a[6] = { a0, a1, a2, a3, a4, a5 };
  int sock = x->sock;
  static __thread char buf[XBUF_MAX]; /* daemon threads call this concurrently */
  union {
    char b[CMSG_SPACE(XFDS_MAX * sizeof(int))];
    struct cmsghdr align;
  } cbuf;
  struct iovec iov = { .iov_base = buf };
  struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.b };
  struct cmsghdr *c;
  struct xreq rq;
  int fds[XFDS_MAX], nfds = 2, piddir = -1, root = -1, cwd = -1, i, ret, err;
  unsigned mask;
  size_t off = sizeof rq, len;

  out->ret = -1;
  out->err = 0;
  out->fd = -1;
  if (op < ICD_OP_MOUNT || op > ICD_OP_LAST || pid <= 0 || pidfd < 0 || sock < 0)
    return -EINVAL;
  memset(&rq, 0, sizeof rq);
  rq.op = op;
  memcpy(rq.a, a, sizeof rq.a);
  for (i = 0; i < 4; i++) {
    if (!s[i])
      continue;
    len = strlen(s[i]) + 1;
    if (len > XSTR_MAX)
      return -ENAMETOOLONG;
    memcpy(buf + off, s[i], len);
    rq.slen[i] = (uint32_t)len;
    off += len;
  }
  mask = icd_nsop_fd_args(op);
  /* Arguments that are fds only for some values: sending fd 0 for a zero aux
   * would hand the helper a descriptor where the call wants a number. */
  if (op == ICD_OP_FSCONFIG && a[1] != 5 /* FSCONFIG_SET_FD */)
    mask &= ~4u;
  if (op == ICD_OP_MOUNT_SETATTR && !(a[2] & 0x100000 /* MOUNT_ATTR_IDMAP */))
    mask &= ~32u;
  for (i = 0; i < 6; i++)
    if ((mask & (1u << i)) && a[i] >= 0 && a[i] < (1 << 30)) {
      rq.fdmask |= 1u << i;
      fds[nfds++] = (int)a[i];
    }
  memcpy(buf, &rq, sizeof rq);

  err = target_dirs(pidfd, pid, &piddir, &root, &cwd);
  if (!err) {
    /* After the opens: root and cwd are of a process in these namespaces. */
    ret = same_nses(piddir, x);
    if (ret == -ESRCH)
      err = -ESRCH;
    else if (ret <= 0) {
      ret = ret < 0 ? ret : -EXDEV;
      goto done;
    }
  }
  if (err) {
    out->err = -err; /* the target's failure, not the helper's */
    ret = 0;
    goto done;
  }
  fds[0] = root;
  fds[1] = cwd;
  iov.iov_len = off;
  memset(cbuf.b, 0, sizeof cbuf.b);
  mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
  c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
  memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
  if (send_all(sock, &mh) < 0) {
    ret = -errno; /* EPIPE: the helper was dead before this request */
    goto done;
  }
  ret = recv_reply(sock, out, timeout_ms);
done:
  if (piddir >= 0)
    close(piddir);
  if (root >= 0)
    close(root);
  if (cwd >= 0)
    close(cwd);
  if (ret < 0 && out->fd >= 0) {
    close(out->fd);
    out->fd = -1;
  }
  return ret;
}

int icd_exec_stop(int sock, int child)
{
  int ret = 0;
  if (sock >= 0 && close(sock) < 0)
    ret = -errno;
  if (child > 0) {
    /* Our own unreaped child: the pid cannot have been reused. */
    if (kill(child, SIGKILL) < 0 && errno != ESRCH)
      ret = -errno;
    icd_nsop_reap(child);
  }
  return ret;
}
