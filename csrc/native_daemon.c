/* The native mount path, the daemon's side (the helper is native.c): it
 * starts a container's helper, hands it the notify fd with the first call it
 * is for, takes what the helper forwards, drains its decision records, and
 * stops it (a close kills it; a hand-over's quiesce lets it finish its call). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "icd.h"
#include "internal.h"
#include "native.h"
#include "native_int.h"
#include "nsops.h"

struct icd_native *icd_native_new(uint64_t cookie)
{
  struct icd_native *nv = calloc(1, sizeof *nv);
  if (!nv)
    return NULL;
  pthread_mutexattr_t ma;
  int bad;

  nv->sh = mmap(NULL, sizeof *nv->sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  bad = nv->sh == MAP_FAILED || pthread_mutexattr_init(&ma);
  if (!bad) {
    bad = pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED)
          || pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST)
          || pthread_mutex_init(&nv->sh->act, &ma);
    pthread_mutexattr_destroy(&ma);
  }
  if (bad || pthread_mutex_init(&nv->lock, NULL)) {
    if (nv->sh != MAP_FAILED)
      munmap(nv->sh, sizeof *nv->sh);
    free(nv);
    return NULL;
  }
  nv->cookie = cookie;
  nv->sock = -1;
  nv->pid = -1;
  return nv;
}

/* Under nv->lock. */
static void stop_helper(struct icd_native *nv)
{
  if (nv->pid > 0) {
    /* Our own unreaped child: the pid cannot have been reused. */
    kill(nv->pid, SIGKILL);
    icd_nsop_reap(nv->pid);
    nv->pid = -1;
  }
  if (nv->sock >= 0) {
    close(nv->sock);
    nv->sock = -1;
  }
}

struct helper_args {
  pid_t parent;
  int pidfd, pid;
  struct icd_native *nv;
};

static void helper_child(void *arg, int sock)
{
  struct helper_args *a = arg;
  icd_native_helper_main(a->parent, a->pidfd, a->pid, sock, a->nv);
}

int icd_native_start(struct icd_native *nv, int pidfd, int pid, const char *list, int len,
                     struct icd_rules *rt)
{
  struct helper_args a;
  struct pollfd p;
  struct msg m;
  pid_t child, parent = getpid();
  int sock, r;

  if (len < 1 || len >= NATIVE_FSTYPES || list[len - 1] || pid <= 0 || pidfd < 0)
    return -EINVAL;
  pthread_mutex_lock(&nv->lock);
  if (nv->closed || nv->pid > 0) {
    pthread_mutex_unlock(&nv->lock);
    return nv->closed ? -EPIPE : -EBUSY;
  }
  memset(nv->fstypes, 0, sizeof nv->fstypes);
  memcpy(nv->fstypes, list, len);
  nv->rt = rt;
  a = (struct helper_args){ .parent = parent, .pidfd = pidfd, .pid = pid, .nv = nv };
  child = icd_nsop_fork_lasting(&sock, helper_child, &a);
  if (child < 0) {
    pthread_mutex_unlock(&nv->lock);
    return child;
  }
  nv->pid = child;
  nv->sock = sock;
  p = (struct pollfd){ .fd = sock, .events = POLLIN };
  do
    r = poll(&p, 1, START_TIMEOUT_MS);
  while (r < 0 && errno == EINTR);
  r = r < 0 ? -errno : r == 0 ? -ETIMEDOUT : 0;
  if (!r) {
    ssize_t n = icd_native_recv_msg(sock, &m, NULL);
    r = n < 0 ? (int)n : n == 0 || m.kind != MSG_HELLO ? -EIO : -m.err;
  }
  if (r)
    stop_helper(nv);
  pthread_mutex_unlock(&nv->lock);
  return r;
}

int icd_native_delegate(struct icd_native *nv, int fd, const struct seccomp_notif *first)
{
  struct msg m;
  ssize_t n;
  int r = 0;

  memset(&m, 0, sizeof m);
  m.kind = MSG_TAKE;
  m.err = fd; /* our number for it: the helper journals under it */
  m.n = *first;
  pthread_mutex_lock(&nv->lock);
  if (nv->closed || nv->sock < 0 || atomic_load(&nv->sh->stop))
    r = -EPIPE;
  else if ((n = icd_native_send_msg(nv->sock, &m, fd)) < 0)
    r = (int)n;
  pthread_mutex_unlock(&nv->lock);
  return r;
}

int icd_native_next(struct icd_native *nv, int fd, struct seccomp_notif *n)
{
  struct msg m;
  ssize_t got = icd_native_recv_msg(nv->sock, &m, NULL);
  uint64_t id;

  if (got == -EINTR)
    return ICD_NATIVE_IDLE;
  if (got > 0 && m.kind == MSG_FORWARD) {
    *n = m.n;
    id = n->id;
    atomic_compare_exchange_strong(&nv->sh->current, &id, 0); /* ours now */
    return ICD_NATIVE_FORWARD;
  }
  if (got > 0 && m.kind == MSG_DETACHED)
    return ICD_NATIVE_DETACHED;
  /* It died (or spoke nonsense): the call it held is failed rather than
   * left blocked, and the receiver takes the fd back. */
  id = atomic_exchange(&nv->sh->current, 0);
  if (id)
    icd_notify_send(fd, id, 0, -EIO, 0);
  pthread_mutex_lock(&nv->lock);
  stop_helper(nv);
  pthread_mutex_unlock(&nv->lock);
  return ICD_NATIVE_GONE;
}

