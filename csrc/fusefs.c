/* The emulated /proc and /sys files: a read-only FUSE tree served over the
 * raw /dev/fuse protocol (linux/fuse.h) by a few C threads.
 *
 * Why raw and not libfuse: the tree is static and read-only, so a dozen
 * opcodes do; the raw protocol lets us park an open that waits for a render
 * and answer it later from another thread (libfuse's session loop would tie
 * a worker to it), mount with mount(2) directly (no fusermount), and keep
 * the request path free of any library thread model.
 *
 * Content: bytes rendered by Python per (container, file), held here.  An
 * open resolves the reader's container from fuse_in_header.pid (host pid ->
 * its pid namespace inode -> a registered container, walking up nested pid
 * namespaces), takes a reference to the container's current bytes for the
 * file and serves every READ of that open from that one snapshot, so a
 * reader never sees two renders spliced.  Fresh bytes are served as they
 * are; stale ones are served while a refresh is requested from Python;
 * never-rendered or too old ones park the open (no thread waits) until the
 * render arrives, the wait times out (EIO) or the reader is interrupted. */
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
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fusefs.h"

/* The same signal and no-op handler as engine.c: it only makes a blocked
 * read(2) on /dev/fuse return EINTR so a worker sees the stop flag. */
#define STOP_SIGNAL (SIGRTMIN + 7)
#define FUSE_MAGIC 0x65735546
#define MAX_WORKERS 16
#define MAX_NODES 65536
#define MAX_BLOB (1 << 20)   /* one rendered file */
#define NS_DEPTH 33          /* the kernel nests pid namespaces 32 deep */
#define NBUCKET 256
#define MAX_ALIASES 1024
#define MAX_UNKNOWN_PARKED 1024 /* opens waiting for their namespace's register */
#define RQ_CAP 4096
#define BUF_SIZE (FUSE_MIN_READ_BUFFER + 65536)
#define MAX_WRITE 4096       /* nothing is ever written; the kernel wants a value */
#define TTL_S 3600           /* names (and directories) never change while mounted */

struct node {
  char *name;
  uint32_t parent, child, next; /* indexes + 1; 0: none */
  int32_t file;                 /* -1: a directory */
};

struct fspec {
  uint32_t node;
  int64_t fresh_ns, stale_ns;
  uint64_t size;
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
  int64_t at;   /* when b (or err) arrived */
  int64_t req;  /* when a render was last requested */
  int err;      /* the last render failed with this errno */
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
  int64_t t0, deadline;
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
  int nlive, reaper_on, started;
  atomic_int stopping;

  struct node *nodes;
  uint32_t nnodes, capnodes;
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
  int writers; /* threads outside mu about to write replies (icd_fuse_set/fail) */

  atomic_ullong requests, unknown, interrupts, queue_full, handles, write_errors, read_errors;
};

static struct ctr *reader_ctr(struct icd_fuse *f, uint32_t pid);

static void stop_handler(int sig) { (void)sig; }

static int64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void add(uint64_t *c, uint64_t v) { __atomic_fetch_add(c, v, __ATOMIC_RELAXED); }

static void note_latency(struct fspec *s, int64_t t0, int is_read)
{
  uint64_t ns = (uint64_t)(now_ns() - t0), us = ns / 1000, m;
  int i = us ? 64 - __builtin_clzll(us) : 0;

  add(is_read ? &s->st.read_ns : &s->st.open_ns, ns);
  add(&s->st.hist[i < ICD_FUSE_HIST ? i : ICD_FUSE_HIST - 1], 1);
  m = __atomic_load_n(&s->st.max_ns, __ATOMIC_RELAXED);
  while (ns > m && !__atomic_compare_exchange_n(&s->st.max_ns, &m, ns, 0, __ATOMIC_RELAXED,
                                                 __ATOMIC_RELAXED))
    ;
}

static struct blob *blob_ref(struct blob *b)
{
  atomic_fetch_add(&b->refs, 1);
  return b;
}

static void blob_unref(struct blob *b)
{
  if (b && atomic_fetch_sub(&b->refs, 1) == 1)
    free(b);
}

/* ---- replies ---- */

static int reply_iov(struct icd_fuse *f, uint64_t unique, int err, struct iovec *iov, int n)
{
  struct fuse_out_header oh;
  size_t len = sizeof oh;
  int i;

  for (i = 1; i < n; i++)
    len += iov[i].iov_len;
  oh.len = (uint32_t)len;
  oh.error = -err;
  oh.unique = unique;
  iov[0].iov_base = &oh;
  iov[0].iov_len = sizeof oh;
  /* ENOENT: the request is gone (its reader was interrupted or the
   * connection aborted); nothing to undo since replies carry no state. */
  if (writev(f->fd, iov, n) < 0) {
    atomic_fetch_add(&f->write_errors, 1);
    return -errno;
  }
  return 0;
}

static int reply_err(struct icd_fuse *f, uint64_t unique, int err)
{
  struct iovec iov[1];
  return reply_iov(f, unique, err, iov, 1);
}

static int reply(struct icd_fuse *f, uint64_t unique, const void *p, size_t len)
{
  struct iovec iov[2] = {{0}, {(void *)p, len}};
  return reply_iov(f, unique, 0, iov, 2);
}

/* The open's answer: the handle is a counted reference to one render.  A
 * failed write (reader gone) gives the reference back: no RELEASE follows. */
static void reply_open(struct icd_fuse *f, uint64_t unique, struct blob *b)
{
  struct fuse_open_out o;

  memset(&o, 0, sizeof o);
  o.fh = (uint64_t)(uintptr_t)b;
  /* Direct I/O: every read comes here, so size 0 in stat works like procfs;
   * no flush: close(2) then costs no round trip. */
  o.open_flags = FOPEN_DIRECT_IO | FOPEN_NOFLUSH;
  atomic_fetch_add(&f->handles, 1);
  if (reply(f, unique, &o, sizeof o) < 0) {
    atomic_fetch_sub(&f->handles, 1);
    blob_unref(b);
  }
}

/* ---- tree ---- */

