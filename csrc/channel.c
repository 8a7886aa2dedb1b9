/* A channel: one container's verdict table, its queue of Python-path
 * notifications and the waiters on it, and answers on its notify fds, which
 * are guarded so that an answer never lands on a closed (maybe reused) fd
 * number.  Its receivers are in receiver.c, direct mode in direct.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "internal.h"
#include "native.h"
#include "seccomp_compat.h"

int icd_channel_new(struct icd_engine *e, uint64_t cookie, unsigned qcap, struct icd_channel **out)
{
  struct icd_channel *ch = calloc(1, sizeof *ch);
  pthread_condattr_t ca;
  if (!ch)
    return -ENOMEM;
  ch->eng = e;
  ch->cookie = cookie;
  ch->owner = getpid();
  ch->qmax = qcap ? qcap : 1;
  ch->direct = 1; /* direct.c */
  ch->qsize = 64;
  ch->q = calloc(ch->qsize, sizeof *ch->q);
  ch->rt = icd_rules_new();
  if (!ch->rt) {
    free(ch->q);
    free(ch);
    return -ENOMEM;
  }
  /* Deadlines are CLOCK_MONOTONIC: a wall-clock step must not stretch a wait. */
  if (pthread_condattr_init(&ca) || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)) {
    icd_rules_free(ch->rt);
    free(ch->q);
    free(ch);
    return -EINVAL;
  }
  if (!ch->q || pthread_mutex_init(&ch->lock, NULL) || pthread_cond_init(&ch->cond, &ca)
      || pthread_rwlock_init(&ch->fdlock, NULL)) {
    pthread_condattr_destroy(&ca);
    icd_rules_free(ch->rt);
    free(ch->q);
    free(ch);
    return -ENOMEM;
  }
  pthread_condattr_destroy(&ca);
  pthread_mutex_lock(&e->lock);
  ch->next = e->chans;
  e->chans = ch;
  pthread_mutex_unlock(&e->lock);
  *out = ch;
  return 0;
}

int icd_channel_set_rule(struct icd_channel *ch, int nr, int action, int64_t value)
{
  return icd_rules_set(ch->rt, nr, action, value);
}

int icd_channel_set_sysinfo(struct icd_channel *ch, const void *buf, int len, int64_t fresh_ns)
{
  return icd_rules_set_sysinfo(ch->rt, buf, len, fresh_ns);
}

int icd_channel_set_default(struct icd_channel *ch, int action, int64_t value)
{
  return icd_rules_set_default(ch->rt, action, value);
}

/* Grows the queue up to qmax notifications; detach items always fit, since
 * a lost one would leak the container's state. */
int icd_queue_push(struct icd_channel *ch, const struct icd_item *it)
{
  if (it->kind == ICD_ITEM_NOTIF && ch->qnotifs >= ch->qmax)
    return -EAGAIN;
  if (ch->qlen == ch->qsize) {
    unsigned i, nsize = ch->qsize * 2;
    struct icd_item *nq = malloc(nsize * sizeof *nq);
    if (!nq)
      return -ENOMEM;
    for (i = 0; i < ch->qlen; i++)
      nq[i] = ch->q[(ch->qhead + i) % ch->qsize];
    free(ch->q);
    ch->q = nq;
    ch->qsize = nsize;
    ch->qhead = 0;
  }
  ch->q[(ch->qhead + ch->qlen++) % ch->qsize] = *it;
  if (it->kind == ICD_ITEM_NOTIF)
    ch->qnotifs++;
  atomic_store_explicit(&ch->qpending, ch->qlen, memory_order_release);
  atomic_fetch_add_explicit(&ch->seq, 1, memory_order_release);
  return 0;
}

