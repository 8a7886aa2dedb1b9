/*
 * fairness: a quiet container's latency probe and a noisy neighbour's loads.
 *
 *   fairness lat N GAP [t]    N x sysinfo(2), GAP microseconds apart, each timed:
 *                             "samples U,U,..." in call order, then
 *                             "lat n=N ok=K p50=U p99=U max=U" (microseconds); with t
 *                             also "starts NS,NS,..." (each call's CLOCK_MONOTONIC start,
 *                             to line calls up with a daemon's own timestamps)
 *   fairness vmread SECONDS   process_vm_readv of an own child, in a loop: "vmread n=K ok=K"
 *   fairness mounts SECONDS DIR   bind DIR onto DIR/b and unmount it, in a loop (each call
 *                             goes to the daemon's Python path): "mounts n=K ok=K"
 *   fairness unshare SECONDS  fork; child: unshare(CLONE_NEWUSER|CLONE_NEWNS) and mount a
 *                             tmpfs (a new executor each time), in a loop: "unshare n=K ok=K"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int lat(long n, long gap_us, int starts)
{
	double *us = calloc((size_t)n, sizeof *us);
	long long *at = calloc((size_t)n, sizeof *at);
	struct sysinfo si;
	long ok = 0;

	if (!us || !at || n < 1)
		return 1;
	for (long i = 0; i < n; i++) {
		struct timespec ts;
		double t0;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		at[i] = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
		t0 = now();
		ok += syscall(SYS_sysinfo, &si) == 0;
		us[i] = (now() - t0) * 1e6;
		if (gap_us > 0)
			usleep((useconds_t)gap_us);
	}
	printf("samples");
	for (long i = 0; i < n; i++)
		printf("%c%.0f", i ? ',' : ' ', us[i]);
	if (starts) {
		printf("\nstarts");
		for (long i = 0; i < n; i++)
			printf("%c%lld", i ? ',' : ' ', at[i]);
	}
	qsort(us, (size_t)n, sizeof *us, cmp);
	printf("\nlat n=%ld ok=%ld p50=%.1f p99=%.1f max=%.1f\n", n, ok, us[n / 2],
	       us[(n * 99) / 100], us[n - 1]);
	free(us);
	free(at);
	return fflush(stdout) == 0 ? 0 : 1;
}

static int vmread(double secs)
{
	static char src[64] = "fairness", dst[64];
	double end = now() + secs;
	long n = 0, ok = 0;
	pid_t child = fork();

	if (child < 0)
		return 1;
	if (child == 0) {
		pause();
		_exit(0);
	}
	while (now() < end) {
		struct iovec l = { dst, sizeof dst }, r = { src, sizeof src };

		n++;
		ok += syscall(SYS_process_vm_readv, child, &l, 1, &r, 1, 0) == (long)sizeof dst;
	}
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	printf("vmread n=%ld ok=%ld\n", n, ok);
	return fflush(stdout) == 0 ? 0 : 1;
}

static int mounts(double secs, const char *dir)
{
	char b[4096];
	double end = now() + secs;
	long n = 0, ok = 0;

	snprintf(b, sizeof b, "%s/b", dir);
	if (mkdir(b, 0755) && errno != EEXIST)
		return 1;
	while (now() < end) {
		n++;
		if (mount(dir, b, NULL, MS_BIND, NULL) == 0)
			ok += umount2(b, MNT_DETACH) == 0;
	}
	printf("mounts n=%ld ok=%ld\n", n, ok);
	return fflush(stdout) == 0 ? 0 : 1;
}

static int unshare_loop(double secs)
{
	double end = now() + secs;
	long n = 0, ok = 0;

	while (now() < end) {
		int st;
		pid_t c = fork();

		if (c < 0)
			return 1;
		if (c == 0) {
			if (unshare(CLONE_NEWUSER | CLONE_NEWNS))
				_exit(2);
			_exit(mount("t", "/tmp", "tmpfs", 0, NULL) ? 3 : 0);
		}
		n++;
		if (waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0)
			ok++;
	}
	printf("unshare n=%ld ok=%ld\n", n, ok);
	return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if ((argc == 4 || (argc == 5 && strcmp(argv[4], "t") == 0)) && strcmp(argv[1], "lat") == 0)
		return lat(strtol(argv[2], NULL, 10), strtol(argv[3], NULL, 10), argc == 5);
	if (argc == 3 && strcmp(argv[1], "vmread") == 0)
		return vmread(strtod(argv[2], NULL));
	if (argc == 4 && strcmp(argv[1], "mounts") == 0)
		return mounts(strtod(argv[2], NULL), argv[3]);
	if (argc == 3 && strcmp(argv[1], "unshare") == 0)
		return unshare_loop(strtod(argv[2], NULL));
	fprintf(stderr, "usage: fairness lat N GAP [t] | vmread S | mounts S DIR | unshare S\n");
	return 2;
}