/* A file's size is that of the reader's container's current bytes (at
 * least 1: 0 would make sendfile see EOF at once, see do_read), or the
 * file's configured size for a reader in no container or before the first
 * render; so readers that trust st_size (fstat, then read that much) get it
 * all.  Hence a file's attributes are never cached (attr_valid 0), which
 * costs nothing on open: without default_permissions the kernel sends no
 * GETATTR for an open. */
static void fill_attr(struct icd_fuse *f, uint32_t idx, uint32_t pid, struct fuse_attr *a)
{
  struct node *n = &f->nodes[idx];
  struct ctr *c;
  struct blob *b;

  memset(a, 0, sizeof *a);
  a->ino = idx + 1;
  a->atime = a->mtime = a->ctime = (uint64_t)(f->t_start / 1000000000);
  a->blksize = 4096;
  if (n->file < 0) {
    a->mode = S_IFDIR | 0555;
    a->nlink = 2;
    return;
  }
  a->mode = S_IFREG | 0444;
  a->nlink = 1;
  a->size = f->files[n->file].size;
  if ((c = reader_ctr(f, pid))) {
    if ((b = c->e[n->file].b))
      a->size = b->len ? b->len : 1;
    pthread_mutex_unlock(&f->mu);
  }
}

static int node_of(struct icd_fuse *f, uint64_t nodeid, uint32_t *idx)
{
  if (nodeid < 1 || nodeid > f->nnodes)
    return -ENOENT;
  *idx = (uint32_t)(nodeid - 1);
  return 0;
}

static uint32_t child_named(struct icd_fuse *f, uint32_t dir, const char *name, size_t len)
{
  uint32_t c;

  for (c = f->nodes[dir].child; c; c = f->nodes[c - 1].next)
    if (strlen(f->nodes[c - 1].name) == len && !memcmp(f->nodes[c - 1].name, name, len))
      return c;
  return 0;
}

static int new_node(struct icd_fuse *f, uint32_t parent, const char *name, size_t len,
                    int32_t file)
{
  struct node *n;
  uint32_t *link;

  if (f->nnodes >= MAX_NODES)
    return -ENOSPC;
  if (f->nnodes == f->capnodes) {
    uint32_t cap = f->capnodes ? f->capnodes * 2 : 64;
    struct node *p = realloc(f->nodes, cap * sizeof *p);
    if (!p)
      return -ENOMEM;
    f->nodes = p;
    f->capnodes = cap;
  }
  n = &f->nodes[f->nnodes];
  memset(n, 0, sizeof *n);
  if (!(n->name = strndup(name, len)))
    return -ENOMEM;
  n->file = file;
  n->parent = parent + 1;
  /* Appended, so READDIR lists entries in the order they were added. */
  if (f->nnodes) {
    for (link = &f->nodes[parent].child; *link; link = &f->nodes[*link - 1].next)
      ;
    *link = f->nnodes + 1;
  }
  return (int)f->nnodes++;
}

/* Walks `path` ('/'-separated, relative) in the tree: checks it (dry run:
 * nothing made, so a refused path leaves no directories behind) or makes
 * its missing directories and the file.  The file's node index, or -errno. */
static int make_path(struct icd_fuse *f, const char *path, int dry)
{
  uint32_t dir = 0, c = 0;
  const char *p = path, *e;
  size_t len;
  int ret, missing = 0;

  while (*p == '/')
    p++;
  for (;;) {
    e = strchrnul(p, '/');
    len = (size_t)(e - p);
    if (!len || len > NAME_MAX || (len == 1 && p[0] == '.') ||
        (len == 2 && p[0] == '.' && p[1] == '.'))
      return -EINVAL; /* also a trailing or doubled '/' */
    if (!missing && !(c = child_named(f, dir, p, len)))
      missing = 1;
    if (!*e) /* the file itself */
      break;
    if (!missing && f->nodes[c - 1].file >= 0)
      return -ENOTDIR;
    if (missing && !dry) {
      if ((ret = new_node(f, dir, p, len, -1)) < 0)
        return ret;
      c = (uint32_t)ret + 1;
    }
    if (!missing || !dry)
      dir = c - 1;
    p = e + 1;
  }
  if (!missing)
    return -EEXIST;
  return dry ? 0 : new_node(f, dir, p, len, f->nfiles);
}

int icd_fuse_add_file(struct icd_fuse *f, const char *path, int fresh_ms, int max_stale_ms,
                      uint64_t size)
{
  int ret;

  if (f->mountpoint)
    return -EBUSY;
  if (fresh_ms < 0 || max_stale_ms < fresh_ms)
    return -EINVAL;
  if ((ret = make_path(f, path, 1)) < 0)
    return ret;
  if (f->nfiles == f->capfiles) {
    int cap = f->capfiles ? f->capfiles * 2 : 32;
    struct fspec *s = realloc(f->files, (size_t)cap * sizeof *s);
    if (!s)
      return -ENOMEM;
    f->files = s;
    f->capfiles = cap;
  }
  if ((ret = make_path(f, path, 0)) < 0)
    return ret;
  memset(&f->files[f->nfiles], 0, sizeof f->files[0]);
  f->files[f->nfiles].node = (uint32_t)ret;
  f->files[f->nfiles].fresh_ns = (int64_t)fresh_ms * 1000000;
  f->files[f->nfiles].stale_ns = (int64_t)max_stale_ms * 1000000;
  f->files[f->nfiles].size = size;
  return f->nfiles++;
}

/* ---- containers (under mu) ---- */

static struct ctr *ctr_by_key(struct icd_fuse *f, uint64_t key)
{
  struct ctr *c;
  for (c = f->by_key[key % NBUCKET]; c && c->key != key; c = c->next_key)
    ;
  return c;
}

static struct ctr *ctr_by_ino(struct icd_fuse *f, uint64_t ino)
{
  struct ctr *c;
  struct alias *a;

  for (c = f->by_ino[ino % NBUCKET]; c; c = c->next_ino)
    if (c->ino == ino)
      return c;
  for (a = f->aliases[ino % NBUCKET]; a; a = a->next)
    if (a->ino == ino)
      return ctr_by_key(f, a->key);
  return NULL;
}

