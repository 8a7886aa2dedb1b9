/*
 * core_target: a process that puts a seccomp USER_NOTIF filter on itself and
 * hands the listener to a test, for the C core's tests (no containers).
 *
 *   core_target SOCKFD NR[,NR...] [CMD...]
 *
 * Installs a filter that notifies the listed native syscall numbers, sends the
 * listener fd over the unix socket SOCKFD (SCM_RIGHTS), waits for one byte on
 * it ("attached"), then runs each CMD and prints one line per command:
 *   call:NR[:A0[:A1...]]  -> "call NR ret errno"
 *   str:NR:TEXT           -> syscall(NR, "TEXT"), "str NR ret errno"
 *   fd:NR                 -> r = syscall(NR); "fd NR r errno DATA" (DATA read from r)
 *   loop:NR:N             -> N calls; "loop NR N last_ret errno"
 *   sleep:MS
 * Exit status 0, or 2 on a usage or set-up error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_NRS 32

static int die(const char *what)
{
  fprintf(stderr, "core_target: %s: %s\n", what, strerror(errno));
  return 2;
}

static int install(const long *nrs, int n)
{
  struct sock_filter f[4 + 2 * MAX_NRS + 2];
  struct sock_fprog prog;
  int i, k = 0;

  f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                        offsetof(struct seccomp_data, arch));
  f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
  f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                        offsetof(struct seccomp_data, nr));
  for (i = 0; i < n; i++) {
    f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nrs[i], 0, 1);
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
  }
  f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  prog.len = k;
  prog.filter = f;
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
  return sendmsg(sock, &mh, 0) < 0 ? -1 : 0;
}

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  fflush(stdout);
}

static int run(char *cmd)
{
  char *parts[8], *save = NULL, *p;
  int n = 0;
  long r;

  for (p = strtok_r(cmd, ":", &save); p && n < 8; p = strtok_r(NULL, ":", &save))
    parts[n++] = p;
  if (n >= 2 && !strcmp(parts[0], "call")) {
    long a[6] = { 0 };
    for (int i = 2; i < n; i++)
      a[i - 2] = strtol(parts[i], NULL, 0);
    r = syscall(strtol(parts[1], NULL, 0), a[0], a[1], a[2], a[3], a[4], a[5]);
    out("call %s %ld %d\n", parts[1], r, r < 0 ? errno : 0);
  } else if (n == 3 && !strcmp(parts[0], "str")) {
    r = syscall(strtol(parts[1], NULL, 0), parts[2]);
    out("str %s %ld %d\n", parts[1], r, r < 0 ? errno : 0);
  } else if (n == 2 && !strcmp(parts[0], "fd")) {
    char buf[128] = "";
    r = syscall(strtol(parts[1], NULL, 0));
    if (r >= 0) {
      ssize_t k = read((int)r, buf, sizeof buf - 1);
      buf[k > 0 ? k : 0] = 0;
    }
    out("fd %s %ld %d %s\n", parts[1], r, r < 0 ? errno : 0, buf);
  } else if (n == 3 && !strcmp(parts[0], "loop")) {
    long nr = strtol(parts[1], NULL, 0), count = strtol(parts[2], NULL, 0), i;
    int e = 0;
    for (r = 0, i = 0; i < count; i++) {
      r = syscall(nr);
      e = r < 0 ? errno : 0;
    }
    out("loop %s %ld %ld %d\n", parts[1], count, r, e);
  } else if (n == 2 && !strcmp(parts[0], "sleep")) {
    struct timespec ts = { .tv_sec = atoi(parts[1]) / 1000,
                           .tv_nsec = (atoi(parts[1]) % 1000) * 1000000L };
    nanosleep(&ts, NULL);
  } else {
    fprintf(stderr, "core_target: bad command %s\n", cmd);
    return 2;
  }
  return 0;
}

int main(int argc, char **argv)
{
  long nrs[MAX_NRS];
  int n = 0, sock, fd, i;
  char *p, *save = NULL, c;

  if (argc < 3) {
    fprintf(stderr, "usage: core_target SOCKFD NR[,NR...] [CMD...]\n");
    return 2;
  }
  sock = atoi(argv[1]);
  for (p = strtok_r(argv[2], ",", &save); p && n < MAX_NRS; p = strtok_r(NULL, ",", &save))
    nrs[n++] = strtol(p, NULL, 0);
  fd = install(nrs, n);
  if (fd < 0)
    return die("seccomp");
  if (send_fd(sock, fd) < 0)
    return die("sendmsg");
  close(fd);
  if (read(sock, &c, 1) != 1)
    return die("waiting for the test");
  for (i = 3; i < argc; i++)
    if (run(argv[i]))
      return 2;
  return 0;
}
