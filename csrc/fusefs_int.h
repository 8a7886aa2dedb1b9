/* fusefs internals shared by fusefs.c (lifecycle), fusefs_tree.c (the node
 * table), fusefs_ctr.c (containers, parked requests, renders pushed from
 * Python), fusefs_proto.c (the /dev/fuse request loop) and fusefs_reply.c
 * (answers and open-file handles).  Not part of the cffi interface (that is
 * fusefs.h). */
#ifndef ICD_FUSEFS_INT_H
#define ICD_FUSEFS_INT_H

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fuse.h>
#include <linux/nsfs.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fusefs.h"
#include "internal.h"

/* Workers stop on ICD_STOP_SIGNAL (internal.h), with a no-op handler as in
 * engine.c: it only makes a blocked read(2) on /dev/fuse return EINTR so a
 * worker sees the stop flag. */
#define FUSE_MAGIC 0x65735546
#define MAX_WORKERS 16
#define MAX_NODES 65536
#define MAX_BLOB (1 << 20) /* one rendered file */
#define NS_DEPTH 33        /* the kernel nests pid namespaces 32 deep */
#define NBUCKET 256
#define MAX_ALIASES 1024
#define MAX_UNKNOWN_PARKED 1024 /* opens waiting for their namespace's register */
#define RQ_CAP 4096
#define BUF_SIZE (FUSE_MIN_READ_BUFFER + 65536)
#define MAX_WRITE ICD_FUSE_MAX_WRITE /* a sysctl value (the kernel takes less than a page) */
#define TTL_S 3600                   /* names (and directories) never change while mounted */
/* Open file handles: a table of renders, fh = epoch << 32 | slot + 1
 * (fusefs_reply.c); chunks are never moved, so a READ looks up without a lock. */
#define HCHUNK 4096
#define HCHUNKS 1024
/* linux/fuse.h 7.40 (Linux 6.9): the kernel queues again every request read
 * from the connection and not answered (Debian 12's headers are 7.38). */
#define ICD_FUSE_NOTIFY_RESEND 7

struct node {
  char *name;
  uint32_t parent, child, next; /* indexes + 1; 0: none */
  uint32_t id;                  /* the node id the kernel holds: a hash of the path */
  int32_t file;                 /* -1: a directory */
};

struct fspec {
  uint32_t node;
  int64_t fresh_ns, stale_ns;
  uint64_t size;
  int writable;              /* a /proc/sys value: WRITEs go to Python (icd_fuse_writable) */
  struct icd_fuse_fstats st; /* updated with relaxed atomics */
};

/* One render, shared by the entry and every open file handle made from it. */
struct blob {
  atomic_uint refs;
  uint32_t len;
  char data[];
};

struct entry {
  struct blob *b;
  int64_t at;  /* when b (or err) arrived */
  int64_t req; /* when a render was last requested */
  int err;     /* the last render failed with this errno */
  int requested;
};

struct ctr {
  uint64_t key, ino;
  int nsfd;
  struct ctr *next_key, *next_ino;
  struct entry e[];
};

/* A nested pid namespace known to belong to a container.  fd pins it, so
 * its inode number is not reused while the alias exists. */
struct alias {
  uint64_t ino, key;
  int fd;
  struct alias *next;
};

struct parked {
  uint64_t unique, key;
  uint64_t ino; /* unknown: the reader's pid namespace, waiting for its register */
  int file, unknown;
  int read;      /* a READ of a predecessor's handle: answered with bytes */
  uint64_t roff; /* its offset and size */
  uint32_t rsize;
  int64_t t0, deadline;
  /* A WRITE waiting for Python's answer (icd_fuse_write_done), not an open. */
  uint32_t wid, uid, pid, wlen;
  char *wdata;
  struct parked *next;
};

struct icd_fuse {
  int fd, procfd;
  int nworkers, nthreads, wait_ms;
  pid_t owner; /* threads and mount are this process's (not a fork's) */
  uint32_t minor;
  uint64_t dev, self_ino;
  int64_t t_start;
  char *mountpoint;
  pthread_t workers[MAX_WORKERS], reaper;
  int nlive, reaper_on, started, adopted;
  atomic_int stopping;

  struct node *nodes;
  uint32_t nnodes, capnodes;
  uint32_t *idtab, idcap; /* node id -> index + 1, open addressing */

  uint32_t epoch; /* this server's handles: a predecessor's have another */
  pthread_mutex_t hmu;
  struct blob **hchunk[HCHUNKS];
  uint32_t hnext, *hfree, nfree, capfree;
  struct fspec *files;
  int nfiles, capfiles;

