/* Internal to csrc/: the notify engine's objects, shared by engine.c (the
 * engine and its decision ring), channel.c (a container's queue, waiters and
 * fd-guarded answers), receiver.c (one thread per notify fd) and direct.c
 * (the direct-mode turn protocol between a receiver and the Python waiter). */
#ifndef ICD_ENGINE_H
#define ICD_ENGINE_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "icd.h"
#include "internal.h"
#include "rules.h"

/* Who receives on a receiver's fd (see direct.c). */
#define TURN_C 0       /* the receiver thread */
#define TURN_PY_BUSY 1 /* handed to the Python waiter, which is handling an item */
#define TURN_PY_RECV 2 /* the Python waiter is receiving on the fd itself */

struct icd_native;
struct seccomp_notif;

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
   * and whether it does: the receiver then waits for what it forwards.  The
   * fd goes over at the first call the helper is for (icd_receiver_handoff),
   * not at its start: until then the Python path keeps direct mode. */
  struct icd_native *_Atomic delegate;
  struct icd_native *native;
  atomic_int delegated; /* set by whoever hands off (a direct-mode waiter too) */
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
  int revoking; /* revokes under way outside the lock: no receiver is freed */
  pid_t owner;  /* receivers are threads of this process only */
  int direct;   /* direct mode allowed (icd_channel_set_direct) */
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

/* engine.c: records a decision in the engine's ring (dropped when full). */
void icd_engine_record(struct icd_engine *e, const struct icd_decision *d);

/* channel.c.  Under ch->lock: queues an item for the Python waiters (-EAGAIN
 * when the channel's notifications are at their cap). */
int icd_queue_push(struct icd_channel *ch, const struct icd_item *it);
/* After ch->lock is dropped: wakes up to n waiters. */
void icd_wake_waiters(struct icd_channel *ch, int n);

/* receiver.c.  Answers n, just received, by the verdict table and records
 * it: 0; 1 if n is for Python instead. */
int icd_fast_answer(struct icd_receiver *r, const struct seccomp_notif *n);
/* An ENOENT from RECV with the filter orphaned (every task behind it gone). */
int icd_filter_orphaned(int fd);
/* n, just received on r's fd by whoever holds its turn, is a mount-family
 * call and r's native helper is waiting for the fd: hands both over (1; the
 * caller must not touch n, and r's receiver waits for the helper from then
 * on), else 0. */
int icd_receiver_handoff(struct icd_receiver *r, const struct seccomp_notif *n);

/* direct.c: the turn protocol. */
/* Under ch->lock, after queueing r's notification for Python: hands the fd
 * to the Python waiter where direct mode applies. */
void icd_direct_offer(struct icd_receiver *r);
/* The receiver's wait while the Python waiter has its fd. */
void icd_direct_park(struct icd_receiver *r);
/* Takes every fd back from Python waiters (attach, close, interrupt). */
void icd_direct_revoke_all(struct icd_channel *ch);
/* The waiter's receive: 1 item, 0 if direct mode is not possible now, or
 * -ETIMEDOUT. */
int icd_direct_wait(struct icd_channel *ch, struct icd_item *items, int timeout_ms);

#endif