static void drop_aliases(struct icd_fuse *f, int all, uint64_t key)
{
  struct alias **pp, *a;
  int i;

  for (i = 0; i < NBUCKET; i++)
    for (pp = &f->aliases[i]; (a = *pp);) {
      if (all || a->key == key) {
        *pp = a->next;
        close(a->fd);
        free(a);
        f->naliases--;
      } else {
        pp = &a->next;
      }
    }
}

/* The container of a nested pid namespace (the fd of `path`), found by
 * walking up its parents; cached as an alias holding that fd.  Outside mu. */
static int walk_up(struct icd_fuse *f, const char *path, uint64_t *key)
{
  struct stat st;
  struct ctr *c = NULL;
  struct alias *a;
  uint64_t ino0;
  int fd, cur, par, depth, ret = -ENOENT;

  if ((fd = openat(f->procfd, path, O_RDONLY | O_CLOEXEC)) < 0)
    return -errno;
  if (fstat(fd, &st) < 0) {
    ret = -errno;
    close(fd);
    return ret;
  }
  ino0 = st.st_ino;
  for (cur = fd, depth = 0; depth < NS_DEPTH; depth++) {
    /* EPERM at the top of what we can see: the initial namespace. */
    if ((par = ioctl(cur, NS_GET_PARENT)) < 0)
      break;
    if (cur != fd)
      close(cur);
    cur = par;
    if (fstat(cur, &st) < 0 || st.st_ino == f->self_ino)
      break;
    pthread_mutex_lock(&f->mu);
    if ((c = ctr_by_ino(f, st.st_ino))) {
      *key = c->key;
      ret = 0;
      if (!ctr_by_ino(f, ino0) && (a = malloc(sizeof *a))) {
        if (f->naliases >= MAX_ALIASES)
          drop_aliases(f, 1, 0);
        a->ino = ino0;
        a->key = c->key;
        a->fd = fd;
        a->next = f->aliases[ino0 % NBUCKET];
        f->aliases[ino0 % NBUCKET] = a;
        f->naliases++;
        fd = -1;
      }
    }
    pthread_mutex_unlock(&f->mu);
    if (c)
      break;
  }
  if (cur != fd)
    close(cur);
  if (fd >= 0)
    close(fd);
  return ret;
}

/* The container of the reader `pid`, returned with mu held; NULL (mu not
 * held) for a reader in none.  pid 0: a reader outside our pid namespace.
 * Otherwise the reader is blocked in its request, so its pid names it (not
 * a reused one) here. */
static struct ctr *reader_ctr(struct icd_fuse *f, uint32_t pid)
{
  struct stat st;
  struct ctr *c;
  uint64_t key = 0;
  char path[32];

  snprintf(path, sizeof path, "%u/ns/pid", pid);
  if (!pid || fstatat(f->procfd, path, &st, 0) < 0 || st.st_ino == f->self_ino)
    return NULL;
  pthread_mutex_lock(&f->mu);
  if ((c = ctr_by_ino(f, st.st_ino)))
    return c;
  pthread_mutex_unlock(&f->mu);
  if (walk_up(f, path, &key) < 0)
    return NULL;
  pthread_mutex_lock(&f->mu);
  if ((c = ctr_by_key(f, key)))
    return c;
  pthread_mutex_unlock(&f->mu);
  return NULL;
}

/* Queues a render request unless one is outstanding (and not overdue). */
static void request_render(struct icd_fuse *f, struct ctr *c, int file, int64_t now)
{
  struct entry *e = &c->e[file];

  if (e->requested && now - e->req < (int64_t)f->wait_ms * 1000000)
    return;
  if (f->rq_len == RQ_CAP) {
    atomic_fetch_add(&f->queue_full, 1);
    return;
  }
  f->rq[(f->rq_head + f->rq_len++) % RQ_CAP] = (struct icd_fuse_req){c->key, file, 0};
  e->requested = 1;
  e->req = now;
  add(&f->files[file].st.refreshes, 1);
  pthread_cond_signal(&f->rqcond);
}

/* Hands the opens parked for namespace c->ino to container c: a render is
 * requested for each file (unless one is outstanding), which answers them;
 * under mu. */
static void adopt_unknown(struct icd_fuse *f, struct ctr *c)
{
  struct parked *p;
  int64_t now;

  if (!f->nunknown)
    return;
  now = now_ns();
  for (p = f->parked; p; p = p->next) {
    if (!p->unknown || p->ino != c->ino)
      continue;
    p->unknown = 0;
    f->nunknown--;
    p->key = c->key;
    request_render(f, c, p->file, now);
  }
}

/* Parks an open of a reader whose pid namespace is not registered; 0 when it
 * cannot be (host reader, pid 0, stopping, too many waiting). */
static int park_unknown(struct icd_fuse *f, struct fuse_in_header *h, int file, int64_t t0)
{
  struct stat st;
  struct parked *p;
  struct ctr *c;
  char path[32];
  int64_t now;

  snprintf(path, sizeof path, "%u/ns/pid", h->pid);
  if (!h->pid || atomic_load(&f->stopping) || fstatat(f->procfd, path, &st, 0) < 0 ||
      st.st_ino == f->self_ino || !(p = malloc(sizeof *p)))
    return 0;
  now = now_ns();
  p->unique = h->unique;
  p->key = 0;
  p->ino = st.st_ino;
  p->file = file;
  p->unknown = 1;
  p->t0 = t0;
  p->deadline = now + (int64_t)f->wait_ms * 1000000;
  pthread_mutex_lock(&f->mu);
  if (f->nunknown >= MAX_UNKNOWN_PARKED) {
    pthread_mutex_unlock(&f->mu);
    free(p);
    return 0;
  }
  p->next = f->parked;
  f->parked = p;
  f->nparked++;
  f->nunknown++;
  add(&f->files[file].st.waits, 1);
  /* Registered between our look-up and now: taken up at once. */
  if ((c = ctr_by_ino(f, st.st_ino)))
    adopt_unknown(f, c);
  pthread_cond_signal(&f->reapcond);
  pthread_mutex_unlock(&f->mu);
  return 1;
}

/* ---- requests ---- */

