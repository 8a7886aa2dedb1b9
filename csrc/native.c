/* The native mount path: mount(2) of a memory-backed filesystem and umount2(2)
 * of the container's own mounts, vetted and performed without Python and
 * without a hop between daemon threads.
 *
 * A helper process, forked by the daemon and standing in the container's user
 * and mount namespaces as its root, receives on the container's notify fd in
 * place of the daemon's receiver thread.  With sync wake-up the target and the
 * helper then hand the CPU to each other directly, as with a minimal agent,
 * and the helper performs the call where it stands.  It only ever allows, and
 * only what the Python policy (mounts.decide_mount, decide_umount) would allow,
 * performed the same way: on its own copies of the strings, never with
 * CONTINUE.  Calls the channel's verdict table answers ([[rules]]) it answers
 * by that same table.  Anything else - other syscalls, flags or filesystem types, a
 * relative path, a caller in other namespaces, with another root or without
 * CAP_SYS_ADMIN, a procfs/sysfs in sight, an unreadable argument - is
 * forwarded untouched to the daemon's receiver, which handles it as if it had
 * received it: the Python policy stays the one place refusals are decided.
 *
 * The helper is out of the container's reach: not in its pid namespace (no
 * signal or ptrace can name it), not dumpable, its mm owned by the host's user
 * namespace.  Its decisions reach the daemon through a shared ring; the
 * notification it is working on is published too, so that if it dies the
 * daemon fails that one call instead of leaving its caller blocked. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "icd.h"
#include "internal.h"
#include "journal.h"
#include "native.h"
#include "native_int.h"
#include "nsops.h"
#include "rules.h"
#include "seccomp_compat.h"

#define PIDDIRS 64   /* /proc/<pid> fds kept by the helper, direct-mapped */
#define HOLD_MS 1000 /* longest wait for an ICD_ACT_HOLD rule to be decided */
#define PATH_MAX_ 4096
#define FSTYPE_MAX 256
#define DATA_MAX 4096
#define NR_mount_ 165
#define NR_umount2_ 166

/* ---- the helper -------------------------------------------------------- */

struct helper {
  int sock, fd, procfd;
  int jfd; /* the daemon's number of fd: the journal's key */
  uint64_t cookie, user_ino, root_dev, root_ino, root_mnt;
  const char *fstypes;
  struct shared *sh;
  struct icd_rules *rt;
  struct {
    int pid, fd;
  } piddir[PIDDIRS];
  int32_t seen[256];        /* pids whose comm went with a record lately */
  int64_t recv_ns, sent_ns; /* the call in hand: received, answered (CLOCK_MONOTONIC) */
};

ssize_t icd_native_send_msg(int sock, const struct msg *m, int fd)
{
  return icd_nsop_send_fd(sock, m, sizeof *m, fd);
}

ssize_t icd_native_recv_msg(int sock, struct msg *m, int *fd)
{
  union {
    char b[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } cbuf;
  struct iovec iov = { .iov_base = m, .iov_len = sizeof *m };
  struct msghdr mh = {
    .msg_iov = &iov,
    .msg_iovlen = 1,
    .msg_control = cbuf.b,
    .msg_controllen = sizeof cbuf.b,
  };
  ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  int got;

  if (fd)
    *fd = -1;
  if (n < 0)
    return -errno;
  got = icd_nsop_take_fd(&mh);
  if (fd)
    *fd = got;
  else if (got >= 0)
    close(got);
  if (n > 0 && (n != sizeof *m || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))))
    return -EPROTO;
  return n;
}

/* A namespace's inode number from its /proc link's text.  readlink: a statx
 * through the link would give the inode directly but costs 3x as much (~2 us
 * against ~0.7 here: nsfs makes a dentry for each such lookup). */
static int ns_ino(int dirfd, const char *name, uint64_t *ino)
{
  char buf[64], *lb;
  ssize_t n = readlinkat(dirfd, name, buf, sizeof buf - 1);
  if (n < 0)
    return -errno;
  buf[n] = 0;
  lb = strchr(buf, '[');
  if (!lb)
    return -EIO;
  *ino = strtoull(lb + 1, NULL, 10);
  return 0;
}

