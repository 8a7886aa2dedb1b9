/* interceptd C core: seccomp user-notification engine, bounded target reads,
 * and the namespace executor.  This is the cffi API and nothing else
 * (interceptd/_build_core.py derives its cdef from this file and fusefs.h);
 * internals are in the other headers.  Everything here returns 0 / a count /
 * an fd on success and -errno on failure (constructors put the object in
 * *out); results that are not failures have names (ICD_VET_*).  -ENOENT from a call
 * on a notification means, as from the kernel's own, that it is no longer
 * valid.  Nothing calls back into Python. */
#ifndef ICD_H
#define ICD_H

#include <stdint.h>

/* Actions of a channel's verdict table.  ICD_ACT_DEFAULT marks an unset slot. */
#define ICD_ACT_DEFAULT 0
#define ICD_ACT_CONTINUE 1
#define ICD_ACT_ERRNO 2
#define ICD_ACT_VALUE 3
#define ICD_ACT_PYTHON 4
/* mount/umount2: vetted and performed by the native helper (native.c) where
 * the policy surely allows them; on the daemon's receivers, like PYTHON. */
#define ICD_ACT_NATIVE 5
/* sysinfo(2): answered from the figures the daemon published
 * (icd_channel_set_sysinfo) while they are fresh; else like PYTHON. */
#define ICD_ACT_SYSINFO 6
/* mount/umount2 while the native helper's rules are being decided (the
 * attach-time snapshot): the helper holds the call (at most ~1 s) until the
 * rule changes, then answers by the new one; elsewhere like PYTHON. */
#define ICD_ACT_HOLD 7

#define ICD_NR_MAX 512         /* native x86_64 numbers below this are table-driven */
#define ICD_READ_MAX (1 << 20) /* cap of one read of target memory */

#define ICD_ITEM_NOTIF 1
#define ICD_ITEM_DETACHED 2

struct icd_item {
  int kind;
  int fd;
  uint64_t id;
  uint32_t pid;
  int32_t nr;
  uint32_t arch;
  uint64_t ip;
  uint64_t args[6];
};

struct icd_decision {
  uint64_t cookie;
  uint64_t id;
  uint32_t pid;
  int32_t nr;
  int32_t action;
  int32_t send_errno; /* 0, or why SEND failed (ENOENT: the target went away) */
  int64_t value;
  int64_t ns_time;  /* CLOCK_REALTIME */
  int64_t recv_ns;  /* CLOCK_MONOTONIC when the call was received */
  int64_t sent_ns;  /* CLOCK_MONOTONIC right after it was answered */
  uint64_t args[6]; /* the call's raw arguments, for the event */
  char comm[16];    /* the caller's comm when its pid was new to the channel, else "" */
  char reason[128]; /* why, for decisions the native path made; else "" */
};

struct icd_chstats {
  uint64_t fast;
  uint64_t python;
  uint64_t overflow; /* Python-path notifications refused because the queue was full */
  uint64_t send_errors;
  uint64_t detached;
  uint64_t receivers;    /* live receiver threads */
  uint64_t direct;       /* Python-path notifications received by the waiter itself */
  uint64_t native;       /* mount-family calls the native helper performed */
  uint64_t native_table; /* of `fast`, those the native helper answered */
};

struct icd_probe {
  int user_notif;  /* SECCOMP_RET_USER_NOTIF available */
  int sync_wakeup; /* SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP accepted */
  int addfd_send;  /* SECCOMP_ADDFD_FLAG_SEND known */
  int error;       /* errno of a failed probe step, 0 if none */
};

struct icd_engine;
struct icd_channel;

/* notify.c: primitives on one notify fd */
int icd_notify_probe(struct icd_probe *out);
int icd_notify_set_sync(int fd);
int icd_notify_send(int fd, uint64_t id, int64_t val, int32_t err, uint32_t flags);
int icd_notify_addfd(int fd, uint64_t id, int srcfd, int newfd, uint32_t newfd_flags,
                     uint32_t flags);
int icd_notify_id_valid(int fd, uint64_t id);
/* Maps the receive journal memfd `fd` (laid out by interceptd/journal.py) for
 * every receive of this process (journal.c); it replaces any earlier one:
 * 0 or -errno. The header's magic and version, and the landing slots a receiving
 * thread has the kernel write into, are defined here once for both sides. */
#define ICD_JOURNAL_MAGIC 0x314c4e524a444349ULL /* "ICDJRNL1" */
#define ICD_JOURNAL_VERSION 3
#define ICD_JOURNAL_LANDING 4096
int icd_journal_open(int fd, uint32_t slots);
/* Notification `id` of task `pid`, received under the daemon's fd number `fd`,
 * has been acted on with result res (0 or -errno) and is not answered yet: a
 * successor answers it so instead of acting again.  Called right after the
 * action (a mount, a umount), before SEND: 0, -ENOENT (not journaled) or
 * -errno.  A slot's done word is ICD_JOURNAL_DONE | errno (journal.c). */
