/* Facts about mounts without generating a mountinfo (statx, statmount),
 * and the umount the native helper performs after vetting the mount. */
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
#include "native.h"
#include "nsops.h"

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

static int copy_str(char *dst, size_t cap, const struct icd_statmount *sm, size_t len, uint32_t off)
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
    .size = sizeof req,
    .mnt_id = uid,
    .mnt_ns_id = ns_id,
    .param = STATMOUNT_SB_BASIC | STATMOUNT_MNT_BASIC | STATMOUNT_MNT_ROOT | STATMOUNT_MNT_POINT
             | STATMOUNT_FS_TYPE,
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

/* What the native umount needs of a mount (in this mount namespace): its old
 * id, its parent's unique id and its filesystem type.  No paths are asked
 * for, so the kernel generates none.  0 or -errno. */
static int mount_kind(uint64_t uid, uint32_t *id, uint64_t *parent, char fstype[64])
{
  static union {
    struct icd_statmount sm;
    char b[sizeof(struct icd_statmount) + 256];
  } buf;
  struct icd_mnt_id_req req = {
    .size = sizeof req,
    .mnt_id = uid,
    .param = STATMOUNT_MNT_BASIC | STATMOUNT_FS_TYPE,
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
  if (strlen(t) >= 64)
    return -ENAMETOOLONG;
  *id = buf.sm.mnt_id_old;
  *parent = buf.sm.mnt_parent_id;
  strcpy(fstype, t);
  return 0;
}

/* Filesystem types of parent mounts, by unique mount id: such an id is never
 * reused while the system runs (a 64-bit counter) and a mount's superblock
 * never changes, so an entry can never go stale (which mount is whose parent
 * can: that is read anew each time).  A container unmounting what it mounted
 * meets the same few parents over and over: one statmount per umount instead
 * of two.  Helpers are single-threaded. */
#define PARENTS 32
static struct {
  uint64_t uid;
  char fstype[64];
} parents[PARENTS];

static int parent_kind(uint64_t uid, char fstype[64])
{
  unsigned slot = (unsigned)(uid % PARENTS);
  uint64_t pparent;
  uint32_t id;
  int r;

  if (uid && parents[slot].uid == uid) {
    strcpy(fstype, parents[slot].fstype);
    return 0;
  }
  if ((r = mount_kind(uid, &id, &pparent, fstype)))
    return r;
  parents[slot].uid = uid;
  strcpy(parents[slot].fstype, fstype);
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
 * sees it) is one icd_vet_umount_mount lets the helper unmount.  Unresolvable
 * paths, a symlink as the last component, "." and ".." go to Python too.
 *
 * Race-free against path games: the check and the umount both look the last
 * component up from the same held parent directory, never through the path
 * again, and never follow a symlink there; a mount point can be neither
 * renamed nor removed.  What is on top of it is checked once more (unique
 * mount id) right before the umount.  Leaves the cwd at "/"; only for
 * processes that do not change their root (the helpers). */
int icd_umount_vetted(const char *path, int flags, int *res)
{
  char dir[4096], type[64], ptype[64];
  const char *last;
  struct statx stx;
  uint64_t parent, uid;
  uint32_t id;
  size_t len;
  int dfd = -1, r, err, has_parent = 0;

  if (!path)
    return ICD_VET_FORWARD;
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
  if (statx(dfd, last, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_MNT_ID_UNIQUE_,
            &stx)
          < 0
      || !(stx.stx_mask & STATX_MNT_ID_UNIQUE_) || S_ISLNK(stx.stx_mode))
    goto python;
  uid = stx.stx_mnt_id;
  if (mount_kind(uid, &id, &parent, type))
    goto python;
  if (parent != uid) {
    r = parent_kind(parent, ptype);
    if (r && r != -ENOENT) /* ENOENT: the namespace's root, no parent here */
      goto python;
    has_parent = !r;
  }
  if (icd_vet_umount_mount(type, has_parent ? ptype : NULL) != ICD_VET_NATIVE)
    goto python;
  if (fchdir(dfd) < 0)
    goto python;
  /* Still the mount we checked on top (a concurrent Python-path call could
   * have changed the stack meanwhile)?  Else EBUSY, as the Python path says. */
  if (statx(AT_FDCWD, last, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_MNT_ID_UNIQUE_, &stx)
          < 0
      || stx.stx_mnt_id != uid)
    err = -EBUSY;
  else
    err = syscall(SYS_umount2, last, flags | UMOUNT_NOFOLLOW) < 0 ? -errno : 0;
  close(dfd);
  /* Back to "/": a cwd there would keep that mount busy. */
  if (fchdir(root_fd()) < 0 && !err)
    err = -errno;
  *res = err;
  return ICD_VET_PERFORMED;
python:
  if (dfd >= 0)
    close(dfd);
  return ICD_VET_FORWARD;
}
