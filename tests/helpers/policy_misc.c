/*
 * policy_misc: syscalls with struct arguments, for the policy tests.
 *
 *   policy_misc adjtimex MODES   adjtimex with struct timex.modes = MODES
 *   policy_misc sysinfo [N]      sysinfo(2) (N times): prints uptime, totalram, freeram, procs,
 *                                mem_unit of the last call
 *   policy_misc sysinfo_loop N   N x sysinfo(2): prints "sysinfo_loop ok=K ns=T"
 *   policy_misc listener         seccomp(SET_MODE_FILTER, NEW_LISTENER) with an allow-all filter
 *
 * Prints "NAME ret=R errno=E" (and the sysinfo fields as key=value lines).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/timex.h>
#include <time.h>
#include <unistd.h>

static int report(const char *what, long ret, int err)
{
	printf("%s ret=%ld errno=%d\n", what, ret, ret < 0 ? err : 0);
	return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "adjtimex") == 0) {
		struct timex tx;
		long r;

		memset(&tx, 0, sizeof tx);
		tx.modes = (unsigned)strtoul(argv[2], NULL, 0);
		r = syscall(SYS_adjtimex, &tx);
		return report("adjtimex", r, errno);
	}
	if ((argc == 2 || argc == 3) && strcmp(argv[1], "sysinfo") == 0) {
		struct sysinfo si;
		long n = argc == 3 ? strtol(argv[2], NULL, 10) : 1, r = 0;

		for (long i = 0; i < n; i++) /* the last call's figures are printed */
			r = syscall(SYS_sysinfo, &si);

		if (r == 0)
			printf("uptime=%ld\ntotalram=%lu\nfreeram=%lu\nprocs=%u\nmem_unit=%u\n",
			       si.uptime, si.totalram, si.freeram, si.procs, si.mem_unit);
		return report("sysinfo", r, errno);
	}
	if (argc == 3 && strcmp(argv[1], "sysinfo_loop") == 0) {
		struct sysinfo si;
		struct timespec t0, t1;
		long n = strtol(argv[2], NULL, 10), ok = 0;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (long i = 0; i < n; i++)
			ok += syscall(SYS_sysinfo, &si) == 0;
		clock_gettime(CLOCK_MONOTONIC, &t1);
		printf("sysinfo_loop ok=%ld ns=%lld\n", ok,
		       (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec));
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "listener") == 0) {
		struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
		struct sock_fprog prog = { 1, &allow };
		long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
				 SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);

		return report("listener", r, errno);
	}
	fprintf(stderr, "usage: see the comment at the top of policy_misc.c\n");
	return 2;
}
