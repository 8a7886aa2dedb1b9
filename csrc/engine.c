/* The notify engine: one blocking receiver thread per notify fd (receiver.c).
 * Fast verdicts are answered on the receiver thread right after RECV;
 * Python-path notifications are queued on their channel (channel.c) and the
 * receiver goes straight back to RECV, so a slow handler only ever delays its
 * own container.  This file: the engine, its channel list and the ring of
 * decisions made without Python, drained by the daemon for its events. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "native.h"

static void stop_handler(int sig)
{
  (void)sig;
}

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

int icd_engine_new(unsigned ring_cap, struct icd_engine **out)
{
  struct icd_engine *e;

  pthread_once(&sig_once, install_stop_signal);
  if (sig_err)
    return -sig_err;
  e = calloc(1, sizeof *e);
  if (!e)
    return -ENOMEM;
  e->owner = getpid();
  e->cap = ring_cap ? ring_cap : 1;
  e->ring = calloc(e->cap, sizeof *e->ring);
  if (!e->ring || pthread_mutex_init(&e->lock, NULL)) {
    free(e->ring);
    free(e);
    return -ENOMEM;
  }
  *out = e;
  return 0;
}

void icd_engine_record(struct icd_engine *e, const struct icd_decision *d)
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
