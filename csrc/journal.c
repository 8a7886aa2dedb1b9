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
 * A ring would not do: a notification may wait in a channel queue for seconds
 * (a throttled container) while thousands of others pass. The journal is a hash
 * table keyed by (fd, thread): a task waits on at most one notification per
 * filter, so its new one replaces its old one, which was answered. A slot held
 * by another task is taken over only once the kernel says its notification is
 * no longer waiting (ID_VALID); otherwise the next slot is tried.
 *
 * The receive itself lands in the journal: a SIGKILL that arrives while a
 * thread is inside RECV lets the ioctl finish (the notification is then SENT)
 * and kills the thread on its way back to user space, before any code of ours
 * runs. So each receiving thread claims a landing slot and has the kernel copy
 * the notification straight into it (MAP_SHARED memfd memory outlives the
 * process); it is then moved to the table and the landing slot released.
 *
 * Layout (read by interceptd/journal.py, keep both in step): a 64-byte header
 * (magic, version, table slot count, landing slot count) and 96-byte slots,
 * the table's then LANDING landing slots: a lock word, the daemon's fd
 * number, the thread id, a done word (below), then struct seccomp_notif. A
 * table slot left locked
 * was torn and is skipped; a landing slot left locked holds what its RECV
 * returned (id 0: nothing).
 * Answered notifications are not removed (that would cost the SEND path an
 * extra write): the successor asks the kernel (ID_VALID) which still wait.
 *
 * A call whose action is done but whose answer is not (the daemon killed in
 * between) must not be acted on again by the successor: a umount replayed
 * fails with EINVAL, a mount stacks a second copy.  So whoever performs an
 * action marks the slot done, with the result, before it answers, and the
 * successor answers a done slot with that result.  A word that was padding
 * in the same layout: 0 in journals of versions that never set it. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "icd.h"
#include "journal.h"
#include "seccomp_compat.h"

struct jhdr {
  uint64_t magic;
  uint32_t version;
  uint32_t slots;
  uint32_t landing;
  uint8_t pad[44];
};

struct jslot {
  _Atomic uint32_t lock;
  int32_t fd;
  uint32_t tid;
  uint32_t done; /* ICD_JOURNAL_DONE | errno once acted on (icd_journal_mark) */
  struct seccomp_notif n;
};

#define PROBES 16

_Static_assert(sizeof(struct jhdr) == 64, "journal header layout");
_Static_assert(sizeof(struct jslot) == 96, "journal slot layout");

static struct jhdr *_Atomic journal;

int icd_journal_open(int fd, uint32_t slots)
{
  size_t len = sizeof(struct jhdr) + ((size_t)slots + ICD_JOURNAL_LANDING) * sizeof(struct jslot);
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
  if (h->magic != ICD_JOURNAL_MAGIC || h->version != ICD_JOURNAL_VERSION || h->slots != slots
      || h->landing != ICD_JOURNAL_LANDING) {
    munmap(h, len);
    return -EINVAL;
  }
  /* A second journal (a test's second daemon in one process) replaces the
   * first, which stays mapped: a receiver may be writing to it right now. */
  atomic_store_explicit(&journal, h, memory_order_release);
  return 0;
}

static int still_waiting(const struct jslot *s)
{
  uint64_t id = s->n.id;
  /* The number may have been closed and reused since: a seccomp ioctl on any
   * other file fails, and a random id never matches another filter's. */
  return ioctl(s->fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

static void note(int fd, const struct seccomp_notif *n)
{
  struct jhdr *h = atomic_load_explicit(&journal, memory_order_acquire);
  struct jslot *slots;
  uint32_t base, i;

  if (!h)
    return;
  slots = (struct jslot *)(h + 1);
  base = ((uint32_t)fd * 2654435761u) ^ (n->pid * 40503u);
  for (i = 0; i < PROBES; i++) {
    struct jslot *s = &slots[(base + i) % h->slots];
    uint32_t unlocked = 0;
    if (!atomic_compare_exchange_strong_explicit(&s->lock, &unlocked, 1, memory_order_acquire,
                                                 memory_order_relaxed))
      continue;
    if (s->tid == 0 || (s->tid == n->pid && s->fd == fd) || i == PROBES - 1 || !still_waiting(s)) {
      s->fd = fd;
      s->tid = n->pid;
      s->done = 0;
      memcpy(&s->n, n, sizeof s->n);
      atomic_store_explicit(&s->lock, 0, memory_order_release);
      return;
    }
    atomic_store_explicit(&s->lock, 0, memory_order_release);
  }
}

int icd_journal_mark(int fd, uint32_t pid, uint64_t id, int res)
{
  struct jhdr *h = atomic_load_explicit(&journal, memory_order_acquire);
  struct jslot *slots;
  uint32_t base, i;

  if (!h)
    return -ENODEV;
  slots = (struct jslot *)(h + 1);
  base = ((uint32_t)fd * 2654435761u) ^ (pid * 40503u);
  for (i = 0; i < PROBES; i++) {
    struct jslot *s = &slots[(base + i) % h->slots];
    uint32_t unlocked = 0;
    int spins = 0;
    /* The slot's writer holds the lock only for a copy: wait it out. */
    while (!atomic_compare_exchange_weak_explicit(&s->lock, &unlocked, 1, memory_order_acquire,
                                                  memory_order_relaxed)) {
      unlocked = 0;
      if (++spins > 1000)
        return -EBUSY; /* a torn slot: the successor skips it anyway */
    }
    if (s->fd == fd && s->tid == pid && s->n.id == id) {
      s->done = (uint32_t)ICD_JOURNAL_DONE | (uint32_t)(-res & 0xffff);
      atomic_store_explicit(&s->lock, 0, memory_order_release);
      return 0;
    }
    atomic_store_explicit(&s->lock, 0, memory_order_release);
  }
  return -ENOENT;
}

static struct jslot *claim_landing(struct jhdr *h, int fd)
{
  struct jslot *land = (struct jslot *)(h + 1) + h->slots;
  uint32_t base = ((uint32_t)fd * 2654435761u) ^ ((uint32_t)gettid() * 40503u), i;

  for (i = 0; i < 64; i++) {
    struct jslot *s = &land[(base + i) % ICD_JOURNAL_LANDING];
    uint32_t unlocked = 0;
    if (atomic_compare_exchange_strong_explicit(&s->lock, &unlocked, 1, memory_order_acquire,
                                                memory_order_relaxed))
      return s;
  }
  return NULL;
}

int icd_journal_recv_as(int fd, int key, struct seccomp_notif *n)
{
  struct jhdr *h = atomic_load_explicit(&journal, memory_order_acquire);
  struct jslot *land = h ? claim_landing(h, key) : NULL;
  int ret, err;

  if (!land) {
    /* No journal, or every landing slot taken: received on the stack (a
     * death right here loses this one notification). */
    ret = ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, n);
    if (ret == 0 && h)
      note(key, n);
    return ret;
  }
  land->fd = key;
  land->tid = 0;
  memset(&land->n, 0, sizeof land->n);
  ret = ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &land->n);
  err = errno;
  if (ret == 0) {
    memcpy(n, &land->n, sizeof *n);
    note(key, n);
  }
  land->n.id = 0;
  atomic_store_explicit(&land->lock, 0, memory_order_release);
  errno = err;
  return ret;
}

int icd_journal_recv(int fd, struct seccomp_notif *n)
{
  return icd_journal_recv_as(fd, fd, n);
}
