/*
 * syscall_loop: time one syscall, call by call.
 *
 *   syscall_loop [-n CALLS] [-w WARMUP] [-s NR]
 *
 * Calls syscall NR (default 139, sysfs(2): obsolete, so nothing else in a
 * container makes it; runc's init calls getppid) with argument 3 WARMUP times
 * (default 1000, not timed), then CALLS times (default 100000), timing each
 * with CLOCK_MONOTONIC.  Prints one JSON line:
 *   {"nr":139,"n":100000,"p50_ns":...,"p99_ns":...,"mean_ns":...,"min_ns":...,
 *    "ret":<last return>,"errno":<last errno>,"vcsw":...,"ivcsw":...}
 * (vcsw/ivcsw: the process's voluntary/involuntary context switches).
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o syscall_loop syscall_loop.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int64_t now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
  long n = 100000, warm = 1000, nr = 139, i, r = 0;
  int64_t *d, sum = 0, t0;
  struct rusage ru;
  int opt, e = 0;

  while ((opt = getopt(argc, argv, "n:w:s:")) != -1) {
    switch (opt) {
    case 'n': n = strtol(optarg, NULL, 0); break;
    case 'w': warm = strtol(optarg, NULL, 0); break;
    case 's': nr = strtol(optarg, NULL, 0); break;
    default:
      fprintf(stderr, "usage: syscall_loop [-n CALLS] [-w WARMUP] [-s NR]\n");
      return 2;
    }
  }
  if (n <= 0 || warm < 0) {
    fprintf(stderr, "syscall_loop: bad counts\n");
    return 2;
  }
  d = malloc(n * sizeof *d);
  if (!d) {
    perror("malloc");
    return 1;
  }
  for (i = 0; i < warm; i++)
    syscall(nr, 3);
  for (i = 0; i < n; i++) {
    t0 = now();
    r = syscall(nr, 3);
    d[i] = now() - t0;
    e = r < 0 ? errno : 0;
  }
  if (getrusage(RUSAGE_SELF, &ru) < 0) {
    perror("getrusage");
    return 1;
  }
  for (i = 0; i < n; i++)
    sum += d[i];
  qsort(d, n, sizeof *d, cmp);
  printf("{\"nr\":%ld,\"n\":%ld,\"p50_ns\":%lld,\"p99_ns\":%lld,\"mean_ns\":%lld,"
         "\"min_ns\":%lld,\"ret\":%ld,\"errno\":%d,\"vcsw\":%ld,\"ivcsw\":%ld}\n",
         nr, n, (long long)d[n / 2], (long long)d[(n * 99) / 100], (long long)(sum / n),
         (long long)d[0], r, e, ru.ru_nvcsw, ru.ru_nivcsw);
  free(d);
  return fflush(stdout) == 0 ? 0 : 1;
}
