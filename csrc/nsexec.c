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


struct wire {
  int64_t ret;
  int32_t err;
  int32_t has_fd;
};

struct icd_mount_attr { /* struct mount_attr, MOUNT_ATTR_SIZE_VER0 */
  uint64_t attr_set, attr_clr, propagation, userns_fd;
};

static const struct {
  int flag;
  const char *name;
} ns_names[] = {
  { CLONE_NEWUSER, "user" }, { CLONE_NEWNS, "mnt" },   { CLONE_NEWPID, "pid" },
  { CLONE_NEWNET, "net" },   { CLONE_NEWIPC, "ipc" },  { CLONE_NEWUTS, "uts" },
  { CLONE_NEWCGROUP, "cgroup" },
};

/* Integer arguments that are fds the operation uses, per op (bit i = a[i]). */
unsigned icd_nsop_fd_args(int op)
{
  switch (op) {
  case ICD_OP_OPEN_TREE: case ICD_OP_FSPICK: case ICD_OP_FSMOUNT: return 1;
  case ICD_OP_MOVE_MOUNT: return 3;
  case ICD_OP_MOUNT_SETATTR: return 1 | 32;
  case ICD_OP_REMOUNT_FD: return 1;
  case ICD_OP_MOUNT_FUSE: return 2;
  case ICD_OP_FSCONFIG: return 1 | 4;
  default: return 0;
  }
}

int icd_nsop_makes_fd(int op)
{
  return op == ICD_OP_OPEN_TREE || op == ICD_OP_FSOPEN || op == ICD_OP_FSMOUNT
         || op == ICD_OP_FSPICK;
}

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
  return n;
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
  struct wire w = { .ret = ret, .err = err, .has_fd = fd >= 0 };
  (void)icd_nsop_send_fd(sock, &w, sizeof w, fd);
}

/* Mount ids are the VFS's: AT_STATX_DONT_SYNC keeps statx from asking the
 * filesystem for fresh attributes (a FUSE server of the container's could
 * leave that request unanswered and hold the executor). */
int icd_fd_mnt_id(int fd)
{
  struct statx stx;
  if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_MNT_ID, &stx) < 0)
    return -errno;
  if (!(stx.stx_mask & STATX_MNT_ID))
    return -EOPNOTSUPP;
  return (int)stx.stx_mnt_id;
}

/* statmount(2) (Linux 6.8; other namespaces by id since 6.11): one mount's
 * facts without generating a whole mountinfo. */
#define NR_statmount 457
#define STATX_MNT_ID_UNIQUE_ 0x4000U
#define STATMOUNT_SB_BASIC 0x1U
#define STATMOUNT_MNT_BASIC 0x2U
#define STATMOUNT_MNT_ROOT 0x8U
#define STATMOUNT_MNT_POINT 0x10U
#define STATMOUNT_FS_TYPE 0x20U
#define NS_GET_MNTNS_ID_ _IOR(0xb7, 0x5, uint64_t)

struct icd_mnt_id_req { /* MNT_ID_REQ_SIZE_VER1 */
  uint32_t size, spare;
  uint64_t mnt_id, param, mnt_ns_id;
};

struct icd_statmount { /* the fixed 512-byte head; strings follow in str[] */
  uint32_t size, mnt_opts;
  uint64_t mask;
  uint32_t sb_dev_major, sb_dev_minor;
  uint64_t sb_magic;
  uint32_t sb_flags, fs_type;
  uint64_t mnt_id, mnt_parent_id;
  uint32_t mnt_id_old, mnt_parent_id_old;
  uint64_t mnt_attr, mnt_propagation, mnt_peer_group, mnt_master, propagate_from;
  uint32_t mnt_root, mnt_point;
  uint64_t spare2[50];
  char str[];
};

