/* Receivers: one thread per attached notify fd.  It answers what the
 * channel's verdict table decides right after RECV, queues the rest for the
 * Python waiters, and detaches the fd once every task behind it is gone.  A
 * receiver whose fd was delegated to the native helper (native.c) waits for
 * what the helper forwards instead of receiving itself. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "engine.h"
#include "internal.h"
#include "journal.h"
#include "native.h"
#include "rules.h"
#include "seccomp_compat.h"

static void to_python(struct icd_receiver *r, const struct seccomp_notif *n)
{
  struct icd_channel *ch = r->ch;
  struct icd_item it = {
    .kind = ICD_ITEM_NOTIF,
    .fd = r->fd,
    .id = n->id,
    .pid = n->pid,
    .nr = n->data.nr,
    .arch = n->data.arch,
    .ip = n->data.instruction_pointer,
  };
  int ret;

  memcpy(it.args, n->data.args, sizeof it.args);
  pthread_mutex_lock(&ch->lock);
  ret = ch->closed ? -EPIPE : icd_queue_push(ch, &it);
  if (ret == 0)
    icd_direct_offer(r);
  pthread_mutex_unlock(&ch->lock);
  if (ret == 0) {
    icd_wake_waiters(ch, 1);
    atomic_fetch_add_explicit(&ch->n_python, 1, memory_order_relaxed);
    return;
  }
  /* Nobody will answer it: fail it now so the target does not hang. */
  atomic_fetch_add_explicit(&ch->n_overflow, 1, memory_order_relaxed);
  if (icd_notify_send(r->fd, n->id, 0, ret == -EPIPE ? -ENOSYS : -EAGAIN, 0) < 0)
    atomic_fetch_add_explicit(&ch->n_send_err, 1, memory_order_relaxed);
}

int icd_fast_answer(struct icd_receiver *r, const struct seccomp_notif *n)
{
  struct icd_channel *ch = r->ch;
  struct seccomp_notif_resp resp = { .id = n->id };
  struct icd_decision d;
  int64_t rule, value, recv_ns, sent_ns;
  int act, serr = 0, canned;

  rule = icd_rule_for(ch->rt, n->data.arch, n->data.nr);
  act = RULE_ACT(rule);
  value = RULE_VAL(rule);
  switch (act) {
  case ICD_ACT_SYSINFO:
    canned = icd_canned_sysinfo(ch->rt, AT_FDCWD, r->fd, n);
    if (canned == 1)
      return 1;
    /* Recorded as the value (or error) it answered with. */
    act = canned ? ICD_ACT_ERRNO : ICD_ACT_VALUE;
    value = -canned;
    resp.error = canned;
    break;
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
  /* The table lookup since RECV took a few loads: read the clock only for the
   * calls answered here, the Python path's are timed by the daemon. */
  recv_ns = icd_now_ns(CLOCK_MONOTONIC);
  /* EINTR: the fd's lock was contended and a signal came (a direct-mode
   * waiter is signalled out at revoke); nothing was sent, so again. */
  while (ioctl(r->fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0) {
    if (errno == EINTR)
      continue;
    serr = errno;
    atomic_fetch_add_explicit(&ch->n_send_err, 1, memory_order_relaxed);
    break;
  }
  sent_ns = icd_now_ns(CLOCK_MONOTONIC);
  atomic_fetch_add_explicit(&ch->n_fast, 1, memory_order_relaxed);
  /* Recorded after SEND so bookkeeping never sits on the target's round trip. */
  d = (struct icd_decision){
    .cookie = ch->cookie,
    .id = n->id,
    .pid = n->pid,
    .nr = n->data.nr,
    .action = act,
    .send_errno = serr,
    .value = value,
    .ns_time = icd_now_ns(CLOCK_REALTIME),
    .recv_ns = recv_ns,
    .sent_ns = sent_ns,
  };
  if (RULE_ACT(rule) == ICD_ACT_SYSINFO)
    snprintf(d.reason, sizeof d.reason, "sysinfo emulated (shared figures)");
  memcpy(d.args, n->data.args, sizeof d.args);
  {
    _Atomic int32_t *seen = &ch->seen_pids[n->pid & 255];
    if (atomic_load_explicit(seen, memory_order_relaxed) != (int32_t)n->pid) {
      atomic_store_explicit(seen, (int32_t)n->pid, memory_order_relaxed);
      icd_read_comm(AT_FDCWD, n->pid, d.comm);
    }
  }
  icd_engine_record(ch->eng, &d);
  return 0;
}

int icd_receiver_handoff(struct icd_receiver *r, const struct seccomp_notif *n)
{
  struct icd_native *nv = atomic_load(&r->delegate);
  int act;

  if (!nv)
    return 0;
  act = RULE_ACT(icd_rule_for(r->ch->rt, n->data.arch, n->data.nr));
  if (act != ICD_ACT_NATIVE && act != ICD_ACT_HOLD)
    return 0;
  /* Every forward the helper makes is a hop more for the Python path's calls,
   * so it gets the fd only once the container makes a call it is for. */
  atomic_store(&r->delegate, NULL);
  if (icd_native_delegate(nv, r->fd, n))
    return 0; /* the Python path decides this one, as without a helper */
  r->native = atomic_load(&r->ch->native);
  atomic_store(&r->delegated, 1); /* after native: the receiver reads them in this order */
  return 1;
}

static void handle(struct icd_receiver *r, const struct seccomp_notif *n)
{
  if (icd_fast_answer(r, n))
    to_python(r, n);
}

/* ENOENT from RECV means either the target vanished between wake-up and RECV,
 * or every task behind the filter is gone; POLLHUP tells them apart. */
int icd_filter_orphaned(int fd)
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
      icd_queue_push(ch, &it);
  } else {
    pthread_mutex_lock(&ch->lock);
  }
  r->running = 0;
  ch->nlive--;
  pthread_cond_broadcast(&ch->cond);
  pthread_mutex_unlock(&ch->lock);
  if (detached)
    icd_wake_waiters(ch, 1);
}

static void *receiver_main(void *arg)
{
  struct icd_receiver *r = arg;
  struct seccomp_notif n;
  int detached = 0;

  while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
    if (atomic_load_explicit(&r->turn, memory_order_acquire) != TURN_C) {
      icd_direct_park(r);
      continue;
    }
    if (atomic_load(&r->delegated)) {
      int what = icd_native_next(r->native, r->fd, &n);
      if (what == ICD_NATIVE_FORWARD)
        handle(r, &n);
      else if (what == ICD_NATIVE_GONE)
        atomic_store(&r->delegated, 0);
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
      if (errno == ENOENT && !icd_filter_orphaned(r->fd))
        continue;
      detached = 1; /* orphaned, or the fd is unusable: either way it is over */
      break;
    }
    if (!icd_receiver_handoff(r, &n))
      handle(r, &n);
  }
  receiver_exit(r, detached);
  return NULL;
}

/* Under ch->lock.  A receiver that has left (running == 0) no longer touches
 * its struct, and one with a closed fd can no longer be answered on; none
 * while a revoke holds pointers to them (icd_direct_revoke_all). */
static void prune_receivers(struct icd_channel *ch)
{
  struct icd_receiver **pp = &ch->recvs, *r;
  if (ch->revoking)
    return;
  while ((r = *pp)) {
    if (!r->running && !r->fd_open && !atomic_load(&r->py_in)) {
      *pp = r->next;
      free(r);
    } else {
      pp = &r->next;
    }
  }
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
  icd_direct_revoke_all(ch);
  return 0;
}
