/* restart_loop SECONDS PY_NR PY_EXPECT FAST_NR FAST_EXPECT [FILE...]: calls the two
 * notified syscalls in turn for SECONDS, checks every answer and prints one line of
 * counts and the longest call, so a test sees whether a daemon restart lost or broke
 * any call (a lost notification fails with ENOSYS).  Each FILE (emulated /proc
 * files) is read whole after each pair of calls: a third line counts the reads, the
 * failed ones (an error or no byte: ENOTCONN once the FUSE connection is lost), the
 * first error and the longest read. A second line lists the calls
 * that took longest (up to 64, of 10 ms or more) as START_US:DURATION_US (CLOCK_MONOTONIC, the host's
 * clock too), so a benchmark can tell which event caused which pause. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static long reads, read_bad;
static long long read_max_us;
static int read_err;

static void read_whole(const char *path)
{
  static char buf[65536];
  long long t0 = now_us(), dt;
  ssize_t n = 0, total = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);

  if (fd >= 0) {
    while ((n = read(fd, buf, sizeof buf)) > 0)
      total += n;
    if (n < 0 && !read_err)
      read_err = errno;
    close(fd);
  } else if (!read_err) {
    read_err = errno;
  }
  reads++;
  if (fd < 0 || n < 0 || !total)
    read_bad++;
  if ((dt = now_us() - t0) > read_max_us)
    read_max_us = dt;
}

int main(int argc, char **argv)
{
  long long end, t0, dt, max_us = 0, max_at = 0, start;
  long calls = 0, ok = 0, bad = 0, enosys = 0, first_ret = 0;
  int first_err = 0, i;
  long nr[2], expect[2];
  long long slow_at[64], slow_us[64];
  int nslow = 0, k, low;

  if (argc < 6) {
    fprintf(stderr, "usage: restart_loop SECONDS PY_NR PY_EXPECT FAST_NR FAST_EXPECT [FILE...]\n");
    return 2;
  }
  nr[0] = atol(argv[2]);
  expect[0] = atol(argv[3]);
  nr[1] = atol(argv[4]);
  expect[1] = atol(argv[5]);
  start = now_us();
  end = start + atoll(argv[1]) * 1000000LL;
  printf("started\n");
  fflush(stdout);
  while ((t0 = now_us()) < end) {
    for (i = 0; i < 2; i++) {
      long r;
      errno = 0;
      r = syscall(nr[i], 3, 0, 0);
      dt = now_us() - t0;
      calls++;
      if (r == expect[i] && errno == 0) {
        ok++;
      } else {
        if (!bad) {
          first_ret = r;
          first_err = errno;
        }
        bad++;
        if (errno == ENOSYS)
          enosys++;
      }
      if (dt >= 10000) { /* keep the 64 longest calls */
        if (nslow < 64) {
          k = nslow++;
        } else {
          for (k = 0, low = 1; low < 64; low++)
            if (slow_us[low] < slow_us[k])
              k = low;
          if (slow_us[k] >= dt)
            k = -1;
        }
        if (k >= 0) {
          slow_at[k] = t0;
          slow_us[k] = dt;
        }
      }
      if (dt > max_us) {
        max_us = dt;
        max_at = t0 - start;
      }
      t0 = now_us();
    }
    for (i = 6; i < argc; i++)
      read_whole(argv[i]);
  }
  printf("calls=%ld ok=%ld bad=%ld enosys=%ld max_us=%lld max_at_ms=%lld first_bad=%ld/%d\n",
         calls, ok, bad, enosys, max_us, max_at / 1000, first_ret, first_err);
  printf("slow=");
  for (i = 0; i < nslow; i++)
    printf("%s%lld:%lld", i ? "," : "", slow_at[i], slow_us[i]);
  printf("\n");
  printf("reads=%ld read_bad=%ld read_max_us=%lld read_first_err=%d\n", reads, read_bad,
         read_max_us, read_err);
  return bad || read_bad ? 1 : 0;
}
