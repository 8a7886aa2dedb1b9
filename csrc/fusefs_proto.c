/* The /dev/fuse request loop: each opcode's answer. */
#include "fusefs_int.h"

/* With mu held (released here): container c's bytes for `file` (a reference),
 * or NULL with *err set, or NULL with *err 0 when the request was parked
 * until a render comes (rd: a READ, answered with bytes then). */
static struct blob *current_bytes(struct icd_fuse *f, struct fuse_in_header *h, struct ctr *c,
                                  int file, int64_t t0, const struct fuse_read_in *rd, int *err)
{
  struct entry *e = &c->e[file];
  struct fspec *s = &f->files[file];
  struct blob *b = NULL;
  struct parked *p;
  int64_t now = now_ns(), age = now - e->at;

  *err = 0;
  if (atomic_load(&f->stopping)) {
    *err = EIO;
  } else if (e->b && age < s->stale_ns) {
    b = blob_ref(e->b);
    if (age >= s->fresh_ns) {
      fs_request_render(f, c, file, now);
      add(&s->st.stale, 1);
    }
  } else if (e->err && age < s->fresh_ns) {
    *err = e->err; /* failed recently: not retried before the bound */
  } else if ((p = calloc(1, sizeof *p))) {
    fs_request_render(f, c, file, now);
    p->unique = h->unique;
    p->key = c->key;
    p->file = file;
    if (rd) {
      p->read = 1;
      p->roff = rd->offset;
      p->rsize = rd->size;
    }
    p->t0 = t0;
    p->deadline = now + (int64_t)f->wait_ms * 1000000;
    p->next = f->parked;
    f->parked = p;
    f->nparked++;
    add(&s->st.waits, 1);
    pthread_cond_signal(&f->reapcond);
  } else {
    *err = ENOMEM;
  }
  pthread_mutex_unlock(&f->mu);
  return b;
}

