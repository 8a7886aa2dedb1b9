/* Direct mode: the turn protocol between a receiver and the Python waiter.
 *
 * A Python-path notification costs the receiver a wake-up and the waiter
 * another: three context switches per call where the minimal agent has two.
 * So once the receiver has queued one for Python it hands its fd over and
 * parks; when the waiter comes back for the next item it receives on the fd
 * itself, so with sync wake-up the target's next call wakes the waiter
 * directly.  Only for a channel with one fd, since the waiter then watches
 * that fd and not the queue.
 *
 * r->turn, a futex word, says who may RECV on r's fd:
 *   TURN_C        the receiver thread (the waiter does not RECV);
 *   TURN_PY_BUSY  nobody: the fd is the waiter's, which is handling an item;
 *   TURN_PY_RECV  the waiter (the receiver is parked).
 * Transitions, each a compare-and-swap from the state named, except revoke:
 *   offer     C -> BUSY     receiver, under ch->lock, in the same critical
 *                           section that queued its item (to_python);
 *   take      BUSY -> RECV  waiter, under ch->lock, only with the queue empty,
 *                           no kick, direct on, one live receiver;
 *   set_busy  RECV -> BUSY  waiter, having received a Python-path item;
 *   give_back RECV -> C     waiter: timeout, hang-up, error, hand-off to the
 *                           native helper;
 *   steal     BUSY -> C     parked receiver, once BUSY for PARK_NS;
 *   revoke    any -> C      attach of a second fd, interrupt, set_direct(0),
 *                           close: and then the waiter is signalled out of
 *                           poll/RECV until it has left direct_recv.
 * The invariant that keeps items from being lost: while the waiter is in
 * RECV (it may block there forever) the queue holds no item it has not seen.
 * Items are queued only by a receiver in TURN_C, and take checks the queue
 * and moves BUSY -> RECV atomically under the lock they are queued under;
 * from RECV only the waiter itself or a revoke (which gets it out of RECV)
 * returns the turn to the receiver.  (Take used to decide under the lock but
 * swap after it: a waiter preempted in between let the receiver steal the
 * turn, queue the target's next call and offer again, and then took that
 * offer and blocked in RECV while the target waited for the queued call.)
 * In BUSY nobody receives, which is what the steal bounds.  After a revoke
 * both sides may RECV for a moment; whatever the waiter receives then it
 * still answers or returns. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "internal.h"
#include "journal.h"
#include "seccomp_compat.h"

/* A parked receiver takes its fd back when the Python waiter has been busy
 * this long: a slow handler delays the fd's other calls by about this much. */
#define PARK_NS 5000000LL

void icd_direct_offer(struct icd_receiver *r)
{
  struct icd_channel *ch = r->ch;
  unsigned c = TURN_C;
  if (ch->direct && r->sync && !atomic_load(&r->delegated) && ch->nlive == 1
      && atomic_load(&ch->nwaiters) <= 1) {
    /* Once the waiter has answered this one it receives the next
     * notification itself (see direct_recv). */
    atomic_store(&r->busy_since, icd_now_ns(CLOCK_MONOTONIC));
    atomic_compare_exchange_strong(&r->turn, &c, TURN_PY_BUSY);
  }
}

/* While the Python waiter has the fd, the receiver sleeps; it takes the fd
 * back when handed it, when stopped, or when the waiter has been busy (not
 * receiving) for PARK_NS. */
void icd_direct_park(struct icd_receiver *r)
{
  for (;;) {
    unsigned t = atomic_load(&r->turn);
    struct timespec ts = { 0, PARK_NS };
    if (t == TURN_C || atomic_load(&r->stop))
      return;
    if (t == TURN_PY_BUSY && icd_now_ns(CLOCK_MONOTONIC) - atomic_load(&r->busy_since) > PARK_NS) {
      unsigned busy = TURN_PY_BUSY;
      if (atomic_compare_exchange_strong(&r->turn, &busy, TURN_C))
        return;
      continue;
    }
    syscall(SYS_futex, &r->turn, FUTEX_WAIT_PRIVATE, t, &ts, NULL, 0);
  }
}

/* Takes the fd back from a Python waiter: a waiter inside direct_recv is
 * signalled out of poll/RECV until it has left, and only while it is in
 * there, so that other calls of that thread seldom see EINTR (one sent just
 * as it leaves can still land; the notify ioctls retry on it). */
