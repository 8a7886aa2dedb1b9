/* The answers written to /dev/fuse, and the open-file handles an OPEN's
 * answer names: the bottom of the request path (fusefs_proto.c answers
 * requests at once, fusefs_ctr.c the ones it parked), calling nothing of
 * the server above it. */
#include "fusefs_int.h"

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

int fs_reply_err(struct icd_fuse *f, uint64_t unique, int err)
{
  struct iovec iov[1];
  return reply_iov(f, unique, err, iov, 1);
}

int fs_reply(struct icd_fuse *f, uint64_t unique, const void *p, size_t len)
{
  struct iovec iov[2] = { { 0 }, { (void *)p, len } };
  return reply_iov(f, unique, 0, iov, 2);
}

/* Handles.  A handle is a slot of the table holding a counted reference to
 * one render; the fh the kernel keeps is this server's epoch (random) and
 * the slot.  A restarted daemon that adopted the connection gets the
 * predecessor's handles in READ and RELEASE: another epoch, so never taken
 * for one of its own slots (the predecessor's memory is gone); such a READ
 * is served from the reader's container's current bytes (fusefs_proto.c
 * do_read). */
static uint64_t handle_new(struct icd_fuse *f, struct blob *b)
{
  struct blob **chunk;
  uint32_t slot;

  pthread_mutex_lock(&f->hmu);
  if (f->nfree) {
    slot = f->hfree[--f->nfree];
  } else {
    if (f->hnext >= (uint32_t)HCHUNK * HCHUNKS)
      goto full;
    slot = f->hnext;
    if (!f->hchunk[slot / HCHUNK]) {
      if (!(chunk = calloc(HCHUNK, sizeof *chunk)))
        goto full;
      __atomic_store_n(&f->hchunk[slot / HCHUNK], chunk, __ATOMIC_RELEASE);
    }
    __atomic_store_n(&f->hnext, slot + 1, __ATOMIC_RELEASE);
  }
  __atomic_store_n(&f->hchunk[slot / HCHUNK][slot % HCHUNK], b, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&f->hmu);
  return (uint64_t)f->epoch << 32 | (slot + 1);
full:
  pthread_mutex_unlock(&f->hmu);
  return 0;
}

/* The render of handle fh, or NULL for a handle that is not this server's.
 * No lock: the kernel sends no READ of a handle after its RELEASE. */
struct blob *fs_handle_get(struct icd_fuse *f, uint64_t fh)
{
  uint32_t slot = (uint32_t)fh - 1;
  struct blob **chunk;

  if (fh >> 32 != f->epoch || !(uint32_t)fh || slot >= __atomic_load_n(&f->hnext, __ATOMIC_ACQUIRE))
    return NULL;
  chunk = __atomic_load_n(&f->hchunk[slot / HCHUNK], __ATOMIC_ACQUIRE);
  return chunk ? __atomic_load_n(&chunk[slot % HCHUNK], __ATOMIC_ACQUIRE) : NULL;
}

/* Frees handle fh; its render (the caller drops the reference), or NULL. */
struct blob *fs_handle_drop(struct icd_fuse *f, uint64_t fh)
{
  struct blob *b;
  uint32_t slot = (uint32_t)fh - 1, *p;

  if (!(b = fs_handle_get(f, fh)))
    return NULL;
  pthread_mutex_lock(&f->hmu);
  f->hchunk[slot / HCHUNK][slot % HCHUNK] = NULL;
  if (f->nfree == f->capfree) {
    uint32_t cap = f->capfree ? f->capfree * 2 : 256;
    if ((p = realloc(f->hfree, cap * sizeof *p))) {
      f->hfree = p;
      f->capfree = cap;
    }
  }
  if (f->nfree < f->capfree) /* else the slot is lost, not reused: no harm */
    f->hfree[f->nfree++] = slot;
  pthread_mutex_unlock(&f->hmu);
  return b;
}

void fs_free_handles(struct icd_fuse *f)
{
  uint32_t i, j;

  for (i = 0; i < HCHUNKS; i++) {
    if (!f->hchunk[i])
      continue;
    for (j = 0; j < HCHUNK; j++)
      blob_unref(f->hchunk[i][j]);
    free(f->hchunk[i]);
    f->hchunk[i] = NULL;
  }
  free(f->hfree);
  f->hfree = NULL;
}

/* The open's answer: a handle holding the reference to one render.  A failed
 * write (reader gone) gives the reference back: no RELEASE follows. */
void fs_reply_open(struct icd_fuse *f, uint64_t unique, struct blob *b)
{
  struct fuse_open_out o;

  memset(&o, 0, sizeof o);
  if (!(o.fh = handle_new(f, b))) {
    blob_unref(b);
    fs_reply_err(f, unique, ENFILE);
    return;
  }
  /* Direct I/O: every read comes here, so size 0 in stat works like procfs;
   * no flush: close(2) then costs no round trip. */
  o.open_flags = FOPEN_DIRECT_IO | FOPEN_NOFLUSH;
  atomic_fetch_add(&f->handles, 1);
  if (fs_reply(f, unique, &o, sizeof o) < 0) {
    atomic_fetch_sub(&f->handles, 1);
    blob_unref(fs_handle_drop(f, o.fh));
  }
}

/* A READ's answer: `size` bytes of b from `off` (none past the end). */
void fs_reply_bytes(struct icd_fuse *f, uint64_t unique, struct blob *b, uint64_t off,
                    uint32_t size)
{
  struct iovec iov[2] = { { 0 }, { NULL, 0 } };

  if (off < b->len) {
    iov[1].iov_base = b->data + off;
    iov[1].iov_len = b->len - off < size ? b->len - off : size;
  }
  reply_iov(f, unique, 0, iov, 2);
}
