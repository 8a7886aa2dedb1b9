/*
 * tracer: a small static ptrace client for the policy tests.
 *
 *   tracer child            fork a child, PTRACE_ATTACH it, PEEK and POKE its memory,
 *                           detach; prints "child ret=0 errno=0" on success
 *   tracer attach PID       PTRACE_ATTACH PID then detach: "attach ret=R errno=E"
 *   tracer seize PID        PTRACE_SEIZE PID then detach:  "seize ret=R errno=E"
 *   tracer vmread PID ADDR  process_vm_readv of 8 bytes:   "vmread ret=R errno=E"
 *   tracer kcmp PID         kcmp(self, PID, KCMP_VM):      "kcmp ret=R errno=E"
 *   tracer pidfd_getfd PID  pidfd_open + pidfd_getfd fd 0: "pidfd_getfd ret=R errno=E"
 *
 * Exit status 0 when the calls ran (whatever they returned), 2 on usage errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static long word = 0x1122334455667788L;

static int report(const char *what, long ret, int err)
{
	printf("%s ret=%ld errno=%d\n", what, ret, ret < 0 ? err : 0);
	return fflush(stdout) == 0 ? 0 : 1;
}

static int wait_stopped(pid_t pid)
{
	int status;

	if (waitpid(pid, &status, __WALL) < 0)
		return -1;
	return WIFSTOPPED(status) ? 0 : -1;
}

static int trace_child(void)
{
	pid_t pid = fork();
	long r;
	int err = 0;

	if (pid < 0)
		return report("child", -1, errno);
	if (pid == 0) {
		for (;;)
			pause();
	}
	r = ptrace(PTRACE_ATTACH, pid, 0, 0);
	if (r < 0) {
		err = errno;
		goto out;
	}
	if (wait_stopped(pid) < 0) {
		r = -1;
		err = errno ? errno : EIO;
		goto out;
	}
	errno = 0;
	r = ptrace(PTRACE_PEEKDATA, pid, &word, 0);
	if (r != word) {
		r = -1;
		err = errno ? errno : EIO;
		goto out;
	}
	r = ptrace(PTRACE_POKEDATA, pid, &word, (void *)0x55L);
	if (r < 0) {
		err = errno;
		goto out;
	}
	r = ptrace(PTRACE_DETACH, pid, 0, 0);
	if (r < 0)
		err = errno;
out:
	kill(pid, SIGKILL);
	waitpid(pid, NULL, __WALL);
	return report("child", r, err);
}

int main(int argc, char **argv)
{
	pid_t pid;
	long r;

	if (argc == 2 && strcmp(argv[1], "child") == 0)
		return trace_child();
	if (argc < 3)
		goto usage;
	pid = (pid_t)strtol(argv[2], NULL, 10);
	if (strcmp(argv[1], "attach") == 0 || strcmp(argv[1], "seize") == 0) {
		int seize = argv[1][0] == 's';

		r = ptrace(seize ? PTRACE_SEIZE : PTRACE_ATTACH, pid, 0, 0);
		int err = errno;
		if (r == 0) {
			if (!seize)
				wait_stopped(pid);
			else
				ptrace(PTRACE_INTERRUPT, pid, 0, 0), wait_stopped(pid);
			ptrace(PTRACE_DETACH, pid, 0, 0);
		}
		return report(argv[1], r, err);
	}
	if (strcmp(argv[1], "vmread") == 0 && argc == 4) {
		long buf;
		struct iovec local = { &buf, sizeof buf };
		struct iovec remote = { (void *)strtoul(argv[3], NULL, 0), sizeof buf };

		r = syscall(SYS_process_vm_readv, pid, &local, 1, &remote, 1, 0);
		return report("vmread", r, errno);
	}
	if (strcmp(argv[1], "kcmp") == 0) {
		r = syscall(SYS_kcmp, getpid(), pid, 1 /* KCMP_VM */, 0, 0);
		return report("kcmp", r, errno);
	}
	if (strcmp(argv[1], "pidfd_getfd") == 0) {
		long pfd = syscall(SYS_pidfd_open, pid, 0);

		if (pfd < 0)
			return report("pidfd_getfd", pfd, errno);
		r = syscall(SYS_pidfd_getfd, (int)pfd, 0, 0);
		return report("pidfd_getfd", r, errno);
	}
usage:
	fprintf(stderr, "usage: tracer child | attach|seize|kcmp|pidfd_getfd PID | vmread PID ADDR\n");
	return 2;
}
