/* A channel's verdict table (see rules.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <stddef.h>
#include <sys/mman.h>

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
  if (action < ICD_ACT_CONTINUE || action > ICD_ACT_SYSINFO)
    return -EINVAL;
  if (value > RULE_VAL_MAX || value < RULE_VAL_MIN)
    return -ERANGE;
  if (action == ICD_ACT_ERRNO && (value <= 0 || value >= 4096))
    return -EINVAL;
  return 0;
}

int icd_rules_set(struct icd_rules *t, int nr, int action, int64_t value)
{
  int r;
  if (nr < 0 || nr >= ICD_NR_MAX)
    return -EINVAL;
  if (action == ICD_ACT_DEFAULT) {
    atomic_store(&t->rules[nr], 0);
    return 0;
  }
  if ((r = check_rule(action, value)))
    return r;
  atomic_store(&t->rules[nr], RULE_ENC(action, value));
  return 0;
}

int icd_rules_set_default(struct icd_rules *t, int action, int64_t value)
{
  int r = check_rule(action, value);
  if (!r && action == ICD_ACT_SYSINFO) /* a struct written for any call: never */
    r = -EINVAL;
  if (r)
    return r;
  atomic_store(&t->deflt, RULE_ENC(action, value));
  return 0;
}
