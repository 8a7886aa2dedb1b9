/* The receive journal (journal.c): notifications taken off a notify fd, kept in
 * a memfd that outlives the daemon so a successor can answer them. */
#ifndef ICD_JOURNAL_H
#define ICD_JOURNAL_H
#include <stdint.h>

struct seccomp_notif;
/* SECCOMP_IOCTL_NOTIF_RECV on `fd` into *n, through the journal: the kernel
 * writes the notification into the journal's shared memory itself, so it is
 * there even if the process dies as the ioctl returns. 0, or -1 with errno. */
int icd_journal_recv(int fd, struct seccomp_notif *n);
/* The same for a helper process receiving on its own copy `fd` of the
 * daemon's fd number `key` (native.c): entries are keyed by the daemon's. */
int icd_journal_recv_as(int fd, int key, struct seccomp_notif *n);
#endif
