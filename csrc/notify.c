/* Primitives on one seccomp notify fd. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "icd.h"
#include "seccomp_compat.h"

int icd_notify_set_sync(int fd)
{
  if (ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, 0) < 0)
    return -errno;
  return 0;
}

int icd_notify_send(int fd, uint64_t id, int64_t val, int32_t err, uint32_t flags)
{
  struct seccomp_notif_resp r = { .id = id, .val = val, .error = err, .flags = flags };
  /* EINTR: the fd's lock was contended and a signal came; nothing was sent
   * (an answer given up here would leave the caller blocked). */
  while (ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &r) < 0)
    if (errno != EINTR)
      return -errno;
  return 0;
}

int icd_notify_addfd(int fd, uint64_t id, int srcfd, int newfd, uint32_t newfd_flags,
                     uint32_t flags)
{
  struct seccomp_notif_addfd a = {
    .id = id,
    .flags = flags,
    .srcfd = srcfd,
    .newfd = newfd < 0 ? 0 : newfd,
    .newfd_flags = newfd_flags,
  };
  int ret;
  /* EINTR (as for SEND): nothing was added, or what was is withdrawn. */
  while ((ret = ioctl(fd, SECCOMP_IOCTL_NOTIF_ADDFD, &a)) < 0 && errno == EINTR)
    ;
  return ret < 0 ? -errno : ret;
}

int icd_notify_id_valid(int fd, uint64_t id)
{
  int ret;
  while ((ret = ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id)) < 0 && errno == EINTR)
    ;
  if (ret == 0)
    return 1;
  return errno == ENOENT ? 0 : -errno;
}

/* The probe needs a real listener; it is made in a throwaway child so the
 * filter never lands on the daemon.  The child reports through its exit code. */
#define PROBE_SYNC 1
#define PROBE_SEND 2
#define PROBE_NOTIF 4
#define PROBE_FAIL 64

static int probe_child(void)
{
  struct sock_filter insns[] = {
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = { .len = 1, .filter = insns };
  uint32_t act = SECCOMP_RET_USER_NOTIF;
  int fd, r = 0;

  if (syscall(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &act) == 0)
    r |= PROBE_NOTIF;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    return PROBE_FAIL;
  fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  if (fd < 0)
    return r;
  if (icd_notify_set_sync(fd) == 0)
    r |= PROBE_SYNC;
  /* An unknown flag is refused with EINVAL before the id is looked up (ENOENT). */
  if (icd_notify_addfd(fd, 0, fd, -1, 0, SECCOMP_ADDFD_FLAG_SEND) == -ENOENT)
    r |= PROBE_SEND;
  return r;
}

int icd_notify_probe(struct icd_probe *out)
{
  int status;
  pid_t pid;

  memset(out, 0, sizeof *out);
  pid = fork();
  if (pid < 0)
    return out->error = errno, -errno;
  if (pid == 0)
    _exit(probe_child());
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      return out->error = errno, -errno;
  if (!WIFEXITED(status) || (WEXITSTATUS(status) & PROBE_FAIL))
    return out->error = EPERM, -EPERM;
  out->user_notif = !!(WEXITSTATUS(status) & PROBE_NOTIF);
  out->sync_wakeup = !!(WEXITSTATUS(status) & PROBE_SYNC);
  out->addfd_send = !!(WEXITSTATUS(status) & PROBE_SEND);
  return 0;
}
