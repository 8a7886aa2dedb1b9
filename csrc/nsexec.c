/* The namespace executor: one mount-family operation performed inside a
 * target's namespaces by a freshly forked child, never by a daemon thread
 * (setns of a user namespace needs a single-threaded caller, and the
 * daemon's own namespaces must never change). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

struct icd_mount_attr { /* struct mount_attr, MOUNT_ATTR_SIZE_VER0 */
  uint64_t attr_set, attr_clr, propagation, userns_fd;
};

/* Integer arguments that are fds the operation uses, per op (bit i = a[i]). */
unsigned icd_nsop_fd_args(int op)
{
  switch (op) {
  case ICD_OP_OPEN_TREE:
  case ICD_OP_FSPICK:
  case ICD_OP_FSMOUNT:
    return 1;
  case ICD_OP_MOVE_MOUNT:
    return 3;
  case ICD_OP_MOUNT_SETATTR:
    return 1 | 32;
  case ICD_OP_REMOUNT_FD:
    return 1;
  case ICD_OP_MOUNT_FUSE:
    return 2;
  case ICD_OP_FSCONFIG:
    return 1 | 4;
  default:
    return 0;
  }
}

/* Each op's name and its arguments in the syscall's order: s a string (or
 * NULL), i an integer; strings fill s[0..3] and integers a[0..5] in that
 * order.  The Python wrapper builds its calls from this table. */
static const struct {
  const char *name, *args;
} op_table[ICD_OP_LAST + 1] = {
  [ICD_OP_MOUNT] = { "mount", "sssis" },
  [ICD_OP_UMOUNT2] = { "umount2", "si" },
  [ICD_OP_OPEN_TREE] = { "open_tree", "isi" },
  [ICD_OP_MOVE_MOUNT] = { "move_mount", "isisi" },
  /* (dfd, path, flags, attr_set, attr_clr, propagation, userns_fd) */
  [ICD_OP_MOUNT_SETATTR] = { "mount_setattr", "isiiiii" },
  [ICD_OP_FSOPEN] = { "fsopen", "si" },
  [ICD_OP_FSCONFIG] = { "fsconfig", "iissi" },
  [ICD_OP_FSMOUNT] = { "fsmount", "iii" },
  [ICD_OP_FSPICK] = { "fspick", "isi" },
  /* (path, flags, mnt_id) */
  [ICD_OP_UMOUNT_CHECKED] = { "umount2_checked", "sii" },
  /* (fd, ms_flags, data, attr_set, attr_clr) */
  [ICD_OP_REMOUNT_FD] = { "remount_fd", "iisii" },
  /* (source, target, fstype, flags, data without fd=, fuse_fd) */
  [ICD_OP_MOUNT_FUSE] = { "mount_fuse", "sssisi" },
};

int icd_op_info(int op, const char **name, const char **args)
{
  if (op < ICD_OP_MOUNT || op > ICD_OP_LAST)
    return -EINVAL;
  *name = op_table[op].name;
  *args = op_table[op].args;
  return 0;
}

int icd_nsop_makes_fd(int op)
{
  return op == ICD_OP_OPEN_TREE || op == ICD_OP_FSOPEN || op == ICD_OP_FSMOUNT
         || op == ICD_OP_FSPICK;
}

/* A raw syscall's result as the ops return it: the value or -errno. */
static int64_t sys_ret(long r)
{
  return r < 0 ? -errno : r;
}

static int64_t umount_checked(const char *path, int flags, int64_t want)
{
  int fd, id;

  if (!path)
    return -EFAULT;
  fd = open(path, O_PATH | O_CLOEXEC | ((flags & UMOUNT_NOFOLLOW) ? O_NOFOLLOW : 0));
  if (fd < 0)
    return -errno;
  id = icd_fd_mnt_id(fd);
  close(fd); /* before the umount: our reference would keep the mount busy */
  if (id < 0)
    return id;
  if (id != want)
    return -ESTALE;
  return sys_ret(syscall(SYS_umount2, path, flags));
}

#define FSCONFIG_SET_FLAG_ 0
#define FSCONFIG_SET_STRING_ 1
#define FSCONFIG_CMD_RECONFIGURE_ 7
#define FSPICK_CLOEXEC_ 0x1
#define FSPICK_EMPTY_PATH_ 0x8
#define AT_EMPTY_PATH_ 0x1000
#define MS_LAZYTIME_ (1 << 25)
#define MOUNT_DATA_MAX 4096 /* the kernel copies one page of mount data */

static int fsconfig_(int fc, unsigned cmd, const char *key, const char *val)
{
  return (int)syscall(NR_fsconfig, fc, cmd, key, val, 0);
}

/* What mount(MS_REMOUNT) without MS_BIND does, on the mount `fd` names
 * instead of on a path: the superblock gets the flags a legacy remount
 * always sets (ro/rw, sync/async, lazytime/nolazytime) and the options of
 * `data`, then the mount gets its flags (mount_setattr: set, clr).  Options
 * are split at commas, as the kernel splits legacy mount data. */