/* So the woken waiter finds ch->lock free. */
void icd_wake_waiters(struct icd_channel *ch, int n)
{
  if (atomic_load(&ch->nwaiters))
    syscall(SYS_futex, &ch->seq, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

/* Under ch->lock. */
static int take(struct icd_channel *ch, struct icd_item *items, int max)
{
  int n = 0;
  while (n < max && ch->qlen) {
    items[n] = ch->q[ch->qhead];
    if (items[n].kind == ICD_ITEM_NOTIF)
      ch->qnotifs--;
    ch->qhead = (ch->qhead + 1) % ch->qsize;
    ch->qlen--;
    n++;
  }
  atomic_store_explicit(&ch->qpending, ch->qlen, memory_order_release);
  return n;
}

void icd_channel_interrupt(struct icd_channel *ch)
{
  atomic_store(&ch->kick, 1);
  atomic_fetch_add(&ch->seq, 1);
  icd_wake_waiters(ch, INT_MAX);
  icd_direct_revoke_all(ch);
}

int icd_channel_set_direct(struct icd_channel *ch, int on)
{
  pthread_mutex_lock(&ch->lock);
  ch->direct = !!on;
  pthread_mutex_unlock(&ch->lock);
  if (!on)
    icd_direct_revoke_all(ch);
  return 0;
}

int icd_channel_wait(struct icd_channel *ch, struct icd_item *items, int max, int timeout_ms,
                     int spin_us)
{
  struct timespec dl;
  unsigned seq;
  int n;

  if (max <= 0)
    return -EINVAL;
  if (ch->direct && timeout_ms != 0 && !atomic_load(&ch->kick)
      && !atomic_load_explicit(&ch->qpending, memory_order_acquire)) {
    n = icd_direct_wait(ch, items, timeout_ms);
    if (n == -ETIMEDOUT)
      return 0;
    if (n != 0)
      return n;
  }
  /* Spin by yielding, not by pausing: with sync wake-up our SEND put the
   * target on this very CPU, so yielding lets it run at once, and its next
   * notification is usually queued by the time we are back -- no futex
   * sleep/wake on either side.  A pause loop would keep the target off
   * this CPU instead.  Bounded by spin_us. */
  if (spin_us > 0 && timeout_ms != 0
      && !atomic_load_explicit(&ch->qpending, memory_order_acquire)) {
    int64_t end = icd_now_ns(CLOCK_MONOTONIC) + (int64_t)spin_us * 1000;
    unsigned i = 0;
    while (!atomic_load_explicit(&ch->qpending, memory_order_acquire)) {
      sched_yield();
      if ((++i & 3) == 0 && icd_now_ns(CLOCK_MONOTONIC) > end)
        break;
    }
  }
  if (timeout_ms > 0) {
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (dl.tv_nsec >= 1000000000) {
      dl.tv_sec++;
      dl.tv_nsec -= 1000000000;
    }
  }
  for (;;) {
    pthread_mutex_lock(&ch->lock);
    n = take(ch, items, max);
    if (n || ch->closed || timeout_ms == 0 || atomic_exchange(&ch->kick, 0)) {
      if (!n && ch->closed)
        n = -EPIPE;
      pthread_mutex_unlock(&ch->lock);
      return n;
    }
    seq = atomic_load_explicit(&ch->seq, memory_order_acquire);
    atomic_fetch_add(&ch->nwaiters, 1);
    pthread_mutex_unlock(&ch->lock);
    n = syscall(SYS_futex, &ch->seq, FUTEX_WAIT_BITSET_PRIVATE, seq, timeout_ms > 0 ? &dl : NULL,
                NULL, FUTEX_BITSET_MATCH_ANY);
    atomic_fetch_sub(&ch->nwaiters, 1);
    if (n < 0 && errno == ETIMEDOUT)
      timeout_ms = 0; /* one last look, then return */
  }
}

/* Under ch->fdlock (shared or exclusive).  0 if fd is attached; -ENOENT if
 * it was and has been closed (every task behind it left, or the channel
 * closed), so whatever was pending on it is gone; -EBADF if never seen. */
static int fd_attached(struct icd_channel *ch, int fd)
{
  struct icd_receiver *r;
  int ret = -EBADF;
  pthread_mutex_lock(&ch->lock);
  for (r = ch->recvs; r; r = r->next)
    if (r->fd == fd) {
      ret = r->fd_open ? 0 : -ENOENT;
      if (!ret)
        break;
    }
  pthread_mutex_unlock(&ch->lock);
  return ret;
}

int icd_channel_respond(struct icd_channel *ch, int fd, uint64_t id, int64_t val, int32_t err,
                        uint32_t flags)
{
  int ret;
  pthread_rwlock_rdlock(&ch->fdlock);
  if (!(ret = fd_attached(ch, fd)))
    ret = icd_notify_send(fd, id, val, err, flags);
  pthread_rwlock_unlock(&ch->fdlock);
  return ret;
}

int icd_channel_addfd(struct icd_channel *ch, int fd, uint64_t id, int srcfd, uint32_t newfd_flags,
                      int send)
{
  int ret;
  pthread_rwlock_rdlock(&ch->fdlock);
  if (!(ret = fd_attached(ch, fd)))
    ret = icd_notify_addfd(fd, id, srcfd, -1, newfd_flags, send ? SECCOMP_ADDFD_FLAG_SEND : 0);
  pthread_rwlock_unlock(&ch->fdlock);
  return ret;
}

int icd_channel_id_valid(struct icd_channel *ch, int fd, uint64_t id)
{
  int ret;
  pthread_rwlock_rdlock(&ch->fdlock);
  ret = fd_attached(ch, fd);
  if (ret == 0)
    ret = icd_notify_id_valid(fd, id);
  else if (ret == -ENOENT)
    ret = 0;
  pthread_rwlock_unlock(&ch->fdlock);
  return ret;
}

int icd_channel_read(struct icd_channel *ch, int fd, uint64_t id, int pid, uint64_t addr, void *buf,
                     int size, int string)
{
  int ret;
  pthread_rwlock_rdlock(&ch->fdlock);
  ret = fd_attached(ch, fd); /* -ENOENT: detached, the notification is gone */
  if (ret == 0)
    ret = string ? icd_read_target_string(pid, addr, buf, size, fd, id)
                 : icd_read_target(pid, addr, buf, size, fd, id);
  pthread_rwlock_unlock(&ch->fdlock);
  return ret;
}

void icd_channel_stats(struct icd_channel *ch, struct icd_chstats *out)
{
  struct icd_native *nv = atomic_load(&ch->native);

  out->fast = atomic_load(&ch->n_fast);
  out->native_table = nv ? icd_native_count(nv, ICD_NATIVE_FAST) : 0;
  out->fast += out->native_table;
  out->python = atomic_load(&ch->n_python);
  out->overflow = atomic_load(&ch->n_overflow);
  out->send_errors = atomic_load(&ch->n_send_err);
  out->detached = atomic_load(&ch->n_detached);
  out->direct = atomic_load(&ch->n_direct);
  out->native = nv ? icd_native_count(nv, ICD_NATIVE_PERFORMED) : 0;
  pthread_mutex_lock(&ch->lock);
  out->receivers = ch->nlive;
  pthread_mutex_unlock(&ch->lock);
}

/* A stop signal can land just before the receiver enters RECV and be lost, so
 * it is repeated until the thread is seen leaving. */
static void stop_receivers(struct icd_channel *ch)
{
  struct icd_receiver *r;
  struct timespec dl;

  pthread_mutex_lock(&ch->lock);
  for (r = ch->recvs; r; r = r->next)
    atomic_store(&r->stop, 1);
  while (ch->nlive) {
    for (r = ch->recvs; r; r = r->next)
      if (r->running)
        pthread_kill(r->tid, ICD_STOP_SIGNAL);
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_nsec += 2000000;
    if (dl.tv_nsec >= 1000000000) {
      dl.tv_sec++;
      dl.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&ch->cond, &ch->lock, &dl);
  }
  pthread_mutex_unlock(&ch->lock);
}

void icd_channel_close(struct icd_channel *ch)
{
  struct icd_receiver *r;

  /* In a forked child (say, Python's garbage collector after os.fork) the
   * receivers do not exist and their locks may be frozen held: leave it all
   * alone, the fds are close-on-exec and die with the child. */
  if (getpid() != ch->owner)
    return;

  pthread_mutex_lock(&ch->lock);
  if (ch->closed) {
    pthread_mutex_unlock(&ch->lock);
    return;
  }
  __atomic_store_n(&ch->closed, 1, __ATOMIC_RELEASE);
  atomic_fetch_add(&ch->seq, 1);
  pthread_mutex_unlock(&ch->lock);
  icd_wake_waiters(ch, INT_MAX);
  icd_direct_revoke_all(ch);
  stop_receivers(ch);

  /* Receivers are gone; answer what Python never took, then close the fds
   * (closing also fails anything still in flight with ENOSYS in the kernel). */
  pthread_rwlock_wrlock(&ch->fdlock);
  pthread_mutex_lock(&ch->lock);
  while (ch->qlen) {
    struct icd_item *it = &ch->q[ch->qhead];
    if (it->kind == ICD_ITEM_NOTIF)
      for (r = ch->recvs; r; r = r->next)
        if (r->fd == it->fd && r->fd_open) {
          icd_notify_send(it->fd, it->id, 0, -ENOSYS, 0);
          break;
        }
    ch->qhead = (ch->qhead + 1) % ch->qsize;
    ch->qlen--;
  }
  ch->qnotifs = 0;
  atomic_store(&ch->qpending, 0);
  for (r = ch->recvs; r; r = r->next)
    if (r->fd_open) {
      close(r->fd);
      r->fd_open = 0;
    }
  pthread_mutex_unlock(&ch->lock);
  pthread_rwlock_unlock(&ch->fdlock);
  /* No receiver or waiter is inside it any more: its helpers can go. */
  if (atomic_load(&ch->native))
    icd_native_close(atomic_load(&ch->native));
}

/* The channel's native path, made on first use: the act lock must exist before
 * a helper can start, and either caller may come first. */
static struct icd_native *native_of(struct icd_channel *ch)
{
  struct icd_native *nv = atomic_load(&ch->native), *expect = NULL;

  if (nv)
    return nv;
  if (!(nv = icd_native_new(ch->cookie)))
    return NULL;
  if (!atomic_compare_exchange_strong(&ch->native, &expect, nv)) {
    icd_native_free(nv);
    nv = expect;
  }
  return nv;
}

int icd_channel_act_lock(struct icd_channel *ch, int lock)
{
  struct icd_native *nv = native_of(ch);
  return nv ? icd_native_act(nv, lock) : -ENOMEM;
}

int icd_channel_quiesce_native(struct icd_channel *ch, int timeout_ms)
{
  struct icd_native *nv = atomic_load(&ch->native);
  return nv ? icd_native_quiesce(nv, timeout_ms) : 0;
}

int icd_channel_set_native(struct icd_channel *ch, const char *list, int len, int pidfd, int pid,
                           int notify_fd)
{
  struct icd_native *nv = native_of(ch);
  struct icd_receiver *r;
  int ret;

  if (!nv)
    return -ENOMEM;
  if ((ret = icd_native_start(nv, pidfd, pid, list, len, ch->rt)))
    return ret;
  pthread_mutex_lock(&ch->lock);
  for (r = ch->recvs; r; r = r->next)
    if (r->fd == notify_fd && r->running && r->fd_open)
      break;
  if (!r || ch->closed) {
    pthread_mutex_unlock(&ch->lock);
    icd_native_close(nv);
    return ch->closed ? -EPIPE : -ENOENT;
  }
  /* Handed over by whoever receives the next call the helper is for. */
  atomic_store(&r->delegate, nv);
  pthread_mutex_unlock(&ch->lock);
  return 0;
}

void icd_channel_free(struct icd_channel *ch)
{
  struct icd_engine *e = ch->eng;
  struct icd_channel **pp;
  struct icd_receiver *r, *next;

  if (getpid() != ch->owner)
    return;
  icd_channel_close(ch);
  if (e) {
    pthread_mutex_lock(&e->lock);
    for (pp = &e->chans; *pp; pp = &(*pp)->next)
      if (*pp == ch) {
        *pp = ch->next;
        break;
      }
    if (atomic_load(&ch->native)) /* the engine's count never goes down */
      e->dropped += icd_native_count(atomic_load(&ch->native), ICD_NATIVE_DROPPED);
    pthread_mutex_unlock(&e->lock);
  }
  for (r = ch->recvs; r; r = next) {
    next = r->next;
    free(r);
  }
  icd_native_free(atomic_load(&ch->native));
  icd_rules_free(ch->rt);
  pthread_rwlock_destroy(&ch->fdlock);
  pthread_cond_destroy(&ch->cond);
  pthread_mutex_destroy(&ch->lock);
  free(ch->q);
  free(ch);
}
