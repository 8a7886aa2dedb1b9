/* The notify engine: one blocking receiver thread per notify fd.  Fast verdicts
 * are answered on the receiver thread right after RECV; Python-path
 * notifications are queued on their channel and the receiver goes straight
 * back to RECV, so a slow handler only ever delays its own container. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "icd.h"
#include "journal.h"
#include "rules.h"
#include "seccomp_compat.h"

#define ICD_STOP_SIGNAL (SIGRTMIN + 7)

/* Who receives on a receiver's fd (see "direct mode" below). */
#define TURN_C 0       /* the receiver thread */
#define TURN_PY_BUSY 1 /* handed to the Python waiter, which is handling an item */
#define TURN_PY_RECV 2 /* the Python waiter is receiving on the fd itself */
/* A parked receiver takes its fd back when the Python waiter has been busy
 * this long: a slow handler delays the fd's other calls by about this much. */
#define PARK_NS 5000000LL

struct icd_receiver {
  struct icd_channel *ch;
  struct icd_receiver *next;
  pthread_t tid;
  int fd;
  int running; /* under ch->lock */
  int fd_open; /* under ch->fdlock */
  int sync;
  atomic_int stop;
  /* Direct mode: TURN_*, a futex word the parked receiver sleeps on. */
  atomic_uint turn;
  _Atomic int64_t busy_since; /* CLOCK_MONOTONIC ns of the last TURN_PY_BUSY */
  pthread_mutex_t py_lock;    /* py_in and the kicks of that thread */
  atomic_int py_in;           /* a Python waiter is in direct_recv on this fd */
  pthread_t py_tid;
  /* The native helper that is to receive on this fd (icd_channel_set_native),
   * and whether it does: the receiver then waits for what it forwards. */
  struct icd_native *_Atomic delegate;
  struct icd_native *native;
  int delegated;
};

struct icd_channel {
  struct icd_engine *eng;
  struct icd_channel *next; /* engine's list, under eng->lock */
  uint64_t cookie;
  struct icd_rules *rt; /* the verdict table (MAP_SHARED, see rules.h) */

  pthread_mutex_t lock; /* queue, receivers, state */
  pthread_cond_t cond;  /* a receiver exited */
  /* Held shared while answering on a receiver's fd, exclusively while closing
   * it, so an answer never lands on a reused fd number. */
  pthread_rwlock_t fdlock;
  struct icd_item *q;
  unsigned qcap, qsize, qhead, qlen, qnotifs, qmax;
  atomic_uint qpending; /* == qlen, read without the lock while spinning */
  /* Waiters sleep on a futex word bumped on every push: unlike a condvar
   * signalled under the mutex, the woken waiter never blocks on that mutex. */
  atomic_uint seq;
  atomic_int nwaiters;
  atomic_int kick; /* icd_channel_interrupt: the next wait returns, maybe empty */
  int nlive, closed;
  pid_t owner; /* receivers are threads of this process only */
  int direct;  /* direct mode allowed (icd_channel_set_direct) */
  struct icd_receiver *recvs;
  _Atomic uint64_t n_fast, n_python, n_overflow, n_send_err, n_detached, n_direct;
  /* The native mount path (native.c), set once by icd_channel_set_native. */
  struct icd_native *_Atomic native;
  /* Pids whose comm was read lately (direct-mapped): a new one gets its comm
   * read after the answer, so events name short-lived callers too. */
  _Atomic int32_t seen_pids[256];
};

struct icd_engine {
  pthread_mutex_t lock; /* ring and channel list */
  struct icd_decision *ring;
  unsigned cap, head, len;
  uint64_t dropped;
  struct icd_channel *chans;
  pid_t owner;
};

static void stop_handler(int sig) { (void)sig; }

static pthread_once_t sig_once = PTHREAD_ONCE_INIT;
static int sig_err;

/* No SA_RESTART: the signal makes a blocked RECV return EINTR. */
static void install_stop_signal(void)
{
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = stop_handler;
  sigemptyset(&sa.sa_mask);
  if (sigaction(ICD_STOP_SIGNAL, &sa, NULL) < 0)
    sig_err = errno;
}

