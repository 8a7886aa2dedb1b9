/* Internal to native.c (the helper) and native_daemon.c (the daemon's side):
 * their messages, the memory they share and the daemon's handle. */
#ifndef ICD_NATIVE_INT_H
#define ICD_NATIVE_INT_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "icd.h"
#include "native.h"
#include "seccomp_compat.h"

#define NATIVE_FSTYPES 512
#define RING 4096 /* records in flight to the daemon: its pump drains every 75 ms */
#define START_TIMEOUT_MS 10000

/* Messages on the socketpair. */
#define MSG_HELLO 1    /* helper -> daemon: err, after entering */
#define MSG_TAKE 2     /* daemon -> helper: the notify fd (SCM_RIGHTS) */
#define MSG_FORWARD 3  /* helper -> daemon: a notification for the daemon */
#define MSG_DETACHED 4 /* helper -> daemon: the filter has no task left */

/* A record's reason as the helper leaves it: reason[0] is one of these, the
 * strings it quotes follow (native.c pack_reason); icd_native_drain words it
 * in the Python policy's words, so the helper formats nothing on its path. */
#define NATIVE_REASON_NONE 0    /* "" (a table rule) */
#define NATIVE_REASON_MOUNT 1   /* fstype, source, target, data ("" when absent) */
#define NATIVE_REASON_UMOUNT 2  /* target */
#define NATIVE_REASON_SYSINFO 3 /* nothing quoted */

struct msg {
  int32_t kind;
  int32_t err;
  struct seccomp_notif n;
};

/* Shared (MAP_SHARED) between the daemon and its helper. */
struct shared {
  _Atomic uint64_t current;    /* notification the helper holds, 0 if none */
  _Atomic uint32_t head, tail; /* ring: the helper writes at tail */
  _Atomic uint64_t count;      /* mount-family calls it performed */
  _Atomic uint64_t fast;       /* calls it answered by the channel's table */
  _Atomic uint64_t dropped;
  _Atomic int stop; /* a hand-over: finish the call in hand, then exit */
  /* Held by whoever vets and performs a mount-family call of this container:
   * the helper, or the daemon's Python path (icd_channel_act_lock).  Both
   * check what is on top of a path and then act on the path: a umount by the
   * other in between would make the second unmount what lay beneath (a mask).
   * Process-shared and robust: a holder that dies leaves it usable. */
  pthread_mutex_t act;
  struct icd_decision rec[RING];
};

/* 0 with sh->act held, or -errno. */
static inline int icd_native_act_lock(struct shared *sh)
{
  int r = pthread_mutex_lock(&sh->act);
  if (r == EOWNERDEAD) /* its holder died: what it guarded is the kernel's state */
    r = pthread_mutex_consistent(&sh->act);
  return -r;
}

struct icd_native {
  pthread_mutex_t lock; /* start, close */
  uint64_t cookie;
  char fstypes[NATIVE_FSTYPES];
  int sock;  /* the daemon's end, -1 once closed */
  pid_t pid; /* the helper, our child */
  int closed;
  struct shared *sh;
  struct icd_rules *rt; /* the channel's table (shared with the helper) */
};

ssize_t icd_native_send_msg(int sock, const struct msg *m, int fd);
/* One message, and the fd it carries (or -1): bytes read, 0 at EOF, -errno. */
ssize_t icd_native_recv_msg(int sock, struct msg *m, int *fd);
/* The helper process's life, in the child the daemon forked (native.c). */
void icd_native_helper_main(pid_t parent, int pidfd, int pid, int sock, struct icd_native *nv);

#endif
