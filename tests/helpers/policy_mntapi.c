/*
 * policy_mntapi: the new mount API from inside a container, for the policy tests.
 *
 *   policy_mntapi clone_setattr PATH CLR [rec]  open_tree(CLONE) + mount_setattr(attr_clr)
 *   policy_mntapi clone_move SRC DST [rec]      open_tree(CLONE) + move_mount to DST
 *   policy_mntapi setattr PATH CLR [rec]        mount_setattr on an attached mount
 *   policy_mntapi move PATH DST                 move_mount of an attached mount
 *   policy_mntapi fsmount FSTYPE DST            fsopen + fsconfig(CREATE) + fsmount + move_mount
 *   policy_mntapi fspick PATH                   fspick + fsconfig(RECONFIGURE)
 *   policy_mntapi extract SUB DST1 DST2         open_tree(/, CLONE|AT_RECURSIVE), move_mount
 *                                               of SUB (inside the clone) to DST1, then of
 *                                               the clone to DST2
 *   policy_mntapi nocap MODE DIR                without CAP_SYS_ADMIN (effective set):
 *                                               MODE mount (tmpfs on DIR) or umount (DIR)
 *   policy_mntapi loop N DIR                    N x (mount tmpfs on DIR, umount DIR):
 *                                               prints "loop ok=K bad=B first_errno=E ns=T
 *                                               p50_ns=P p90_ns=Q p99_ns=R cpu_ns=C p10_ns=S
 *                                               fast=F fast_p50_ns=U slow_p50_ns=V" (T: all
 *                                               pairs, P, Q, R, S: percentiles of single
 *                                               pairs, C: CPU time, F: pairs within 2 x S
 *                                               (the fast mode), U, V: each mode's median)
 *   policy_mntapi ident CHANGE DIR [ARG]        one process: a tmpfs pair on DIR, then CHANGE,
 *                                               then a tmpfs mount on DIR ("after" step) and
 *                                               "landed=N" (mounts on DIR in its mountinfo,
 *                                               -1 unreadable). CHANGE: userns (unshare),
 *                                               mntns (unshare), setns (ARG: an ns/mnt path),
 *                                               chroot (ARG: the new root), fschroot (ARG: a
 *                                               thread sharing our fs_struct chroots there),
 *                                               caps (drop CAP_SYS_ADMIN), uid (setresuid 1000)
 *
 * Each step prints "STEP ret=R errno=E"; the run stops at the first failing step.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return (x > y) - (x < y);
}

#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

/* sys/mount.h (glibc 2.36) has the MOVE_MOUNT_*, FSPICK_* and FSCONFIG_* constants. */
struct attr {
	uint64_t set, clr, propagation, userns_fd;
};

static long step(const char *name, long r)
{
	printf("%s ret=%ld errno=%d\n", name, r, r < 0 ? errno : 0);
	fflush(stdout);
	return r;
}

static void *do_chroot(void *root)
{
	return (void *)(long)chroot(root);
}

static int mounted_on(const char *dir)
{
	char line[4096], a[4096], b[4096];
	FILE *f = fopen("/proc/self/mountinfo", "r");
	int n = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "%*s %*s %*s %4095s %4095s", a, b) == 2 && strcmp(b, dir) == 0)
			n++;
	fclose(f);
	return n;
}

/* A process the native helper has seen, whose identity then changes: the next
 * call must be judged on the new one (docs/policy.md, the native helper). */
