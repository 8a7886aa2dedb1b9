/*
 * policy_holes: escape attempts on the mount policy from inside a container (issue 8,
 * items 3, 6 and 9). Each step prints "STEP ret=R errno=E"; prefix the lines with
 * sed to tell runs apart.
 *
 *   policy_holes clone_read SRC SUB flat|rec       open_tree(SRC, CLONE[|AT_RECURSIVE]),
 *                                                  then open + read SUB through the clone fd
 *                                                  ("read" ret = bytes read)
 *   policy_holes clone_umount SRC SUB READ         recursive clone of SRC; umount2 of SUB in
 *                                                  it through /proc/self/fd/N and
 *                                                  /proc/<pid>/fd/N (lazy); mount_setattr
 *                                                  making SUB unbindable; then a clone of the
 *                                                  clone, and open + read READ through it
 *   policy_holes unbindable PATH                   mount_setattr(PATH, propagation =
 *                                                  MS_UNBINDABLE)
 *   policy_holes clone_fspick SRC                  recursive clone of SRC, fspick of it,
 *                                                  fsconfig(RECONFIGURE)
 *   policy_holes remount_race DIR LINK SUB N [unbindable]
 *                                                  N plain remounts (MS_REMOUNT, no flags:
 *                                                  they would clear ro/nosuid/nodev/noexec;
 *                                                  or MS_UNBINDABLE) of DIR/d/SUB, a tmpfs
 *                                                  of the container's own, while a second
 *                                                  thread keeps swapping DIR/d with a
 *                                                  symlink to LINK (renameat2
 *                                                  RENAME_EXCHANGE), so that DIR/d/SUB is
 *                                                  sometimes LINK/SUB; prints
 *                                                  "race ok=.. eperm=.. other=.."
 *   policy_holes fuse DIR                          open /dev/fuse, mount fuse on DIR with
 *                                                  fd=N and serve it (INIT, GETATTR) while
 *                                                  a child stats DIR ("stat" ret = st_size
 *                                                  the server gave: 4242), mounts,
 *                                                  remounts ro and unmounts a tmpfs on
 *                                                  DIR/d, and unmounts
 *                                                  DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif

struct attr {
	uint64_t set, clr, propagation, userns_fd;
};

static long step(const char *name, long r)
{
	printf("%s ret=%ld errno=%d\n", name, r, r < 0 ? errno : 0);
	fflush(stdout);
	return r;
}

static long clone_tree(int dfd, const char *path, int rec)
{
	return syscall(SYS_open_tree, dfd, path,
		       OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (rec ? AT_RECURSIVE : 0)
			       | (*path ? 0 : AT_EMPTY_PATH));
}

static void read_through(int dfd, const char *sub)
{
	char buf[256];
	long f = step("open", openat(dfd, sub, O_RDONLY | O_CLOEXEC));

	if (f < 0)
		return;
	step("read", read((int)f, buf, sizeof buf));
	close((int)f);
}

static int clone_umount(const char *src, const char *sub, const char *rd)
{
	char path[256];
	struct attr a = { 0, 0, MS_UNBINDABLE, 0 };
	long fd = step("open_tree", clone_tree(AT_FDCWD, src, 1)), again;

	if (fd < 0)
		return 0;
	snprintf(path, sizeof path, "/proc/self/fd/%ld/%s", fd, sub);
	step("umount_self", umount2(path, 0));
	snprintf(path, sizeof path, "/proc/%d/fd/%ld/%s", getpid(), fd, sub);
	step("umount_pid", umount2(path, MNT_DETACH));
	step("unbindable", syscall(SYS_mount_setattr, (int)fd, sub, 0, &a, sizeof a));
	/* Whatever got through above, a clone of the clone must still hide READ. */
	again = step("reclone", clone_tree((int)fd, "", 1));
	read_through(again >= 0 ? (int)again : (int)fd, rd);
	return 0;
}

struct race {
	const char *d, *l;
	volatile int stop;
	long swaps;
};

static void *swapper(void *p)
{
	struct race *r = p;

	while (!r->stop)
		if (syscall(SYS_renameat2, AT_FDCWD, r->d, AT_FDCWD, r->l, RENAME_EXCHANGE) == 0)
			r->swaps++;
	return NULL;
}

static int remount_race(const char *dir, const char *link, const char *sub, long n,
			unsigned long flags)
{
	char d[256], l[256], target[256];
	struct race r = { d, l, 0, 0 };
	pthread_t t;
	long i, ok = 0, eperm = 0, other = 0;
	int first = 0;

	snprintf(d, sizeof d, "%s/d", dir);
	snprintf(l, sizeof l, "%s/l", dir);
	snprintf(target, sizeof target, "%s/d/%s", dir, sub);
	if (step("symlink", symlink(link, l)) < 0)
		return 0;
	if (pthread_create(&t, NULL, swapper, &r) != 0)
		return 1;
	for (i = 0; i < n; i++) {
		if (mount(NULL, target, NULL, flags, NULL) == 0) {
			ok++;
		} else if (errno == EPERM) {
			eperm++;
		} else {
			other++;
			if (!first)
				first = errno;
		}
	}
	r.stop = 1;
	pthread_join(t, NULL);
	printf("race ok=%ld eperm=%ld other=%ld first_errno=%d swaps=%ld\n", ok, eperm, other,
	       first, r.swaps);
	return 0;
}

/* ---- a FUSE server of one empty directory ------------------------------ */

