/*
 * interceptd-sysctl-hook: binds the daemon's served /proc/sys values over the
 * container's own files before the container's first instruction.
 *
 * interceptd-runc adds it to config.json as an OCI createRuntime hook
 * (emulbinds.py). runc 1.1.5 and crun 1.8.1 both run those from the runtime's own
 * process, as the host's root, once the container's init has made every config mount
 * (runc: at procHooks, after prepareRootfs's mounts; crun: at sync 2, after
 * do_mounts) and while it waits, before pivot_root and before any of the container's
 * code. (A createContainer hook would run from the init itself, as the container's
 * root: crun starts it in its own working directory, the bundle, which Docker's
 * containerd makes 0700, so it could not even start there.) The container's pid comes
 * in the state on stdin; the hook joins its mount and network namespaces and forks a
 * child into its pid namespace, which looks the files up as the container's tasks
 * will (/proc/sys/net is per network namespace, kernel/pid_max per pid namespace since
 * Linux 6.14) and binds them.
 *
 *   interceptd-sysctl-hook TREE FUSE_DEV ROOTFS PATH...   < state.json
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
 * file as before. Only a malformed command line or state fails the hook (and so the
 * create).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
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

/* The runtime's state on stdin, NUL-terminated, or NULL. */
static char *read_state(void)
{
	static char buf[STATE_MAX + 1];
	size_t len = 0;
	ssize_t n;

	while (len < STATE_MAX && ((n = read(0, buf + len, STATE_MAX - len)) != 0))
		if (n > 0)
			len += (size_t)n;
		else if (errno != EINTR)
			return NULL;
	if (len == STATE_MAX)
		return NULL;
	buf[len] = '\0';
	return buf;
}