static int root_of(int dirfd, const char *name, uint64_t *dev, uint64_t *ino, uint64_t *mnt)
{
  struct statx stx;
  /* DONT_SYNC: a root on the container's FUSE mount must not make the helper
   * wait for its server; device, inode and mount id are the VFS's anyway. */
  if (statx(dirfd, name, (name[0] ? 0 : AT_EMPTY_PATH) | AT_STATX_DONT_SYNC,
            STATX_INO | STATX_MNT_ID, &stx)
      < 0)
    return -errno;
  *dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
  *ino = stx.stx_ino;
  *mnt = stx.stx_mnt_id;
  return 0;
}

/* Whether the caller stands where the helper does: the same user namespace
 * (a caller in a nested one lacks our capabilities over the mount namespace)
 * and the same root (the helper resolves paths from its own).  The root's
 * mount id also places the caller in our mount namespace: a mount belongs to
 * one namespace, and a root in ours from elsewhere needs a deliberate
 * chroot through an fd of ours by a process of our user namespace with
 * CAP_SYS_ADMIN (checked next), which could setns into ours anyway.
 *
 * Both are read again on every call, through the kept /proc/<pid> fd: no
 * call that changes them reaches the helper (setns, unshare, chroot and
 * pivot_root are not notified), and the root can even change without a call
 * of the caller's own (a CLONE_FS sibling's chroot, another process's
 * pivot_root).  A result cached per pid would be judged on stale identity.
 * What is kept is the fd: bound to the kernel's struct pid, once its process
 * has exited every lookup under it fails, even if the pid number is reused,
 * so a new process never answers for the old one.  A readlink and a statx,
 * ~0.6-0.7 us each on this VM. */
static int caller_matches(struct helper *h, int pid)
{
  uint64_t user, dev, ino, mid;
  int slot = pid % PIDDIRS, d = h->piddir[slot].fd, fresh = 0;
  char name[16];

  for (;;) {
    if (d < 0 || h->piddir[slot].pid != pid) {
      if (d >= 0)
        close(d);
      snprintf(name, sizeof name, "%d", pid);
      d = openat(h->procfd, name, O_PATH | O_DIRECTORY | O_CLOEXEC);
      h->piddir[slot].fd = d;
      h->piddir[slot].pid = pid;
      if (d < 0)
        return 0;
      fresh = 1;
    }
    if (!ns_ino(d, "ns/user", &user) && !root_of(d, "root", &dev, &ino, &mid))
      break;
    close(d);
    h->piddir[slot].fd = d = -1;
    if (fresh)
      return 0; /* gone (or not ours to look at) */
    /* That fd was a former process of this pid: once more with a fresh one. */
  }
  return user == h->user_ino && dev == h->root_dev && ino == h->root_ino && mid == h->root_mnt;
}

int icd_has_cap(int pid, int cap)
{
  struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = pid };
  struct __user_cap_data_struct data[2];

  if (cap < 0 || cap > 63)
    return -EINVAL;
  if (syscall(SYS_capget, &hdr, data) < 0)
    return -errno;
  return !!(data[cap / 32].effective & (1u << (cap % 32)));
}

/* Reads the string arguments idx[0..n) into bufs (a NULL pointer stays NULL):
 * one process_vm_readv for all, each up to the next 256-byte boundary (within
 * the page a valid string starts on), then whatever did not end there.
 * 0, or -errno (ENAMETOOLONG past max) with the call to be forwarded. */