static int64_t remount_fd(int fd, unsigned long ms, const char *data, uint64_t set, uint64_t clr)
{
  char buf[MOUNT_DATA_MAX], *opt, *rest, *eq;
  struct icd_mount_attr attr = { set, clr, 0, 0 };
  int fc, err = 0;

  if (data && strlen(data) >= sizeof buf)
    return -EINVAL;
  fc = (int)syscall(NR_fspick, fd, "", FSPICK_EMPTY_PATH_ | FSPICK_CLOEXEC_);
  if (fc < 0)
    return -errno;
  if (fsconfig_(fc, FSCONFIG_SET_FLAG_, ms & MS_RDONLY ? "ro" : "rw", NULL) < 0
      || fsconfig_(fc, FSCONFIG_SET_FLAG_, ms & MS_SYNCHRONOUS ? "sync" : "async", NULL) < 0
      || fsconfig_(fc, FSCONFIG_SET_FLAG_, ms & MS_LAZYTIME_ ? "lazytime" : "nolazytime", NULL)
             < 0) {
    err = -errno;
    goto out;
  }
  snprintf(buf, sizeof buf, "%s", data ? data : "");
  for (rest = buf; (opt = strsep(&rest, ","));) {
    if (!*opt)
      continue;
    eq = strchr(opt, '=');
    if (eq)
      *eq++ = 0;
    if (fsconfig_(fc, eq ? FSCONFIG_SET_STRING_ : FSCONFIG_SET_FLAG_, opt, eq) < 0) {
      err = -errno;
      goto out;
    }
  }
  if (fsconfig_(fc, FSCONFIG_CMD_RECONFIGURE_, NULL, NULL) < 0) {
    err = -errno;
    goto out;
  }
  if (syscall(NR_mount_setattr, fd, "", AT_EMPTY_PATH_, &attr, sizeof attr) < 0)
    err = -errno;
out:
  close(fc);
  return err;
}

/* mount(2) of a FUSE filesystem whose /dev/fuse file is our `fd`: the
 * caller's "fd=N" named its own table, ours is what the kernel reads. */
static int64_t mount_fuse(const char *src, const char *target, const char *fstype,
                          unsigned long flags, const char *data, int fd)
{
  char buf[MOUNT_DATA_MAX];
  int n = snprintf(buf, sizeof buf, "fd=%d%s%s", fd, data && *data ? "," : "", data ? data : "");

  if (n < 0 || (size_t)n >= sizeof buf)
    return -EINVAL;
  return sys_ret(syscall(SYS_mount, src, target, fstype, flags, buf));
}

int64_t icd_nsop_do(int op, const char *const s[4], const int64_t a[6])
{
  struct icd_mount_attr attr;
  switch (op) {
  case ICD_OP_MOUNT:
    return sys_ret(syscall(SYS_mount, s[0], s[1], s[2], (unsigned long)a[0], s[3]));
  case ICD_OP_UMOUNT2:
    return sys_ret(syscall(SYS_umount2, s[0], (int)a[0]));
  case ICD_OP_OPEN_TREE:
    return sys_ret(syscall(NR_open_tree, (int)a[0], s[0], (unsigned)a[1]));
  case ICD_OP_MOVE_MOUNT:
    return sys_ret(syscall(NR_move_mount, (int)a[0], s[0], (int)a[1], s[1], (unsigned)a[2]));
  case ICD_OP_MOUNT_SETATTR:
    attr = (struct icd_mount_attr){ a[2], a[3], a[4], a[5] };
    return sys_ret(syscall(NR_mount_setattr, (int)a[0], s[0], (unsigned)a[1], &attr, sizeof attr));
  case ICD_OP_FSOPEN:
    return sys_ret(syscall(NR_fsopen, s[0], (unsigned)a[0]));
  case ICD_OP_FSCONFIG:
    return sys_ret(syscall(NR_fsconfig, (int)a[0], (unsigned)a[1], s[0], s[1], (int)a[2]));
  case ICD_OP_FSMOUNT:
    return sys_ret(syscall(NR_fsmount, (int)a[0], (unsigned)a[1], (unsigned)a[2]));
  case ICD_OP_FSPICK:
    return sys_ret(syscall(NR_fspick, (int)a[0], s[0], (unsigned)a[1]));
  case ICD_OP_UMOUNT_CHECKED:
    return umount_checked(s[0], (int)a[0], a[1]);
  case ICD_OP_REMOUNT_FD:
    return remount_fd((int)a[0], (unsigned long)a[1], s[0], (uint64_t)a[2], (uint64_t)a[3]);
  case ICD_OP_MOUNT_FUSE:
    return mount_fuse(s[0], s[1], s[2], (unsigned long)a[0], s[3], (int)a[1]);
  }
  return -EINVAL;
}

