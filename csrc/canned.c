/* Canned answers: sysinfo(2) answered in C from figures the daemon publishes
 * into the channel's shared table (rules.h), by the receiver thread or by the
 * native helper, whichever receives the call.  The figures carry a deadline
 * (CLOCK_MONOTONIC): past it, or while the daemon is rewriting them, the call
 * goes to the Python handler, which reads the container's cgroups again and
 * publishes the new figures.  So a figure is never older than the freshness
 * the daemon chose (policy/sysinfo.py FRESH), and the Python path stays the
 * one that gathers them. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "rules.h"
#include "seccomp_compat.h"

int icd_rules_set_sysinfo(struct icd_rules *t, const void *buf, int len, int64_t fresh_ns)
{
  struct icd_canned *c = &t->sysinfo;
  uint64_t words[ICD_SYSINFO_WORDS];
  uint32_t seq;
  int i;

  if (len != (int)sizeof words || fresh_ns < 0)
    return -EINVAL;
  memcpy(words, buf, sizeof words);
  seq = atomic_load_explicit(&c->seq, memory_order_relaxed);
  /* An odd count: another writer is in; its figures are as fresh as ours. */
  if ((seq & 1)
      || !atomic_compare_exchange_strong_explicit(&c->seq, &seq, seq + 1, memory_order_acquire,
                                                  memory_order_relaxed))
    return -EBUSY;
  atomic_thread_fence(memory_order_release);
  for (i = 0; i < ICD_SYSINFO_WORDS; i++)
    atomic_store_explicit(&c->words[i], words[i], memory_order_relaxed);
  atomic_store_explicit(&c->until_ns, fresh_ns ? icd_now_ns(CLOCK_MONOTONIC) + fresh_ns : 0,
                        memory_order_relaxed);
  atomic_store_explicit(&c->seq, seq + 2, memory_order_release);
  return 0;
}

/* The figures if they are whole and fresh: 1, else 0. */
static int canned_copy(struct icd_rules *t, uint64_t words[ICD_SYSINFO_WORDS])
{
  struct icd_canned *c = &t->sysinfo;
  uint32_t s1 = atomic_load_explicit(&c->seq, memory_order_acquire), s2;
  int64_t until;
  int i;

  if (s1 & 1 || s1 == 0)
    return 0;
  for (i = 0; i < ICD_SYSINFO_WORDS; i++)
    words[i] = atomic_load_explicit(&c->words[i], memory_order_relaxed);
  until = atomic_load_explicit(&c->until_ns, memory_order_relaxed);
  atomic_thread_fence(memory_order_acquire);
  s2 = atomic_load_explicit(&c->seq, memory_order_relaxed);
  return s1 == s2 && icd_now_ns(CLOCK_MONOTONIC) < until;
}

int icd_canned_sysinfo(struct icd_rules *t, int procfd, int notify_fd,
                       const struct seccomp_notif *n)
{
  uint64_t words[ICD_SYSINFO_WORDS];
  char path[32];
  ssize_t w;
  int fd, v;

  if (!canned_copy(t, words))
    return 1;
  /* Opened before ID_VALID: the file is bound to the caller's address space,
   * so a pid reused after the check cannot receive the bytes. */
  snprintf(path, sizeof path, procfd == AT_FDCWD ? "/proc/%u/mem" : "%u/mem", n->pid);
  fd = openat(procfd, path, O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return 1; /* EPERM (a helper the caller's mm does not trust), ...: Python's */
  v = icd_notify_id_valid(notify_fd, n->id);
  if (v != 1) {
    close(fd);
    return v == 0 ? -ENOENT : 1;
  }
  w = pwrite(fd, words, sizeof words, (off_t)n->data.args[0]);
  close(fd);
  return w == (ssize_t)sizeof words ? 0 : -EFAULT;
}