static int arg_strings(const struct seccomp_notif *nt, const int *idx, int n, char **bufs,
                       const int *max, const char **out)
{
  struct iovec local[4], remote[4];
  size_t first[4];
  ssize_t got;
  int i, m = 0;

  for (i = 0; i < n; i++) {
    uint64_t addr = nt->data.args[idx[i]];
    /* Short first: copying whole pages would cost more than a second read of
     * the rare long string. */
    size_t chunk = 256 - (addr & 255);
    out[i] = NULL;
    first[i] = 0;
    if (!addr)
      continue;
    if (chunk > (size_t)max[i])
      chunk = max[i];
    local[m] = (struct iovec){ bufs[i], chunk };
    remote[m] = (struct iovec){ (void *)(uintptr_t)addr, chunk };
    first[i] = chunk;
    m++;
  }
  got = m ? process_vm_readv(nt->pid, local, m, remote, m, 0) : 0;
  for (i = 0; i < n; i++) {
    uint64_t addr = nt->data.args[idx[i]];
    size_t have = first[i];
    if (!addr)
      continue;
    int r = 0;
    if (got < (ssize_t)have) /* that read stopped short: this one alone */
      r = icd_target_string(nt->pid, addr, bufs[i], max[i], 0);
    else if (!memchr(bufs[i], 0, have))
      r = have >= (size_t)max[i]
              ? -ENAMETOOLONG
              : icd_target_string(nt->pid, addr + have, bufs[i] + have, max[i] - (int)have, 0);
    if (r < 0)
      return r;
    got -= got >= (ssize_t)have ? (ssize_t)have : (got > 0 ? got : 0);
    out[i] = bufs[i];
  }
  return 0;
}

/* The checks every native call makes once its strings are copied: the
 * caller's identity and capability, then ID_VALID, so that everything read
 * was the caller's.  1: go on; 0: forward. */
static int caller_ok(struct helper *h, const struct seccomp_notif *n)
{
  if (!caller_matches(h, n->pid))
    return 0;
  /* Without CAP_SYS_ADMIN in its user namespace the kernel would refuse it;
   * so does the policy (the helper has it). */
  if (icd_has_cap(n->pid, CAP_SYS_ADMIN) != 1)
    return 0;
  return icd_notify_id_valid(h->fd, n->id) == 1;
}

/* The copies of the call being performed, kept for its reason, which is
 * recorded after the answer (the helper is single-threaded). */
static struct {
  char fstype[FSTYPE_MAX], target[PATH_MAX_], source[PATH_MAX_], data[DATA_MAX];
  const char *s[4]; /* source, target, fstype, data as the call had them (NULL kept) */
  uint32_t flags;
} k;

/* The vetting table's entries: each reads the call's strings once, asks the
 * pure vetting (vet.c) about its copies, checks the caller, and performs the
 * call: ICD_VET_PERFORMED with *res 0 or -errno, or ICD_VET_FORWARD with
 * nothing done.  The record carries what its reason quotes (pack_reason). */
static int vet_mount(struct helper *h, const struct seccomp_notif *n, int *res)
{
  static const int idx[4] = { 2, 1, 0, 4 };
  static const int max[4] = { FSTYPE_MAX, PATH_MAX_, PATH_MAX_, DATA_MAX };
  char *bufs[4] = { k.fstype, k.target, k.source, k.data };
  const char *got[4];

  if (arg_strings(n, idx, 4, bufs, max, got)
      || icd_vet_mount(n->data.args[3], got[0], got[1], h->fstypes) != ICD_VET_NATIVE)
    return ICD_VET_FORWARD;
  if (!caller_ok(h, n))
    return ICD_VET_FORWARD;
  k.s[0] = got[2];
  k.s[1] = got[1];
  k.s[2] = got[0];
  k.s[3] = got[3];
  k.flags = icd_vet_mount_flags(n->data.args[3]);
  *res = syscall(SYS_mount, k.s[0], k.target, k.fstype, (unsigned long)k.flags, k.s[3]) < 0 ? -errno
                                                                                            : 0;
  return ICD_VET_PERFORMED;
}

