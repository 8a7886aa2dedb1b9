/* The emulated /proc and /sys files: a static FUSE tree served over the raw
 * /dev/fuse protocol (linux/fuse.h) by a few C threads.  Files are read-only
 * but for a few /proc/sys values, whose WRITEs are parked and answered by
 * Python (fusefs_ctr.c).  This file: lifecycle; fusefs_proto.c: requests;
 * fusefs_tree.c: the nodes; fusefs_ctr.c: containers and parked requests;
 * fusefs_reply.c: answers and handles (the order they call each other in:
 * fusefs_int.h).
 *
 * Why raw and not libfuse: the tree is static, so a dozen opcodes do; the
 * raw protocol lets us park an open that waits for a render
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
#include "fusefs_int.h"

static void stop_handler(int sig)
{
  (void)sig;
}

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
  /* Tells this server's file handles from a predecessor's (fusefs_reply.c). */
  while (!f->epoch)
    if (getrandom(&f->epoch, sizeof f->epoch, 0) < 0 && errno != EINTR) {
      free(f);
      return NULL;
    }
  if ((ret = fs_new_node(f, 0, "", 0, -1)) < 0) { /* the root, node id 1 */
    free(f);
    errno = -ret;
    return NULL;
  }
  pthread_mutex_init(&f->mu, NULL);
  pthread_mutex_init(&f->hmu, NULL);
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
      pthread_kill(f->workers[i], ICD_STOP_SIGNAL);
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

/* What a mount and an adoption both need: the stop signal's handler, /proc
 * and our own pid namespace (readers in it are the host's). */
static int prepare(struct icd_fuse *f, const char *mountpoint)
{
  struct sigaction sa;
  struct stat st;

  if (!(f->mountpoint = strdup(mountpoint)))
    return -ENOMEM;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = stop_handler; /* no SA_RESTART: read(2) returns EINTR */
  sigemptyset(&sa.sa_mask);
  if (sigaction(ICD_STOP_SIGNAL, &sa, NULL) < 0)
    return -errno;
  if ((f->procfd = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0)
    return -errno;
  if (fstatat(f->procfd, "self/ns/pid", &st, 0) < 0)
    return -errno;
  f->self_ino = st.st_ino;
  return 0;
}

static void mark_started(struct icd_fuse *f)
{
  struct timespec rt;

  f->owner = getpid();
  f->started = 1;
  clock_gettime(CLOCK_REALTIME, &rt);
  f->t_start = (int64_t)rt.tv_sec * 1000000000 + rt.tv_nsec;
}

int icd_fuse_serve(struct icd_fuse *f)
{
  sigset_t all, old;
  int ret, i;

  if (!f->started || f->nthreads || f->reaper_on)
    return -EINVAL;
  /* Workers take no signal but the stop signal (Python's handlers run on
   * its own threads). */
  sigfillset(&all);
  sigdelset(&all, ICD_STOP_SIGNAL);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  ret = pthread_create(&f->reaper, NULL, fs_reaper, f);
  if (!ret)
    f->reaper_on = 1;
  for (i = 0; !ret && i < f->nworkers; i++) {
    pthread_mutex_lock(&f->mu);
    if (!(ret = pthread_create(&f->workers[i], NULL, fs_worker, f))) {
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
  return 0;
}

int icd_fuse_start(struct icd_fuse *f, const char *mountpoint)
{
  struct stat st;
  char opts[128];
  int ret;

  if (f->mountpoint) /* one start per server: make a new one after a stop */
    return -EBUSY;
  if ((ret = prepare(f, mountpoint)) < 0 || (ret = clear_stale(mountpoint)) < 0) {
    errno = -ret;
    goto fail;
  }
  /* CLOEXEC: a child holding this fd would keep the connection alive after
   * the daemon died. */
  if ((f->fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)) < 0)
    goto fail;
  snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=%u,group_id=%u,allow_other", f->fd,
           geteuid(), getegid());
  if (mount("interceptd", mountpoint, "fuse.interceptd", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts)
      < 0)
    goto fail;
  mark_started(f);
  if ((ret = icd_fuse_serve(f)) < 0)
    return ret;
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

int icd_fuse_adopt(struct icd_fuse *f, int fd, const char *mountpoint, uint64_t dev)
{
  struct statx stx;
  struct stat st;
  int ret;

  if (f->mountpoint)
    return -EBUSY;
  /* The mount there must still be that connection.  AT_STATX_DONT_SYNC: the
   * attributes the kernel has, no GETATTR, which nobody would answer yet. */
  if (statx(AT_FDCWD, mountpoint, AT_STATX_DONT_SYNC | AT_SYMLINK_NOFOLLOW, STATX_TYPE, &stx) < 0)
    return -errno;
  if (makedev(stx.stx_dev_major, stx.stx_dev_minor) != dev)
    return -ESTALE;
  if (fstat(fd, &st) < 0)
    return -errno;
  if (!S_ISCHR(st.st_mode) || st.st_rdev != makedev(10, 229)) /* /dev/fuse */
    return -EBADF;
  if ((ret = prepare(f, mountpoint)) < 0)
    goto fail;
  if ((f->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
    ret = -errno;
    goto fail;
  }
  f->dev = dev;
  f->adopted = 1;
  mark_started(f);
  return 0;
fail:
  icd_fuse_stop(f);
  free(f->mountpoint);
  f->mountpoint = NULL; /* a failed adoption leaves the server to mount afresh */
  return ret;
}

int icd_fuse_resend(struct icd_fuse *f)
{
  struct fuse_out_header oh = { sizeof oh, ICD_FUSE_NOTIFY_RESEND, 0 };

  if (!f->started)
    return -EINVAL;
  if (write(f->fd, &oh, sizeof oh) < 0)
    return -errno;
  return 0;
}

int icd_fuse_fd(struct icd_fuse *f)
{
  return f->started ? f->fd : -1;
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
  out->foreign = atomic_load(&f->foreign);
  pthread_mutex_lock(&f->mu);
  out->aliases = (uint64_t)f->naliases;
  out->containers = (uint64_t)f->ncontainers;
  out->parked = (uint64_t)f->nparked;
  pthread_mutex_unlock(&f->mu);
}

uint64_t icd_fuse_dev(struct icd_fuse *f)
{
  return f->dev;
}

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
  p = fs_take_parked(f, 0, -2, 0);
  f->writers++;
  pthread_mutex_unlock(&f->mu);
  fs_answer_parked(f, p, NULL, EIO, 0);
  fs_writer_done(f);
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
  for (p = fs_take_parked(f, 0, -2, 0); p; p = pn) { /* parked after the stop began */
    pn = p->next;
    free(p);
  }
  fs_drop_aliases(f, 1, 0);
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
  fs_free_handles(f);
  free(f->nodes);
  free(f->idtab);
  free(f->files);
  free(f->mountpoint);
  free(f);
}
