/* Bounded reads of a notifying task's memory.  The answer is only trusted if
 * the notification is still valid afterwards: otherwise the pid may already
 * name another process. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "icd.h"
#include "internal.h"

static ssize_t read_mem_file(int pid, uint64_t addr, void *buf, size_t size)
{
  char path[32];
  ssize_t n;
  int fd, err;

  snprintf(path, sizeof path, "/proc/%d/mem", pid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  n = pread(fd, buf, size, (off_t)addr);
  err = errno;
  close(fd);
  return n < 0 ? -err : n;
}

/* Reads at most size bytes; a short count means the range ran into an
 * unmapped page. */
static ssize_t read_mem(int pid, uint64_t addr, void *buf, size_t size, int mem_file)
{
  struct iovec local = { .iov_base = buf, .iov_len = size };
  struct iovec remote = { .iov_base = (void *)(uintptr_t)addr, .iov_len = size };
  ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);

  if (n >= 0)
    return n;
  if (errno == EFAULT || errno == ESRCH || !mem_file)
    return -errno;
  return read_mem_file(pid, addr, buf, size); /* EPERM under Yama, ENOSYS, ... */
}

static int checked(int ret, int notify_fd, uint64_t id)
{
  int v = icd_notify_id_valid(notify_fd, id);
  if (v == 0 || v == -EBADF) /* a closed notify fd: the engine saw every task go */
    return -ENOENT;          /* as the kernel says of a notification gone */
  if (v < 0)
    return v;
  return ret;
}

int icd_read_target(int pid, uint64_t addr, void *buf, int size, int notify_fd, uint64_t id)
{
  ssize_t n;
  if (size < 0 || size > ICD_READ_MAX)
    return -EINVAL;
  n = read_mem(pid, addr, buf, size, 1);
  if (n >= 0 && n < size)
    n = -EFAULT;
  return checked((int)n, notify_fd, id);
}

/* Reads page by page so a string ending just before an unmapped page still
 * reads; returns the length without the NUL, or -ENAMETOOLONG. */
int icd_target_string(int pid, uint64_t addr, char *out, int max_len, int mem_file)
{
  size_t have = 0, page = 4096;
  ssize_t n = 0;

  if (max_len <= 0 || max_len > ICD_READ_MAX)
    return -EINVAL;
  while (have < (size_t)max_len) {
    size_t chunk = page - ((addr + have) & (page - 1));
    char *nul;
    if (chunk > (size_t)max_len - have)
      chunk = max_len - have;
    n = read_mem(pid, addr + have, out + have, chunk, mem_file);
    if (n < 0)
      return (int)n;
    if (n == 0)
      return -EFAULT;
    nul = memchr(out + have, 0, n);
    if (nul)
      return (int)(nul - out);
    have += n;
  }
  return -ENAMETOOLONG;
}

int icd_read_target_string(int pid, uint64_t addr, void *buf, int max_len, int notify_fd,
                           uint64_t id)
{
  return checked(icd_target_string(pid, addr, buf, max_len, 1), notify_fd, id);
}

/* Best effort, after the answer: "" if the task is gone already.  procfd: a
 * host /proc directory, or AT_FDCWD for "/proc". */
void icd_read_comm(int procfd, uint32_t pid, char out[16])
{
  char path[32];
  ssize_t n;
  int fd;

  snprintf(path, sizeof path, procfd == AT_FDCWD ? "/proc/%u/comm" : "%u/comm", pid);
  fd = openat(procfd, path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return;
  n = read(fd, out, 15);
  close(fd);
  if (n <= 0) {
    out[0] = 0;
    return;
  }
  out[n] = 0;
  if (out[n - 1] == '\n')
    out[n - 1] = 0;
}