int64_t icd_fd_mnt_uid(int fd)
{
  struct statx stx;
  if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_MNT_ID_UNIQUE_, &stx) < 0)
    return -errno;
  if (!(stx.stx_mask & STATX_MNT_ID_UNIQUE_))
    return -EOPNOTSUPP;
  return (int64_t)stx.stx_mnt_id;
}

int64_t icd_mntns_id(int nsfd)
{
  uint64_t id = 0;
  if (ioctl(nsfd, NS_GET_MNTNS_ID_, &id) < 0)
    return -errno;
  return (int64_t)id;
}

static int copy_str(char *dst, size_t cap, const struct icd_statmount *sm, size_t len,
                    uint32_t off)
{
  size_t n;
  if (off >= len)
    return -EIO;
  n = strnlen(sm->str + off, len - off);
  if (n == len - off || n >= cap)
    return -ENAMETOOLONG;
  memcpy(dst, sm->str + off, n + 1);
  return 0;
}

int icd_statmount(uint64_t uid, uint64_t ns_id, struct icd_mount_facts *out)
{
  static __thread union {
    struct icd_statmount sm;
    char b[sizeof(struct icd_statmount) + 3 * 4096 + 512];
  } buf;
  struct icd_mnt_id_req req = {
    .size = sizeof req, .mnt_id = uid, .mnt_ns_id = ns_id,
    .param = STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC | STATMOUNT_MNT_ROOT
             | STATMOUNT_MNT_POINT | STATMOUNT_FS_TYPE,
  };
  const uint64_t need = req.param;
  size_t len;
  int r;

  if (syscall(NR_statmount, &req, &buf, sizeof buf, 0) < 0)
    return -errno;
  if ((buf.sm.mask & need) != need || buf.sm.size < sizeof buf.sm || buf.sm.size > sizeof buf)
    return -EOPNOTSUPP;
  len = buf.sm.size - sizeof buf.sm;
  out->mnt_uid = buf.sm.mnt_id;
  out->parent_uid = buf.sm.mnt_parent_id;
  out->mnt_id = buf.sm.mnt_id_old;
  out->parent_id = buf.sm.mnt_parent_id_old;
  out->dev_major = buf.sm.sb_dev_major;
  out->dev_minor = buf.sm.sb_dev_minor;
  out->attr = buf.sm.mnt_attr;
  out->sb_flags = buf.sm.sb_flags;
  if ((r = copy_str(out->fstype, sizeof out->fstype, &buf.sm, len, buf.sm.fs_type))
      || (r = copy_str(out->root, sizeof out->root, &buf.sm, len, buf.sm.mnt_root))
      || (r = copy_str(out->point, sizeof out->point, &buf.sm, len, buf.sm.mnt_point)))
    return r;
  return 0;
}

int icd_fd_mount_facts(int fd, int pid, struct icd_mount_facts out[2])
{
  char path[64];
  int64_t uid, ns;
  int nsfd, r;

  snprintf(path, sizeof path, "/proc/%d/ns/mnt", pid);
  nsfd = open(path, O_RDONLY | O_CLOEXEC);
  if (nsfd < 0)
    return errno == ENOENT ? -ESRCH : -errno;
  ns = icd_mntns_id(nsfd);
  close(nsfd);
  if (ns < 0)
    return (int)ns;
  uid = icd_fd_mnt_uid(fd);
  if (uid < 0)
    return (int)uid;
  if ((r = icd_statmount((uint64_t)uid, (uint64_t)ns, &out[0])))
    return r;
  if (out[0].parent_uid == out[0].mnt_uid)
    return 1;
  r = icd_statmount(out[0].parent_uid, (uint64_t)ns, &out[1]);
  if (r == -ENOENT)
    return 1; /* the namespace's root: its parent is in no namespace */
  return r ? r : 2;
}