static int ident(const char *change, const char *dir, const char *arg)
{
	long r = -1;

	if (step("before_mount", mount("t", dir, "tmpfs", 0, NULL)) < 0 ||
	    step("before_umount", umount2(dir, 0)) < 0)
		return 0;
	if (strcmp(change, "userns") == 0) {
		r = unshare(CLONE_NEWUSER);
	} else if (strcmp(change, "mntns") == 0) {
		r = unshare(CLONE_NEWNS);
	} else if (strcmp(change, "setns") == 0 && arg) {
		int fd = open(arg, O_RDONLY | O_CLOEXEC);
		r = fd < 0 ? -1 : setns(fd, CLONE_NEWNS);
	} else if (strcmp(change, "chroot") == 0 && arg) {
		r = chroot(arg);
	} else if (strcmp(change, "fschroot") == 0 && arg) {
		pthread_t t;
		void *ret;
		/* Another thread's chroot moves ours: no call of this thread's own. */
		if ((errno = pthread_create(&t, NULL, do_chroot, (void *)arg)) == 0 &&
		    (errno = pthread_join(t, &ret)) == 0)
			r = (long)ret;
	} else if (strcmp(change, "caps") == 0) {
		struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
		struct __user_cap_data_struct data[2];

		r = syscall(SYS_capget, &hdr, data);
		data[CAP_SYS_ADMIN / 32].effective &= ~(1u << (CAP_SYS_ADMIN % 32));
		if (r == 0)
			r = syscall(SYS_capset, &hdr, data);
	} else if (strcmp(change, "uid") == 0) {
		r = setresuid(1000, 1000, 1000);
	}
	if (step("change", r) < 0)
		return 0;
	step("after", mount("t", dir, "tmpfs", 0, NULL));
	printf("landed=%d\n", mounted_on(dir));
	return 0;
}