static int vet_umount(struct helper *h, const struct seccomp_notif *n, int *res)
{
  static const int idx[1] = { 0 }, max[1] = { PATH_MAX_ };
  char *bufs[1] = { k.target };
  const char *got[1];

  if (arg_strings(n, idx, 1, bufs, max, got)
      || icd_vet_umount(n->data.args[1], got[0]) != ICD_VET_NATIVE)
    return ICD_VET_FORWARD;
  if (!caller_ok(h, n))
    return ICD_VET_FORWARD;
  k.flags = (uint32_t)n->data.args[1];
  /* Forwarded with nothing done: a procfs/sysfs in sight, or unresolvable. */
  return icd_umount_vetted(k.target, (int)k.flags, res);
}

/* The calls the helper may perform, for ICD_ACT_NATIVE rules; any other
 * syscall with that rule is forwarded. */
static const struct {
  int nr;
  int (*vet)(struct helper *h, const struct seccomp_notif *n, int *res);
  int reason; /* NATIVE_REASON_*: the daemon words it (icd_native_reason) */
} vets[] = {
  { NR_mount_, vet_mount, NATIVE_REASON_MOUNT },
  { NR_umount2_, vet_umount, NATIVE_REASON_UMOUNT },
};

/* The reason's words are the daemon's, at drain: the record carries its code
 * and the strings they quote, NUL-separated, cut to the field's size (each
 * lands later in the worded reason than in the packed one, so a cut never
 * shows before the worded reason's own). */
static void pack_reason(char *dst, int cap, int code)
{
  const char *strs[4];
  int i, n = 0, at = 1;

  dst[0] = (char)code;
  if (code == NATIVE_REASON_MOUNT) {
    strs[n++] = k.fstype;
    strs[n++] = k.s[0] ? k.source : "";
    strs[n++] = k.target;
    strs[n++] = k.s[3] ? k.data : "";
  } else if (code == NATIVE_REASON_UMOUNT) {
    strs[n++] = k.target;
  }
  for (i = 0; i < n && at < cap; i++) {
    size_t len = strnlen(strs[i], (size_t)(cap - at - 1));
    memcpy(dst + at, strs[i], len);
    at += (int)len;
    dst[at++] = 0;
  }
  if (at < cap)
    dst[at] = 0;
  dst[cap - 1] = 0;
}

/* After the answer, off the caller's path. */
static void record(struct helper *h, const struct seccomp_notif *n, int action, int64_t value,
                   int send_err, int reason)
{
  struct shared *sh = h->sh;
  uint32_t tail = atomic_load_explicit(&sh->tail, memory_order_relaxed);
  struct icd_decision *d;

  if (tail - atomic_load_explicit(&sh->head, memory_order_acquire) >= RING) {
    atomic_fetch_add_explicit(&sh->dropped, 1, memory_order_relaxed);
    return;
  }
  d = &sh->rec[tail % RING];
  memset(d, 0, sizeof *d);
  d->cookie = h->cookie;
  d->id = n->id;
  d->pid = n->pid;
  d->nr = n->data.nr;
  d->action = action;
  d->value = value;
  d->send_errno = send_err;
  d->ns_time = icd_now_ns(CLOCK_REALTIME);
  d->recv_ns = h->recv_ns;
  d->sent_ns = h->sent_ns;
  memcpy(d->args, n->data.args, sizeof d->args);
  if (reason)
    pack_reason(d->reason, sizeof d->reason, reason);
  if (h->seen[n->pid & 255] != (int32_t)n->pid) {
    h->seen[n->pid & 255] = (int32_t)n->pid;
    icd_read_comm(h->procfd, n->pid, d->comm);
  }
  atomic_store_explicit(&sh->tail, tail + 1, memory_order_release);
}