static void do_open(struct icd_fuse *f, struct fuse_in_header *h, struct fuse_open_in *in,
                    uint32_t idx, int64_t t0)
{
  struct ctr *c;
  struct entry *e;
  struct fspec *s;
  struct blob *b = NULL;
  struct parked *p;
  int file = f->nodes[idx].file, err = 0;
  int64_t now, age;

  if (file < 0)
    return (void)reply_err(f, h->unique, EISDIR);
  if ((in->flags & O_ACCMODE) != O_RDONLY || (in->flags & O_TRUNC))
    return (void)reply_err(f, h->unique, EROFS);
  s = &f->files[file];
  add(&s->st.opens, 1);
  if (!(c = reader_ctr(f, h->pid)))
    goto unknown;
  e = &c->e[file];
  now = now_ns();
  age = now - e->at;
  if (atomic_load(&f->stopping)) {
    err = EIO;
  } else if (e->b && age < s->stale_ns) {
    b = blob_ref(e->b);
    if (age >= s->fresh_ns) {
      request_render(f, c, file, now);
      add(&s->st.stale, 1);
    }
  } else if (e->err && age < s->fresh_ns) {
    err = e->err; /* failed recently: not retried before the bound */
  } else if ((p = malloc(sizeof *p))) {
    request_render(f, c, file, now);
    p->unique = h->unique;
    p->key = c->key;
    p->ino = 0;
    p->unknown = 0;
    p->file = file;
    p->t0 = t0;
    p->deadline = now + (int64_t)f->wait_ms * 1000000;
    p->next = f->parked;
    f->parked = p;
    f->nparked++;
    add(&s->st.waits, 1);
    pthread_cond_signal(&f->reapcond);
    pthread_mutex_unlock(&f->mu);
    return;
  } else {
    err = ENOMEM;
  }
  pthread_mutex_unlock(&f->mu);
  if (err) {
    add(&s->st.errors, 1);
    reply_err(f, h->unique, err);
  } else {
    reply_open(f, h->unique, b);
  }
  note_latency(s, t0, 0);
  return;
unknown:
  /* A reader in a pid namespace not registered (yet): the runtime starts the
   * container's process without waiting for the daemon to have taken its
   * notify fd, so its first reads may come before the registration.  Such an
   * open is parked like one waiting for a render, keyed by the namespace, and
   * taken up by register() or ended with EIO at the deadline; the host's own
   * readers (our namespace) and pid 0 get EIO at once. */
  if (park_unknown(f, h, file, t0))
    return;
  atomic_fetch_add(&f->unknown, 1);
  add(&s->st.errors, 1);
  reply_err(f, h->unique, EIO);
}

static void do_read(struct icd_fuse *f, struct fuse_in_header *h, struct fuse_read_in *in,
                    uint32_t idx, int64_t t0)
{
  struct blob *b = (struct blob *)(uintptr_t)in->fh;
  struct iovec iov[2] = {{0}, {NULL, 0}};
  int file = f->nodes[idx].file;

  if (file < 0 || !b)
    return (void)reply_err(f, h->unique, EISDIR);
  /* A READ without a lock owner fills the page cache (splice, sendfile,
   * copy_file_range and mmap go through it even with FOPEN_DIRECT_IO on
   * kernels without "fuse: use copy_splice_read() for FOPEN_DIRECT_IO").
   * That cache is the inode's, shared by every container: a page of one
   * container's bytes would be served to the next.  Refused; EINVAL makes
   * sendfile's users (busybox cat, coreutils) fall back to read(2). */
  if (!(in->read_flags & FUSE_READ_LOCKOWNER)) {
    add(&f->files[file].st.cached_reads, 1);
    return (void)reply_err(f, h->unique, EINVAL);
  }
  add(&f->files[file].st.reads, 1);
  if (in->offset < b->len) {
    iov[1].iov_base = b->data + in->offset;
    iov[1].iov_len = b->len - in->offset < in->size ? b->len - in->offset : in->size;
  }
  reply_iov(f, h->unique, 0, iov, 2);
  note_latency(&f->files[file], t0, 1);
}

static void do_readdir(struct icd_fuse *f, struct fuse_in_header *h, struct fuse_read_in *in,
                       uint32_t idx)
{
  char out[8192];
  size_t used = 0, size = in->size < sizeof out ? in->size : sizeof out;
  uint64_t off = 0;
  uint32_t c = f->nodes[idx].child;

  if (f->nodes[idx].file >= 0)
    return (void)reply_err(f, h->unique, ENOTDIR);
  /* Offsets: 1 ".", 2 "..", then 3.. the children in order. */
  for (off = 1;; off++) {
    const char *name;
    uint64_t ino;
    uint32_t type = DT_DIR;
    struct fuse_dirent *d;
    size_t nlen, rec;

    if (off == 1) {
      name = ".";
      ino = idx + 1;
    } else if (off == 2) {
      name = "..";
      ino = f->nodes[idx].parent ? f->nodes[idx].parent : 1;
    } else {
      if (off > 3)
        c = c ? f->nodes[c - 1].next : 0;
      if (!c)
        break;
      name = f->nodes[c - 1].name;
      ino = c;
      type = f->nodes[c - 1].file >= 0 ? DT_REG : DT_DIR;
    }
    if (off <= in->offset)
      continue;
    nlen = strlen(name);
    rec = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + nlen);
    if (used + rec > size)
      break;
    d = (struct fuse_dirent *)(out + used);
    d->ino = ino;
    d->off = off;
    d->namelen = (uint32_t)nlen;
    d->type = type;
    memcpy(d->name, name, nlen);
    memset(d->name + nlen, 0, rec - FUSE_NAME_OFFSET - nlen);
    used += rec;
  }
  reply(f, h->unique, out, used);
}

static void do_init(struct icd_fuse *f, struct fuse_in_header *h, struct fuse_init_in *in)
{
  struct fuse_init_out o;

  /* Minor 12 fixed the entry and attr reply sizes we send. */
  if (in->major != FUSE_KERNEL_VERSION || in->minor < 12)
    return (void)reply_err(f, h->unique, EPROTO);
  memset(&o, 0, sizeof o);
  o.major = FUSE_KERNEL_VERSION;
  o.minor = in->minor < FUSE_KERNEL_MINOR_VERSION ? in->minor : FUSE_KERNEL_MINOR_VERSION;
  f->minor = o.minor;
  o.max_readahead = in->max_readahead;
  o.flags = in->flags & FUSE_PARALLEL_DIROPS;
  o.max_background = 64;
  o.congestion_threshold = 48;
  o.max_write = MAX_WRITE;
  o.time_gran = 1000000000;
  reply(f, h->unique, &o, o.minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof o);
}

