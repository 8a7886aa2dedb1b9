/*
 * policy_enter: play a process that is entering a container (like a runc exec init),
 * run from the host by the policy tests.
 *
 *   policy_enter PID mnt|nomnt
 *
 * Joins the user and pid namespaces of PID (and its mount namespace with "mnt", then
 * changes back to a host directory opened before, as in CVE-2024-21626), forks into the
 * pid namespace and prints "ready NSPID" (the child's pid inside the container), then
 * sleeps until killed. The executable stays this host binary (CVE-2019-5736 shape).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int pidfd, hostdir, flags = CLONE_NEWUSER | CLONE_NEWPID;
	pid_t child;

	if (argc != 3)
		return 2;
	if (strcmp(argv[2], "mnt") == 0)
		flags |= CLONE_NEWNS;
	hostdir = open("/tmp", O_PATH | O_DIRECTORY);
	pidfd = (int)syscall(SYS_pidfd_open, atoi(argv[1]), 0);
	if (hostdir < 0 || pidfd < 0 || setns(pidfd, flags) < 0) {
		perror("policy_enter");
		return 1;
	}
	child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
			return 1;
		if ((flags & CLONE_NEWNS) && fchdir(hostdir) < 0)
			return 1;
		/* getpid() answers in the pid namespace we now belong to. */
		printf("ready %d\n", getpid());
		fflush(stdout);
		for (;;)
			pause();
	}
	waitpid(child, NULL, 0);
	return 0;
}