static int64_t now_ns(clockid_t clk)
{
  struct timespec ts;
  clock_gettime(clk, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct icd_engine *icd_engine_new(unsigned ring_cap)
{
  struct icd_engine *e;

  pthread_once(&sig_once, install_stop_signal);
  if (sig_err) {
    errno = sig_err;
    return NULL;
  }
  e = calloc(1, sizeof *e);
  if (!e)
    return NULL;
  e->owner = getpid();
  e->cap = ring_cap ? ring_cap : 1;
  e->ring = calloc(e->cap, sizeof *e->ring);
  if (!e->ring || pthread_mutex_init(&e->lock, NULL)) {
    free(e->ring);
    free(e);
    errno = ENOMEM;
    return NULL;
  }
  return e;
}

static void ring_push(struct icd_engine *e, const struct icd_decision *d)
{
  pthread_mutex_lock(&e->lock);
  if (e->len == e->cap)
    e->dropped++;
  else
    e->ring[(e->head + e->len++) % e->cap] = *d;
  pthread_mutex_unlock(&e->lock);
}

int icd_engine_drain(struct icd_engine *e, struct icd_decision *out, int max)
{
  struct icd_channel *ch;
  int n = 0;
  pthread_mutex_lock(&e->lock);
  while (n < max && e->len) {
    out[n++] = e->ring[e->head];
    e->head = (e->head + 1) % e->cap;
    e->len--;
  }
  /* And what the native helpers decided (channels leave this list before
   * they are freed, under this lock). */
  for (ch = e->chans; ch && n < max; ch = ch->next)
    if (atomic_load(&ch->native))
      n += icd_native_drain(atomic_load(&ch->native), out + n, max - n);
  pthread_mutex_unlock(&e->lock);
  return n;
}

uint64_t icd_engine_dropped(struct icd_engine *e)
{
  struct icd_channel *ch;
  uint64_t d;
  pthread_mutex_lock(&e->lock);
  d = e->dropped;
  for (ch = e->chans; ch; ch = ch->next)
    if (atomic_load(&ch->native))
      d += icd_native_count(atomic_load(&ch->native), ICD_NATIVE_DROPPED);
  pthread_mutex_unlock(&e->lock);
  return d;
}

struct icd_channel *icd_channel_new(struct icd_engine *e, uint64_t cookie, unsigned qcap)
{
  struct icd_channel *ch = calloc(1, sizeof *ch);
  pthread_condattr_t ca;
  if (!ch)
    return NULL;
  ch->eng = e;
  ch->cookie = cookie;
  ch->owner = getpid();
  ch->qmax = qcap ? qcap : 1;
  ch->direct = 1;
  ch->qsize = 64;
  ch->q = calloc(ch->qsize, sizeof *ch->q);
  ch->rt = mmap(NULL, sizeof *ch->rt, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (ch->rt == MAP_FAILED) {
    free(ch->q);
    free(ch);
    errno = ENOMEM;
    return NULL;
  }
  atomic_init(&ch->rt->deflt, RULE_ENC(ICD_ACT_ERRNO, EPERM));
  /* Deadlines are CLOCK_MONOTONIC: a wall-clock step must not stretch a wait. */
  if (pthread_condattr_init(&ca) || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)) {
    munmap(ch->rt, sizeof *ch->rt);
    free(ch->q);
    free(ch);
    errno = EINVAL;
    return NULL;
  }
  if (!ch->q || pthread_mutex_init(&ch->lock, NULL) || pthread_cond_init(&ch->cond, &ca)
      || pthread_rwlock_init(&ch->fdlock, NULL)) {
    pthread_condattr_destroy(&ca);
    munmap(ch->rt, sizeof *ch->rt);
    free(ch->q);
    free(ch);
    errno = ENOMEM;
    return NULL;
  }
  pthread_condattr_destroy(&ca);
  pthread_mutex_lock(&e->lock);
  ch->next = e->chans;
  e->chans = ch;
  pthread_mutex_unlock(&e->lock);
  return ch;
}

int64_t icd_rule_for(struct icd_rules *t, uint32_t arch, int nr)
{
  int64_t rule;
  if (arch != AUDIT_ARCH_X86_64 || nr < 0 || nr >= ICD_NR_MAX)
    return RULE_ENC(ICD_ACT_PYTHON, 0);
  rule = atomic_load_explicit(&t->rules[nr], memory_order_relaxed);
  if (RULE_ACT(rule) == ICD_ACT_DEFAULT)
    rule = atomic_load_explicit(&t->deflt, memory_order_relaxed);
  return rule;
}

static int check_rule(int action, int64_t value)
{
  if (action < ICD_ACT_CONTINUE || action > ICD_ACT_NATIVE)
    return -EINVAL;
  if (value > RULE_VAL_MAX || value < RULE_VAL_MIN)
    return -ERANGE;
  if (action == ICD_ACT_ERRNO && (value <= 0 || value >= 4096))
    return -EINVAL;
  return 0;
}

int icd_channel_set_rule(struct icd_channel *ch, int nr, int action, int64_t value)
{
  int r;
  if (nr < 0 || nr >= ICD_NR_MAX)
    return -EINVAL;
  if (action == ICD_ACT_DEFAULT) {
    atomic_store(&ch->rt->rules[nr], 0);
    return 0;
  }
  if ((r = check_rule(action, value)))
    return r;
  atomic_store(&ch->rt->rules[nr], RULE_ENC(action, value));
  return 0;
}

int icd_channel_set_default(struct icd_channel *ch, int action, int64_t value)
{
  int r = check_rule(action, value);
  if (r)
    return r;
  atomic_store(&ch->rt->deflt, RULE_ENC(action, value));
  return 0;
}

/* Under ch->lock.  Grows the queue up to qmax notifications; detach items
 * always fit, since a lost one would leak the container's state. */
static int queue_push(struct icd_channel *ch, const struct icd_item *it)
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

/* After ch->lock is dropped, so the woken waiter finds it free. */
static void wake_waiters(struct icd_channel *ch, int n)
{
  if (atomic_load(&ch->nwaiters))
    syscall(SYS_futex, &ch->seq, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static void to_python(struct icd_receiver *r, const struct seccomp_notif *n)
{
  struct icd_channel *ch = r->ch;
  struct icd_item it = {
    .kind = ICD_ITEM_NOTIF, .fd = r->fd, .id = n->id, .pid = n->pid, .nr = n->data.nr,
    .arch = n->data.arch, .ip = n->data.instruction_pointer,
  };
  int ret;

  memcpy(it.args, n->data.args, sizeof it.args);
  pthread_mutex_lock(&ch->lock);
  ret = ch->closed ? -EPIPE : queue_push(ch, &it);
  if (ret == 0 && ch->direct && r->sync && !r->delegated && ch->nlive == 1
      && atomic_load(&ch->nwaiters) <= 1) {
    /* Hand the fd to the Python waiter: once it has answered this one it
     * receives the next notification itself (see direct_recv). */
    atomic_store(&r->busy_since, now_ns(CLOCK_MONOTONIC));
    atomic_store(&r->turn, TURN_PY_BUSY);
  }
  pthread_mutex_unlock(&ch->lock);
  if (ret == 0) {
    wake_waiters(ch, 1);
    atomic_fetch_add_explicit(&ch->n_python, 1, memory_order_relaxed);
    return;
  }
  /* Nobody will answer it: fail it now so the target does not hang. */
  atomic_fetch_add_explicit(&ch->n_overflow, 1, memory_order_relaxed);
  if (icd_notify_send(r->fd, n->id, 0, ret == -EPIPE ? -ENOSYS : -EAGAIN, 0) < 0)
    atomic_fetch_add_explicit(&ch->n_send_err, 1, memory_order_relaxed);
}


/* Answers a fast verdict (and records it); 1 if n is for Python instead. */
static int fast_answer(struct icd_receiver *r, const struct seccomp_notif *n)
{
  struct icd_channel *ch = r->ch;
  struct seccomp_notif_resp resp = { .id = n->id };
  struct icd_decision d;
  int64_t rule, value;
  int act, serr = 0;

  rule = icd_rule_for(ch->rt, n->data.arch, n->data.nr);
  act = RULE_ACT(rule);
  value = RULE_VAL(rule);
  switch (act) {
  case ICD_ACT_CONTINUE:
    resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    break;
  case ICD_ACT_ERRNO:
    resp.error = -(int32_t)value;
    break;
  case ICD_ACT_VALUE:
    resp.val = value;
    break;
  default:
    return 1;
  }
  if (ioctl(r->fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0) {
    serr = errno;
    atomic_fetch_add_explicit(&ch->n_send_err, 1, memory_order_relaxed);
  }
  atomic_fetch_add_explicit(&ch->n_fast, 1, memory_order_relaxed);
  /* Recorded after SEND so bookkeeping never sits on the target's round trip. */
  d = (struct icd_decision){
    .cookie = ch->cookie, .id = n->id, .pid = n->pid, .nr = n->data.nr, .action = act,
    .send_errno = serr, .value = value, .ns_time = now_ns(CLOCK_REALTIME),
  };
  memcpy(d.args, n->data.args, sizeof d.args);
  {
    _Atomic int32_t *seen = &ch->seen_pids[n->pid & 255];
    if (atomic_load_explicit(seen, memory_order_relaxed) != (int32_t)n->pid) {
      atomic_store_explicit(seen, (int32_t)n->pid, memory_order_relaxed);
      icd_read_comm(AT_FDCWD, n->pid, d.comm);
    }
  }
  ring_push(ch->eng, &d);
  return 0;
}

static void handle(struct icd_receiver *r, const struct seccomp_notif *n)
{
  if (fast_answer(r, n))
    to_python(r, n);
}

/* While the Python waiter has the fd, the receiver sleeps; it takes the fd
 * back when handed it, when stopped, or when the waiter has been busy (not
 * receiving) for PARK_NS. */
static void park(struct icd_receiver *r)
{
  for (;;) {
    unsigned t = atomic_load(&r->turn);
    struct timespec ts = { 0, PARK_NS };
    if (t == TURN_C || atomic_load(&r->stop))
      return;
    if (t == TURN_PY_BUSY
        && now_ns(CLOCK_MONOTONIC) - atomic_load(&r->busy_since) > PARK_NS) {
      unsigned busy = TURN_PY_BUSY;
      if (atomic_compare_exchange_strong(&r->turn, &busy, TURN_C))
        return;
      continue;
    }
    syscall(SYS_futex, &r->turn, FUTEX_WAIT_PRIVATE, t, &ts, NULL, 0);
  }
}

/* Takes the fd back from a Python waiter (a second fd is attached, or the
 * channel closes): a waiter inside direct_recv is signalled out of poll until
 * it has left, and only while it is in there, so no other call of that thread
 * sees EINTR. */
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

/* ENOENT from RECV means either the target vanished between wake-up and RECV,
 * or every task behind the filter is gone; POLLHUP tells them apart. */
static int filter_orphaned(int fd)
{
  struct pollfd p = { .fd = fd, .events = POLLIN };
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLNVAL));
}

static void receiver_exit(struct icd_receiver *r, int detached)
{
  struct icd_channel *ch = r->ch;
  if (detached) {
    struct icd_item it = { .kind = ICD_ITEM_DETACHED, .fd = r->fd };
    pthread_rwlock_wrlock(&ch->fdlock);
    close(r->fd);
    r->fd_open = 0;
    pthread_rwlock_unlock(&ch->fdlock);
    atomic_fetch_add_explicit(&ch->n_detached, 1, memory_order_relaxed);
    pthread_mutex_lock(&ch->lock);
    if (!ch->closed)
      queue_push(ch, &it);
  } else {
    pthread_mutex_lock(&ch->lock);
  }
  r->running = 0;
  ch->nlive--;
  pthread_cond_broadcast(&ch->cond);
  pthread_mutex_unlock(&ch->lock);
  if (detached)
    wake_waiters(ch, 1);
}

static void prune_receivers(struct icd_channel *ch);

/* Receivers stay allocated (and in the list) until the channel is freed or a
 * pruned one is no longer running and has no fd, so walking it under
 * ch->lock and revoking outside it is safe only with the list snapshot taken
 * under the lock; revocation is idempotent. */
static void revoke_all(struct icd_channel *ch)
{
  struct icd_receiver *r, *todo[64];
  int n = 0, i;
  pthread_mutex_lock(&ch->lock);
  for (r = ch->recvs; r && n < 64; r = r->next)
    if (atomic_load(&r->turn) != TURN_C || r->py_in)
      todo[n++] = r;
  pthread_mutex_unlock(&ch->lock);
  for (i = 0; i < n; i++)
    revoke_turn(todo[i]);
}

static void *receiver_main(void *arg)
{
  struct icd_receiver *r = arg;
  struct seccomp_notif n;
  int detached = 0;

  while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
    if (atomic_load_explicit(&r->turn, memory_order_acquire) != TURN_C) {
      park(r);
      continue;
    }
    if (!r->delegated && atomic_load(&r->delegate)) {
      /* From now on the helper receives; on failure this thread goes on. */
      r->delegated = icd_native_delegate(atomic_load(&r->delegate), r->fd) == 0;
      atomic_store(&r->delegate, NULL);
      if (r->delegated)
        r->native = atomic_load(&r->ch->native);
    }
    if (r->delegated) {
      int what = icd_native_next(r->native, r->fd, &n);
      if (what == ICD_NATIVE_FORWARD)
        handle(r, &n);
      else if (what == ICD_NATIVE_GONE)
        r->delegated = 0;
      else if (what == ICD_NATIVE_DETACHED) {
        detached = 1;
        break;
      }
      continue;
    }
    if (!r->sync) {
      /* Kernels without sync wake-up may block RECV forever after the last
       * task exits; poll sees the hang-up. */
      struct pollfd p = { .fd = r->fd, .events = POLLIN };
      if (poll(&p, 1, -1) < 0) {
        if (errno == EINTR)
          continue;
        break;
      }
      if (!(p.revents & POLLIN) && (p.revents & (POLLHUP | POLLERR | POLLNVAL))) {
        detached = 1;
        break;
      }
    }
    memset(&n, 0, sizeof n);
    if (icd_journal_recv(r->fd, &n) < 0) {
      if (errno == EINTR)
        continue;
      if (errno == ENOENT && !filter_orphaned(r->fd))
        continue;
      detached = 1; /* orphaned, or the fd is unusable: either way it is over */
      break;
    }
    handle(r, &n);
  }
  receiver_exit(r, detached);
  return NULL;
}

int icd_engine_attach(struct icd_engine *e, struct icd_channel *ch, int fd)
{
  struct icd_receiver *r;
  pthread_attr_t attr;
  sigset_t all, old;
  int ret;

  (void)e;
  r = calloc(1, sizeof *r);
  if (!r)
    return -ENOMEM;
  /* Not inherited by anything the daemon spawns. */
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
    ret = -errno;
    free(r);
    return ret;
  }
  if (pthread_mutex_init(&r->py_lock, NULL)) {
    free(r);
    return -ENOMEM;
  }
  r->ch = ch;
  r->fd = fd;
  r->fd_open = 1;
  r->sync = icd_notify_set_sync(fd) == 0;
  if (!r->sync) {
    /* Still a notify fd?  ID_VALID on id 0 gives ENOENT on one, ENOTTY elsewhere. */
    uint64_t id = 0;
    if (ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0 && errno != ENOENT) {
      ret = -errno;
      free(r);
      return ret;
    }
  }

  pthread_mutex_lock(&ch->lock);
  if (ch->closed) {
    pthread_mutex_unlock(&ch->lock);
    free(r);
    return -EPIPE;
  }
  prune_receivers(ch);
  if ((ret = pthread_attr_init(&attr))) {
    pthread_mutex_unlock(&ch->lock);
    free(r);
    return -ret;
  }
  pthread_attr_setstacksize(&attr, 64 * 1024);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  /* The receiver inherits a mask that lets only the stop signal in, so the
   * daemon's own signals keep going to its main thread. */
  sigfillset(&all);
  sigdelset(&all, ICD_STOP_SIGNAL);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  r->running = 1;
  ret = pthread_create(&r->tid, &attr, receiver_main, r);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (ret) {
    pthread_mutex_unlock(&ch->lock);
    free(r);
    return -ret;
  }
  ch->nlive++;
  r->next = ch->recvs;
  ch->recvs = r;
  pthread_mutex_unlock(&ch->lock);
  /* Direct mode serves one fd only: the waiter must watch the queue again. */
  revoke_all(ch);
  return 0;
}

/* Under ch->lock.  A receiver that has left (running == 0) no longer touches
 * its struct, and one with a closed fd can no longer be answered on. */
static void prune_receivers(struct icd_channel *ch)
{
  struct icd_receiver **pp = &ch->recvs, *r;
  while ((r = *pp)) {
    if (!r->running && !r->fd_open && !atomic_load(&r->py_in)) {
      *pp = r->next;
      free(r);
    } else {
      pp = &r->next;
    }
  }
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

/* Direct mode.  A Python-path notification costs the receiver a wake-up and
 * the waiter another: three context switches per call where the minimal
 * agent has two.  So once the receiver has queued one for Python, it parks
 * (TURN_PY_BUSY), and when the waiter comes back for the next item it receives
 * on the fd itself (TURN_PY_RECV): with sync wake-up the target's next call
 * wakes the waiter directly.  Fast verdicts are answered here as on the
 * receiver; a Python-path one is returned (TURN_PY_BUSY again).  Only for a
 * channel with one fd, since the waiter then watches that fd and not the
 * queue; a second attach or close takes the fd back (revoke).  The waiter
 * holds fdlock shared throughout, so the fd cannot be closed under it. */
static void give_back(struct icd_receiver *r)
{
  unsigned recv = TURN_PY_RECV;
  atomic_compare_exchange_strong(&r->turn, &recv, TURN_C);
  syscall(SYS_futex, &r->turn, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void set_busy(struct icd_receiver *r)
{
  unsigned recv = TURN_PY_RECV;
  atomic_store(&r->busy_since, now_ns(CLOCK_MONOTONIC));
  atomic_compare_exchange_strong(&r->turn, &recv, TURN_PY_BUSY);
}

static int direct_recv(struct icd_receiver *r, struct icd_item *it, int timeout_ms)
{
  struct icd_channel *ch = r->ch;
  struct seccomp_notif n;
  int64_t end = timeout_ms > 0 ? now_ns(CLOCK_MONOTONIC) + (int64_t)timeout_ms * 1000000 : 0;

  for (;;) {
    struct pollfd p = { .fd = r->fd, .events = POLLIN };
    int ms = -1, pr;
    if (atomic_load(&r->turn) != TURN_PY_RECV || __atomic_load_n(&ch->closed, __ATOMIC_ACQUIRE))
      return 0;
    if (!end)
      goto recv; /* no deadline: block in RECV itself, one syscall less per call;
                  * revoke's signal (interrupt, attach, close) gets us out */
    {
      int64_t left = end - now_ns(CLOCK_MONOTONIC);
      if (left <= 0) {
        set_busy(r);
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
      if (errno == EINTR || (errno == ENOENT && !filter_orphaned(r->fd)))
        continue;
      give_back(r);
      return 0;
    }
    if (fast_answer(r, &n)) {
      *it = (struct icd_item){
        .kind = ICD_ITEM_NOTIF, .fd = r->fd, .id = n.id, .pid = n.pid, .nr = n.data.nr,
        .arch = n.data.arch, .ip = n.data.instruction_pointer,
      };
      memcpy(it->args, n.data.args, sizeof it->args);
      atomic_fetch_add_explicit(&ch->n_python, 1, memory_order_relaxed);
      atomic_fetch_add_explicit(&ch->n_direct, 1, memory_order_relaxed);
      set_busy(r); /* ours to answer even if revoked meanwhile */
      return 1;
    }
  }
}

/* 1 item, 0 if direct mode is not possible now, -ETIMEDOUT. */
static int try_direct(struct icd_channel *ch, struct icd_item *items, int timeout_ms)
{
  struct icd_receiver *r = NULL, *x;
  unsigned busy = TURN_PY_BUSY;
  int ret = 0;

  pthread_mutex_lock(&ch->lock);
  if (!ch->closed && ch->nlive == 1)
    for (x = ch->recvs; x; x = x->next)
      if (x->running && atomic_load(&x->turn) == TURN_PY_BUSY && !atomic_load(&x->py_in)) {
        r = x;
        pthread_mutex_lock(&r->py_lock);
        atomic_store(&r->py_in, 1); /* also keeps prune_receivers off r */
        r->py_tid = pthread_self();
        pthread_mutex_unlock(&r->py_lock);
        break;
      }
  pthread_mutex_unlock(&ch->lock);
  if (!r)
    return 0;
  pthread_rwlock_rdlock(&ch->fdlock);
  if (r->fd_open && atomic_compare_exchange_strong(&r->turn, &busy, TURN_PY_RECV))
    ret = direct_recv(r, items, timeout_ms);
  pthread_rwlock_unlock(&ch->fdlock);
  pthread_mutex_lock(&r->py_lock);
  atomic_store(&r->py_in, 0);
  pthread_mutex_unlock(&r->py_lock);
  return ret;
}

void icd_channel_interrupt(struct icd_channel *ch)
{
  atomic_store(&ch->kick, 1);
  atomic_fetch_add(&ch->seq, 1);
  wake_waiters(ch, INT_MAX);
  revoke_all(ch);
}

int icd_channel_set_direct(struct icd_channel *ch, int on)
{
  pthread_mutex_lock(&ch->lock);
  ch->direct = !!on;
  pthread_mutex_unlock(&ch->lock);
  if (!on)
    revoke_all(ch);
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
    n = try_direct(ch, items, timeout_ms);
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
    int64_t end = now_ns(CLOCK_MONOTONIC) + (int64_t)spin_us * 1000;
    unsigned i = 0;
    while (!atomic_load_explicit(&ch->qpending, memory_order_acquire)) {
      sched_yield();
      if ((++i & 3) == 0 && now_ns(CLOCK_MONOTONIC) > end)
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
    n = syscall(SYS_futex, &ch->seq, FUTEX_WAIT_BITSET_PRIVATE, seq,
                timeout_ms > 0 ? &dl : NULL, NULL, FUTEX_BITSET_MATCH_ANY);
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

int icd_channel_addfd(struct icd_channel *ch, int fd, uint64_t id, int srcfd,
                      uint32_t newfd_flags, int send)
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

int icd_channel_read(struct icd_channel *ch, int fd, uint64_t id, int pid, uint64_t addr,
                     void *buf, int size, int string)
{
  int ret;
  pthread_rwlock_rdlock(&ch->fdlock);
  ret = fd_attached(ch, fd);
  if (ret == -ENOENT)
    ret = -ICD_ETARGETGONE;
  else if (ret == 0)
    ret = string ? icd_read_target_string(pid, addr, buf, size, fd, id)
                 : icd_read_target(pid, addr, buf, size, fd, id);
  pthread_rwlock_unlock(&ch->fdlock);
  return ret;
}

void icd_channel_stats(struct icd_channel *ch, struct icd_chstats *out)
{
  out->fast = atomic_load(&ch->n_fast);
  out->native_table = atomic_load(&ch->native) ? icd_native_count(atomic_load(&ch->native), ICD_NATIVE_FAST) : 0;
  out->fast += out->native_table;
  out->python = atomic_load(&ch->n_python);
  out->overflow = atomic_load(&ch->n_overflow);
  out->send_errors = atomic_load(&ch->n_send_err);
  out->detached = atomic_load(&ch->n_detached);
  out->direct = atomic_load(&ch->n_direct);
  out->native = atomic_load(&ch->native) ? icd_native_count(atomic_load(&ch->native), ICD_NATIVE_PERFORMED) : 0;
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
  wake_waiters(ch, INT_MAX);
  revoke_all(ch);
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

int icd_channel_set_native(struct icd_channel *ch, const char *list, int len, int pidfd,
                           int pid, int notify_fd)
{
  struct icd_native *nv = atomic_load(&ch->native), *expect = NULL;
  struct icd_receiver *r;
  int ret;

  if (!nv) {
    nv = icd_native_new(ch->cookie);
    if (!nv)
      return -ENOMEM;
    if (!atomic_compare_exchange_strong(&ch->native, &expect, nv)) {
      icd_native_free(nv);
      nv = expect;
    }
  }
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
  atomic_store(&r->delegate, nv);
  /* Out of RECV: the receiver hands its fd over at the top of its loop (a
   * kick lost just before RECV only delays that to the next notification). */
  pthread_kill(r->tid, ICD_STOP_SIGNAL);
  pthread_mutex_unlock(&ch->lock);
  /* And out of direct mode, where a Python waiter would receive too. */
  revoke_all(ch);
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
  munmap(ch->rt, sizeof *ch->rt);
  pthread_rwlock_destroy(&ch->fdlock);
  pthread_cond_destroy(&ch->cond);
  pthread_mutex_destroy(&ch->lock);
  free(ch->q);
  free(ch);
}

/* Closes every channel; they stay allocated until their owners free them. */
void icd_engine_close(struct icd_engine *e)
{
  struct icd_channel *ch;
  for (;;) {
    pthread_mutex_lock(&e->lock);
    for (ch = e->chans; ch; ch = ch->next) {
      pthread_mutex_lock(&ch->lock);
      int open = !ch->closed;
      pthread_mutex_unlock(&ch->lock);
      if (open)
        break;
    }
    pthread_mutex_unlock(&e->lock);
    if (!ch)
      return;
    icd_channel_close(ch);
  }
}

void icd_engine_free(struct icd_engine *e)
{
  struct icd_channel *ch;

  if (getpid() != e->owner)
    return; /* see icd_channel_close */
  icd_engine_close(e);
  pthread_mutex_lock(&e->lock);
  for (ch = e->chans; ch; ch = ch->next)
    ch->eng = NULL; /* orphaned channels are freed by their owners */
  pthread_mutex_unlock(&e->lock);
  pthread_mutex_destroy(&e->lock);
  free(e->ring);
  free(e);
}