static void do_interrupt(struct icd_fuse *f, struct fuse_in_header *h,
                         struct fuse_interrupt_in *in)
{
  struct parked **pp, *p;

  pthread_mutex_lock(&f->mu);
  for (pp = &f->parked; (p = *pp) && p->unique != in->unique; pp = &p->next)
    ;
  if (p) {
    *pp = p->next;
    f->nparked--;
    if (p->unknown)
      f->nunknown--;
  }
  pthread_mutex_unlock(&f->mu);
  if (p) {
    atomic_fetch_add(&f->interrupts, 1);
    reply_err(f, p->unique, EINTR);
    free(p);
  } else {
    /* Not parked: being answered by another worker right now, or not yet
     * parked by the worker that read it.  EAGAIN makes the kernel queue the
     * interrupt again; it drops it once the request is answered. */
    reply_err(f, h->unique, EAGAIN);
  }
}

static void handle(struct icd_fuse *f, char *buf, size_t n, int64_t t0)
{
  struct fuse_in_header *h = (struct fuse_in_header *)buf;
  void *arg = buf + sizeof *h;
  size_t alen;
  uint32_t idx = 0;

  atomic_fetch_add(&f->requests, 1);
  if (n < sizeof *h)
    return;
  if (h->len != n)
    return (void)reply_err(f, h->unique, EIO);
  alen = n - sizeof *h;
/* Each opcode's argument must be complete before we touch it. */
#define NEED(t) if (alen < sizeof(t)) return (void)reply_err(f, h->unique, EINVAL)
  if (h->opcode != FUSE_INIT && h->opcode != FUSE_INTERRUPT && h->opcode != FUSE_FORGET &&
      h->opcode != FUSE_BATCH_FORGET && h->opcode != FUSE_DESTROY &&
      node_of(f, h->nodeid, &idx) < 0)
    return (void)reply_err(f, h->unique, ENOENT);
  switch (h->opcode) {
  case FUSE_INIT:
    NEED(struct fuse_init_in);
    return do_init(f, h, arg);
  case FUSE_LOOKUP: {
    struct fuse_entry_out o;
    uint32_t c;

    if (!alen || buf[n - 1] != '\0' || f->nodes[idx].file >= 0)
      return (void)reply_err(f, h->unique, f->nodes[idx].file >= 0 ? ENOTDIR : EINVAL);
    if (!(c = child_named(f, idx, arg, strlen(arg))))
      return (void)reply_err(f, h->unique, ENOENT);
    memset(&o, 0, sizeof o);
    o.nodeid = c;
    o.generation = 1;
    o.entry_valid = TTL_S;
    o.attr_valid = f->nodes[c - 1].file < 0 ? TTL_S : 0;
    fill_attr(f, c - 1, h->pid, &o.attr);
    return (void)reply(f, h->unique, &o, sizeof o);
  }
  case FUSE_GETATTR: {
    struct fuse_attr_out o;

    memset(&o, 0, sizeof o);
    o.attr_valid = f->nodes[idx].file < 0 ? TTL_S : 0;
    fill_attr(f, idx, h->pid, &o.attr);
    return (void)reply(f, h->unique, &o, sizeof o);
  }
  case FUSE_OPEN:
    NEED(struct fuse_open_in);
    return do_open(f, h, arg, idx, t0);
  case FUSE_READ:
    NEED(struct fuse_read_in);
    return do_read(f, h, arg, idx, t0);
  case FUSE_RELEASE: {
    struct fuse_release_in *in = arg;

    NEED(struct fuse_release_in);
    if (f->nodes[idx].file >= 0 && in->fh) {
      add(&f->files[f->nodes[idx].file].st.releases, 1);
      atomic_fetch_sub(&f->handles, 1);
      blob_unref((struct blob *)(uintptr_t)in->fh);
    }
    return (void)reply_err(f, h->unique, 0);
  }
  case FUSE_OPENDIR: {
    struct fuse_open_out o;

    if (f->nodes[idx].file >= 0)
      return (void)reply_err(f, h->unique, ENOTDIR);
    memset(&o, 0, sizeof o);
    o.open_flags = FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE; /* the tree never changes */
    return (void)reply(f, h->unique, &o, sizeof o);
  }
  case FUSE_READDIR:
    NEED(struct fuse_read_in);
    return do_readdir(f, h, arg, idx);
  case FUSE_RELEASEDIR:
    return (void)reply_err(f, h->unique, 0);
  case FUSE_STATFS: {
    struct fuse_statfs_out o;

    memset(&o, 0, sizeof o);
    o.st.bsize = o.st.frsize = 4096;
    o.st.namelen = NAME_MAX;
    o.st.files = f->nnodes;
    return (void)reply(f, h->unique, &o, sizeof o);
  }
  case FUSE_ACCESS: {
    struct fuse_access_in *in = arg;

    NEED(struct fuse_access_in);
    /* Only access(2) and chdir ask (no default_permissions): what the modes
     * (0444 files, 0555 directories) and the read-only mount say. */
    if (in->mask & W_OK)
      return (void)reply_err(f, h->unique, EROFS);
    return (void)reply_err(f, h->unique,
                           (in->mask & X_OK) && f->nodes[idx].file >= 0 ? EACCES : 0);
  }
  case FUSE_INTERRUPT:
    NEED(struct fuse_interrupt_in);
    return do_interrupt(f, h, arg);
  case FUSE_FORGET:
  case FUSE_BATCH_FORGET:
    return; /* the nodes are static: nothing to count, and no reply */
  case FUSE_DESTROY:
    return (void)reply_err(f, h->unique, 0);
  case FUSE_FLUSH:
  default:
    /* ENOSYS makes the kernel stop sending FLUSH, xattr ops and the like. */
    return (void)reply_err(f, h->unique, ENOSYS);
  }
#undef NEED
}

