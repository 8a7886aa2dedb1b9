/* open + read to EOF + close of one file, n times: p50/p99/mean in ns as one
 * JSON line (bench_fuse.py).  Static, so it runs in any namespace. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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
  static char buf[1 << 17];
  int64_t *t, sum = 0, t0;
  long n, i, bytes = 0;
  ssize_t r;
  int fd;

  if (argc != 3 || (n = atol(argv[2])) < 1)
    return fprintf(stderr, "usage: read_loop PATH N\n"), 2;
  if (!(t = malloc(sizeof *t * (size_t)n)))
    return perror("malloc"), 1;
  for (i = 0; i < n; i++) {
    t0 = now();
    if ((fd = open(argv[1], O_RDONLY | O_CLOEXEC)) < 0)
      return perror("open"), 1;
    for (bytes = 0; (r = read(fd, buf, sizeof buf)) > 0;)
      bytes += r;
    if (r < 0)
      return perror("read"), 1;
    if (close(fd) < 0)
      return perror("close"), 1;
    t[i] = now() - t0;
    sum += t[i];
  }
  qsort(t, (size_t)n, sizeof *t, cmp);
  printf("{\"n\": %ld, \"bytes\": %ld, \"p50_ns\": %lld, \"p99_ns\": %lld, \"mean_ns\": %lld}\n",
         n, bytes, (long long)t[n / 2], (long long)t[n * 99 / 100], (long long)(sum / n));
  return 0;
}
