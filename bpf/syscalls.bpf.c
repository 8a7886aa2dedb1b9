// interceptd's eBPF layer, compiled by bcc (interceptd/ebpf_load.py).
//
// Counts every syscall (and every failed one) of the containers the daemon
// tracks, per (container slot, syscall number), and streams an event for each
// call of the sensitive set, at its exit (with its arguments and result).
//
// Cost first: one raw tracepoint program, on sys_exit only. Any program on a
// syscall tracepoint moves every task's syscalls to the kernel's slow path
// (the floor: bench/bench_ebpf.py measures an empty program); a perf-event
// tracepoint would add a record copy per call, and a second program (on
// sys_enter) a second run per call. Processes of untracked cgroups pay, per
// syscall, a cgroup-id read and, most often, one array read (inlined by the
// verifier; a hash lookup cost them ~8 ns more per call);
// the daemon attaches the program only while it tracks a container.
//
// A raw tracepoint gives the syscall's registers and its return value; the
// number and the arguments are read from the saved user registers. Their
// layout (struct syscall_frame) is the x86-64 entry code's frame, the same as
// ptrace's user_regs_struct, which no kernel version changes: nothing is taken
// from the kernel headers bcc compiles against (they need not be this
// kernel's), and the loader checks the layout on the running kernel before
// handing the programs over.
//
// The daemon owns the slots: at attach it writes the container's cgroup v2 id
// and slot into one of the id's TRACK_PROBES buckets of `tracked` (and zeroes
// the slot's counters first); at detach it reads the counters and clears the
// bucket.

#define NR_SLOTS 512      /* syscall numbers counted one by one; larger ones (x32) go to NR_SLOTS-1 */
#define MAX_TRACKED 256   /* containers followed at once */
#define TRACK_BUCKETS 4096 /* a power of two */
#define TRACK_PROBES 4    /* buckets an id may sit in: (id + k) % TRACK_BUCKETS */
#define TRACK_TOMB (~0ULL)
#define NR_EXIT 60
#define NR_EXIT_GROUP 231

struct event_t {
  u64 ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
  u64 cgroup;    /* cgroup v2 id */
  u64 args[6];   /* the registers the call was made with */
  s64 ret;       /* the call's return value (-errno) */
  u32 tgid;      /* the caller's pid as the host sees it */
  u32 tid;
  u32 slot;
  s32 nr;
  u32 has_args;  /* always 1 (kept for the record's layout) */
  u32 pad;
  char comm[16];
};

// x86-64 struct pt_regs up to orig_ax (arch/x86/include/asm/ptrace.h; the
// order of the entry code's pushes and of ptrace's user_regs_struct).
struct syscall_frame {
  u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax;
};

// An open-addressed table (linear probing) of the tracked cgroup ids: cg 0 is
// a free bucket, which ends a search (no cgroup has id 0), TRACK_TOMB one whose
// id left, which does not. An id sits in the first free or left bucket of its
// probes, so an untracked process's search mostly ends at its first bucket.
// The daemon (interceptd/ebpf.py) writes a bucket as left before giving it a
// new id, so a program never pairs an id with another container's slot, and
// frees a left bucket only when the next one is free.
struct track_t {
  u64 cg;
  u32 slot;
  u32 pad;
};
BPF_ARRAY(tracked, struct track_t, TRACK_BUCKETS);
// calls and errors: index slot * NR_SLOTS + nr; mmap-able so the daemon reads
// them without a syscall per key.
BPF_F_TABLE("array", u32, u64, calls, MAX_TRACKED * NR_SLOTS, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, u64, errors, MAX_TRACKED * NR_SLOTS, BPF_F_MMAPABLE);
// sensitive[nr] != 0: stream an event for this syscall.
BPF_ARRAY(sensitive, u8, NR_SLOTS);
// lost[0]: events dropped because the ring was full; lost[1]: because their
// container streamed more than EVENTS_PER_SEC (a container looping on a refused
// call must not make the daemon spend a CPU reading its events).
BPF_ARRAY(lost, u64, 2);
struct rate_t {
  u64 window;
  u64 n;
};
BPF_ARRAY(rate, struct rate_t, MAX_TRACKED);
BPF_RINGBUF_OUTPUT(events, RING_PAGES);