static void revoke_turn(struct icd_receiver *r)
{
  atomic_store(&r->turn, TURN_C);
  syscall(SYS_futex, &r->turn, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  for (;;) {
    struct timespec ts = { 0, 200000 };
    pthread_mutex_lock(&r->py_lock);
    if (!r->py_in) {
      pthread_mutex_unlock(&r->py_lock);
      return;
    }
    pthread_kill(r->py_tid, ICD_STOP_SIGNAL);
    pthread_mutex_unlock(&r->py_lock);
    nanosleep(&ts, NULL);
  }
}

/* Revoking waits for the waiter to leave, so it runs outside ch->lock (a
 * waiter may need the engine's lock, which icd_engine_close holds while it
 * takes ours); the receivers snapshotted under the lock stay allocated
 * meanwhile because prune_receivers frees none while ch->revoking is set.
 * Revocation is idempotent. */
void icd_direct_revoke_all(struct icd_channel *ch)
{
  struct icd_receiver *r, *todo[64];
  int n = 0, i;
  pthread_mutex_lock(&ch->lock);
  for (r = ch->recvs; r && n < 64; r = r->next)
    if (atomic_load(&r->turn) != TURN_C || r->py_in)
      todo[n++] = r;
  if (n)
    ch->revoking++;
  pthread_mutex_unlock(&ch->lock);
  if (!n)
    return;
  for (i = 0; i < n; i++)
    revoke_turn(todo[i]);
  pthread_mutex_lock(&ch->lock);
  ch->revoking--;
  pthread_mutex_unlock(&ch->lock);
}

/* The waiter gives the fd back to the receiver. */
static void give_back(struct icd_receiver *r)
{
  unsigned recv = TURN_PY_RECV;
  atomic_compare_exchange_strong(&r->turn, &recv, TURN_C);
  syscall(SYS_futex, &r->turn, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* The waiter goes off to handle an item, keeping the fd. */
static void set_busy(struct icd_receiver *r)
{
  unsigned recv = TURN_PY_RECV;
  atomic_store(&r->busy_since, icd_now_ns(CLOCK_MONOTONIC));
  atomic_compare_exchange_strong(&r->turn, &recv, TURN_PY_BUSY);
}

static int direct_recv(struct icd_receiver *r, struct icd_item *it, int timeout_ms)
{
  struct icd_channel *ch = r->ch;
  struct seccomp_notif n;
  int64_t end = timeout_ms > 0 ? icd_now_ns(CLOCK_MONOTONIC) + (int64_t)timeout_ms * 1000000 : 0;

  for (;;) {
    struct pollfd p = { .fd = r->fd, .events = POLLIN };
    int ms = -1, pr;
    if (atomic_load(&r->turn) != TURN_PY_RECV || __atomic_load_n(&ch->closed, __ATOMIC_ACQUIRE))
      return 0;
    if (!end)
      goto recv; /* no deadline: block in RECV itself, one syscall less per call;
                  * revoke's signal (interrupt, attach, close) gets us out */
    {
      int64_t left = end - icd_now_ns(CLOCK_MONOTONIC);
      if (left <= 0) {
        give_back(r); /* idle: the receiver is the one to wait on the fd */
        return -ETIMEDOUT;
      }
      ms = (int)((left + 999999) / 1000000);
    }
    pr = poll(&p, 1, ms);
    if (pr < 0 && errno == EINTR)
      continue;
    if (pr == 0)
      continue;
    if (pr < 0 || !(p.revents & POLLIN)) {
      give_back(r); /* hang-up or error: the receiver sees it and detaches */
      return 0;
    }
recv:
    memset(&n, 0, sizeof n);
    if (icd_journal_recv(r->fd, &n) < 0) {
      if (errno == EINTR || (errno == ENOENT && !icd_filter_orphaned(r->fd)))
        continue;
      give_back(r);
      return 0;
    }
    if (icd_receiver_handoff(r, &n)) {
      give_back(r); /* the receiver waits for the helper from now on */
      return 0;
    }
    if (icd_fast_answer(r, &n)) {
      *it = (struct icd_item){
        .kind = ICD_ITEM_NOTIF,
        .fd = r->fd,
        .id = n.id,
        .pid = n.pid,
        .nr = n.data.nr,
        .arch = n.data.arch,
        .ip = n.data.instruction_pointer,
      };
      memcpy(it->args, n.data.args, sizeof it->args);
      atomic_fetch_add_explicit(&ch->n_python, 1, memory_order_relaxed);
      atomic_fetch_add_explicit(&ch->n_direct, 1, memory_order_relaxed);
      set_busy(r); /* ours to answer even if revoked meanwhile */
      return 1;
    }
  }
}

static atomic_int test_pause_us;

void icd_direct_test_pause(int us)
{
  atomic_store(&test_pause_us, us);
}

/* Until something is queued on ch (what a receiver that took the fd back
 * meanwhile would do) or the pause is over. */
static void test_pause(struct icd_channel *ch)
{
  int us = atomic_load_explicit(&test_pause_us, memory_order_relaxed);
  int64_t end = icd_now_ns(CLOCK_MONOTONIC) + (int64_t)us * 1000;
  while (us > 0 && !atomic_load(&ch->qpending) && icd_now_ns(CLOCK_MONOTONIC) < end) {
    struct timespec ts = { 0, 100000 };
    nanosleep(&ts, NULL);
  }
}

int icd_direct_wait(struct icd_channel *ch, struct icd_item *items, int timeout_ms)
{
  struct icd_receiver *r = NULL, *x;
  int ret = 0;

  /* fdlock before ch->lock, as everywhere: held shared until we leave the
   * fd, so it cannot be closed under us. */
  pthread_rwlock_rdlock(&ch->fdlock);
  pthread_mutex_lock(&ch->lock);
  /* Take (see the top of this file): the queue and the turn are looked at
   * and the turn changed in one critical section with the receiver's queue
   * and offer. */
  if (ch->direct && !ch->closed && ch->nlive == 1 && !ch->qlen && !atomic_load(&ch->kick))
    for (x = ch->recvs; x; x = x->next) {
      unsigned busy = TURN_PY_BUSY;
      if (!x->running || !x->fd_open || atomic_load(&x->py_in)
          || !atomic_compare_exchange_strong(&x->turn, &busy, TURN_PY_RECV))
        continue;
      /* A revoke that finds py_in still 0 stored TURN_C before this, so
       * direct_recv's first look at the turn sees it. */
      pthread_mutex_lock(&x->py_lock);
      atomic_store(&x->py_in, 1); /* also keeps prune_receivers off x */
      x->py_tid = pthread_self();
      pthread_mutex_unlock(&x->py_lock);
      r = x;
      break;
    }
  pthread_mutex_unlock(&ch->lock);
  if (r) {
    test_pause(ch);
    ret = direct_recv(r, items, timeout_ms);
    pthread_mutex_lock(&r->py_lock);
    atomic_store(&r->py_in, 0);
    pthread_mutex_unlock(&r->py_lock);
  }
  pthread_rwlock_unlock(&ch->fdlock);
  return ret;
}