static int64_t umount_checked(const char *path, int flags, int64_t want)
{
  int fd, id;

  if (!path) {
    errno = EFAULT;
    return -1;
  }
  fd = open(path, O_PATH | O_CLOEXEC | ((flags & UMOUNT_NOFOLLOW) ? O_NOFOLLOW : 0));
  if (fd < 0)
    return -1;
  id = icd_fd_mnt_id(fd);
  close(fd); /* before the umount: our reference would keep the mount busy */
  if (id < 0) {
    errno = -id;
    return -1;
  }
  if (id != want) {
    errno = ESTALE;
    return -1;
  }
  return syscall(SYS_umount2, path, flags);
}

/* What the native umount needs of a mount (in this mount namespace): its old
 * id, its parent's unique id and whether it is a procfs/sysfs.  No paths are
 * asked for, so the kernel generates none. */
static int mount_kind(uint64_t uid, uint32_t *id, uint64_t *parent, int *pseudo)
{
  static union {
    struct icd_statmount sm;
    char b[sizeof(struct icd_statmount) + 256];
  } buf;
  struct icd_mnt_id_req req = {
    .size = sizeof req, .mnt_id = uid, .param = STATMOUNT_MNT_BASIC | STATMOUNT_FS_TYPE,
  };
  const char *t;

  if (syscall(NR_statmount, &req, &buf, sizeof buf, 0) < 0)
    return -errno;
  if ((buf.sm.mask & req.param) != req.param || buf.sm.size < sizeof buf.sm
      || buf.sm.size > sizeof buf || buf.sm.fs_type >= buf.sm.size - sizeof buf.sm)
    return -EOPNOTSUPP;
  t = buf.sm.str + buf.sm.fs_type;
  if (!memchr(t, 0, buf.sm.size - sizeof buf.sm - buf.sm.fs_type))
    return -EOPNOTSUPP;
  *id = buf.sm.mnt_id_old;
  *parent = buf.sm.mnt_parent_id;
  *pseudo = !strcmp(t, "proc") || !strcmp(t, "sysfs");
  return 0;
}

/* "/" of this process, opened once (helpers never change their root). */
static int root_fd(void)
{
  static int fd = -1;
  if (fd < 0)
    fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  return fd;
}

/* The umount the native path may do: the mount `path` names (as this process
 * sees it) is no procfs/sysfs and does not sit on one.  Those are the /proc
 * and /sys trees with their masks, read-only paths and emulated files, which
 * the Python policy decides on; every other mount is the container's to
 * unmount (mounts.decide_umount allows exactly these).  Unresolvable paths,
 * a symlink as the last component, "." and ".." go to Python too.
 *
 * Race-free against path games: the check and the umount both look the last
 * component up from the same held parent directory, never through the path
 * again, and never follow a symlink there; a mount point can be neither
 * renamed nor removed.  What is on top of it is checked once more (unique
 * mount id) right before the umount.  Leaves the cwd at "/"; only for
 * processes that do not change their root (the helpers). */
