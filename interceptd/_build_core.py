"""cffi API-mode build of csrc/ into interceptd._core (named by setup.py)."""

from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parent.parent / "csrc"

CDEF = """
#define ICD_ACT_DEFAULT ...
#define ICD_ACT_CONTINUE ...
#define ICD_ACT_ERRNO ...
#define ICD_ACT_VALUE ...
#define ICD_ACT_PYTHON ...
#define ICD_ACT_NATIVE ...
#define ICD_NR_MAX ...
#define ICD_READ_MAX ...
#define ICD_ETARGETGONE ...
#define ICD_ITEM_NOTIF ...
#define ICD_ITEM_DETACHED ...
#define ICD_OP_MOUNT ...
#define ICD_OP_UMOUNT2 ...
#define ICD_OP_OPEN_TREE ...
#define ICD_OP_MOVE_MOUNT ...
#define ICD_OP_MOUNT_SETATTR ...
#define ICD_OP_FSOPEN ...
#define ICD_OP_FSCONFIG ...
#define ICD_OP_FSMOUNT ...
#define ICD_OP_FSPICK ...
#define ICD_OP_UMOUNT_CHECKED ...
#define ICD_OP_REMOUNT_FD ...
#define ICD_OP_MOUNT_FUSE ...
#define ICD_EPOLICY ...

struct icd_item {
  int kind; int fd; uint64_t id; uint32_t pid; int32_t nr; uint32_t arch; uint64_t ip;
  uint64_t args[6];
};
struct icd_decision {
  uint64_t cookie; uint64_t id; uint32_t pid; int32_t nr; int32_t action; int32_t send_errno;
  int64_t value; int64_t ns_time; uint64_t args[6]; char comm[16]; char reason[128];
};
struct icd_chstats {
  uint64_t fast; uint64_t python; uint64_t overflow; uint64_t send_errors; uint64_t detached;
  uint64_t receivers; uint64_t direct; uint64_t native; uint64_t native_table;
};
struct icd_probe { int user_notif; int sync_wakeup; int addfd_send; int error; };
struct icd_exec_result { int64_t ret; int32_t err; int32_t fd; };
struct icd_executor {
  int sock; int pid; uint64_t user_dev; uint64_t user_ino; uint64_t mnt_dev; uint64_t mnt_ino;
  uint64_t root_dev; uint64_t root_ino; uint64_t root_mnt;
};
struct icd_engine;
struct icd_channel;

int icd_notify_probe(struct icd_probe *out);
int icd_notify_set_sync(int fd);
int icd_notify_send(int fd, uint64_t id, int64_t val, int32_t err, uint32_t flags);
int icd_notify_addfd(int fd, uint64_t id, int srcfd, int newfd, uint32_t newfd_flags,
                     uint32_t flags);
int icd_notify_id_valid(int fd, uint64_t id);
int icd_journal_open(int fd, uint32_t slots);

struct icd_engine *icd_engine_new(unsigned ring_cap);
void icd_engine_free(struct icd_engine *e);
int icd_engine_drain(struct icd_engine *e, struct icd_decision *out, int max);
uint64_t icd_engine_dropped(struct icd_engine *e);
int icd_engine_attach(struct icd_engine *e, struct icd_channel *ch, int fd);
struct icd_channel *icd_channel_new(struct icd_engine *e, uint64_t cookie, unsigned qcap);
int icd_channel_set_rule(struct icd_channel *ch, int nr, int action, int64_t value);
int icd_channel_set_default(struct icd_channel *ch, int action, int64_t value);
int icd_channel_set_direct(struct icd_channel *ch, int on);
int icd_channel_set_native(struct icd_channel *ch, const char *list, int len, int pidfd,
                           int pid, int notify_fd);
int icd_has_cap(int pid, int cap);
void icd_channel_interrupt(struct icd_channel *ch);
int icd_channel_wait(struct icd_channel *ch, struct icd_item *items, int max, int timeout_ms,
                     int spin_us);
int icd_channel_respond(struct icd_channel *ch, int fd, uint64_t id, int64_t val, int32_t err,
                        uint32_t flags);
int icd_channel_addfd(struct icd_channel *ch, int fd, uint64_t id, int srcfd,
                      uint32_t newfd_flags, int send);
int icd_channel_id_valid(struct icd_channel *ch, int fd, uint64_t id);
int icd_channel_read(struct icd_channel *ch, int fd, uint64_t id, int pid, uint64_t addr,
                     void *buf, int size, int string);
void icd_channel_stats(struct icd_channel *ch, struct icd_chstats *out);
void icd_channel_close(struct icd_channel *ch);
void icd_channel_free(struct icd_channel *ch);

int icd_read_target(int pid, uint64_t addr, void *buf, int size, int notify_fd, uint64_t id);
int icd_read_target_string(int pid, uint64_t addr, void *buf, int max_len, int notify_fd,
                           uint64_t id);
int icd_ns_exec(int pidfd, int pid, int nsflags, int op, const char *const s[4],
                const int64_t a[6], int timeout_ms, struct icd_exec_result *out);
int icd_fd_mnt_id(int fd);
struct icd_mount_facts {
  uint64_t mnt_uid; uint64_t parent_uid; uint32_t mnt_id; uint32_t parent_id;
  uint32_t dev_major; uint32_t dev_minor; uint64_t attr; uint32_t sb_flags;
  char fstype[64]; char root[4096]; char point[4096];
};
int64_t icd_fd_mnt_uid(int fd);
int64_t icd_mntns_id(int nsfd);
int icd_statmount(uint64_t uid, uint64_t ns_id, struct icd_mount_facts *out);
int icd_fd_mount_facts(int fd, int pid, struct icd_mount_facts out[2]);
int icd_exec_start(int pidfd, int pid, int nsflags, int timeout_ms, struct icd_executor *out);
int icd_exec_call(const struct icd_executor *x, int pidfd, int pid, int op,
                  const char *s0, const char *s1, const char *s2, const char *s3,
                  int64_t a0, int64_t a1, int64_t a2, int64_t a3, int64_t a4, int64_t a5,
                  int timeout_ms, struct icd_exec_result *out);
int icd_exec_stop(int sock, int child);

#define ICD_FUSE_HIST ...
struct icd_fuse_fstats {
  uint64_t opens; uint64_t reads; uint64_t releases; uint64_t errors; uint64_t waits;
  uint64_t timeouts; uint64_t stale; uint64_t refreshes; uint64_t renders; uint64_t failures;
  uint64_t cached_reads;
  uint64_t open_ns; uint64_t read_ns; uint64_t max_ns; uint64_t hist[...];
};
struct icd_fuse_stats {
  uint64_t requests; uint64_t unknown; uint64_t interrupts; uint64_t queue_full;
  uint64_t aliases; uint64_t containers; uint64_t parked; uint64_t handles;
  uint64_t write_errors; uint64_t read_errors;
};
struct icd_fuse_req { uint64_t key; int32_t file; int32_t pad; };
struct icd_fuse;
struct icd_fuse *icd_fuse_new(int workers, int wait_ms);
int icd_fuse_add_file(struct icd_fuse *f, const char *path, int fresh_ms, int max_stale_ms,
                      uint64_t size);
int icd_fuse_start(struct icd_fuse *f, const char *mountpoint);
int icd_fuse_register(struct icd_fuse *f, uint64_t key, int nsfd);
int icd_fuse_unregister(struct icd_fuse *f, uint64_t key);
int icd_fuse_set(struct icd_fuse *f, uint64_t key, int file, const void *data, uint32_t len);
int icd_fuse_fail(struct icd_fuse *f, uint64_t key, int file, int err);
int icd_fuse_requests(struct icd_fuse *f, struct icd_fuse_req *out, int max, int timeout_ms);
void icd_fuse_wake(struct icd_fuse *f);
int icd_fuse_file_stats(struct icd_fuse *f, int file, struct icd_fuse_fstats *out);
void icd_fuse_stats(struct icd_fuse *f, struct icd_fuse_stats *out);
uint64_t icd_fuse_dev(struct icd_fuse *f);
int icd_fuse_stop(struct icd_fuse *f);
void icd_fuse_free(struct icd_fuse *f);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "interceptd._core",
    '#include "icd.h"\n#include "fusefs.h"\n#include "journal.h"',
    sources=[str(p.relative_to(CSRC.parent)) for p in sorted(CSRC.glob("*.c"))],
    include_dirs=[str(CSRC)],
    libraries=["pthread"],
    extra_compile_args=["-Wall", "-Wextra", "-Werror", "-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
