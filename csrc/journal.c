/* The receive journal: every notification the daemon takes off a notify fd
 * (RECV) is written here first, so a daemon that dies before answering it
 * leaves a record its successor can answer (docs/operations.md, "Restarts").
 *
 * Once RECV'd, a notification is in the kernel's SENT state: a new RECV never
 * returns it again, yet the caller stays blocked as long as the listener fd
 * is open anywhere (the fd store keeps it open). Only its id, which the
 * kernel picks at random per filter, lets anyone answer it, so the id must
 * outlive the process: the journal is a memfd the fd store keeps too.
 *
 * Layout (read by interceptd/journal.py, keep both in step): a 64-byte header
 * (magic, version, slot count, the next slot's sequence number) and a ring
 * of 96-byte slots. A slot is claimed by an atomic add on the sequence,
 * zeroed-sequence while written, and published by storing its sequence last:
 * a slot whose sequence is 0 was torn by the daemon's death and is skipped.
 * Answered notifications are not removed (that would cost the SEND path an
 * extra write): the successor asks the kernel (ID_VALID) which ones are still
 * waiting. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "seccomp_compat.h"

#define JOURNAL_MAGIC 0x314c4e524a444349ULL /* "ICDJRNL1" */
#define JOURNAL_VERSION 1

struct jhdr {
  uint64_t magic;
  uint32_t version;
  uint32_t slots;
  _Atomic uint64_t next;
  uint8_t pad[40];
};

struct jslot {
  _Atomic uint64_t seq;
  int32_t fd;
  uint32_t pad;
  struct seccomp_notif n;
};

_Static_assert(sizeof(struct jhdr) == 64, "journal header layout");
_Static_assert(sizeof(struct jslot) == 96, "journal slot layout");

static struct jhdr *_Atomic journal;

int icd_journal_open(int fd, uint32_t slots)
{
  size_t len = sizeof(struct jhdr) + (size_t)slots * sizeof(struct jslot);
  struct stat st;
  struct jhdr *h;

  if (slots == 0)
    return -EINVAL;
  if (fstat(fd, &st) < 0)
    return -errno;
  if ((size_t)st.st_size < len)
    return -EINVAL;
  h = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (h == MAP_FAILED)
    return -errno;
  if (h->magic != JOURNAL_MAGIC || h->version != JOURNAL_VERSION || h->slots != slots) {
    munmap(h, len);
    return -EINVAL;
  }
  /* A second journal (a test's second daemon in one process) replaces the
   * first, which stays mapped: a receiver may be writing to it right now. */
  atomic_store_explicit(&journal, h, memory_order_release);
  return 0;
}

void icd_journal_note(int fd, const struct seccomp_notif *n)
{
  struct jhdr *h = atomic_load_explicit(&journal, memory_order_acquire);
  struct jslot *s;
  uint64_t seq;

  if (!h)
    return;
  seq = atomic_fetch_add_explicit(&h->next, 1, memory_order_relaxed) + 1;
  s = (struct jslot *)(h + 1) + (seq - 1) % h->slots;
  atomic_store_explicit(&s->seq, 0, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  s->fd = fd;
  memcpy(&s->n, n, sizeof s->n);
  atomic_store_explicit(&s->seq, seq, memory_order_release);
}