#define ICD_JOURNAL_DONE 0x80000000
int icd_journal_mark(int fd, uint32_t pid, uint64_t id, int res);

/* engine.c: the engine and its ring of decisions made without Python */
int icd_engine_new(unsigned ring_cap, struct icd_engine **out);
void icd_engine_close(struct icd_engine *e);
void icd_engine_free(struct icd_engine *e);
int icd_engine_drain(struct icd_engine *e, struct icd_decision *out, int max);
uint64_t icd_engine_dropped(struct icd_engine *e);
/* receiver.c: a receiver thread on notify fd `fd` for channel ch */
int icd_engine_attach(struct icd_engine *e, struct icd_channel *ch, int fd);

/* channel.c: one container's verdict table, queue and guarded answers */
int icd_channel_new(struct icd_engine *e, uint64_t cookie, unsigned qcap, struct icd_channel **out);
int icd_channel_set_rule(struct icd_channel *ch, int nr, int action, int64_t value);
int icd_channel_set_default(struct icd_channel *ch, int action, int64_t value);
/* The container's struct sysinfo (len 112) for ICD_ACT_SYSINFO, answered in C
 * for fresh_ns nanoseconds from now: 0, -EBUSY (a concurrent publisher won),
 * -EINVAL. */
int icd_channel_set_sysinfo(struct icd_channel *ch, const void *buf, int len, int64_t fresh_ns);
/* Direct mode on (the default) or off; see direct.c. */
int icd_channel_set_direct(struct icd_channel *ch, int on);
/* Tests only: a direct-mode waiter that has taken a receiver's fd pauses up to
 * this long before receiving on it (the window a preempted waiter had), less
 * if an item is queued meanwhile. */
void icd_direct_test_pause(int us);
/* Makes a waiter (or the next wait) return, with [] if nothing is queued. */
void icd_channel_interrupt(struct icd_channel *ch);
int icd_channel_wait(struct icd_channel *ch, struct icd_item *items, int max, int timeout_ms,
                     int spin_us);
int icd_channel_respond(struct icd_channel *ch, int fd, uint64_t id, int64_t val, int32_t err,
                        uint32_t flags);
int icd_channel_addfd(struct icd_channel *ch, int fd, uint64_t id, int srcfd, uint32_t newfd_flags,
                      int send);
/* The same through a channel: the fd is checked to still be attached (not
 * closed after a detach, so not possibly reused) while it is used. */
int icd_channel_id_valid(struct icd_channel *ch, int fd, uint64_t id);
int icd_channel_read(struct icd_channel *ch, int fd, uint64_t id, int pid, uint64_t addr, void *buf,
                     int size, int string);
void icd_channel_stats(struct icd_channel *ch, struct icd_chstats *out);
/* The native path for a channel (native.c): its helper starts in the
 * namespaces of pid and takes over receiving on notify_fd. */
int icd_channel_set_native(struct icd_channel *ch, const char *list, int len, int pidfd, int pid,
                           int notify_fd);
/* A hand-over's last step: the channel's native helper finishes the call in
 * hand and exits (0; also when there is none), waiting up to timeout_ms (0:
 * only asks); -ETIMEDOUT while it still acts. */
int icd_channel_quiesce_native(struct icd_channel *ch, int timeout_ms);
/* The Python path's side of the lock a container's native helper holds while
 * it vets and performs a mount-family call (lock 1 takes it, 0 releases it):
 * without it, each could check a path's top mount and then act on the path
 * after the other unmounted that top.  0 or -errno. */
int icd_channel_act_lock(struct icd_channel *ch, int lock);
void icd_channel_close(struct icd_channel *ch);
void icd_channel_free(struct icd_channel *ch);

/* target.c: bounded, ID_VALID-checked reads of a target's memory */
int icd_read_target(int pid, uint64_t addr, void *buf, int size, int notify_fd, uint64_t id);
int icd_read_target_string(int pid, uint64_t addr, void *buf, int max_len, int notify_fd,
                           uint64_t id);

/* mounts.c: facts about mounts */
int icd_fd_mnt_id(int fd); /* statx STATX_MNT_ID of an fd (mountinfo's id), or -errno */

/* One mount as statmount(2) reports it (strings NUL-terminated). */
struct icd_mount_facts {
  uint64_t mnt_uid, parent_uid; /* unique (never reused) ids */
  uint32_t mnt_id, parent_id;   /* mountinfo's ids */
  uint32_t dev_major, dev_minor;
  uint64_t attr; /* MOUNT_ATTR_* */
  uint32_t sb_flags;
  char fstype[64];
  char root[4096];
  char point[4096];
};
int64_t icd_fd_mnt_uid(int fd); /* statx STATX_MNT_ID_UNIQUE, or -errno */
int64_t icd_mntns_id(int nsfd); /* NS_GET_MNTNS_ID of a mount-namespace fd, or -errno */
int icd_statmount(uint64_t uid, uint64_t ns_id, struct icd_mount_facts *out);
/* The mount fd is on and its parent, as seen in pid's mount namespace: the
 * number of entries filled (1: no parent in the namespace), or -errno. */
