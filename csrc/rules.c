/* A channel's verdict table (see rules.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/futex.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#include "rules.h"

struct icd_rules *icd_rules_new(void)
{
  struct icd_rules *t =
      mmap(NULL, sizeof *t, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (t == MAP_FAILED)
    return NULL;
  atomic_init(&t->deflt, RULE_ENC(ICD_ACT_ERRNO, EPERM));
  return t;
}

void icd_rules_free(struct icd_rules *t)
{
  if (t)
    munmap(t, sizeof *t);
}

int64_t icd_rule_for(struct icd_rules *t, uint32_t arch, int nr)
{
  int64_t rule;
  if (arch != AUDIT_ARCH_X86_64 || nr < 0 || nr >= ICD_NR_MAX)
    return RULE_ENC(ICD_ACT_PYTHON, 0);
  rule = atomic_load_explicit(&t->rules[nr], memory_order_relaxed);
  if (RULE_ACT(rule) == ICD_ACT_DEFAULT)
    rule = atomic_load_explicit(&t->deflt, memory_order_relaxed);
  return rule;
}

static int check_rule(int action, int64_t value)
{
  if (action < ICD_ACT_CONTINUE || action > ICD_ACT_HOLD)
    return -EINVAL;
  if (value > RULE_VAL_MAX || value < RULE_VAL_MIN)
    return -ERANGE;
  if (action == ICD_ACT_ERRNO && (value <= 0 || value >= 4096))
    return -EINVAL;
  return 0;
}

/* The futex word of rule nr: its low half, where the action is (x86_64 is
 * little-endian). Not FUTEX_PRIVATE: the helper waits in another process. */
static uint32_t *rule_word(struct icd_rules *t, int nr)
{
  return (uint32_t *)(void *)&t->rules[nr];
}

static void rules_wake(struct icd_rules *t, int nr)
{
  syscall(SYS_futex, rule_word(t, nr), FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

int64_t icd_rules_hold(struct icd_rules *t, uint32_t arch, int nr, int timeout_ms)
{
  int64_t rule = icd_rule_for(t, arch, nr),
          end = icd_now_ns(CLOCK_MONOTONIC) + timeout_ms * 1000000LL;
  struct timespec ts;

  while (RULE_ACT(rule) == ICD_ACT_HOLD) {
    int64_t left = end - icd_now_ns(CLOCK_MONOTONIC);
    if (left <= 0)
      return RULE_ENC(ICD_ACT_PYTHON, 0);
    ts.tv_sec = left / 1000000000;
    ts.tv_nsec = left % 1000000000;
    syscall(SYS_futex, rule_word(t, nr), FUTEX_WAIT, (uint32_t)rule, &ts, NULL, 0);
    rule = icd_rule_for(t, arch, nr);
  }
  return rule;
}

int icd_rules_set(struct icd_rules *t, int nr, int action, int64_t value)
{
  int64_t old;
  int r;
  if (nr < 0 || nr >= ICD_NR_MAX)
    return -EINVAL;
  if (action == ICD_ACT_DEFAULT) {
    if (RULE_ACT(atomic_exchange(&t->rules[nr], 0)) == ICD_ACT_HOLD)
      rules_wake(t, nr);
    return 0;
  }
  if ((r = check_rule(action, value)))
    return r;
  old = atomic_exchange(&t->rules[nr], RULE_ENC(action, value));
  if (RULE_ACT(old) == ICD_ACT_HOLD)
    rules_wake(t, nr);
  return 0;
}

int icd_rules_set_default(struct icd_rules *t, int action, int64_t value)
{
  int r = check_rule(action, value);
  /* A struct written for any call, or every call held: never. */
  if (!r && (action == ICD_ACT_SYSINFO || action == ICD_ACT_HOLD))
    r = -EINVAL;
  if (r)
    return r;
  atomic_store(&t->deflt, RULE_ENC(action, value));
  return 0;
}
