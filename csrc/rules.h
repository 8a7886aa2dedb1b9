/* Internal to csrc/: a channel's verdict table.  It lives in a MAP_SHARED
 * page of its own so that the channel's native helper (native.c), forked
 * later, answers by the same rules as the daemon, changes included.  Both
 * the channel (channel.c) and the helper use it through rules.c only. */
#ifndef ICD_RULES_H
#define ICD_RULES_H

#include <stdatomic.h>
#include <stdint.h>

#include "icd.h"

#define RULE_ENC(act, val) ((int64_t)((uint64_t)(val) << 3) | (act))
#define RULE_ACT(r) ((int)((r)&7))
#define RULE_VAL(r) ((r) >> 3)
#define RULE_VAL_MAX (INT64_MAX >> 3)
#define RULE_VAL_MIN (INT64_MIN >> 3)

/* struct sysinfo as the daemon rendered it, under a sequence count (odd
 * while it is written), answered only before until_ns (see canned.c). */
#define ICD_SYSINFO_WORDS 14 /* 112 bytes, x86_64 */
struct icd_canned {
  _Atomic uint32_t seq;
  _Atomic int64_t until_ns; /* CLOCK_MONOTONIC */
  _Atomic uint64_t words[ICD_SYSINFO_WORDS];
};

struct icd_rules {
  _Atomic int64_t rules[ICD_NR_MAX]; /* RULE_ENC(action, value); 0 = use deflt */
  _Atomic int64_t deflt;
  struct icd_canned sysinfo; /* for ICD_ACT_SYSINFO */
};

/* A table (default: fail with EPERM), or NULL with errno set. */
struct icd_rules *icd_rules_new(void);
void icd_rules_free(struct icd_rules *t);
/* The rule for a call: its own, the default, or PYTHON for another arch. */
int64_t icd_rule_for(struct icd_rules *t, uint32_t arch, int nr);
/* 0 or -errno (EINVAL, ERANGE); ICD_ACT_DEFAULT clears nr's own rule. */
int icd_rules_set(struct icd_rules *t, int nr, int action, int64_t value);
int icd_rules_set_default(struct icd_rules *t, int action, int64_t value);

/* The rule for a call, waiting up to timeout_ms while it is ICD_ACT_HOLD
 * (then PYTHON). */
int64_t icd_rules_hold(struct icd_rules *t, uint32_t arch, int nr, int timeout_ms);

/* canned.c: publishes the figures for fresh_ns (0 withdraws them): 0, or
 * -EBUSY while another writer is in, -EINVAL. */
int icd_rules_set_sysinfo(struct icd_rules *t, const void *buf, int len, int64_t fresh_ns);
/* Answers ICD_ACT_SYSINFO's call n by writing the figures to its buffer
 * through procfd (a host /proc, or AT_FDCWD): 0 written, -EFAULT, -ENOENT
 * (the call is gone), or 1: nothing done, the call is the daemon's. */
struct seccomp_notif;
int icd_canned_sysinfo(struct icd_rules *t, int procfd, int notify_fd,
                       const struct seccomp_notif *n);

#endif
