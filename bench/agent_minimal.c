/*
 * agent_minimal: the physical-limit baseline of seccomp user notification, a
 * supervisor doing nothing but RECV and SEND with sync wake-up.
 *
 *   agent_minimal [-v VALUE] [-s NR] [-f SOCKFD] PROGRAM [ARG...]
 *
 * Forks; the child installs a filter that notifies syscall NR (default 139,
 * sysfs) with SECCOMP_FILTER_FLAG_NEW_LISTENER, passes the listener to the
 * parent over a socketpair and execs PROGRAM (e.g. syscall_loop).  The parent
 * sets SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP and answers every notification with
 * VALUE (default 0) until the child's filter has no tasks left, then exits with
 * the child's status.
 *
 * With -f SOCKFD there is no agent: the process installs the filter, sends the
 * listener over the inherited unix socket SOCKFD (SCM_RIGHTS, one byte "L")
 * and execs PROGRAM, so another supervisor (interceptd's engine) answers.
 *
 * Build: gcc -static -O2 -Wall -Wextra -Werror -o agent_minimal agent_minimal.c
 * Run:   ./agent_minimal ./syscall_loop -n 100000
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1UL
#endif

static int fail(const char *what)
{
  fprintf(stderr, "agent_minimal: %s: %s\n", what, strerror(errno));
  return 1;
}

static int install(long nr)
{
  struct sock_filter f[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = { .len = sizeof f / sizeof f[0], .filter = f };

  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    return -1;
  return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
}

static int send_fd(int sock, int fd)
{
  char c = 'L', cbuf[CMSG_SPACE(sizeof(int))];
  struct iovec iov = { .iov_base = &c, .iov_len = 1 };
  struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                       .msg_controllen = sizeof cbuf };
  struct cmsghdr *cm;

  memset(cbuf, 0, sizeof cbuf);
  cm = CMSG_FIRSTHDR(&mh);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &fd, sizeof fd);
  return sendmsg(sock, &mh, 0) == 1 ? 0 : -1;
}

static int recv_fd(int sock)
{
  char c, cbuf[CMSG_SPACE(sizeof(int))];
  struct iovec iov = { .iov_base = &c, .iov_len = 1 };
  struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                       .msg_controllen = sizeof cbuf };
  struct cmsghdr *cm;
  int fd;

  if (recvmsg(sock, &mh, MSG_CMSG_CLOEXEC) != 1)
    return -1;
  cm = CMSG_FIRSTHDR(&mh);
  if (!cm || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len != CMSG_LEN(sizeof(int))) {
    errno = EPROTO;
    return -1;
  }
  memcpy(&fd, CMSG_DATA(cm), sizeof fd);
  return fd;
}

/* Installs the filter, hands the listener over and becomes PROGRAM. */
static int launch(long nr, int sock, char **argv)
{
  int fd = install(nr);
  if (fd < 0)
    return fail("seccomp");
  if (send_fd(sock, fd) < 0)
    return fail("sendmsg");
  if (close(fd) < 0 || close(sock) < 0)
    return fail("close");
  execv(argv[0], argv);
  return fail("execv");
}

static int serve(int fd, long long value)
{
  struct seccomp_notif req;
  struct seccomp_notif_resp resp;

  if (ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) < 0)
    fprintf(stderr, "agent_minimal: no sync wake-up: %s\n", strerror(errno));
  for (;;) {
    memset(&req, 0, sizeof req);
    if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) {
      if (errno == EINTR)
        continue;
      if (errno == ENOENT) {
        /* A task killed mid-call, or every task gone: POLLHUP says which. */
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 0) == 1 && (p.revents & POLLHUP))
          return 0;
        continue;
      }
      return fail("RECV");
    }
    resp = (struct seccomp_notif_resp){ .id = req.id, .val = value };
    if (ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) < 0 && errno != ENOENT)
      return fail("SEND");
  }
}

int main(int argc, char **argv)
{
  long nr = 139;
  long long value = 0;
  int opt, sock = -1, sv[2], fd, status;
  pid_t child;

  while ((opt = getopt(argc, argv, "+v:s:f:")) != -1) {
    switch (opt) {
    case 'v': value = strtoll(optarg, NULL, 0); break;
    case 's': nr = strtol(optarg, NULL, 0); break;
    case 'f': sock = atoi(optarg); break;
    default: goto usage;
    }
  }
  if (optind >= argc)
    goto usage;
  if (sock >= 0)
    return launch(nr, sock, argv + optind);

  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    return fail("socketpair");
  child = fork();
  if (child < 0)
    return fail("fork");
  if (child == 0) {
    if (close(sv[0]) < 0)
      _exit(fail("close"));
    _exit(launch(nr, sv[1], argv + optind));
  }
  if (close(sv[1]) < 0)
    return fail("close");
  fd = recv_fd(sv[0]);
  if (fd < 0)
    return fail("receiving the listener");
  if (serve(fd, value))
    return 1;
  if (waitpid(child, &status, 0) < 0)
    return fail("waitpid");
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);

usage:
  fprintf(stderr, "usage: agent_minimal [-v VALUE] [-s NR] [-f SOCKFD] PROGRAM [ARG...]\n");
  return 2;
}