int main(int argc, char **argv)
{
	long fd, r;
	int rec = argc > 4 && strcmp(argv[4], "rec") == 0;

	if (argc < 3)
		goto usage;
	if (strcmp(argv[1], "clone_setattr") == 0 && argc >= 4) {
		struct attr a = { 0, strtoul(argv[3], NULL, 0), 0, 0 };

		fd = step("open_tree", syscall(SYS_open_tree, AT_FDCWD, argv[2],
					       OPEN_TREE_CLONE | (rec ? AT_RECURSIVE : 0)));
		if (fd < 0)
			return 0;
		step("mount_setattr", syscall(SYS_mount_setattr, (int)fd, "",
					      AT_EMPTY_PATH | (rec ? AT_RECURSIVE : 0), &a, sizeof a));
		return 0;
	}
	if (strcmp(argv[1], "clone_move") == 0 && argc >= 4) {
		fd = step("open_tree", syscall(SYS_open_tree, AT_FDCWD, argv[2],
					       OPEN_TREE_CLONE | (rec ? AT_RECURSIVE : 0)));
		if (fd < 0)
			return 0;
		step("move_mount", syscall(SYS_move_mount, (int)fd, "", AT_FDCWD, argv[3],
					   MOVE_MOUNT_F_EMPTY_PATH));
		return 0;
	}
	if (strcmp(argv[1], "setattr") == 0 && argc >= 4) {
		struct attr a = { 0, strtoul(argv[3], NULL, 0), 0, 0 };

		step("mount_setattr", syscall(SYS_mount_setattr, AT_FDCWD, argv[2],
					      rec ? AT_RECURSIVE : 0, &a, sizeof a));
		return 0;
	}
	if (strcmp(argv[1], "move") == 0 && argc >= 4) {
		step("move_mount", syscall(SYS_move_mount, AT_FDCWD, argv[2], AT_FDCWD, argv[3], 0));
		return 0;
	}
	if (strcmp(argv[1], "fsmount") == 0 && argc >= 4) {
		long mfd;

		fd = step("fsopen", syscall(SYS_fsopen, argv[2], 0));
		if (fd < 0)
			return 0;
		if (step("fsconfig", syscall(SYS_fsconfig, (int)fd, FSCONFIG_CMD_CREATE, NULL, NULL,
					     0)) < 0)
			return 0;
		mfd = step("fsmount", syscall(SYS_fsmount, (int)fd, 0, 0));
		if (mfd < 0)
			return 0;
		step("move_mount", syscall(SYS_move_mount, (int)mfd, "", AT_FDCWD, argv[3],
					   MOVE_MOUNT_F_EMPTY_PATH));
		return 0;
	}
	if (strcmp(argv[1], "fspick") == 0) {
		fd = step("fspick", syscall(SYS_fspick, AT_FDCWD, argv[2], FSPICK_CLOEXEC));
		if (fd < 0)
			return 0;
		r = syscall(SYS_fsconfig, (int)fd, FSCONFIG_CMD_RECONFIGURE, NULL, NULL, 0);
		step("fsconfig", r);
		return 0;
	}
	if (strcmp(argv[1], "extract") == 0 && argc >= 5) {
		fd = step("open_tree", syscall(SYS_open_tree, AT_FDCWD, "/",
					       OPEN_TREE_CLONE | AT_RECURSIVE));
		if (fd < 0)
			return 0;
		step("move_sub", syscall(SYS_move_mount, (int)fd, argv[2], AT_FDCWD, argv[3], 0));
		step("move_rest", syscall(SYS_move_mount, (int)fd, "", AT_FDCWD, argv[4],
					  MOVE_MOUNT_F_EMPTY_PATH));
		return 0;
	}
	if (strcmp(argv[1], "nocap") == 0 && argc >= 4) {
		struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
		struct __user_cap_data_struct data[2];

		if (step("capget", syscall(SYS_capget, &hdr, data)) < 0)
			return 0;
		data[CAP_SYS_ADMIN / 32].effective &= ~(1u << (CAP_SYS_ADMIN % 32));
		if (step("capset", syscall(SYS_capset, &hdr, data)) < 0)
			return 0;
		if (strcmp(argv[2], "mount") == 0)
			step("mount", mount("t", argv[3], "tmpfs", 0, NULL));
		else
			step("umount", umount2(argv[3], 0));
		return 0;
	}
	if (strcmp(argv[1], "ident") == 0 && argc >= 4)
		return ident(argv[2], argv[3], argc > 4 ? argv[4] : NULL);
	if (strcmp(argv[1], "loop") == 0 && argc >= 4) {
		long n = strtol(argv[2], NULL, 10), ok = 0, bad = 0;
		int first = 0;
		struct timespec t0, t1;
		long long *pair = n > 0 ? calloc(n, sizeof *pair) : NULL;

		if (n > 0 && !pair)
			return 1;
		struct timespec c0, c1;

		clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		for (long i = 0; i < n; i++) {
			struct timespec a, b;
			clock_gettime(CLOCK_MONOTONIC, &a);
			if (mount("t", argv[3], "tmpfs", 0, "size=64k") == 0 && umount2(argv[3], 0) == 0) {
				ok++;
			} else {
				if (!first)
					first = errno;
				bad++;
				umount2(argv[3], MNT_DETACH);
			}
			clock_gettime(CLOCK_MONOTONIC, &b);
			pair[i] = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
		/* The median pair too: a shared VM's stalls move the mean, not it. */
		qsort(pair, n, sizeof *pair, cmp_ll);
		/* The two modes of this VM's pair (docs: README "bimodal"): pairs within
		 * twice the 10th percentile are the fast mode, the rest the slow one. */
		long long p10 = n > 0 ? pair[n / 10] : 0LL, fast_p50 = 0, slow_p50 = 0;
		long nfast = 0;
		while (nfast < n && pair[nfast] <= 2 * p10)
			nfast++;
		if (nfast > 0)
			fast_p50 = pair[nfast / 2];
		if (nfast < n)
			slow_p50 = pair[nfast + (n - nfast) / 2];
		printf("loop ok=%ld bad=%ld first_errno=%d ns=%lld p50_ns=%lld p90_ns=%lld "
		       "p99_ns=%lld cpu_ns=%lld p10_ns=%lld fast=%ld fast_p50_ns=%lld slow_p50_ns=%lld\n",
		       ok, bad, first,
		       (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec),
		       n > 0 ? pair[n / 2] : 0LL, n > 0 ? pair[n * 9 / 10] : 0LL,
		       n > 0 ? pair[n * 99 / 100] : 0LL,
		       (long long)(c1.tv_sec - c0.tv_sec) * 1000000000LL + (c1.tv_nsec - c0.tv_nsec),
		       p10, nfast, fast_p50, slow_p50);
		free(pair);
		return 0;
	}
usage:
	fprintf(stderr, "usage: see the comment at the top of policy_mntapi.c\n");
	return 2;
}
