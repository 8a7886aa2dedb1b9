/* The native helper's vetting, its pure part: which mount(2) and umount2(2)
 * calls the helper (native.c) may perform itself, ICD_VET_NATIVE, and which
 * it forwards to the Python policy, ICD_VET_FORWARD.  No I/O: the helper
 * calls these on its copies of the arguments, the vetted umount (mounts.c)
 * on the mount it found, and tests/unit/test_native_parity.py checks them
 * against the Python deciders (policy/mounts.py), the one place refusals are
 * decided: native means "the policy would perform it the same way". */
#define _GNU_SOURCE
#include <string.h>
#include <sys/mount.h>

#include "icd.h"

#define MS_MGC_MSK_ 0xffff0000u
#define MS_MGC_VAL_ 0xc0ed0000u
#define MS_PROPAGATION_ (MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE)
#define UMOUNT_FLAGS_ (MNT_DETACH | MNT_EXPIRE | UMOUNT_NOFOLLOW)

static int listed(const char *list, const char *name)
{
  const char *p = list;
  while (*p) {
    if (!strcmp(p, name))
      return 1;
    p += strlen(p) + 1;
  }
  return 0;
}

/* A path that may go through /proc: the helper's /proc entry is not the
 * caller's (/proc/self/fd/N would name the helper's own fd, or nothing), so
 * such paths are the Python policy's, which takes the caller's object.  A
 * relative path too: the helper's cwd is not the caller's. */
static int path_ours(const char *path)
{
  return path && path[0] == '/' && !strstr(path, "proc");
}

uint32_t icd_vet_mount_flags(uint64_t flags)
{
  uint32_t f = (uint32_t)flags;
  if ((f & MS_MGC_MSK_) == MS_MGC_VAL_)
    f &= ~MS_MGC_MSK_;
  return f;
}

int icd_vet_mount(uint64_t flags, const char *fstype, const char *target, const char *fstypes)
{
  uint32_t f = icd_vet_mount_flags(flags);
  /* Remounts, binds, moves and propagation changes act on existing mounts:
   * the Python policy's. */
  if (f & (MS_REMOUNT | MS_BIND | MS_MOVE | MS_PROPAGATION_))
    return ICD_VET_FORWARD;
  if (!fstype || !listed(fstypes, fstype) || !path_ours(target))
    return ICD_VET_FORWARD;
  return ICD_VET_NATIVE;
}

int icd_vet_umount(uint64_t flags, const char *target)
{
  /* Unknown flags and MNT_FORCE: the Python policy's. */
  if ((uint32_t)flags & ~UMOUNT_FLAGS_)
    return ICD_VET_FORWARD;
  return path_ours(target) ? ICD_VET_NATIVE : ICD_VET_FORWARD;
}

/* The /proc and /sys trees with their masks, read-only paths and emulated
 * files are the Python policy's; every other mount is the container's to
 * unmount (mounts.decide_umount allows exactly these). */
static int pseudo(const char *fstype)
{
  return !strcmp(fstype, "proc") || !strcmp(fstype, "sysfs");
}

int icd_vet_umount_mount(const char *fstype, const char *parent_fstype)
{
  if (!fstype || pseudo(fstype) || (parent_fstype && pseudo(parent_fstype)))
    return ICD_VET_FORWARD;
  return ICD_VET_NATIVE;
}
