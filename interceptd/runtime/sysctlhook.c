/*
 * interceptd-sysctl-hook: binds the daemon's served /proc/sys values over the
 * container's own files before the container's first instruction.
 *
 * interceptd-runc adds it to config.json as an OCI createContainer hook
 * (emulbinds.py). runc 1.1 and crun 1.8 both run such a hook from the container's
 * init, after the config's mounts and before pivot_root: in the container's user,
 * mount, pid and network namespaces, as the container's root, with the host's tree
 * still reachable. So the bind needs no daemon round trip and is in place before
 * any of the container's code runs (a write in its first milliseconds, such as
 * systemd-sysctl's at boot, would otherwise reach the kernel's file: EACCES).
 *
 *   interceptd-sysctl-hook TREE FUSE_DEV ROOTFS PATH...
 *
 * TREE is the clone of the daemon's FUSE tree in the container's mount dir (the
 * config's other emulated files are bound from it), FUSE_DEV its st_dev, ROOTFS the
 * container's root.path, each PATH a container path under /proc/sys.
 *
 * Nothing is resolved through a symlink (openat2 RESOLVE_NO_SYMLINKS), the target
 * is reached beneath the procfs mounted at ROOTFS/proc (its root inode, so an image
 * whose /proc is a symlink or a plain directory gets nothing bound), it must be a
 * regular file of that same procfs, and the mount API works on those fds
 * (open_tree, move_mount), so no path is resolved twice. The image is the only
 * thing here the container chose; none of its code has run yet.
 *
 * What cannot be bound is said on stderr and left to the daemon, which binds the
 * values again when it attaches the container (sysctlbinds.py: it skips a file
 * already bound from its connection); the container then starts with the kernel's
 * file as before. Only a malformed command line fails the hook (and so the create).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#define PROG "interceptd-sysctl-hook"
#define PROC_ROOT_INO 1 /* the kernel's: every procfs root has it */
#define STATE_MAX (1 << 20)

static int open_strict(int dirfd, const char *path, int flags, int beneath)
{
	struct open_how how = {
		.flags = (unsigned long long)(flags | O_CLOEXEC | O_NOFOLLOW),
		.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
			   | (beneath ? RESOLVE_BENEATH : 0),
	};
	long fd;

	do
		fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
	while (fd < 0 && errno == EINTR);
	return (int)fd;
}

static long fs_magic(int fd)
{
	struct statfs s;

	if (fstatfs(fd, &s) < 0)
		return -1;
	return (long)s.f_type;
}

/* A relative path of plain names: no "", ".", ".." component. */
static int plain(const char *p)
{
	const char *c = p;

	if (!*p)
		return 0;
	for (;;) {
		size_t n = strcspn(c, "/");

		if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
			return 0;
		if (!c[n])
			return 1;
		c += n + 1;
	}
}

/* The runtime writes the container's state to stdin; crun fails the hook when the
 * write does (EPIPE), so it is read to its end, bounded. */
static void drain_stdin(void)
{
	char buf[4096];
	size_t total = 0;
	ssize_t n;

	while (total < STATE_MAX && ((n = read(0, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)))
		if (n > 0)
			total += (size_t)n;
}

static void skip(const char *path, const char *why, int err)
{
	if (err)
		fprintf(stderr, PROG ": %s not bound: %s: %s\n", path, why, strerror(err));
	else
		fprintf(stderr, PROG ": %s not bound: %s\n", path, why);
}

/* Bind TREE's file of `path` over the procfs file beneath `procfd`; 0, or -1 said. */
static int bind_one(int treefd, dev_t fuse_dev, int procfd, dev_t proc_dev, const char *path)
{
	const char *rel = path + strlen("/proc/");
	struct stat ss, ts;
	int src = -1, clone = -1, tgt = -1, rc = -1;

	src = open_strict(treefd, path + 1, O_PATH, 1);
	if (src < 0) {
		skip(path, "the daemon's file", errno);
		goto out;
	}
	if (fstat(src, &ss) < 0) {
		skip(path, "the daemon's file", errno);
		goto out;
	}
	if (ss.st_dev != fuse_dev || !S_ISREG(ss.st_mode)) {
		skip(path, "the daemon's file is not its tree's", 0);
		goto out;
	}
	tgt = open_strict(procfd, rel, O_PATH, 1);
	if (tgt < 0) {
		if (errno != ENOENT) /* a value this kernel or namespace lacks */
			skip(path, "the container's file", errno);
		else
			rc = 0;
		goto out;
	}
	if (fstat(tgt, &ts) < 0) {
		skip(path, "the container's file", errno);
		goto out;
	}
	if (ts.st_dev == ss.st_dev && ts.st_ino == ss.st_ino) {
		rc = 0; /* bound already */
		goto out;
	}
	if (ts.st_dev != proc_dev || fs_magic(tgt) != PROC_SUPER_MAGIC || !S_ISREG(ts.st_mode)) {
		skip(path, "the container's file is not a file of its procfs", 0);
		goto out;
	}
	clone = open_tree(src, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH);
	if (clone < 0) {
		skip(path, "open_tree", errno);
		goto out;
	}
	if (move_mount(clone, "", tgt, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0) {
		skip(path, "move_mount", errno);
		goto out;
	}
	rc = 0;
out:
	if (clone >= 0)
		close(clone);
	if (tgt >= 0)
		close(tgt);
	if (src >= 0)
		close(src);
	return rc;
}

int main(int argc, char **argv)
{
	struct stat st;
	char *end;
	int treefd, rootfd, procfd, failed = 0;

	if (argc < 4 || argv[1][0] != '/' || argv[3][0] != '/') {
		fprintf(stderr, "usage: " PROG " TREE FUSE_DEV ROOTFS /proc/sys/PATH...\n");
		return 2;
	}
	errno = 0;
	unsigned long long dev = strtoull(argv[2], &end, 10);
	if (errno || end == argv[2] || *end) {
		fprintf(stderr, PROG ": bad FUSE_DEV %s\n", argv[2]);
		return 2;
	}
	for (int i = 4; i < argc; i++)
		if (strncmp(argv[i], "/proc/sys/", 10) != 0 || !plain(argv[i] + 1)) {
			fprintf(stderr, PROG ": not a /proc/sys path: %s\n", argv[i]);
			return 2;
		}
	drain_stdin();

	treefd = open_strict(AT_FDCWD, argv[1], O_PATH | O_DIRECTORY, 0);
	if (treefd < 0 || fstat(treefd, &st) < 0 || st.st_dev != (dev_t)dev
	    || fs_magic(treefd) != FUSE_SUPER_MAGIC) {
		skip("/proc/sys", "the daemon's tree is not where it was", treefd < 0 ? errno : 0);
		return 0;
	}
	rootfd = open_strict(AT_FDCWD, argv[3], O_PATH | O_DIRECTORY, 0);
	if (rootfd < 0) {
		skip("/proc/sys", "the rootfs", errno);
		return 0;
	}
	procfd = open_strict(rootfd, "proc", O_PATH | O_DIRECTORY, 1);
	if (procfd < 0 || fstat(procfd, &st) < 0 || st.st_ino != PROC_ROOT_INO
	    || fs_magic(procfd) != PROC_SUPER_MAGIC) {
		skip("/proc/sys", "the rootfs's /proc is not a procfs", procfd < 0 ? errno : 0);
		return 0;
	}
	for (int i = 4; i < argc; i++)
		failed |= bind_one(treefd, (dev_t)dev, procfd, st.st_dev, argv[i]);
	if (failed)
		fprintf(stderr, PROG ": the daemon binds what is left when it attaches the "
			"container\n");
	return 0;
}