static const char *skip_ws(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/* Past a JSON string starting at its quote, or NULL. */
static const char *skip_string(const char *p)
{
	for (p++; *p && *p != '"'; p++)
		if (*p == '\\' && !*++p)
			return NULL;
	return *p ? p + 1 : NULL;
}

/* Past one JSON value (objects and arrays by depth, strings by their escapes). */
static const char *skip_value(const char *p)
{
	int depth = 0;

	do {
		p = skip_ws(p);
		if (*p == '"') {
			if (!(p = skip_string(p)))
				return NULL;
		} else if (*p == '{' || *p == '[') {
			depth++;
			p++;
		} else if (*p == '}' || *p == ']') {
			if (--depth < 0)
				return NULL;
			p++;
		} else if (*p) {
			p++;
		} else {
			return NULL;
		}
	} while (depth > 0);
	/* A scalar other than a string runs to the next separator. */
	while (*p && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n')
		p++;
	return p;
}

/* The top-level "pid" of the state (the container's init, in the host's pid
 * namespace): the one key looked at, so no annotation can stand in for it. */
static long state_pid(const char *p)
{
	p = skip_ws(p);
	if (*p++ != '{')
		return -1;
	for (;;) {
		const char *k = skip_ws(p), *e;

		if (*k != '"' || !(e = skip_string(k)))
			return -1;
		p = skip_ws(e);
		if (*p++ != ':')
			return -1;
		p = skip_ws(p);
		if (e - k == 5 && memcmp(k, "\"pid\"", 5) == 0) {
			char *end;
			long pid;

			errno = 0;
			pid = strtol(p, &end, 10);
			end = (char *)skip_ws(end);
			return (errno || end == p || pid <= 0 || (*end != ',' && *end != '}')) ? -1
												: pid;
		}
		if (!(p = skip_value(p)))
			return -1;
		p = skip_ws(p);
		if (*p++ != ',')
			return -1;
	}
}

static void skip(const char *path, const char *why, int err)
{
	if (err)
		fprintf(stderr, PROG ": %s not bound: %s: %s\n", path, why, strerror(err));
	else
		fprintf(stderr, PROG ": %s not bound: %s\n", path, why);
}

/* A detached clone of TREE's file of `path` (in the caller's mount namespace, the
 * host's), or -1 said. */
static int clone_source(int treefd, dev_t fuse_dev, const char *path, struct stat *ss)
{
	int src, clone = -1;

	src = open_strict(treefd, path + 1, O_PATH, 1);
	if (src < 0) {
		skip(path, "the daemon's file", errno);
		return -1;
	}
	if (fstat(src, ss) < 0)
		skip(path, "the daemon's file", errno);
	else if (ss->st_dev != fuse_dev || !S_ISREG(ss->st_mode))
		skip(path, "the daemon's file is not its tree's", 0);
	else if ((clone = open_tree(src, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH)) < 0)
		skip(path, "open_tree", errno);
	close(src);
	return clone;
}

/* Move `clone` (of the file `ss`) over the procfs file of `path` beneath `procfd`;
 * 0, or -1 said. */
static int bind_one(int clone, const struct stat *ss, int procfd, dev_t proc_dev,
		    const char *path)
{
	struct stat ts;
	int tgt, rc = -1;

	tgt = open_strict(procfd, path + strlen("/proc/"), O_PATH, 1);
	if (tgt < 0) {
		if (errno == ENOENT) /* a value this kernel or namespace lacks */
			return 0;
		skip(path, "the container's file", errno);
		return -1;
	}
	if (fstat(tgt, &ts) < 0)
		skip(path, "the container's file", errno);
	else if (ts.st_dev == ss->st_dev && ts.st_ino == ss->st_ino)
		rc = 0; /* bound already */
	else if (ts.st_dev != proc_dev || fs_magic(tgt) != PROC_SUPER_MAGIC || !S_ISREG(ts.st_mode))
		skip(path, "the container's file is not a file of its procfs", 0);
	else if (move_mount(clone, "", tgt, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0)
		skip(path, "move_mount", errno);
	else
		rc = 0;
	close(tgt);
	return rc;
}

/* In the container's namespaces: bind every clone; exit status 0, or 1 when some
 * could not be. */
static int bind_all(const char *rootfs, int n, char **paths, const int *clones,
		    const struct stat *srcs)
{
	struct stat st;
	int rootfd, procfd, failed = 0;

	rootfd = open_strict(AT_FDCWD, rootfs, O_PATH | O_DIRECTORY, 0);
	if (rootfd < 0) {
		skip("/proc/sys", "the rootfs", errno);
		return 1;
	}
	procfd = open_strict(rootfd, "proc", O_PATH | O_DIRECTORY, 1);
	if (procfd < 0 || fstat(procfd, &st) < 0 || st.st_ino != PROC_ROOT_INO
	    || fs_magic(procfd) != PROC_SUPER_MAGIC) {
		skip("/proc/sys", "the rootfs's /proc is not a procfs", procfd < 0 ? errno : 0);
		return 1;
	}
	for (int i = 0; i < n; i++)
		if (clones[i] >= 0)
			failed |= bind_one(clones[i], &srcs[i], procfd, st.st_dev, paths[i]) != 0;
	return failed;
}

int main(int argc, char **argv)
{
	static int clones[256];
	static struct stat srcs[256];
	struct stat st;
	char *end, *state;
	int treefd, pidfd, status, n = argc - 4, failed = 0;
	long pid;
	pid_t child;

	if (argc < 5 || n > 256 || argv[1][0] != '/' || argv[3][0] != '/') {
		fprintf(stderr, "usage: " PROG " TREE FUSE_DEV ROOTFS /proc/sys/PATH... < state\n");
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
	if (!(state = read_state()) || (pid = state_pid(state)) < 0) {
		fprintf(stderr, PROG ": no container pid in the state on stdin\n");
		return 2;
	}

	treefd = open_strict(AT_FDCWD, argv[1], O_PATH | O_DIRECTORY, 0);
	if (treefd < 0 || fstat(treefd, &st) < 0 || st.st_dev != (dev_t)dev
	    || fs_magic(treefd) != FUSE_SUPER_MAGIC) {
		skip("/proc/sys", "the daemon's tree is not where it was", treefd < 0 ? errno : 0);
		return 0;
	}
	for (int i = 0; i < n; i++)
		failed |= (clones[i] = clone_source(treefd, (dev_t)dev, argv[4 + i], &srcs[i])) < 0;
	close(treefd);

	/* The runtime's child, waiting for it: a pidfd names it whatever happens to the
	 * number, and setns through it joins its namespaces at once. The child forked
	 * after it is in the container's pid namespace. */
	pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
	if (pidfd < 0 || setns(pidfd, CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) < 0) {
		skip("/proc/sys", "the container's namespaces", errno);
		return 0;
	}
	child = fork();
	if (child < 0) {
		skip("/proc/sys", "fork", errno);
		return 0;
	}
	if (child == 0)
		_exit(bind_all(argv[3], n, argv + 4, clones, srcs));
	while (waitpid(child, &status, 0) < 0)
		if (errno != EINTR) {
			skip("/proc/sys", "waitpid", errno);
			return 0;
		}
	if (failed || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fprintf(stderr, PROG ": the daemon binds what is left when it attaches the "
			"container\n");
	return 0;
}