/* 0, or -errno when it fails before the operation. */
static int enter(int pidfd, int pid, int nsflags, int op, const int64_t a[6], int sock)
{
  char path[64];
  int keep[12], nkeep = 0, rootfd, cwdfd, i, r;
  unsigned mask = icd_nsop_fd_args(op);

  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
    return -errno;
  snprintf(path, sizeof path, "/proc/%d/root", pid);
  rootfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (rootfd < 0)
    return errno == ENOENT ? -ESRCH : -errno;
  snprintf(path, sizeof path, "/proc/%d/cwd", pid);
  cwdfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (cwdfd < 0)
    return errno == ENOENT ? -ESRCH : -errno;
  nsflags = icd_nsop_unshared(pid, nsflags);
  if (nsflags < 0)
    return nsflags == -ENOENT ? -ESRCH : nsflags;
  /* Everything above was opened by pid; it was our target only if the pidfd
   * still names a live process now (a reused pid would fail here). */
  if ((r = icd_nsop_check_pid(pidfd, pid)))
    return r;

  keep[nkeep++] = sock;
  keep[nkeep++] = rootfd;
  keep[nkeep++] = cwdfd;
  keep[nkeep++] = pidfd;
  for (i = 0; i < 6; i++)
    if ((mask & (1u << i)) && a[i] >= 0 && a[i] < (1 << 30))
      keep[nkeep++] = (int)a[i];
  if ((r = icd_nsop_close_others(keep, nkeep)))
    return r;

  if ((r = icd_nsop_enter(pidfd, nsflags)))
    return r;
  if (fchdir(rootfd) < 0 || chroot(".") < 0 || fchdir(cwdfd) < 0)
    return -errno;
  close(rootfd);
  close(cwdfd);
  return 0;
}

static void run(int sock, int op, const char *const s[4], const int64_t a[6])
{
  int64_t ret = icd_nsop_do(op, s, a);
  if (ret < 0)
    icd_nsop_send_result(sock, -1, (int)-ret, -1);
  else
    icd_nsop_send_result(sock, ret, 0, icd_nsop_makes_fd(op) ? (int)ret : -1);
}

static void child_main(int pidfd, int pid, int nsflags, int op, const char *const s[4],
                       const int64_t a[6], int sock)
{
  int err = enter(pidfd, pid, nsflags, op, a, sock), status;
  pid_t gc;

  if (err) {
    icd_nsop_send_result(sock, -1, -err, -1);
    return;
  }
  if (!(nsflags & CLONE_NEWPID)) {
    run(sock, op, s, a);
    return;
  }
  /* Entering a pid namespace only applies to children: fork once more so
   * that, e.g., a procfs mount shows the container's pids. */
  gc = fork();
  if (gc < 0) {
    icd_nsop_send_result(sock, -1, errno, -1);
    return;
  }
  if (gc == 0) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
      icd_nsop_send_result(sock, -1, errno, -1);
    else
      run(sock, op, s, a);
    _exit(0);
  }
  while (waitpid(gc, &status, 0) < 0 && errno == EINTR)
    ;
}

static int recv_result(int sock, struct icd_exec_result *out)
{
  struct icd_nsop_wire w;
  struct iovec iov = { .iov_base = &w, .iov_len = sizeof w };
  char cbuf[CMSG_SPACE(sizeof(int))];
  struct msghdr mh = {
    .msg_iov = &iov,
    .msg_iovlen = 1,
    .msg_control = cbuf,
    .msg_controllen = sizeof cbuf,
  };
  ssize_t n;

  do
    n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return -errno;
  out->fd = icd_nsop_take_fd(&mh);
  if (n != sizeof w) /* the child died before reporting */
    return -EIO;
  if (mh.msg_flags & MSG_CTRUNC)
    return -EIO;
  out->ret = w.ret;
  out->err = w.err;
  return 0;
}

int icd_ns_exec(int pidfd, int pid, int nsflags, int op, const char *const s[4], const int64_t a[6],
                int timeout_ms, struct icd_exec_result *out)
{
  int sock, status, ret;
  struct pollfd p;
  pid_t child;

  out->ret = -1;
  out->err = 0;
  out->fd = -1;
  if (op < ICD_OP_MOUNT || op > ICD_OP_LAST || pid <= 0 || pidfd < 0)
    return -EINVAL;
  child = icd_nsop_fork_joined(&sock);
  if (child < 0)
    return child;
  if (child == 0) {
    child_main(pidfd, pid, nsflags, op, s, a, sock);
    _exit(0);
  }
  p = (struct pollfd){ .fd = sock, .events = POLLIN };
  do
    ret = poll(&p, 1, timeout_ms);
  while (ret < 0 && errno == EINTR);
  if (ret < 0)
    ret = -errno;
  else if (ret == 0)
    ret = -ETIMEDOUT;
  else
    ret = recv_result(sock, out);
  if (ret < 0 && kill(child, SIGKILL) < 0 && errno != ESRCH)
    ret = -errno;
  close(sock);
  while (waitpid(child, &status, 0) < 0)
    if (errno != EINTR)
      break; /* ECHILD: SIGCHLD is ignored and the kernel reaped it */
  if (ret < 0 && out->fd >= 0) {
    close(out->fd);
    out->fd = -1;
  }
  return ret;
}