static void do_open(struct icd_fuse *f, struct fuse_in_header *h, struct fuse_open_in *in,
                    uint32_t idx, int64_t t0)
{
  struct ctr *c;
  struct fspec *s;
  struct blob *b;
  int file = f->nodes[idx].file, err = 0;

  if (file < 0)
    return (void)fs_reply_err(f, h->unique, EISDIR);
  /* O_TRUNC of a writable file is a SETATTR (below), a no-op as on procfs. */
  if (((in->flags & O_ACCMODE) != O_RDONLY || (in->flags & O_TRUNC)) && !f->files[file].writable)
    return (void)fs_reply_err(f, h->unique, EROFS);
  s = &f->files[file];
  add(&s->st.opens, 1);
  if (!(c = fs_reader_ctr(f, h->pid)))
    goto unknown;
  if (!(b = current_bytes(f, h, c, file, t0, NULL, &err)) && !err)
    return; /* parked */
  if (err) {
    add(&s->st.errors, 1);
    fs_reply_err(f, h->unique, err);
  } else {
    fs_reply_open(f, h->unique, b);
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
  if (fs_park_unknown(f, h, file, t0, NULL))
    return;
  atomic_fetch_add(&f->unknown, 1);
  add(&s->st.errors, 1);
  fs_reply_err(f, h->unique, EIO);
}

/* A READ of a handle a predecessor gave (the connection was handed over): its
 * render died with that process, so the reader's container's current bytes
 * are served, rendered first if there are none (a restarted daemon has none),
 * as an open would be.  A reader that had read part of the file before the
 * restart may thus get the rest from a newer render. */
static void read_foreign(struct icd_fuse *f, struct fuse_in_header *h, struct fuse_read_in *in,
                         int file, int64_t t0)
{
  struct ctr *c;
  struct blob *b;
  int err = EIO;

  atomic_fetch_add(&f->foreign, 1);
  if (!(c = fs_reader_ctr(f, h->pid))) {
    if (fs_park_unknown(f, h, file, t0, in))
      return;
    atomic_fetch_add(&f->unknown, 1);
  } else if ((b = current_bytes(f, h, c, file, t0, in, &err))) {
    fs_reply_bytes(f, h->unique, b, in->offset, in->size);
    blob_unref(b);
    note_latency(&f->files[file], t0, 1);
    return;
  } else if (!err) {
    return; /* parked */
  }
  add(&f->files[file].st.errors, 1);
  fs_reply_err(f, h->unique, err);
}

static void do_read(struct icd_fuse *f, struct fuse_in_header *h, struct fuse_read_in *in,
                    uint32_t idx, int64_t t0)
{
  struct blob *b;
  int file = f->nodes[idx].file;

  if (file < 0)
    return (void)fs_reply_err(f, h->unique, EISDIR);
  if (!in->fh)
    return (void)fs_reply_err(f, h->unique, EBADF);
  /* A READ without a lock owner fills the page cache (splice, sendfile,
   * copy_file_range and mmap go through it even with FOPEN_DIRECT_IO on
   * kernels without "fuse: use copy_splice_read() for FOPEN_DIRECT_IO").
   * That cache is the inode's, shared by every container: a page of one
   * container's bytes would be served to the next.  Refused; EINVAL makes
   * sendfile's users (busybox cat, coreutils) fall back to read(2). */
  if (!(in->read_flags & FUSE_READ_LOCKOWNER)) {
    add(&f->files[file].st.cached_reads, 1);
    return (void)fs_reply_err(f, h->unique, EINVAL);
  }
  add(&f->files[file].st.reads, 1);
  if (!(b = fs_handle_get(f, in->fh)))
    return read_foreign(f, h, in, file, t0);
  fs_reply_bytes(f, h->unique, b, in->offset, in->size);
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
    return (void)fs_reply_err(f, h->unique, ENOTDIR);
  /* Offsets: 1 ".", 2 "..", then 3.. the children in order. */
  for (off = 1;; off++) {
    const char *name;
    uint64_t ino;
    uint32_t type = DT_DIR;
    struct fuse_dirent *d;
    size_t nlen, rec;

    if (off == 1) {
      name = ".";
      ino = f->nodes[idx].id;
    } else if (off == 2) {
      name = "..";
      ino = f->nodes[f->nodes[idx].parent - 1].id;
    } else {
      if (off > 3)
        c = c ? f->nodes[c - 1].next : 0;
      if (!c)
        break;
      name = f->nodes[c - 1].name;
      ino = f->nodes[c - 1].id;
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
  fs_reply(f, h->unique, out, used);
}

static void do_write(struct icd_fuse *f, struct fuse_in_header *h, struct fuse_write_in *in,
                     const char *data, size_t dlen, uint32_t idx, int64_t t0)
{
  int file = f->nodes[idx].file;

  if (file < 0)
    return (void)fs_reply_err(f, h->unique, EISDIR);
  if (!f->files[file].writable || !in->fh)
    return (void)fs_reply_err(f, h->unique, EBADF);
  if (in->size > dlen || in->size > MAX_WRITE)
    return (void)fs_reply_err(f, h->unique, EINVAL);
  if (in->offset) {
    /* Like a sysctl under sysctl_writes_strict (the default): a write that
     * does not start at 0 changes nothing. */
    struct fuse_write_out o;

    memset(&o, 0, sizeof o);
    o.size = in->size;
    return (void)fs_reply(f, h->unique, &o, sizeof o);
  }
  fs_park_write(f, h, file, data, in->size, t0);
}

static void do_init(struct icd_fuse *f, struct fuse_in_header *h, struct fuse_init_in *in)
{
  struct fuse_init_out o;

  /* Minor 12 fixed the entry and attr reply sizes we send. */
  if (in->major != FUSE_KERNEL_VERSION || in->minor < 12)
    return (void)fs_reply_err(f, h->unique, EPROTO);
  memset(&o, 0, sizeof o);
  o.major = FUSE_KERNEL_VERSION;
  o.minor = in->minor < FUSE_KERNEL_MINOR_VERSION ? in->minor : FUSE_KERNEL_MINOR_VERSION;
  f->minor = o.minor;
  o.max_readahead = in->max_readahead;
  /* Not FUSE_ATOMIC_O_TRUNC: with it the kernel sets i_size to 0 after an
   * O_TRUNC open, and splice/sendfile readers (busybox cat) then read nothing
   * until a write raises it; without it O_TRUNC is a SETATTR, whose answer
   * (the bytes' length) becomes i_size. */
  o.flags = in->flags & FUSE_PARALLEL_DIROPS;
  o.max_background = 64;
  o.congestion_threshold = 48;
  o.max_write = MAX_WRITE;
  o.time_gran = 1000000000;
  fs_reply(f, h->unique, &o, o.minor < 23 ? FUSE_COMPAT_22_INIT_OUT_SIZE : sizeof o);
}

static void do_interrupt(struct icd_fuse *f, struct fuse_in_header *h, struct fuse_interrupt_in *in)
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
    fs_reply_err(f, p->unique, EINTR);
    fs_free_parked(p);
  } else {
    /* Not parked: being answered by another worker right now, or not yet
     * parked by the worker that read it.  EAGAIN makes the kernel queue the
     * interrupt again; it drops it once the request is answered. */
    fs_reply_err(f, h->unique, EAGAIN);
  }
}

/* A file's size is that of the reader's container's current bytes (at
 * least 1: 0 would make sendfile see EOF at once, see do_read), or the
 * file's configured size for a reader in no container or before the first
 * render; so readers that trust st_size (fstat, then read that much) get it
 * all.  Hence a file's attributes are never cached (attr_valid 0), which
 * costs nothing on open: without default_permissions the kernel sends no
 * GETATTR for an open. */
static void attr_of(struct icd_fuse *f, uint32_t idx, uint32_t pid, struct fuse_attr *a)
{
  int32_t file = f->nodes[idx].file;
  struct ctr *c;
  struct blob *b;

  fs_fill_attr(f, idx, a);
  if (file >= 0 && (c = fs_reader_ctr(f, pid))) {
    if ((b = c->e[file].b))
      a->size = b->len ? b->len : 1;
    pthread_mutex_unlock(&f->mu);
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
    return (void)fs_reply_err(f, h->unique, EIO);
  alen = n - sizeof *h;
/* Each opcode's argument must be complete before we touch it. */
#define NEED(t)         \
  if (alen < sizeof(t)) \
  return (void)fs_reply_err(f, h->unique, EINVAL)
  if (h->opcode != FUSE_INIT && h->opcode != FUSE_INTERRUPT && h->opcode != FUSE_FORGET
      && h->opcode != FUSE_BATCH_FORGET && h->opcode != FUSE_DESTROY
      && fs_node_of(f, h->nodeid, &idx) < 0)
    return (void)fs_reply_err(f, h->unique, ENOENT);
  switch (h->opcode) {
  case FUSE_INIT:
    NEED(struct fuse_init_in);
    return do_init(f, h, arg);
  case FUSE_LOOKUP: {
    struct fuse_entry_out o;
    uint32_t c;

    if (!alen || buf[n - 1] != '\0' || f->nodes[idx].file >= 0)
      return (void)fs_reply_err(f, h->unique, f->nodes[idx].file >= 0 ? ENOTDIR : EINVAL);
    if (!(c = fs_child_named(f, idx, arg, strlen(arg))))
      return (void)fs_reply_err(f, h->unique, ENOENT);
    memset(&o, 0, sizeof o);
    o.nodeid = f->nodes[c - 1].id;
    o.generation = 1;
    o.entry_valid = TTL_S;
    o.attr_valid = f->nodes[c - 1].file < 0 ? TTL_S : 0;
    attr_of(f, c - 1, h->pid, &o.attr);
    return (void)fs_reply(f, h->unique, &o, sizeof o);
  }
  case FUSE_GETATTR: {
    struct fuse_attr_out o;

    memset(&o, 0, sizeof o);
    o.attr_valid = f->nodes[idx].file < 0 ? TTL_S : 0;
    attr_of(f, idx, h->pid, &o.attr);
    return (void)fs_reply(f, h->unique, &o, sizeof o);
  }
  case FUSE_OPEN:
    NEED(struct fuse_open_in);
    return do_open(f, h, arg, idx, t0);
  case FUSE_READ:
    NEED(struct fuse_read_in);
    return do_read(f, h, arg, idx, t0);
  case FUSE_WRITE:
    NEED(struct fuse_write_in);
    return do_write(f, h, arg, (const char *)arg + sizeof(struct fuse_write_in),
                    alen - sizeof(struct fuse_write_in), idx, t0);
  case FUSE_SETATTR: {
    struct fuse_setattr_in *in = arg;
    struct fuse_attr_out o;

    NEED(struct fuse_setattr_in);
    /* As procfs: no chmod/chown; a truncation of a writable value is a no-op. */
    if (in->valid & (FATTR_MODE | FATTR_UID | FATTR_GID))
      return (void)fs_reply_err(f, h->unique, EPERM);
    if (f->nodes[idx].file < 0 || !f->files[f->nodes[idx].file].writable)
      return (void)fs_reply_err(f, h->unique, EROFS);
    memset(&o, 0, sizeof o);
    attr_of(f, idx, h->pid, &o.attr);
    return (void)fs_reply(f, h->unique, &o, sizeof o);
  }
  case FUSE_RELEASE: {
    struct fuse_release_in *in = arg;
    struct blob *b;

    NEED(struct fuse_release_in);
    if (f->nodes[idx].file >= 0 && in->fh) {
      add(&f->files[f->nodes[idx].file].st.releases, 1);
      if ((b = fs_handle_drop(f, in->fh))) { /* else a predecessor's: nothing held here */
        atomic_fetch_sub(&f->handles, 1);
        blob_unref(b);
      }
    }
    return (void)fs_reply_err(f, h->unique, 0);
  }
  case FUSE_OPENDIR: {
    struct fuse_open_out o;

    if (f->nodes[idx].file >= 0)
      return (void)fs_reply_err(f, h->unique, ENOTDIR);
    memset(&o, 0, sizeof o);
    o.open_flags = FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE; /* the tree never changes */
    return (void)fs_reply(f, h->unique, &o, sizeof o);
  }
  case FUSE_READDIR:
    NEED(struct fuse_read_in);
    return do_readdir(f, h, arg, idx);
  case FUSE_RELEASEDIR:
    return (void)fs_reply_err(f, h->unique, 0);
  case FUSE_STATFS: {
    struct fuse_statfs_out o;

    memset(&o, 0, sizeof o);
    o.st.bsize = o.st.frsize = 4096;
    o.st.namelen = NAME_MAX;
    o.st.files = f->nnodes;
    return (void)fs_reply(f, h->unique, &o, sizeof o);
  }
  case FUSE_ACCESS: {
    struct fuse_access_in *in = arg;

    NEED(struct fuse_access_in);
    /* Only access(2) and chdir ask (no default_permissions): what the modes
     * say (0444 files, 0644 the /proc/sys values, 0555 directories). */
    if ((in->mask & W_OK) && (f->nodes[idx].file < 0 || !f->files[f->nodes[idx].file].writable))
      return (void)fs_reply_err(f, h->unique, EROFS);
    return (void)fs_reply_err(f, h->unique,
                              (in->mask & X_OK) && f->nodes[idx].file >= 0 ? EACCES : 0);
  }
  case FUSE_INTERRUPT:
    NEED(struct fuse_interrupt_in);
    return do_interrupt(f, h, arg);
  case FUSE_FORGET:
  case FUSE_BATCH_FORGET:
    return; /* the nodes are static: nothing to count, and no reply */
  case FUSE_DESTROY:
    return (void)fs_reply_err(f, h->unique, 0);
  case FUSE_FLUSH:
  default:
    /* ENOSYS makes the kernel stop sending FLUSH, xattr ops and the like. */
    return (void)fs_reply_err(f, h->unique, ENOSYS);
  }
#undef NEED
}

void *fs_worker(void *arg)
{
  struct icd_fuse *f = arg;
  uint64_t buf[BUF_SIZE / sizeof(uint64_t)]; /* aligned for the request structs */
  struct timespec pause = { 0, 10000000 };
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
