// interceptd's eBPF layer, compiled by bcc (interceptd/ebpf_load.py).
//
// Counts every syscall (and every failed one) of the containers the daemon
// tracks, per (container slot, syscall number), and streams an event for each
// call of the sensitive set, at its exit (with its result). Only tracepoint
// data and BPF helpers are used: no kernel struct is read, so the headers bcc
// compiles against need not be the running kernel's.
//
// The daemon owns the slots: at attach it writes the container's cgroup v2 id
// -> slot into `tracked` (and zeroes the slot's counters first); at detach it
// reads the counters and deletes the id. Processes of untracked cgroups pay,
// per syscall, a cgroup-id read and one hash lookup at its exit.

#define NR_SLOTS 512      /* syscall numbers counted one by one; larger ones (x32) go to NR_SLOTS-1 */
#define MAX_TRACKED 256   /* containers followed at once */

struct event_t {
  u64 ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
  u64 cgroup;    /* cgroup v2 id */
  u64 args[6];   /* as the call entered; zeros when it never did (see has_args) */
  s64 ret;       /* the call's return value (-errno) */
  u32 tgid;      /* the caller's pid as the host sees it */
  u32 tid;
  u32 slot;
  s32 nr;
  u32 has_args;  /* 0: refused by the seccomp filter before entry, args unseen */
  u32 pad;
  char comm[16];
};

struct pending_t {
  u64 args[6];
  s64 nr;
};

BPF_HASH(tracked, u64, u32, MAX_TRACKED);
// calls and errors: index slot * NR_SLOTS + nr; mmap-able so the daemon reads
// them without a syscall per key.
BPF_F_TABLE("array", u32, u64, calls, MAX_TRACKED * NR_SLOTS, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, u64, errors, MAX_TRACKED * NR_SLOTS, BPF_F_MMAPABLE);
// sensitive[nr] != 0: stream an event for this syscall.
BPF_ARRAY(sensitive, u8, NR_SLOTS);
// The arguments of a sensitive call between its entry and its exit, per thread
// (LRU: a thread killed inside its call never reaches the exit that deletes it).
BPF_TABLE("lru_hash", u32, struct pending_t, pending, 4096);
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

// The record of a syscalls:sys_enter_<name> tracepoint: the common header,
// the syscall's number, then its arguments, one unsigned long each (as many as
// the call has).
struct enter_rec {
  u64 common;
  s32 nr;
  u32 pad;
  u64 args[6];
};

// Seccomp runs before the entry tracepoints: a call the filter refuses (the
// daemon's errno, a deny rule) never enters, so calls are counted at their exit
// (raw_syscalls:sys_exit), which every call but exit/exit_group reaches; those
// two are counted at their own entry. The entry of each sensitive call is
// watched through its own syscalls:sys_enter_<name> event, which costs the
// other syscalls nothing, to keep its arguments for its exit's event.
// One program per argument count: the kernel refuses to attach a program that
// reads past the end of an event's record, so each reads exactly its call's.
static __always_inline int sensitive_enter(struct enter_rec *ctx, int nargs)
{
  u32 nr = nr_index(ctx->nr);
  u8 *s = sensitive.lookup(&nr);
  if (!s || !*s)
    return 0;
  u64 cg = bpf_get_current_cgroup_id();
  u32 *slot = tracked.lookup(&cg);
  if (!slot)
    return 0;
  struct pending_t p = { .nr = ctx->nr };
#pragma unroll
  for (int i = 0; i < 6; i++)
    if (i < nargs)
      p.args[i] = ctx->args[i];
  u32 tid = (u32)bpf_get_current_pid_tgid();
  pending.update(&tid, &p);
  return 0;
}

#define SENSITIVE_ENTER(n) \
  int on_sensitive_enter_##n(struct enter_rec *ctx) { return sensitive_enter(ctx, n); }
SENSITIVE_ENTER(0)
SENSITIVE_ENTER(1)
SENSITIVE_ENTER(2)
SENSITIVE_ENTER(3)
SENSITIVE_ENTER(4)
SENSITIVE_ENTER(5)
SENSITIVE_ENTER(6)

int on_exit_enter(struct enter_rec *ctx)
{
  u64 cg = bpf_get_current_cgroup_id();
  u32 *slot = tracked.lookup(&cg);
  if (slot)
    count(*slot, nr_index(ctx->nr), 0);
  return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
  u64 cg = bpf_get_current_cgroup_id();
  u32 *slot = tracked.lookup(&cg);
  if (!slot)
    return 0;
  u32 nr = nr_index(args->id);
  count(*slot, nr, args->ret < 0);
  u8 *s = sensitive.lookup(&nr);
  if (!s || !*s)
    return 0;
  u64 id = bpf_get_current_pid_tgid();
  u32 tid = (u32)id;
  struct pending_t *p = pending.lookup(&tid);
  u32 sl = *slot % MAX_TRACKED, why = 1;
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
    if (p)
      pending.delete(&tid);
    return 0;
  }
  e->ns = bpf_ktime_get_ns();
  e->cgroup = cg;
  e->tgid = id >> 32;
  e->tid = tid;
  e->slot = *slot;
  e->nr = (s32)args->id;
  e->ret = args->ret;
  e->pad = 0;
  if (p && p->nr == args->id) {
    e->has_args = 1;
#pragma unroll
    for (int i = 0; i < 6; i++)
      e->args[i] = p->args[i];
  } else {
    e->has_args = 0;
#pragma unroll
    for (int i = 0; i < 6; i++)
      e->args[i] = 0;
  }
  if (p)
    pending.delete(&tid);
  bpf_get_current_comm(&e->comm, sizeof(e->comm));
  events.ringbuf_submit(e, 0);
  return 0;
}