static __always_inline int tracked_slot(u64 cg, u32 *slot)
{
#pragma unroll
  for (u32 k = 0; k < TRACK_PROBES; k++) {
    u32 i = (u32)(cg + k) & (TRACK_BUCKETS - 1);
    struct track_t *t = tracked.lookup(&i);
    if (!t || t->cg == 0)
      return 0;
    if (t->cg == cg) {
      *slot = t->slot;
      return 1;
    }
  }
  return 0;
}

static __always_inline u32 nr_index(long nr)
{
  return (nr >= 0 && nr < NR_SLOTS) ? (u32)nr : NR_SLOTS - 1;
}

static __always_inline void count(u32 slot, u32 nr, int failed)
{
  u32 idx = (slot % MAX_TRACKED) * NR_SLOTS + nr;
  u64 *c = calls.lookup(&idx);
  if (c)
    __sync_fetch_and_add(c, 1);
  if (failed) {
    c = errors.lookup(&idx);
    if (c)
      __sync_fetch_and_add(c, 1);
  }
}

static __always_inline void emit(u64 cg, u32 slot, const struct syscall_frame *f, long ret)
{
  u32 sl = slot % MAX_TRACKED, why = 1;
  struct rate_t *r = rate.lookup(&sl);
  struct event_t *e = NULL;
  if (r) {
    u64 now = bpf_ktime_get_ns();
    if (now - r->window > 1000000000ULL) {  /* approximate across CPUs: a bound, not a meter */
      r->window = now;
      r->n = 0;
    }
    if (++r->n <= EVENTS_PER_SEC) {
      why = 0;
      e = events.ringbuf_reserve(sizeof(struct event_t));
    }
  }
  if (!e) {
    u64 *l = lost.lookup(&why);
    if (l)
      __sync_fetch_and_add(l, 1);
    return;
  }
  u64 id = bpf_get_current_pid_tgid();
  e->ns = bpf_ktime_get_ns();
  e->cgroup = cg;
  e->tgid = id >> 32;
  e->tid = (u32)id;
  e->slot = slot;
  e->nr = (s32)f->orig_ax;
  e->ret = ret;
  e->has_args = 1;
  e->pad = 0;
  e->args[0] = f->di;
  e->args[1] = f->si;
  e->args[2] = f->dx;
  e->args[3] = f->r10;
  e->args[4] = f->r8;
  e->args[5] = f->r9;
  bpf_get_current_comm(&e->comm, sizeof(e->comm));
  events.ringbuf_submit(e, 0);
}

// raw tracepoint sys_exit(struct pt_regs *regs, long ret). Seccomp runs before
// sys_enter: a call the filter refuses (the daemon's errno, a deny rule) never
// enters but does exit, so calls are counted here; exit/exit_group never
// return and are counted by on_task_exit.
int on_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
  u64 cg = bpf_get_current_cgroup_id();
  u32 slot;
  if (!tracked_slot(cg, &slot))
    return 0;
  const struct syscall_frame *regs = (const struct syscall_frame *)ctx->args[0];
  long ret = (long)ctx->args[1];
  long nr = -1;
  bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
  u32 n = nr_index(nr);
  count(slot, n, ret < 0);
  u8 *s = sensitive.lookup(&n);
  if (!s || !*s)
    return 0;
  struct syscall_frame f = {};
  bpf_probe_read_kernel(&f, sizeof(f), regs);
  emit(cg, slot, &f, ret);
  return 0;
}

// raw tracepoint sched_process_exit(struct task_struct *p, bool group_dead):
// a task's end, as exit(2) or exit_group(2) would be counted at their entry
// (which would need a sys_enter program on every syscall): a thread's end
// counts as exit, a process's last thread's as exit_group. A task killed by a
// signal ends here too (no syscall tells them apart without reading the task).
int on_task_exit(struct bpf_raw_tracepoint_args *ctx)
{
  u64 cg = bpf_get_current_cgroup_id();
  u32 slot;
  if (tracked_slot(cg, &slot))
    count(slot, ctx->args[1] ? NR_EXIT_GROUP : NR_EXIT, 0);
  return 0;
}