int icd_fd_mount_facts(int fd, int pid, struct icd_mount_facts out[2]);

/* nsexec.c: one mount-family operation inside a target's namespaces */
#define ICD_OP_MOUNT 1
#define ICD_OP_UMOUNT2 2
#define ICD_OP_OPEN_TREE 3
#define ICD_OP_MOVE_MOUNT 4
#define ICD_OP_MOUNT_SETATTR 5
#define ICD_OP_FSOPEN 6
#define ICD_OP_FSCONFIG 7
#define ICD_OP_FSMOUNT 8
#define ICD_OP_FSPICK 9
/* umount2(path, flags) only if path still resolves to mount id a[1] (else
 * ESTALE): the daemon decides on one mount, this acts on that one. */
#define ICD_OP_UMOUNT_CHECKED 10
/* A plain (superblock) remount of the mount fd a[0] names, on that fd, with no
 * path walk: fspick(a[0]) + fsconfig of the legacy flags a[1] and of the
 * comma-separated options s[0] + FSCONFIG_CMD_RECONFIGURE, then mount_setattr
 * (set a[2], clear a[3]) for the per-mount flags. */
#define ICD_OP_REMOUNT_FD 11
/* mount(s[0], s[1], s[2], a[0], "fd=<a[1]>[,s[3]]"): a FUSE mount with the
 * caller's /dev/fuse file a[1] (received by SCM_RIGHTS, so the number in the
 * mount data is the one the helper holds). */
#define ICD_OP_MOUNT_FUSE 12
#define ICD_OP_LAST 12

/* An op's name and argument kinds (see nsexec.c): 0, or -EINVAL past
 * ICD_OP_LAST. */
int icd_op_info(int op, const char **name, const char **args);

struct icd_exec_result {
  int64_t ret;
  int32_t err; /* errno of the operation, or of the executor (ESRCH: target gone) */
  int32_t fd;  /* fd received for fd-making ops, else -1 */
};

/* s: up to 4 strings (NULL allowed), a: up to 6 integers, in the syscall's
 * argument order per op (see core.py). */
int icd_ns_exec(int pidfd, int pid, int nsflags, int op, const char *const s[4], const int64_t a[6],
                int timeout_ms, struct icd_exec_result *out);

/* executor.c: a persistent helper in one target's user+mount namespaces,
 * serving the same ops over a socket (see core.Executor). */
struct icd_executor {
  int sock; /* the daemon's end; closing it ends the helper */
  int pid;  /* the helper, our child: reap with icd_exec_stop */
  uint64_t user_dev, user_ino, mnt_dev, mnt_ino; /* the namespaces it entered */
  uint64_t root_dev, root_ino, root_mnt;         /* its root there (statx) */
};

int icd_exec_start(int pidfd, int pid, int nsflags, int timeout_ms, struct icd_executor *out);
/* 0 with out->err set (ESRCH: target gone) or -errno when the helper failed
 * (EPIPE: it was dead before the request, ECONNABORTED: it died during it,
 * ETIMEDOUT: it did not answer); -EXDEV (helper still usable): pid is not in
 * the helper's user and mount namespaces.  Strings NULL or NUL-terminated,
 * in the op's order, then the integers (see core.py).; after a failure the helper
 * is out of step and must be stopped. */
int icd_exec_call(const struct icd_executor *x, int pidfd, int pid, int op, const char *s0,
                  const char *s1, const char *s2, const char *s3, int64_t a0, int64_t a1,
                  int64_t a2, int64_t a3, int64_t a4, int64_t a5, int timeout_ms,
                  struct icd_exec_result *out);
int icd_exec_stop(int sock, int child);

/* vet.c: what the native mount helper may perform itself (ICD_VET_NATIVE)
 * and what it forwards to the Python policy (ICD_VET_FORWARD), on copies of
 * the arguments; pure, and checked against the Python deciders by a test. */
#define ICD_VET_FORWARD 0 /* the Python policy decides (nothing done) */
#define ICD_VET_NATIVE 1  /* the policy would perform it: the helper may */
/* mount(2) flags as the kernel reads them (the old magic value dropped). */
uint32_t icd_vet_mount_flags(uint64_t flags);
/* mount(source, target, fstype, flags, data) of one of the NUL-separated
 * filesystem types in fstypes ("" ends the list). */
int icd_vet_mount(uint64_t flags, const char *fstype, const char *target, const char *fstypes);
/* umount2(target, flags), before the mount is looked at... */
int icd_vet_umount(uint64_t flags, const char *target);
/* ...and the mount it names, by its and its parent's filesystem types
 * (parent_fstype NULL: no parent in the mount namespace). */
int icd_vet_umount_mount(const char *fstype, const char *parent_fstype);

/* native.c: whether pid has `cap` in its effective set (capget): 1, 0 or
 * -errno. */
int icd_has_cap(int pid, int cap);

#endif
