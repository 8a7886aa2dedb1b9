/* fusefs.c: the emulated /proc and /sys files, served over the raw /dev/fuse
 * protocol by C threads (no Python on a reader's path).  Every call returns 0
 * / a count / an id on success and -errno on failure. */
#ifndef ICD_FUSEFS_H
#define ICD_FUSEFS_H

#include <stdint.h>

#define ICD_FUSE_HIST 20 /* log2 latency buckets: [0] < 1 us, [i] < 2^i us, last: more */

/* Per-file counters (all files of all containers). */
struct icd_fuse_fstats {
  uint64_t opens, reads, releases;
  uint64_t errors;           /* opens answered EIO: render failed, timed out, container gone */
  uint64_t waits;            /* opens parked until a render arrived (never rendered, or too old) */
  uint64_t timeouts;         /* of those, answered EIO because no render came in time */
  uint64_t stale;            /* opens served the previous bytes while a refresh was requested */
  uint64_t refreshes;        /* render requests handed to Python */
  uint64_t renders;          /* bytes pushed by icd_fuse_set */
  uint64_t failures;         /* render failures pushed by icd_fuse_fail */
  uint64_t cached_reads;     /* page-cache reads refused (see do_read) */
  uint64_t writes;           /* WRITEs Python accepted (errors count the refused ones) */
  uint64_t open_ns, read_ns; /* summed server-side handling time (request read to reply) */
  uint64_t max_ns;
  uint64_t hist[ICD_FUSE_HIST]; /* opens (waits included) and reads */
};

struct icd_fuse_stats {
  uint64_t requests;   /* every request read from /dev/fuse */
  uint64_t unknown;    /* opens by a reader in no registered container (EIO) */
  uint64_t interrupts; /* parked opens a FUSE_INTERRUPT ended (EINTR) */
  uint64_t queue_full; /* render requests not queued (the queue was full; retried later) */
  uint64_t aliases;    /* nested pid namespaces cached as their container's */
  uint64_t containers;
  uint64_t parked;       /* opens waiting for a render now */
  uint64_t handles;      /* files open now */
  uint64_t write_errors; /* replies the kernel refused (mostly: the reader was gone) */
  uint64_t read_errors;  /* unexpected read(2) failures on /dev/fuse */
  uint64_t foreign;      /* READs of a predecessor's handles (after a hand-over) */
};

/* A render request, or (write != 0) a parked WRITE to answer. */
struct icd_fuse_req {
  uint64_t key;
  int32_t file;
  int32_t write;
};

#define ICD_FUSE_MAX_WRITE 4096
struct icd_fuse_write {
  uint64_t key;
  int32_t file;
  uint32_t uid, pid, len; /* the writer's fsuid and tid as the daemon sees them */
  char data[ICD_FUSE_MAX_WRITE];
};

struct icd_fuse;
struct icd_fuse *icd_fuse_new(int workers, int wait_ms);
/* Before start: a read-only file at `path` (relative, '/'-separated; its
 * directories are made as needed).  fresh_ms: bytes younger than this are
 * served as they are; up to max_stale_ms they are served while a refresh is
 * requested; older (or never rendered) an open waits up to wait_ms for a
 * render.  size: what stat reports to a reader in no container or before
 * the first render (others see their bytes' length); not 0, see fusefs.c. */
int icd_fuse_add_file(struct icd_fuse *f, const char *path, int fresh_ms, int max_stale_ms,
                      uint64_t size);
/* Before start: `file` takes writes (mode 0644): each WRITE is parked and
 * handed to Python as a request with a write id, answered by
 * icd_fuse_write_done.  Other files refuse write opens (EROFS). */
int icd_fuse_writable(struct icd_fuse *f, int file);
/* Mounts at `mountpoint` (a stale FUSE mount there is detached first) and
 * starts the threads; once per server. */
int icd_fuse_start(struct icd_fuse *f, const char *mountpoint);
/* Instead of start: takes over `fd` (duplicated), a predecessor's
 * initialised /dev/fuse connection mounted at `mountpoint` whose st_dev is
 * `dev`: no mount, no INIT, no thread yet (register the containers, then
 * icd_fuse_resend and icd_fuse_serve).  -ESTALE: the mount there is not
 * that connection (the server is left as new: start it instead). */
int icd_fuse_adopt(struct icd_fuse *f, int fd, const char *mountpoint, uint64_t dev);
/* Has the kernel queue again every request read from the connection and
 * not answered (FUSE_NOTIFY_RESEND, Linux 6.9): a dead predecessor's. */
int icd_fuse_resend(struct icd_fuse *f);
/* After icd_fuse_adopt: starts the threads. */
int icd_fuse_serve(struct icd_fuse *f);
/* The connection's /dev/fuse fd (for the fd store), -1 before start. */
int icd_fuse_fd(struct icd_fuse *f);
/* `nsfd`: a pid-namespace fd (duplicated; the namespace is pinned while
 * registered, so its inode number cannot be reused by another). */
int icd_fuse_register(struct icd_fuse *f, uint64_t key, int nsfd);
int icd_fuse_unregister(struct icd_fuse *f, uint64_t key);
int icd_fuse_set(struct icd_fuse *f, uint64_t key, int file, const void *data, uint32_t len);
int icd_fuse_fail(struct icd_fuse *f, uint64_t key, int file, int err);
/* Up to max render requests, waiting up to timeout_ms (-1: forever) for the
 * first; 0 on timeout or icd_fuse_wake, -ESHUTDOWN once stopped. */
int icd_fuse_requests(struct icd_fuse *f, struct icd_fuse_req *out, int max, int timeout_ms);
void icd_fuse_wake(struct icd_fuse *f);
/* The parked write `id`: its length, or -ENOENT (answered meanwhile). */
int icd_fuse_write_get(struct icd_fuse *f, uint32_t id, struct icd_fuse_write *out);
/* Answers write `id`: result >= 0 bytes taken, or -errno. */
int icd_fuse_write_done(struct icd_fuse *f, uint32_t id, int result);
int icd_fuse_file_stats(struct icd_fuse *f, int file, struct icd_fuse_fstats *out);
void icd_fuse_stats(struct icd_fuse *f, struct icd_fuse_stats *out);
/* The connection's device number (st_dev of the mount), 0 before start. */
uint64_t icd_fuse_dev(struct icd_fuse *f);
/* Detaches the mount, ends the threads, closes /dev/fuse (which aborts the
 * connection: binds of the files elsewhere then fail with ENOTCONN).  In a
 * forked child only its copies of the fds are closed. */
int icd_fuse_stop(struct icd_fuse *f);
void icd_fuse_free(struct icd_fuse *f);

#endif