  pthread_mutex_t mu; /* everything below */
  pthread_cond_t rqcond, reapcond, livecond;
  struct ctr *by_key[NBUCKET], *by_ino[NBUCKET];
  struct alias *aliases[NBUCKET];
  int naliases, ncontainers;
  struct parked *parked;
  int nparked, nunknown;
  struct icd_fuse_req rq[RQ_CAP];
  int rq_head, rq_len, kick;
  uint32_t next_wid; /* ids of parked WRITEs */
  int writers;       /* threads outside mu about to write replies (icd_fuse_set/fail) */

  atomic_ullong requests, unknown, interrupts, queue_full, handles, write_errors, read_errors;
  atomic_ullong foreign; /* READs of a predecessor's handles */
};

#define HIDDEN __attribute__((visibility("hidden")))

static inline int64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void add(uint64_t *c, uint64_t v)
{
  __atomic_fetch_add(c, v, __ATOMIC_RELAXED);
}

static inline void note_latency(struct fspec *s, int64_t t0, int is_read)
{
  uint64_t ns = (uint64_t)(now_ns() - t0), us = ns / 1000, m;
  int i = us ? 64 - __builtin_clzll(us) : 0;

  add(is_read ? &s->st.read_ns : &s->st.open_ns, ns);
  add(&s->st.hist[i < ICD_FUSE_HIST ? i : ICD_FUSE_HIST - 1], 1);
  m = __atomic_load_n(&s->st.max_ns, __ATOMIC_RELAXED);
  while (
      ns > m
      && !__atomic_compare_exchange_n(&s->st.max_ns, &m, ns, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
    ;
}

static inline struct blob *blob_ref(struct blob *b)
{
  atomic_fetch_add(&b->refs, 1);
  return b;
}

static inline void blob_unref(struct blob *b)
{
  if (b && atomic_fetch_sub(&b->refs, 1) == 1)
    free(b);
}

/* The files call one way: fusefs.c (lifecycle) -> fusefs_proto.c (the
 * request loop) -> fusefs_ctr.c (containers, parked requests) and
 * fusefs_tree.c (nodes) -> fusefs_reply.c (answers, handles); none calls a
 * file above it. */
/* fusefs_proto.c */
HIDDEN void *fs_worker(void *arg);
/* fusefs_reply.c */
HIDDEN int fs_reply_err(struct icd_fuse *f, uint64_t unique, int err);
HIDDEN int fs_reply(struct icd_fuse *f, uint64_t unique, const void *p, size_t len);
HIDDEN void fs_reply_open(struct icd_fuse *f, uint64_t unique, struct blob *b);
HIDDEN void fs_reply_bytes(struct icd_fuse *f, uint64_t unique, struct blob *b, uint64_t off,
                           uint32_t size);
HIDDEN struct blob *fs_handle_get(struct icd_fuse *f, uint64_t fh);
HIDDEN struct blob *fs_handle_drop(struct icd_fuse *f, uint64_t fh);
HIDDEN void fs_free_handles(struct icd_fuse *f);
/* fusefs_tree.c */
HIDDEN void fs_fill_attr(struct icd_fuse *f, uint32_t idx, struct fuse_attr *a);
HIDDEN int fs_node_of(struct icd_fuse *f, uint64_t nodeid, uint32_t *idx);
HIDDEN uint32_t fs_child_named(struct icd_fuse *f, uint32_t dir, const char *name, size_t len);
HIDDEN int fs_new_node(struct icd_fuse *f, uint32_t parent, const char *name, size_t len,
                       int32_t file);
/* fusefs_ctr.c */
HIDDEN struct ctr *fs_reader_ctr(struct icd_fuse *f, uint32_t pid);
HIDDEN void fs_drop_aliases(struct icd_fuse *f, int all, uint64_t key);
HIDDEN void fs_request_render(struct icd_fuse *f, struct ctr *c, int file, int64_t now);
HIDDEN int fs_park_unknown(struct icd_fuse *f, struct fuse_in_header *h, int file, int64_t t0,
                           const struct fuse_read_in *rd);
HIDDEN struct parked *fs_take_parked(struct icd_fuse *f, uint64_t key, int file, int64_t before);
HIDDEN void fs_answer_parked(struct icd_fuse *f, struct parked *p, struct blob *b, int err,
                             int timeout);
HIDDEN void fs_writer_done(struct icd_fuse *f);
HIDDEN void fs_free_parked(struct parked *p);
HIDDEN void fs_park_write(struct icd_fuse *f, struct fuse_in_header *h, int file, const char *data,
                          uint32_t len, int64_t t0);
HIDDEN void *fs_reaper(void *arg);

#endif
