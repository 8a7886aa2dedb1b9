/* Internal to csrc/: the native mount path (native.c) as the engine drives
 * it.  The engine (channel.c, receiver.c, engine.c) owns one per channel;
 * native.c itself knows nothing of the engine: it answers by the channel's
 * verdict table (rules.h) and hands its records over through its own ring. */
#ifndef ICD_NATIVE_H
#define ICD_NATIVE_H

#include <stdint.h>

#include "icd.h"

struct icd_native;
struct icd_rules;
struct seccomp_notif;

struct icd_native *icd_native_new(uint64_t cookie);
/* Starts the helper in the namespaces of `pid` (its pidfd), which serves
 * the NUL-separated filesystem types in list ("" ends it) and answers by the
 * channel's (shared) verdict table rt: 0 or -errno. */
int icd_native_start(struct icd_native *nv, int pidfd, int pid, const char *list, int len,
                     struct icd_rules *rt);
/* Hands the helper notify fd `fd` to receive on, with `first` (received
 * already, not yet answered) for it to handle before anything else: 0 or
 * -errno (the caller still holds `first` then). */
int icd_native_delegate(struct icd_native *nv, int fd, const struct seccomp_notif *first);
#define ICD_NATIVE_IDLE 0     /* nothing arrived (EINTR): look at the stop flag */
#define ICD_NATIVE_FORWARD 1  /* *n is for the daemon: handle it as if received */
#define ICD_NATIVE_DETACHED 2 /* every task behind the filter is gone */
#define ICD_NATIVE_GONE 3     /* the helper died: receive on the fd again */
/* The delegating receiver's wait for its helper's next message. */
int icd_native_next(struct icd_native *nv, int fd, struct seccomp_notif *n);
/* Moves up to max of the helper's decision records to out. */
int icd_native_drain(struct icd_native *nv, struct icd_decision *out, int max);
/* What the helper did: mount-family calls performed, table rules answered,
 * or records it could not put in the ring (not drained in time). */
#define ICD_NATIVE_PERFORMED 0
#define ICD_NATIVE_FAST 1
#define ICD_NATIVE_DROPPED 2
uint64_t icd_native_count(struct icd_native *nv, int which);
/* A hand-over's: the helper finishes the call in hand, if any, and exits, so
 * the successor never meets a call acted on here but not answered.  Waits up to
 * timeout_ms (0: only asks): 0 once it is gone, -ETIMEDOUT or -errno. */
int icd_native_quiesce(struct icd_native *nv, int timeout_ms);
/* lock 1: takes the container's act lock (native_int.h, struct shared) for
 * the daemon's Python path; 0: releases it.  0 or -errno. */
int icd_native_act(struct icd_native *nv, int lock);
void icd_native_close(struct icd_native *nv); /* kills its helper */
void icd_native_free(struct icd_native *nv);

/* What the helper's vetting of one call came to (the pure part, vet.c,
 * answers ICD_VET_FORWARD or ICD_VET_NATIVE). */
#define ICD_VET_PERFORMED 2 /* done by the helper: answer with its result */
/* mounts.c: umount2(path, flags) if the mount it names is one the helper may
 * unmount (icd_vet_umount_mount): ICD_VET_PERFORMED with *res 0 or -errno, or
 * ICD_VET_FORWARD with nothing done. */
int icd_umount_vetted(const char *path, int flags, int *res);

#endif