int64_t icd_nsop_umount_vetted(const char *path, int flags)
{
  char dir[4096];
  const char *last;
  struct statx stx;
  uint64_t parent, pparent, uid;
  uint32_t id, pid_;
  size_t len;
  int64_t r;
  int dfd = -1, pseudo, ppseudo = 0, err;

  if (!path) {
    errno = EFAULT;
    return -1;
  }
  len = strlen(path);
  while (len > 1 && path[len - 1] == '/')
    len--;
  if (len >= sizeof dir || path[0] != '/' || len == 1)
    goto python;
  memcpy(dir, path, len);
  dir[len] = 0;
  last = strrchr(dir, '/') + 1;
  if (!strcmp(last, ".") || !strcmp(last, ".."))
    goto python;
  if (last == dir + 1) {
    dfd = dup(root_fd());
  } else {
    dir[last - dir - 1] = 0;
    dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  }
  if (dfd < 0)
    goto python;
  if (statx(dfd, last, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC,
            STATX_TYPE | STATX_MNT_ID_UNIQUE_, &stx) < 0
      || !(stx.stx_mask & STATX_MNT_ID_UNIQUE_) || S_ISLNK(stx.stx_mode))
    goto python;
  uid = stx.stx_mnt_id;
  if (mount_kind(uid, &id, &parent, &pseudo) || pseudo)
    goto python;
  if (parent != uid) {
    r = mount_kind(parent, &pid_, &pparent, &ppseudo);
    if (r && r != -ENOENT) /* ENOENT: the namespace's root, no parent here */
      goto python;
    if (ppseudo)
      goto python;
  }
  if (fchdir(dfd) < 0)
    goto python;
  /* Still the mount we checked on top (a concurrent Python-path call could
   * have changed the stack meanwhile)?  Else EBUSY, as the Python path says. */
  if (statx(AT_FDCWD, last, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_MNT_ID_UNIQUE_,
            &stx) < 0
      || stx.stx_mnt_id != uid) {
    err = EBUSY;
    r = -1;
  } else {
    r = syscall(SYS_umount2, last, flags | UMOUNT_NOFOLLOW);
    err = r < 0 ? errno : 0;
  }
  close(dfd);
  /* Back to "/": a cwd there would keep that mount busy. */
  if (fchdir(root_fd()) < 0 && !err)
    err = errno;
  errno = err;
  return r < 0 || err ? -1 : 0;
python:
  if (dfd >= 0)
    close(dfd);
  errno = ICD_EPOLICY;
  return -1;
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
static int64_t remount_fd(int fd, unsigned long ms, const char *data, uint64_t set,
                          uint64_t clr)
{
  char buf[MOUNT_DATA_MAX], *opt, *rest, *eq;
  struct icd_mount_attr attr = { set, clr, 0, 0 };
  int fc, err = 0;

  if (data && strlen(data) >= sizeof buf) {
    errno = EINVAL;
    return -1;
  }
  fc = (int)syscall(NR_fspick, fd, "", FSPICK_EMPTY_PATH_ | FSPICK_CLOEXEC_);
  if (fc < 0)
    return -1;
  if (fsconfig_(fc, FSCONFIG_SET_FLAG_, ms & MS_RDONLY ? "ro" : "rw", NULL) < 0
      || fsconfig_(fc, FSCONFIG_SET_FLAG_, ms & MS_SYNCHRONOUS ? "sync" : "async", NULL) < 0
      || fsconfig_(fc, FSCONFIG_SET_FLAG_, ms & MS_LAZYTIME_ ? "lazytime" : "nolazytime",
                   NULL) < 0) {
    err = errno;
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
      err = errno;
      goto out;
    }
  }
  if (fsconfig_(fc, FSCONFIG_CMD_RECONFIGURE_, NULL, NULL) < 0) {
    err = errno;
    goto out;
  }
  if (syscall(NR_mount_setattr, fd, "", AT_EMPTY_PATH_, &attr, sizeof attr) < 0)
    err = errno;
out:
  close(fc);
  errno = err;
  return err ? -1 : 0;
}

/* mount(2) of a FUSE filesystem whose /dev/fuse file is our `fd`: the
 * caller's "fd=N" named its own table, ours is what the kernel reads. */
static int64_t mount_fuse(const char *src, const char *target, const char *fstype,
                          unsigned long flags, const char *data, int fd)
{
  char buf[MOUNT_DATA_MAX];
  int n = snprintf(buf, sizeof buf, "fd=%d%s%s", fd, data && *data ? "," : "",
                   data ? data : "");

  if (n < 0 || (size_t)n >= sizeof buf) {
    errno = EINVAL;
    return -1;
  }
  return syscall(SYS_mount, src, target, fstype, flags, buf);
}