static void *worker(void *arg)
{
  struct icd_fuse *f = arg;
  uint64_t buf[BUF_SIZE / sizeof(uint64_t)]; /* aligned for the request structs */
  struct timespec pause = {0, 10000000};
  ssize_t n;

  while (!atomic_load(&f->stopping)) {
    n = read(f->fd, buf, sizeof buf);
    if (n < 0) {
      /* EINTR: the stop signal; ENOENT: a request interrupted while read. */
      if (errno == EINTR || errno == ENOENT || errno == EAGAIN)
        continue;
      if (errno == ENODEV) /* the connection is gone */
        break;
      /* Anything else: a worker that left would leave readers waiting
       * forever on a live connection, so it stays (without spinning). */
      atomic_fetch_add(&f->read_errors, 1);
      nanosleep(&pause, NULL);
      continue;
    }
    handle(f, (char *)buf, (size_t)n, now_ns());
  }
  pthread_mutex_lock(&f->mu);
  f->nlive--;
  pthread_cond_broadcast(&f->livecond);
  pthread_mutex_unlock(&f->mu);
  return NULL;
}

/* Takes the parked opens matching (key, file) (file -1: all of key; key 0
 * and file -2: every one) off the list; under mu. */
static struct parked *take_parked(struct icd_fuse *f, uint64_t key, int file, int64_t before)
{
  struct parked **pp, *p, *out = NULL;

  for (pp = &f->parked; (p = *pp);) {
    if ((file == -2 && (!before || p->deadline <= before)) ||
        (file != -2 && !p->unknown && p->key == key && (file == -1 || p->file == file))) {
      *pp = p->next;
      p->next = out;
      out = p;
      f->nparked--;
      if (p->unknown)
        f->nunknown--;
    } else {
      pp = &p->next;
    }
  }
  return out;
}

static void answer_parked(struct icd_fuse *f, struct parked *p, struct blob *b, int err,
                          int timeout)
{
  struct parked *next;

  for (; p; p = next) {
    next = p->next;
    if (b) {
      reply_open(f, p->unique, blob_ref(b));
    } else {
      add(&f->files[p->file].st.errors, 1);
      if (p->unknown) /* never registered in time: an unknown reader */
        atomic_fetch_add(&f->unknown, 1);
      else if (timeout)
        add(&f->files[p->file].st.timeouts, 1);
      reply_err(f, p->unique, err);
    }
    note_latency(&f->files[p->file], p->t0, 0);
    free(p);
  }
}

static void writer_done(struct icd_fuse *f)
{
  pthread_mutex_lock(&f->mu);
  if (!--f->writers)
    pthread_cond_broadcast(&f->livecond);
  pthread_mutex_unlock(&f->mu);
}

/* Ends parked opens whose render did not come in time. */
static void *reaper(void *arg)
{
  struct icd_fuse *f = arg;
  struct parked *p, *due;
  struct timespec ts;
  int64_t next, now;

  pthread_mutex_lock(&f->mu);
  while (!atomic_load(&f->stopping)) {
    now = now_ns();
    if ((due = take_parked(f, 0, -2, now))) {
      f->writers++;
      pthread_mutex_unlock(&f->mu);
      answer_parked(f, due, NULL, EIO, 1);
      writer_done(f);
      pthread_mutex_lock(&f->mu);
      continue;
    }
    for (next = now + 1000000000LL, p = f->parked; p; p = p->next)
      if (p->deadline < next)
        next = p->deadline;
    ts.tv_sec = next / 1000000000;
    ts.tv_nsec = next % 1000000000;
    pthread_cond_timedwait(&f->reapcond, &f->mu, &ts);
  }
  pthread_mutex_unlock(&f->mu);
  return NULL;
}

/* ---- API ---- */

struct icd_fuse *icd_fuse_new(int workers, int wait_ms)
{
  struct icd_fuse *f;
  pthread_condattr_t ca;
  int ret;

  if (workers < 1 || workers > MAX_WORKERS || wait_ms < 1) {
    errno = EINVAL;
    return NULL;
  }
  if (!(f = calloc(1, sizeof *f)))
    return NULL;
  f->fd = f->procfd = -1;
  f->nworkers = workers;
  f->wait_ms = wait_ms;
  if ((ret = new_node(f, 0, "", 0, -1)) < 0) { /* the root, node id 1 */
    free(f);
    errno = -ret;
    return NULL;
  }
  pthread_mutex_init(&f->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&f->rqcond, &ca);
  pthread_cond_init(&f->reapcond, &ca);
  pthread_cond_init(&f->livecond, &ca);
  pthread_condattr_destroy(&ca);
  return f;
}

/* Detaches whatever FUSE mounts (live or with a dead server: ENOTCONN) are
 * stacked at mnt, e.g. from a daemon that died; anything else stays. */
static int clear_stale(const char *mnt)
{
  struct statfs sf;
  int i;

  for (i = 0; i < 16; i++) {
    if (statfs(mnt, &sf) == 0) {
      if (sf.f_type != FUSE_MAGIC)
        return 0;
    } else if (errno != ENOTCONN && errno != ECONNABORTED) {
      return -errno;
    }
    if (umount2(mnt, MNT_DETACH) < 0)
      return -errno;
  }
  return -ELOOP;
}

static void stop_threads(struct icd_fuse *f)
{
  struct timespec dl;
  int i;

  atomic_store(&f->stopping, 1);
  pthread_mutex_lock(&f->mu);
  pthread_cond_broadcast(&f->reapcond);
  pthread_cond_broadcast(&f->rqcond);
  /* A stop signal can land just before a worker enters read(2), so it is
   * repeated until every worker has left. */
  while (f->nlive) {
    for (i = 0; i < f->nthreads; i++)
      pthread_kill(f->workers[i], STOP_SIGNAL);
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_nsec += 2000000;
    if (dl.tv_nsec >= 1000000000) {
      dl.tv_sec++;
      dl.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&f->livecond, &f->mu, &dl);
  }
  pthread_mutex_unlock(&f->mu);
  for (i = 0; i < f->nthreads; i++)
    pthread_join(f->workers[i], NULL);
  f->nthreads = 0;
  if (f->reaper_on)
    pthread_join(f->reaper, NULL);
  f->reaper_on = 0;
}