/* 1: answered here; 0: for the daemon. */
static int handle_here(struct helper *h, const struct seccomp_notif *n)
{
  int64_t rule = icd_rule_for(h->rt, n->data.arch, n->data.nr), value;
  int act, res = 0, err, send_err;
  unsigned i;

  if (RULE_ACT(rule) == ICD_ACT_HOLD) /* the daemon is deciding it: briefly */
    rule = icd_rules_hold(h->rt, n->data.arch, n->data.nr, HOLD_MS);
  act = RULE_ACT(rule);
  value = RULE_VAL(rule);

  switch (act) {
  case ICD_ACT_CONTINUE: /* the channel's table, as the daemon's receiver would */
    send_err = -icd_notify_send(h->fd, n->id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
    break;
  case ICD_ACT_ERRNO:
    send_err = -icd_notify_send(h->fd, n->id, 0, -(int32_t)value, 0);
    break;
  case ICD_ACT_VALUE:
    send_err = -icd_notify_send(h->fd, n->id, value, 0, 0);
    break;
  case ICD_ACT_SYSINFO:
    if ((res = icd_canned_sysinfo(h->rt, h->procfd, h->fd, n)) == 1)
      return 0;
    send_err = -icd_notify_send(h->fd, n->id, 0, res, 0);
    h->sent_ns = icd_now_ns(CLOCK_MONOTONIC);
    atomic_fetch_add_explicit(&h->sh->fast, 1, memory_order_relaxed);
    record(h, n, res ? ICD_ACT_ERRNO : ICD_ACT_VALUE, -res, send_err, NATIVE_REASON_SYSINFO);
    return 1;
  case ICD_ACT_NATIVE:
    for (i = 0; i < sizeof vets / sizeof vets[0]; i++)
      if (vets[i].nr == n->data.nr)
        break;
    if (i == sizeof vets / sizeof vets[0] || icd_native_act_lock(h->sh))
      return 0;
    if (vets[i].vet(h, n, &res) != ICD_VET_PERFORMED) {
      pthread_mutex_unlock(&h->sh->act);
      return 0;
    }
    icd_journal_mark(h->jfd, n->pid, n->id, res);
    pthread_mutex_unlock(&h->sh->act);
    send_err = -icd_notify_send(h->fd, n->id, 0, res, 0);
    h->sent_ns = icd_now_ns(CLOCK_MONOTONIC);
    /* Bookkeeping after the answer: the caller runs meanwhile. */
    err = -res;
    atomic_fetch_add_explicit(&h->sh->count, 1, memory_order_relaxed);
    record(h, n, err ? ICD_ACT_ERRNO : ICD_ACT_VALUE, err, send_err, vets[i].reason);
    return 1;
  default:
    return 0;
  }
  h->sent_ns = icd_now_ns(CLOCK_MONOTONIC);
  atomic_fetch_add_explicit(&h->sh->fast, 1, memory_order_relaxed);
  record(h, n, act, act == ICD_ACT_CONTINUE ? 0 : value, send_err, NATIVE_REASON_NONE);
  return 1;
}

static int poll_hup(int fd)
{
  struct pollfd p = { .fd = fd, .events = POLLIN };
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLNVAL));
}

/* The helper's way out between calls, for the daemon's quiesce (a hand-over,
 * with `stop` set in shared memory) and for its death (the parent-death
 * signal): ICD_STOP_SIGNAL.  A SIGKILL instead would land in the middle of a
 * call, after its mount or umount and before its answer and journal mark: the
 * successor would act again (a umount replayed fails EINVAL).  While the
 * helper waits for a call the signal jumps straight out (no window between a
 * look at a flag and RECV); while it handles one, only the flag is set. */
static sigjmp_buf stop_jmp;
static volatile sig_atomic_t stop_armed, stop_seen;

static void on_stop_signal(int sig)
{
  (void)sig;
  stop_seen = 1;
  if (stop_armed) {
    stop_armed = 0;
    siglongjmp(stop_jmp, 1);
  }
}

/* The keeper thread that forked us blocks every signal. */
static int stop_signal_on(void)
{
  struct sigaction sa;
  sigset_t set;

  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigemptyset(&set);
  sigaddset(&set, ICD_STOP_SIGNAL);
  if (sigaction(ICD_STOP_SIGNAL, &sa, NULL) < 0 || sigprocmask(SIG_UNBLOCK, &set, NULL) < 0)
    return -errno;
  return 0;
}

