/* The receive journal (journal.c): notifications taken off a notify fd, kept in
 * a memfd that outlives the daemon so a successor can answer them. */
#ifndef ICD_JOURNAL_H
#define ICD_JOURNAL_H
#include <stdint.h>

struct seccomp_notif;
/* Maps the journal memfd `fd` (laid out by interceptd/journal.py); it
 * replaces any earlier one: 0 or -errno. */
int icd_journal_open(int fd, uint32_t slots);
/* Records a notification received on the daemon's fd `fd`; a no-op until
 * icd_journal_open. Called right after every successful RECV. */
void icd_journal_note(int fd, const struct seccomp_notif *n);
#endif