int icd_fuse_start(struct icd_fuse *f, const char *mountpoint)
{
  struct sigaction sa;
  struct stat st;
  sigset_t all, old;
  char opts[128];
  int ret, i;

  if (f->mountpoint) /* one start per server: make a new one after a stop */
    return -EBUSY;
  if (!(f->mountpoint = strdup(mountpoint)))
    return -ENOMEM;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = stop_handler; /* no SA_RESTART: read(2) returns EINTR */
  sigemptyset(&sa.sa_mask);
  if (sigaction(STOP_SIGNAL, &sa, NULL) < 0)
    return -errno;
  if ((f->procfd = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
    return -errno;
  if (fstatat(f->procfd, "self/ns/pid", &st, 0) < 0)
    goto fail;
  f->self_ino = st.st_ino;
  if ((ret = clear_stale(mountpoint)) < 0) {
    errno = -ret;
    goto fail;
  }
  /* CLOEXEC: a child holding this fd would keep the connection alive after
   * the daemon died. */
  if ((f->fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)) < 0)
    goto fail;
  snprintf(opts, sizeof opts,
           "fd=%d,rootmode=40000,user_id=%u,group_id=%u,allow_other",
           f->fd, geteuid(), getegid());
  if (mount("interceptd", mountpoint, "fuse.interceptd",
            MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, opts) < 0)
    goto fail;
  f->owner = getpid();
  f->started = 1;
  {
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    f->t_start = (int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec;
  }
  /* Workers take no signal but the stop signal (Python's handlers run on
   * its own threads). */
  sigfillset(&all);
  sigdelset(&all, STOP_SIGNAL);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  ret = pthread_create(&f->reaper, NULL, reaper, f);
  if (!ret)
    f->reaper_on = 1;
  for (i = 0; !ret && i < f->nworkers; i++) {
    pthread_mutex_lock(&f->mu);
    if (!(ret = pthread_create(&f->workers[i], NULL, worker, f))) {
      f->nlive++;
      f->nthreads++;
    }
    pthread_mutex_unlock(&f->mu);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (ret) {
    icd_fuse_stop(f);
    return -ret;
  }
  /* Only now (the INIT is answered by a worker) can the mount be stat'ed. */
  if (stat(mountpoint, &st) < 0) {
    ret = -errno;
    icd_fuse_stop(f);
    return ret;
  }
  f->dev = st.st_dev;
  return 0;
fail:
  ret = -errno;
  icd_fuse_stop(f); /* closes what was opened */
  return ret;
}

int icd_fuse_register(struct icd_fuse *f, uint64_t key, int nsfd)
{
  struct stat st;
  struct ctr *c;
  int fd, i;

  if (!f->started || atomic_load(&f->stopping))
    return -ESHUTDOWN;
  if (ioctl(nsfd, NS_GET_NSTYPE) != CLONE_NEWPID)
    return -EINVAL;
  if (fstat(nsfd, &st) < 0)
    return -errno;
  /* Our own namespace as a container would hand its bytes to every host
   * process (and make nested host namespaces resolve to it). */
  if (st.st_ino == f->self_ino)
    return -EINVAL;
  if (!(c = calloc(1, sizeof *c + (size_t)f->nfiles * sizeof c->e[0])))
    return -ENOMEM;
  if ((fd = fcntl(nsfd, F_DUPFD_CLOEXEC, 0)) < 0) {
    free(c);
    return -errno;
  }
  c->key = key;
  c->ino = st.st_ino;
  c->nsfd = fd;
  for (i = 0; i < f->nfiles; i++)
    c->e[i].at = INT64_MIN / 2;
  pthread_mutex_lock(&f->mu);
  if (ctr_by_key(f, key) || ctr_by_ino(f, st.st_ino)) {
    pthread_mutex_unlock(&f->mu);
    close(fd);
    free(c);
    return -EEXIST;
  }
  c->next_key = f->by_key[key % NBUCKET];
  f->by_key[key % NBUCKET] = c;
  c->next_ino = f->by_ino[c->ino % NBUCKET];
  f->by_ino[c->ino % NBUCKET] = c;
  f->ncontainers++;
  adopt_unknown(f, c);
  pthread_mutex_unlock(&f->mu);
  return 0;
}

int icd_fuse_unregister(struct icd_fuse *f, uint64_t key)
{
  struct ctr **pp, *c;
  struct parked *p;
  int i;

  pthread_mutex_lock(&f->mu);
  if (!(c = ctr_by_key(f, key))) {
    pthread_mutex_unlock(&f->mu);
    return -ENOENT;
  }
  for (pp = &f->by_key[key % NBUCKET]; *pp != c; pp = &(*pp)->next_key)
    ;
  *pp = c->next_key;
  for (pp = &f->by_ino[c->ino % NBUCKET]; *pp != c; pp = &(*pp)->next_ino)
    ;
  *pp = c->next_ino;
  f->ncontainers--;
  drop_aliases(f, 0, key);
  p = take_parked(f, key, -1, 0);
  f->writers++;
  pthread_mutex_unlock(&f->mu);
  answer_parked(f, p, NULL, EIO, 0);
  writer_done(f);
  /* Open handles hold their own references to the renders. */
  for (i = 0; i < f->nfiles; i++)
    blob_unref(c->e[i].b);
  close(c->nsfd);
  free(c);
  return 0;
}

static int push(struct icd_fuse *f, uint64_t key, int file, struct blob *b, int err)
{
  struct ctr *c;
  struct entry *e;
  struct blob *old;
  struct parked *p;

  pthread_mutex_lock(&f->mu);
  if (atomic_load(&f->stopping)) {
    pthread_mutex_unlock(&f->mu);
    blob_unref(b);
    return -ESHUTDOWN;
  }
  if (!(c = ctr_by_key(f, key))) {
    pthread_mutex_unlock(&f->mu);
    blob_unref(b);
    return -ENOENT;
  }
  e = &c->e[file];
  old = e->b;
  e->b = b;
  e->err = err;
  e->at = now_ns();
  e->requested = 0;
  p = take_parked(f, key, file, 0);
  if (p && b)
    blob_ref(b); /* ours while answering: another set may replace e->b meanwhile */
  f->writers++;  /* stop waits for us before closing the fd */
  pthread_mutex_unlock(&f->mu);
  blob_unref(old);
  if (p) {
    answer_parked(f, p, b, err, 0);
    if (b)
      blob_unref(b);
  }
  writer_done(f);
  return 0;
}

int icd_fuse_set(struct icd_fuse *f, uint64_t key, int file, const void *data, uint32_t len)
{
  struct blob *b;

  if (file < 0 || file >= f->nfiles)
    return -EINVAL;
  if (len > MAX_BLOB)
    return -EFBIG;
  if (!(b = malloc(sizeof *b + len)))
    return -ENOMEM;
  atomic_init(&b->refs, 1);
  b->len = len;
  memcpy(b->data, data, len);
  add(&f->files[file].st.renders, 1);
  return push(f, key, file, b, 0);
}

int icd_fuse_fail(struct icd_fuse *f, uint64_t key, int file, int err)
{
  if (file < 0 || file >= f->nfiles || err <= 0)
    return -EINVAL;
  add(&f->files[file].st.failures, 1);
  return push(f, key, file, NULL, err);
}

int icd_fuse_requests(struct icd_fuse *f, struct icd_fuse_req *out, int max, int timeout_ms)
{
  struct timespec ts;
  int64_t dl = now_ns() + (int64_t)timeout_ms * 1000000;
  int n = 0;

  pthread_mutex_lock(&f->mu);
  while (!f->rq_len && !f->kick && !atomic_load(&f->stopping)) {
    if (timeout_ms < 0) {
      pthread_cond_wait(&f->rqcond, &f->mu);
      continue;
    }
    ts.tv_sec = dl / 1000000000;
    ts.tv_nsec = dl % 1000000000;
    if (pthread_cond_timedwait(&f->rqcond, &f->mu, &ts) == ETIMEDOUT)
      break;
  }
  f->kick = 0;
  for (; n < max && f->rq_len; n++, f->rq_len--, f->rq_head = (f->rq_head + 1) % RQ_CAP)
    out[n] = f->rq[f->rq_head];
  if (!n && atomic_load(&f->stopping))
    n = -ESHUTDOWN;
  pthread_mutex_unlock(&f->mu);
  return n;
}

void icd_fuse_wake(struct icd_fuse *f)
{
  pthread_mutex_lock(&f->mu);
  f->kick = 1;
  pthread_cond_broadcast(&f->rqcond);
  pthread_mutex_unlock(&f->mu);
}

int icd_fuse_file_stats(struct icd_fuse *f, int file, struct icd_fuse_fstats *out)
{
  uint64_t *src, *dst;
  size_t i;

  if (file < 0 || file >= f->nfiles)
    return -EINVAL;
  src = (uint64_t *)&f->files[file].st;
  dst = (uint64_t *)out;
  for (i = 0; i < sizeof *out / sizeof(uint64_t); i++)
    dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
  return 0;
}

void icd_fuse_stats(struct icd_fuse *f, struct icd_fuse_stats *out)
{
  memset(out, 0, sizeof *out);
  out->requests = atomic_load(&f->requests);
  out->unknown = atomic_load(&f->unknown);
  out->interrupts = atomic_load(&f->interrupts);
  out->queue_full = atomic_load(&f->queue_full);
  out->handles = atomic_load(&f->handles);
  out->write_errors = atomic_load(&f->write_errors);
  out->read_errors = atomic_load(&f->read_errors);
  pthread_mutex_lock(&f->mu);
  out->aliases = (uint64_t)f->naliases;
  out->containers = (uint64_t)f->ncontainers;
  out->parked = (uint64_t)f->nparked;
  pthread_mutex_unlock(&f->mu);
}

uint64_t icd_fuse_dev(struct icd_fuse *f) { return f->dev; }

int icd_fuse_stop(struct icd_fuse *f)
{
  struct parked *p;
  int ret = 0;

  /* In a forked child the threads do not exist and the mount is the
   * parent's: only the fds (copies) are closed. */
  if (!f->started || f->owner != getpid())
    goto close_fds;
  /* Parked opens get EIO while the fd is still ours to write to. */
  pthread_mutex_lock(&f->mu);
  atomic_store(&f->stopping, 1);
  p = take_parked(f, 0, -2, 0);
  f->writers++;
  pthread_mutex_unlock(&f->mu);
  answer_parked(f, p, NULL, EIO, 0);
  writer_done(f);
  if (umount2(f->mountpoint, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
    ret = -errno;
  stop_threads(f);
  pthread_mutex_lock(&f->mu);
  while (f->writers)
    pthread_cond_wait(&f->livecond, &f->mu);
  pthread_mutex_unlock(&f->mu);
  f->started = 0;
close_fds:
  /* The last close of /dev/fuse aborts the connection: binds of the files
   * that outlive the detached mount fail with ENOTCONN, nothing hangs. */
  if (f->fd >= 0 && close(f->fd) < 0 && !ret)
    ret = -errno;
  f->fd = -1;
  if (f->procfd >= 0)
    close(f->procfd);
  f->procfd = -1;
  return ret;
}

void icd_fuse_free(struct icd_fuse *f)
{
  struct ctr *c, *next;
  struct parked *p, *pn;
  uint32_t i;
  int b, j;

  if (!f)
    return;

  icd_fuse_stop(f);
  for (p = take_parked(f, 0, -2, 0); p; p = pn) { /* parked after the stop began */
    pn = p->next;
    free(p);
  }
  drop_aliases(f, 1, 0);
  for (b = 0; b < NBUCKET; b++)
    for (c = f->by_key[b]; c; c = next) {
      next = c->next_key;
      for (j = 0; j < f->nfiles; j++)
        blob_unref(c->e[j].b);
      close(c->nsfd);
      free(c);
    }
  for (i = 0; i < f->nnodes; i++)
    free(f->nodes[i].name);
  free(f->nodes);
  free(f->files);
  free(f->mountpoint);
  free(f);
}