/* A receive that the stop signal abandons: 1 stop, 0 received, -1 errno.  A
 * jump out of a RECV that had returned leaves its landing slot locked with the
 * notification: the successor answers it from the journal (nothing acted). */
static int recv_or_stop(struct helper *h, struct seccomp_notif *n)
{
  int r;

  if (sigsetjmp(stop_jmp, 0))
    return 1;
  stop_armed = 1;
  if (stop_seen || atomic_load(&h->sh->stop)) {
    stop_armed = 0;
    return 1;
  }
  r = icd_journal_recv_as(h->fd, h->jfd, n);
  stop_armed = 0;
  return r < 0 ? -1 : 0;
}

static void helper_loop(struct helper *h, const struct seccomp_notif *first)
{
  struct seccomp_notif n = *first;
  struct msg m;
  int have = 1; /* the receiver's, journaled by it when it received it */

  for (;;) {
    int got = 0;

    if (!have) {
      memset(&n, 0, sizeof n);
      got = recv_or_stop(h, &n);
    }
    if (got > 0)
      return;
    if (got < 0) {
      if (errno == EINTR || (errno == ENOENT && !poll_hup(h->fd)))
        continue;
      memset(&m, 0, sizeof m);
      m.kind = MSG_DETACHED;
      icd_native_send_msg(h->sock, &m, -1);
      return;
    }
    have = 0;
    h->recv_ns = icd_now_ns(CLOCK_MONOTONIC);
    atomic_store(&h->sh->current, n.id);
    if (handle_here(h, &n)) {
      atomic_store(&h->sh->current, 0);
      continue;
    }
    /* Forwarded: the daemon clears `current` when it takes it over, so a
     * death in between fails neither a call twice nor none. */
    memset(&m, 0, sizeof m);
    m.kind = MSG_FORWARD;
    m.n = n;
    if (icd_native_send_msg(h->sock, &m, -1) < 0)
      return; /* the daemon is gone */
  }
}

/* 0 or -errno. */
static int helper_enter(pid_t parent, int pidfd, int pid, int sock, struct helper *h)
{
  int r;

  /* The host's /proc stays: the callers' pids are the host's. */
  if ((r = icd_nsop_become_helper(parent, pidfd, pid, CLONE_NEWUSER | CLONE_NEWNS, sock,
                                  &h->procfd)))
    return r;
  /* After setns(CLONE_NEWNS) root and cwd are the namespace's root. */
  if ((r = ns_ino(h->procfd, "self/ns/user", &h->user_ino))
      || (r = root_of(AT_FDCWD, "/", &h->root_dev, &h->root_ino, &h->root_mnt)))
    return r;
  return 0;
}

void icd_native_helper_main(pid_t parent, int pidfd, int pid, int sock, struct icd_native *nv)
{
  struct helper h;
  struct msg m;
  int i, fd;

  memset(&h, 0, sizeof h);
  h.sock = sock;
  h.fd = -1;
  h.cookie = nv->cookie;
  h.fstypes = nv->fstypes; /* our copy of the daemon's memory, as of the fork */
  h.sh = nv->sh;
  h.rt = nv->rt;
  for (i = 0; i < PIDDIRS; i++)
    h.piddir[i].fd = -1;
  if (stop_signal_on())
    return;
  memset(&m, 0, sizeof m);
  m.kind = MSG_HELLO;
  m.err = -helper_enter(parent, pidfd, pid, sock, &h); /* the message's errno */
  /* After every credential change (which clears it), in place of the SIGKILL
   * the executors keep: see on_stop_signal. */
  if (!m.err && prctl(PR_SET_PDEATHSIG, ICD_STOP_SIGNAL) < 0)
    m.err = errno;
  if (!m.err && getppid() != parent)
    m.err = ESRCH;
  if (icd_native_send_msg(sock, &m, -1) < 0 || m.err)
    return;
  if (icd_native_recv_msg(sock, &m, &fd) <= 0 || m.kind != MSG_TAKE || fd < 0)
    return;
  h.fd = fd;
  h.jfd = m.err;
  helper_loop(&h, &m.n);
}