static void reply(int dev, uint64_t unique, int error, const void *body, size_t len)
{
	struct fuse_out_header h = { sizeof h + len, -error, unique };
	char buf[sizeof h + 256];

	memcpy(buf, &h, sizeof h);
	if (len)
		memcpy(buf + sizeof h, body, len);
	if (write(dev, buf, sizeof h + len) < 0)
		step("reply", -1);
}

static int serve_one(int dev)
{
	static char buf[FUSE_MIN_READ_BUFFER];
	struct fuse_in_header *in = (void *)buf;
	ssize_t n = read(dev, buf, sizeof buf);

	if (n < (ssize_t)sizeof *in)
		return -1;
	if (in->opcode == FUSE_INIT) {
		struct fuse_init_in *ii = (void *)(in + 1);
		struct fuse_init_out o = { .major = FUSE_KERNEL_VERSION,
					   .minor = ii->minor < FUSE_KERNEL_MINOR_VERSION
							    ? ii->minor
							    : FUSE_KERNEL_MINOR_VERSION,
					   .max_readahead = 4096, .max_write = 4096 };
		reply(dev, in->unique, 0, &o, sizeof o);
	} else if (in->opcode == FUSE_GETATTR) {
		struct fuse_attr_out o = { .attr_valid = 0 };
		o.attr.ino = in->nodeid;
		o.attr.mode = S_IFDIR | 0755;
		o.attr.nlink = 2;
		o.attr.size = in->nodeid == FUSE_ROOT_ID ? 4242 : 0;
		reply(dev, in->unique, 0, &o, sizeof o);
	} else if (in->opcode == FUSE_LOOKUP && in->nodeid == FUSE_ROOT_ID
		   && strcmp((char *)(in + 1), "d") == 0) {
		/* One subdirectory, "d", to mount on. */
		struct fuse_entry_out o = { .nodeid = 2, .generation = 1 };
		o.attr.ino = 2;
		o.attr.mode = S_IFDIR | 0755;
		o.attr.nlink = 2;
		reply(dev, in->unique, 0, &o, sizeof o);
	} else if (in->opcode == FUSE_LOOKUP) {
		reply(dev, in->unique, ENOENT, NULL, 0);
	} else if (in->opcode == FUSE_DESTROY || in->opcode == FUSE_FORGET) {
		return 0;
	} else {
		reply(dev, in->unique, ENOSYS, NULL, 0);
	}
	return 0;
}

/* The server answers until the connection ends (the child's umount), as a
 * real one does: the daemon's umount path stats the mount as the container's
 * root, which the server must answer. */
static int fuse(const char *dir)
{
	char opts[128];
	long dev = step("open_dev", open("/dev/fuse", O_RDWR | O_CLOEXEC));
	pid_t child;
	int status;

	if (dev < 0)
		return 0;
	alarm(30); /* never hang a test */
	snprintf(opts, sizeof opts, "fd=%ld,rootmode=40000,user_id=0,group_id=0", dev);
	if (step("mount", mount("probe", dir, "fuse", MS_NOSUID | MS_NODEV, opts)) < 0)
		return 0;
	child = fork();
	if (child == 0) {
		struct stat st;
		close((int)dev);
		if (stat(dir, &st) < 0)
			step("stat", -1);
		else
			step("stat", (long)st.st_size);
		/* A mount of the container's own on a FUSE directory, and its umount:
		 * the daemon cannot walk into FUSE (it is not the server's user). */
		snprintf(opts, sizeof opts, "%s/d", dir);
		step("sub_mount", mount("t", opts, "tmpfs", 0, NULL));
		step("sub_remount", mount(NULL, opts, NULL, MS_REMOUNT | MS_RDONLY, NULL));
		step("sub_umount", umount2(opts, 0));
		step("umount", umount2(dir, MNT_DETACH));
		_exit(0);
	}
	while (serve_one((int)dev) >= 0)
		;
	waitpid(child, &status, 0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 5 && strcmp(argv[1], "clone_read") == 0) {
		long fd = step("open_tree", clone_tree(AT_FDCWD, argv[2],
						       strcmp(argv[4], "rec") == 0));
		if (fd >= 0)
			read_through((int)fd, argv[3]);
		return 0;
	}
	if (argc >= 5 && strcmp(argv[1], "clone_umount") == 0)
		return clone_umount(argv[2], argv[3], argv[4]);
	if (argc >= 3 && strcmp(argv[1], "unbindable") == 0) {
		struct attr a = { 0, 0, MS_UNBINDABLE, 0 };
		step("setattr", syscall(SYS_mount_setattr, AT_FDCWD, argv[2], 0, &a, sizeof a));
		return 0;
	}
	if (argc >= 3 && strcmp(argv[1], "clone_fspick") == 0) {
		long fd = step("open_tree", clone_tree(AT_FDCWD, argv[2], 1)), fc;
		if (fd < 0)
			return 0;
		fc = step("fspick", syscall(SYS_fspick, (int)fd, "", FSPICK_EMPTY_PATH));
		if (fc >= 0)
			step("fsconfig", syscall(SYS_fsconfig, (int)fc, FSCONFIG_CMD_RECONFIGURE,
						 NULL, NULL, 0));
		return 0;
	}
	if (argc >= 6 && strcmp(argv[1], "remount_race") == 0)
		return remount_race(argv[2], argv[3], argv[4], strtol(argv[5], NULL, 10),
				    argc > 6 && strcmp(argv[6], "unbindable") == 0 ? MS_UNBINDABLE
										    : MS_REMOUNT);
	if (argc >= 3 && strcmp(argv[1], "fuse") == 0)
		return fuse(argv[2]);
	fprintf(stderr, "usage: see the comment at the top of policy_holes.c\n");
	return 2;
}