int64_t icd_nsop_do(int op, const char *const s[4], const int64_t a[6])
{
  struct icd_mount_attr attr;
  switch (op) {
  case ICD_OP_MOUNT:
    return syscall(SYS_mount, s[0], s[1], s[2], (unsigned long)a[0], s[3]);
  case ICD_OP_UMOUNT2:
    return syscall(SYS_umount2, s[0], (int)a[0]);
  case ICD_OP_OPEN_TREE:
    return syscall(NR_open_tree, (int)a[0], s[0], (unsigned)a[1]);
  case ICD_OP_MOVE_MOUNT:
    return syscall(NR_move_mount, (int)a[0], s[0], (int)a[1], s[1], (unsigned)a[2]);
  case ICD_OP_MOUNT_SETATTR:
    attr = (struct icd_mount_attr){ a[2], a[3], a[4], a[5] };
    return syscall(NR_mount_setattr, (int)a[0], s[0], (unsigned)a[1], &attr, sizeof attr);
  case ICD_OP_FSOPEN:
    return syscall(NR_fsopen, s[0], (unsigned)a[0]);
  case ICD_OP_FSCONFIG:
    return syscall(NR_fsconfig, (int)a[0], (unsigned)a[1], s[0], s[1], (int)a[2]);
  case ICD_OP_FSMOUNT:
    return syscall(NR_fsmount, (int)a[0], (unsigned)a[1], (unsigned)a[2]);
  case ICD_OP_FSPICK:
    return syscall(NR_fspick, (int)a[0], s[0], (unsigned)a[1]);
  case ICD_OP_UMOUNT_CHECKED:
    return umount_checked(s[0], (int)a[0], a[1]);
  case ICD_OP_REMOUNT_FD:
    return remount_fd((int)a[0], (unsigned long)a[1], s[0], (uint64_t)a[2], (uint64_t)a[3]);
  case ICD_OP_MOUNT_FUSE:
    return mount_fuse(s[0], s[1], s[2], (unsigned long)a[0], s[3], (int)a[1]);
  }
  errno = EINVAL;
  return -1;
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

/* The pid a pidfd names (-1 once it exited), from its fdinfo. */
/* PIDFD_GET_INFO (Linux 6.13) on a pidfs file: the pid without opening and
 * parsing fdinfo.  0 = unknown here (older kernel, not a pidfs file). */
#define PID_FS_MAGIC_ 0x50494446
#define PIDFD_INFO_PID_ 1ULL
struct icd_pidfd_info { /* PIDFD_INFO_SIZE_VER0 */
  uint64_t mask, cgroupid;
  uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  int32_t exit_code;
};
#define PIDFD_GET_INFO_ _IOWR(0xFF, 11, struct icd_pidfd_info)

static int pidfd_info_pid(int pidfd)
{
  struct icd_pidfd_info info;
  struct statfs sfs;

  /* Only on a pidfs file: the ioctl number means nothing elsewhere. */
  if (fstatfs(pidfd, &sfs) < 0 || sfs.f_type != PID_FS_MAGIC_)
    return 0;
  memset(&info, 0, sizeof info);
  info.mask = PIDFD_INFO_PID_;
  if (ioctl(pidfd, PIDFD_GET_INFO_, &info) < 0)
    return errno == ESRCH ? -1 : 0; /* ESRCH: exited (and reaped) */
  if (!(info.mask & PIDFD_INFO_PID_) || !info.pid)
    return 0;
  return (int)info.pid;
}

int icd_nsop_pidfd_pid(int pidfd)
{
  char path[64], buf[512], *p;
  ssize_t n;
  int fd;

  if ((n = pidfd_info_pid(pidfd)) != 0)
    return (int)n;
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
  return p ? atoi(p + 6) : -EBADF; /* -EBADF: not a pidfd */
}

int icd_nsop_check_pid(int pidfd, int pid)
{
  int r = icd_nsop_pidfd_pid(pidfd);
  if (r < 0 && r != -1)
    return -r;
  if (r != pid)
    return ESRCH;
  if (syscall(NR_pidfd_send_signal, pidfd, 0, NULL, 0) < 0)
    return errno;
  return 0;
}

int icd_nsop_enter(int pidfd, int nsflags)
{
  if (nsflags && setns(pidfd, nsflags) < 0)
    return errno;
  if (nsflags & CLONE_NEWUSER) {
    /* Act as the container's root where it is mapped; stay unmapped otherwise. */
    if (setresgid(0, 0, 0) < 0 && errno != EINVAL)
      return errno;
    if (setresuid(0, 0, 0) < 0 && errno != EINVAL)
      return errno;
  }
  return 0;
}

int icd_nsop_become_helper(pid_t parent, int pidfd, int pid, int nsflags, int sock,
                           int *procfd)
{
  int keep[3], r;

  if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
    return errno;
  if (getppid() != parent) /* the daemon thread is gone already */
    return ESRCH;
  /* Non-dumpable, with the host's mm->user_ns: the container's root cannot
   * ptrace it or read its memory or fds. */
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
    return errno;
  /* The host's procfs, opened before the mount namespace changes. */
  *procfd = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (*procfd < 0)
    return errno;
  nsflags = icd_nsop_unshared(pid, nsflags);
  if (nsflags < 0)
    return nsflags == -ENOENT ? ESRCH : -nsflags;
  if ((r = icd_nsop_check_pid(pidfd, pid)))
    return r;
  keep[0] = sock;
  keep[1] = pidfd;
  keep[2] = *procfd;
  if ((r = icd_nsop_close_others(keep, 3)))
    return -r;
  if ((r = icd_nsop_enter(pidfd, nsflags)))
    return r;
  if (close(pidfd) < 0)
    return errno;
  return 0;
}

void icd_nsop_reap(pid_t child)
{
  int status;
  while (waitpid(child, &status, 0) < 0)
    if (errno != EINTR)
      break; /* ECHILD: SIGCHLD is ignored and the kernel reaped it */
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

/* Returns the errno to report when it fails before the operation. */
static int enter(int pidfd, int pid, int nsflags, int op, const int64_t a[6], int sock)
{
  char path[64];
  int keep[12], nkeep = 0, rootfd, cwdfd, i, r;
  unsigned mask = icd_nsop_fd_args(op);

  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
    return errno;
  snprintf(path, sizeof path, "/proc/%d/root", pid);
  rootfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (rootfd < 0)
    return errno == ENOENT ? ESRCH : errno;
  snprintf(path, sizeof path, "/proc/%d/cwd", pid);
  cwdfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (cwdfd < 0)
    return errno == ENOENT ? ESRCH : errno;
  nsflags = icd_nsop_unshared(pid, nsflags);
  if (nsflags < 0)
    return nsflags == -ENOENT ? ESRCH : -nsflags;
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
    return -r;

  if ((r = icd_nsop_enter(pidfd, nsflags)))
    return r;
  if (fchdir(rootfd) < 0 || chroot(".") < 0 || fchdir(cwdfd) < 0)
    return errno;
  close(rootfd);
  close(cwdfd);
  return 0;
}

static void run(int sock, int op, const char *const s[4], const int64_t a[6])
{
  int64_t ret = icd_nsop_do(op, s, a);
  int err = ret < 0 ? errno : 0;
  icd_nsop_send_result(sock, ret, err, ret >= 0 && icd_nsop_makes_fd(op) ? (int)ret : -1);
}

static void child_main(int pidfd, int pid, int nsflags, int op, const char *const s[4],
                       const int64_t a[6], int sock)
{
  int err = enter(pidfd, pid, nsflags, op, a, sock), status;
  pid_t gc;

  if (err) {
    icd_nsop_send_result(sock, -1, err, -1);
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
  struct wire w;
  struct iovec iov = { .iov_base = &w, .iov_len = sizeof w };
  char cbuf[CMSG_SPACE(sizeof(int))];
  struct msghdr mh = {
    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf,
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

int icd_ns_exec(int pidfd, int pid, int nsflags, int op, const char *const s[4],
                const int64_t a[6], int timeout_ms, struct icd_exec_result *out)
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
