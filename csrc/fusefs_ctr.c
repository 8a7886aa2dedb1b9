/* Containers (registered pid namespaces and the nested ones aliased to them),
 * the opens parked until a render or a registration, and the renders Python
 * pushes back. */
#include "fusefs_int.h"

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

void fs_drop_aliases(struct icd_fuse *f, int all, uint64_t key)
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
          fs_drop_aliases(f, 1, 0);
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
struct ctr *fs_reader_ctr(struct icd_fuse *f, uint32_t pid)
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
void fs_request_render(struct icd_fuse *f, struct ctr *c, int file, int64_t now)
{
  struct entry *e = &c->e[file];

  if (e->requested && now - e->req < (int64_t)f->wait_ms * 1000000)
    return;
  if (f->rq_len == RQ_CAP) {
    atomic_fetch_add(&f->queue_full, 1);
    return;
  }
  f->rq[(f->rq_head + f->rq_len++) % RQ_CAP] = (struct icd_fuse_req){ c->key, file, 0 };
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
    fs_request_render(f, c, p->file, now);
  }
}

/* Parks an open of a reader whose pid namespace is not registered; 0 when it
 * cannot be (host reader, pid 0, stopping, too many waiting). */
int fs_park_unknown(struct icd_fuse *f, struct fuse_in_header *h, int file, int64_t t0,
                    const struct fuse_read_in *rd)
{
  struct stat st;
  struct parked *p;
  struct ctr *c;
  char path[32];
  int64_t now;

  snprintf(path, sizeof path, "%u/ns/pid", h->pid);
  if (!h->pid || atomic_load(&f->stopping) || fstatat(f->procfd, path, &st, 0) < 0
      || st.st_ino == f->self_ino || !(p = calloc(1, sizeof *p)))
    return 0;
  now = now_ns();
  p->unique = h->unique;
  p->key = 0;
  p->ino = st.st_ino;
  p->file = file;
  p->unknown = 1;
  if (rd) {
    p->read = 1;
    p->roff = rd->offset;
    p->rsize = rd->size;
  }
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

/* Takes the parked opens matching (key, file) (file -1: all of key; key 0
 * and file -2: every one) off the list; under mu. */
struct parked *fs_take_parked(struct icd_fuse *f, uint64_t key, int file, int64_t before)
{
  struct parked **pp, *p, *out = NULL;

  for (pp = &f->parked; (p = *pp);) {
    if ((file == -2 && (!before || p->deadline <= before))
        || (file != -2 && !p->unknown && p->key == key
            && (file == -1 || (p->file == file && !p->wid)))) {
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

void fs_answer_parked(struct icd_fuse *f, struct parked *p, struct blob *b, int err, int timeout)
{
  struct parked *next;

  for (; p; p = next) {
    next = p->next;
    if (b && p->read) {
      fs_reply_bytes(f, p->unique, b, p->roff, p->rsize);
    } else if (b) {
      fs_reply_open(f, p->unique, blob_ref(b));
    } else {
      add(&f->files[p->file].st.errors, 1);
      if (p->unknown) /* never registered in time: an unknown reader */
        atomic_fetch_add(&f->unknown, 1);
      else if (timeout)
        add(&f->files[p->file].st.timeouts, 1);
      fs_reply_err(f, p->unique, err);
    }
    note_latency(&f->files[p->file], p->t0, p->read);
    fs_free_parked(p);
  }
}

void fs_free_parked(struct parked *p)
{
  if (p)
    free(p->wdata);
  free(p);
}

/* A WRITE to a /proc/sys value: parked, and handed to Python as a request
 * whose `write` is the parked write's id (icd_fuse_write_get / _done); the
 * writer's container is the one of its pid, as the kernel checks a sysctl
 * write against the writer's credentials at write(2) time, not open(2). */
void fs_park_write(struct icd_fuse *f, struct fuse_in_header *h, int file, const char *data,
                   uint32_t len, int64_t t0)
{
  struct parked *p = calloc(1, sizeof *p);
  struct ctr *c;
  int err = ENOMEM;

  if (!p || !(p->wdata = malloc(len ? len : 1)))
    goto fail;
  memcpy(p->wdata, data, len);
  p->wlen = len;
  p->uid = h->uid;
  p->pid = h->pid;
  p->unique = h->unique;
  p->file = file;
  p->t0 = t0;
  p->deadline = now_ns() + (int64_t)f->wait_ms * 1000000;
  err = EIO;
  if (!(c = fs_reader_ctr(f, h->pid))) { /* a writer in no container */
    atomic_fetch_add(&f->unknown, 1);
    goto fail;
  }
  if (atomic_load(&f->stopping) || f->rq_len == RQ_CAP) {
    if (f->rq_len == RQ_CAP) {
      atomic_fetch_add(&f->queue_full, 1);
      err = EAGAIN;
    }
    pthread_mutex_unlock(&f->mu);
    goto fail;
  }
  f->next_wid = f->next_wid % INT32_MAX + 1;
  p->wid = f->next_wid;
  p->key = c->key;
  f->rq[(f->rq_head + f->rq_len++) % RQ_CAP] =
      (struct icd_fuse_req){ c->key, file, (int32_t)p->wid };
  p->next = f->parked;
  f->parked = p;
  f->nparked++;
  pthread_cond_signal(&f->rqcond);
  pthread_cond_signal(&f->reapcond);
  pthread_mutex_unlock(&f->mu);
  return;
fail:
  add(&f->files[file].st.errors, 1);
  fs_free_parked(p);
  fs_reply_err(f, h->unique, err);
}

/* The parked write `id`, under mu; unlinked when `take`. */
static struct parked *find_write(struct icd_fuse *f, uint32_t id, int take)
{
  struct parked **pp, *p;

  for (pp = &f->parked; (p = *pp) && p->wid != id; pp = &p->next)
    ;
  if (p && take) {
    *pp = p->next;
    f->nparked--;
  }
  return p;
}

int icd_fuse_write_get(struct icd_fuse *f, uint32_t id, struct icd_fuse_write *out)
{
  struct parked *p;
  int ret = -ENOENT;

  pthread_mutex_lock(&f->mu);
  if (id && (p = find_write(f, id, 0))) {
    out->key = p->key;
    out->file = p->file;
    out->uid = p->uid;
    out->pid = p->pid;
    out->len = p->wlen;
    memcpy(out->data, p->wdata, p->wlen);
    ret = (int)p->wlen;
  }
  pthread_mutex_unlock(&f->mu);
  return ret;
}

int icd_fuse_write_done(struct icd_fuse *f, uint32_t id, int result)
{
  struct fuse_write_out o;
  struct parked *p;

  pthread_mutex_lock(&f->mu);
  if (!id || !(p = find_write(f, id, 1))) {
    pthread_mutex_unlock(&f->mu);
    return -ENOENT; /* answered meanwhile: interrupted, timed out, unregistered */
  }
  f->writers++;
  pthread_mutex_unlock(&f->mu);
  if (result >= 0) {
    memset(&o, 0, sizeof o);
    o.size = (uint32_t)result < p->wlen ? (uint32_t)result : p->wlen;
    add(&f->files[p->file].st.writes, 1);
    fs_reply(f, p->unique, &o, sizeof o);
  } else {
    add(&f->files[p->file].st.errors, 1);
    fs_reply_err(f, p->unique, -result);
  }
  fs_free_parked(p);
  fs_writer_done(f);
  return 0;
}

void fs_writer_done(struct icd_fuse *f)
{
  pthread_mutex_lock(&f->mu);
  if (!--f->writers)
    pthread_cond_broadcast(&f->livecond);
  pthread_mutex_unlock(&f->mu);
}

/* Ends parked opens whose render did not come in time. */
void *fs_reaper(void *arg)
{
  struct icd_fuse *f = arg;
  struct parked *p, *due;
  struct timespec ts;
  int64_t next, now;

  pthread_mutex_lock(&f->mu);
  while (!atomic_load(&f->stopping)) {
    now = now_ns();
    if ((due = fs_take_parked(f, 0, -2, now))) {
      f->writers++;
      pthread_mutex_unlock(&f->mu);
      fs_answer_parked(f, due, NULL, EIO, 1);
      fs_writer_done(f);
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
  fs_drop_aliases(f, 0, key);
  p = fs_take_parked(f, key, -1, 0);
  f->writers++;
  pthread_mutex_unlock(&f->mu);
  fs_answer_parked(f, p, NULL, EIO, 0);
  fs_writer_done(f);
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
  p = fs_take_parked(f, key, file, 0);
  if (p && b)
    blob_ref(b); /* ours while answering: another set may replace e->b meanwhile */
  f->writers++;  /* stop waits for us before closing the fd */
  pthread_mutex_unlock(&f->mu);
  blob_unref(old);
  if (p) {
    fs_answer_parked(f, p, b, err, 0);
    if (b)
      blob_unref(b);
  }
  fs_writer_done(f);
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
