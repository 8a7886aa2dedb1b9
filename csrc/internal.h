/* Internal to csrc/: helpers several files share that are not part of the
 * cffi API (icd.h). */
#ifndef ICD_INTERNAL_H
#define ICD_INTERNAL_H

#include <signal.h>
#include <stdint.h>
#include <time.h>

/* Gets a receiver (or a direct-mode waiter, or a native helper being
 * quiesced) out of a blocking RECV or poll: its handler does nothing and is
 * installed without SA_RESTART. */
#define ICD_STOP_SIGNAL (SIGRTMIN + 7)

static inline int64_t icd_now_ns(clockid_t clk)
{
  struct timespec ts;
  clock_gettime(clk, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* target.c, unchecked: the caller validates the notification afterwards.
 * mem_file: fall back to /proc/<pid>/mem (only where /proc is the host's). */
int icd_target_string(int pid, uint64_t addr, char *buf, int max_len, int mem_file);
/* The task's comm, best effort ("" if it is gone); procfd a host /proc or
 * AT_FDCWD. */
void icd_read_comm(int procfd, uint32_t pid, char out[16]);

#endif
