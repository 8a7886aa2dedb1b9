/*
 * notify_client: plays an OCI runtime towards a listenerPath socket, for
 * fault tests that need a real seccomp notify fd in a hand-made message.
 *
 *   notify_client SOCKET MESSAGE_FILE
 *
 * Installs a seccomp filter that notifies sysfs(2) (everything else
 * allowed), connects to SOCKET and sends MESSAGE_FILE's bytes (every "@PID@"
 * replaced by this process's pid) with the notify fd attached by
 * SCM_RIGHTS, closes its copy of the fd, then calls sysfs(3) and prints
 * "ret=<r> errno=<e>". A listener that refused the fd closed it, so the
 * call fails with ENOSYS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

static int install_filter(void)
{
	struct sock_filter insns[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_sysfs, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(insns) / sizeof(insns[0]), .filter = insns};

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		return -1;
	return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
			    SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
}

/* The file's bytes with each "@PID@" replaced; NULL on error. */
static char *load_message(const char *path, size_t *len)
{
	char pid[32], *in = NULL, *out;
	size_t n = 0, cap = 0, o = 0, plen;
	FILE *f = fopen(path, "rb");

	if (f == NULL)
		return NULL;
	for (;;) {
		if (n == cap) {
			char *bigger = realloc(in, cap = cap ? cap * 2 : 4096);

			if (bigger == NULL) {
				free(in);
				fclose(f);
				return NULL;
			}
			in = bigger;
		}
		size_t got = fread(in + n, 1, cap - n, f);

		n += got;
		if (got == 0)
			break;
	}
	if (ferror(f) || fclose(f) != 0) {
		free(in);
		return NULL;
	}
	plen = (size_t)snprintf(pid, sizeof(pid), "%d", (int)getpid());
	out = malloc(n * (plen > 5 ? plen : 5) / 5 + 1);
	if (out == NULL) {
		free(in);
		return NULL;
	}
	for (size_t i = 0; i < n;) {
		if (n - i >= 5 && memcmp(in + i, "@PID@", 5) == 0) {
			memcpy(out + o, pid, plen);
			o += plen;
			i += 5;
		} else {
			out[o++] = in[i++];
		}
	}
	free(in);
	*len = o;
	return out;
}

static int send_with_fd(const char *sock_path, const char *msg, size_t len, int fd)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *cm;
	int s;

	if (strlen(sock_path) >= sizeof(addr.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(addr.sun_path, sock_path);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) != 0)
		goto fail;
	memset(cbuf, 0, sizeof(cbuf));
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	if (sendmsg(s, &mh, MSG_NOSIGNAL) != (ssize_t)len)
		goto fail;
	/* Like the runtimes, send everything in one message and do not wait. */
	return s;
fail:
	close(s);
	return -1;
}

int main(int argc, char **argv)
{
	size_t len;
	char *msg;
	int fd, s;
	long ret;

	if (argc != 3) {
		fprintf(stderr, "usage: notify_client SOCKET MESSAGE_FILE\n");
		return 2;
	}
	msg = load_message(argv[2], &len);
	if (msg == NULL) {
		perror("notify_client: message");
		return 1;
	}
	fd = install_filter();
	if (fd < 0) {
		perror("notify_client: seccomp");
		return 1;
	}
	s = send_with_fd(argv[1], msg, len, fd);
	if (s < 0) {
		perror("notify_client: send");
		return 1;
	}
	free(msg);
	if (close(fd) != 0) {
		perror("notify_client: close");
		return 1;
	}
	errno = 0;
	ret = syscall(SYS_sysfs, 3);
	if (printf("ret=%ld errno=%d\n", ret, ret == -1 ? errno : 0) < 0 || fflush(stdout) != 0)
		return 1;
	if (close(s) != 0)
		return 1;
	return 0;
}