/* The i-th NUL-separated string of a packed reason, "" past its end. */
static const char *quoted(const char *packed, int cap, int i)
{
  int at = 1;

  while (i-- > 0 && at < cap)
    at += (int)strnlen(packed + at, (size_t)(cap - at)) + 1;
  return at < cap ? packed + at : "";
}

static const char *errname(int err)
{
  const char *s = strerrorname_np(err);
  return s ? s : "error";
}

/* Words a drained record's reason from its code (native_int.h), as the
 * Python policy words it; cut to the field's size on purpose (paths can be
 * long).  The error is the record's: its value when the action is ERRNO. */
static void word_reason(struct icd_decision *d)
{
  char out[sizeof d->reason];
  const char *p = d->reason;
  const int cap = (int)sizeof d->reason;
  int code = (unsigned char)p[0], err = d->action == ICD_ACT_ERRNO ? (int)d->value : 0, w = 0;

  switch (code) {
  case NATIVE_REASON_MOUNT: {
    const char *fstype = quoted(p, cap, 0), *source = quoted(p, cap, 1);
    const char *target = quoted(p, cap, 2), *data = quoted(p, cap, 3);
    int has_source = d->args[0] != 0, has_data = d->args[4] != 0;
    w = snprintf(out, sizeof out, "%s allowed [%s%s%starget=%s fstype=%s flags=0x%x%s%s]", fstype,
                 has_source ? "source=" : "", has_source ? source : "", has_source ? " " : "",
                 target, fstype, icd_vet_mount_flags(d->args[3]), has_data ? " data=" : "",
                 has_data ? data : "");
    if (err && w >= 0 && w < cap)
      snprintf(out + w, sizeof out - w, "; mount: %s", errname(err));
    break;
  }
  case NATIVE_REASON_UMOUNT:
    w = snprintf(out, sizeof out, "umount of the container's own mount [target=%s flags=0x%x]",
                 quoted(p, cap, 0), (uint32_t)d->args[1]);
    if (err && w >= 0 && w < cap)
      snprintf(out + w, sizeof out - w, "; umount2: %s", errname(err));
    break;
  case NATIVE_REASON_SYSINFO:
    snprintf(out, sizeof out, "sysinfo emulated (shared figures)");
    break;
  default:
    out[0] = 0;
  }
  memcpy(d->reason, out, sizeof out);
}

int icd_native_drain(struct icd_native *nv, struct icd_decision *out, int max)
{
  struct shared *sh = nv->sh;
  uint32_t head = atomic_load_explicit(&sh->head, memory_order_relaxed);
  uint32_t tail = atomic_load_explicit(&sh->tail, memory_order_acquire);
  int n = 0;

  while (n < max && head != tail)
    out[n++] = sh->rec[head++ % RING];
  atomic_store_explicit(&sh->head, head, memory_order_release);
  for (int i = 0; i < n; i++)
    word_reason(&out[i]);
  return n;
}

int icd_native_quiesce(struct icd_native *nv, int timeout_ms)
{
  int64_t deadline = icd_now_ns(CLOCK_MONOTONIC) + (int64_t)timeout_ms * 1000000;
  int r = 0;

  atomic_store(&nv->sh->stop, 1);
  for (;;) {
    pid_t w;

    pthread_mutex_lock(&nv->lock);
    if (nv->pid <= 0) {
      pthread_mutex_unlock(&nv->lock);
      return 0;
    }
    /* Sent every round: one that lands between the helper's look at `stop`
     * and its RECV is lost. Our unreaped child: the pid is still its. */
    if (kill(nv->pid, ICD_STOP_SIGNAL) < 0)
      r = -errno;
    else if ((w = waitpid(nv->pid, NULL, WNOHANG)) == nv->pid)
      nv->pid = -1;
    else if (w < 0 && errno != EINTR)
      r = -errno;
    pthread_mutex_unlock(&nv->lock);
    if (r || icd_now_ns(CLOCK_MONOTONIC) >= deadline)
      return r ? r : -ETIMEDOUT;
    usleep(200);
  }
}

int icd_native_act(struct icd_native *nv, int lock)
{
  if (lock)
    return icd_native_act_lock(nv->sh);
  return -pthread_mutex_unlock(&nv->sh->act);
}

uint64_t icd_native_count(struct icd_native *nv, int which)
{
  return atomic_load(which == ICD_NATIVE_FAST      ? &nv->sh->fast
                     : which == ICD_NATIVE_DROPPED ? &nv->sh->dropped
                                                   : &nv->sh->count);
}

void icd_native_close(struct icd_native *nv)
{
  pthread_mutex_lock(&nv->lock);
  nv->closed = 1;
  stop_helper(nv);
  pthread_mutex_unlock(&nv->lock);
}

void icd_native_free(struct icd_native *nv)
{
  if (!nv)
    return;
  icd_native_close(nv);
  munmap(nv->sh, sizeof *nv->sh);
  pthread_mutex_destroy(&nv->lock);
  free(nv);
}
