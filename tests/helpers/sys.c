/*
 * sys: a generic syscall probe for tests running inside containers.
 *
 *   sys [-n COUNT] NR|NAME [ARG...]
 *
 * Calls syscall(NR, ARG...) (COUNT times, default 1) and prints the result of
 * the last call as "ret=<r> errno=<e>" (errno is 0 on success). NAME is a
 * syscall name such as "sysfs" when the build provided syscall_names.h.
 * Each ARG is a number (decimal, 0x hex or 0 octal, may be negative),
 * "s:TEXT" (a pointer to the NUL-terminated TEXT) or "b:SIZE" (a pointer to
 * SIZE zeroed bytes). Exit status: 0 when the call ran, 2 on a usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include("syscall_names.h")
#include "syscall_names.h" /* static const struct { const char *name; long nr; } syscall_names[] */
#define HAVE_SYSCALL_NAMES 1
#endif
#endif

static int usage(void)
{
	fprintf(stderr, "usage: sys [-n COUNT] NR|NAME [ARG...]  (ARG: number | s:TEXT | b:SIZE)\n");
	return 2;
}

static int parse_long(const char *s, long *out)
{
	char *end;

	errno = 0;
	if (s[0] == '-')
		*out = strtol(s, &end, 0);
	else
		*out = (long)strtoul(s, &end, 0);
	return (errno != 0 || end == s || *end != '\0') ? -1 : 0;
}

static int parse_nr(const char *s, long *nr)
{
	if (parse_long(s, nr) == 0)
		return 0;
#ifdef HAVE_SYSCALL_NAMES
	for (size_t i = 0; i < sizeof(syscall_names) / sizeof(syscall_names[0]); i++) {
		if (strcmp(syscall_names[i].name, s) == 0) {
			*nr = syscall_names[i].nr;
			return 0;
		}
	}
#endif
	return -1;
}

static int parse_arg(const char *s, long *out)
{
	if (strncmp(s, "s:", 2) == 0) {
		*out = (long)(s + 2);
		return 0;
	}
	if (strncmp(s, "b:", 2) == 0) {
		long size;
		void *buf;

		if (parse_long(s + 2, &size) != 0 || size < 0 || size > (1L << 24))
			return -1;
		buf = calloc(1, size > 0 ? (size_t)size : 1);
		if (buf == NULL)
			return -1;
		*out = (long)buf;
		return 0;
	}
	return parse_long(s, out);
}

int main(int argc, char **argv)
{
	long count = 1, nr, args[6] = {0, 0, 0, 0, 0, 0}, ret = 0;
	int i = 1, err = 0;

	if (argc > 2 && strcmp(argv[1], "-n") == 0) {
		if (parse_long(argv[2], &count) != 0 || count < 1)
			return usage();
		i = 3;
	}
	if (i >= argc || argc - i - 1 > 6)
		return usage();
	if (parse_nr(argv[i], &nr) != 0) {
		fprintf(stderr, "sys: unknown syscall %s\n", argv[i]);
		return 2;
	}
	for (int a = 0; a < argc - i - 1; a++) {
		if (parse_arg(argv[i + 1 + a], &args[a]) != 0) {
			fprintf(stderr, "sys: bad argument %s\n", argv[i + 1 + a]);
			return 2;
		}
	}
	for (long n = 0; n < count; n++) {
		errno = 0;
		ret = syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]);
		err = ret == -1 ? errno : 0;
	}
	if (printf("ret=%ld errno=%d\n", ret, err) < 0 || fflush(stdout) != 0)
		return 1;
	return 0;
}
