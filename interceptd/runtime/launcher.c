/*
 * interceptd-runc launcher: the part of the shim that runs on every runtime call.
 *
 * Docker/containerd call the runtime for every state, start, kill, ps...; a
 * Python interpreter per call would cost more than runc itself. This launcher
 * decides from the command line alone, with the tables of argv.py (rendered
 * into argv_table.h by launcher.py at build time):
 *   CMD_PASS   a command that cannot start a process from a config: exec the
 *              real runtime directly;
 *   CMD_SHIM   create, run, exec, delete: ask the prepare service
 *              (<state-dir>/runtime.sock, service.py) to do the rewrite, so no
 *              interpreter starts at all; without the service, the Python shim
 *              (isolated, without site: ~10 ms instead of ~40);
 *   CMD_REFUSE anything else, or anything it cannot parse: the Python shim,
 *              which refuses with the reason (stderr and the runtime's --log).
 *
 * The service's OK line may name a time namespace for the runtime (timens.py): the
 * runtime's child is put into it just before the exec (time_ns(), below).
 *
 * Build-time constants: INTERCEPTD_PYTHON (interpreter) and INTERCEPTD_PKGROOT
 * (the directory holding the interceptd package). INTERCEPTD_DECIDE_ONLY builds
 * a variant that prints its decision and exits (the parity test's).
 */
#define _GNU_SOURCE /* unshare, setns */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

#ifndef INTERCEPTD_PYTHON
#error "define INTERCEPTD_PYTHON"
#endif
#ifndef INTERCEPTD_PKGROOT
#error "define INTERCEPTD_PKGROOT"
#endif

#define DEFAULT_CONFIG "/etc/interceptd/interceptd.toml"
/*
 * Set to the pid of each process the shim turns into the real runtime (and to
 * "py:<pid>" for the Python shim it execs): a launcher that finds its own pid
 * there was started as the real runtime by the shim itself, a loop.
 */
#define GUARD_ENV "INTERCEPTD_RUNC_GUARD"

enum { CMD_PASS, CMD_SHIM, CMD_REFUSE };
struct global_opt {
	const char *name;
	int takes_value;
};
struct command {
	const char *name;
	int kind;
};
#include "argv_table.h"

static int in_list(const char *s, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(s, *list) == 0)
			return 1;
	return 0;
}

static int command_kind(const char *name)
{
	for (const struct command *c = commands; c->name; c++)
		if (strcmp(name, c->name) == 0)
			return c->kind;
	return CMD_REFUSE;
}

/* argv.py's decide(), from the same tables: the parity test holds them equal. */
static int decide(int argc, char **argv, const char **cmd)
{
	*cmd = NULL;
	if (argc == 1 || (argc == 2 && in_list(argv[1], info_args)))
		return CMD_PASS;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--") == 0) {
			if (i + 1 >= argc)
				return CMD_REFUSE;
			*cmd = argv[i + 1];
			return command_kind(*cmd);
		}
		if (a[0] != '-' || a[1] == '\0') {
			*cmd = a;
			return command_kind(a);
		}
		if (in_list(a, info_args))
			return CMD_REFUSE;
		const char *name = a + (a[1] == '-' ? 2 : 1);
		if (name[0] == '\0' || name[0] == '-' || name[0] == '=')
			return CMD_REFUSE;
		size_t n = strcspn(name, "=");
		const struct global_opt *o = global_options;
		while (o->name && !(strlen(o->name) == n && strncmp(o->name, name, n) == 0))
			o++;
		if (!o->name)
			return CMD_REFUSE;
		if (o->takes_value && name[n] == '\0') {
			if (i + 1 >= argc)
				return CMD_REFUSE;
			i++;
		}
	}
	return CMD_REFUSE;
}

/* Mark this process as one the shim turns into `what` (see GUARD_ENV). */
static void set_guard(const char *prefix)
{
	char v[48];
	snprintf(v, sizeof(v), "%s%ld", prefix, (long)getpid());
	if (setenv(GUARD_ENV, v, 1) < 0) {
		perror("interceptd-runc: setenv");
		_exit(1);
	}
}

/* `key = "..."` in table [section] of the config file (basic strings only). */
static char *config_value(const char *section, const char *key)
{
	const char *path = getenv("INTERCEPTD_CONFIG");
	FILE *f = fopen(path ? path : DEFAULT_CONFIG, "re");
	if (!f)
		return NULL;
	char line[4096], header[256], *found = NULL;
	size_t klen = strlen(key);
	int in_section = 0;
	snprintf(header, sizeof(header), "[%s]", section);
	while (!found && fgets(line, sizeof(line), f)) {
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '[') {
			in_section = strncmp(p, header, strlen(header)) == 0;
			continue;
		}
		if (!in_section || strncmp(p, key, klen) != 0)
			continue;
		p += klen;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p++ != '=')
			continue;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p++ != '"')
			continue;
		char *end = strchr(p, '"');
		if (end) {
			*end = '\0';
			found = strdup(p);
		}
	}
	fclose(f);
	return found;
}

static int run_python(int argc, char **argv)
{
	char **args = calloc((size_t)argc + 5, sizeof(char *));
	if (!args) {
		perror("interceptd-runc: calloc");
		return 1;
	}
	int n = 0;
	args[n++] = "interceptd-runc";
	args[n++] = "-I";
	args[n++] = "-S";
	args[n++] = "-c";
	args[n++] = "import sys; sys.path.insert(0, '" INTERCEPTD_PKGROOT "'); "
		    "sys.argv[0] = 'interceptd-runc'; "
		    "from interceptd.runtime.main import main; sys.exit(main())";
	for (int i = 1; i < argc; i++)
		args[n++] = argv[i];
	args[n] = NULL;
	set_guard("py:");
	execv(INTERCEPTD_PYTHON, args);
	fprintf(stderr, "interceptd-runc: cannot exec %s: %s\n", INTERCEPTD_PYTHON,
		strerror(errno));
	return 1;
}

/* ---------------------------------------------------------------- prepare service */

struct buf {
	char *p;
	size_t len, cap;
};

static int buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = (b->len + n + 1) * 2;
		char *p = realloc(b->p, cap);
		if (!p)
			return -1;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

static int buf_json_str(struct buf *b, const char *s)
{
	if (buf_add(b, "\"", 1))
		return -1;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			if (buf_add(b, esc, 2))
				return -1;
		} else if (c < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			if (buf_add(b, esc, 6))
				return -1;
		} else if (buf_add(b, (const char *)s, 1)) {
			return -1;
		}
	}
	return buf_add(b, "\"", 1);
}

static const char *state_dir(char **owned)
{
	const char *d = getenv("INTERCEPTD_STATE_DIR");
	if (d && *d)
		return d;
	if ((*owned = config_value("runtime", "state_dir")))
		return *owned;
	if ((*owned = config_value("daemon", "state_dir")))
		return *owned;
	return "/run/interceptd";
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Read until `want` NULs or a newline-terminated header have arrived. */
static ssize_t read_some(int fd, struct buf *b)
{
	char tmp[65536];
	ssize_t r;
	do
		r = read(fd, tmp, sizeof(tmp));
	while (r < 0 && errno == EINTR);
	if (r > 0 && buf_add(b, tmp, (size_t)r))
		return -1;
	return r;
}

/* The value of flag `name` (--name V, --name=V, -name V, -name=V) in args, or NULL. */
static const char *flag_value(char **args, const char *name)
{
	size_t n = strlen(name);
	for (int i = 0; args[i]; i++) {
		const char *a = args[i];
		if (a[0] != '-')
			continue;
		a += a[1] == '-' ? 2 : 1;
		if (strncmp(a, name, n) != 0)
			continue;
		if (a[n] == '=')
			return a + n + 1;
		if (a[n] == '\0')
			return args[i + 1];
	}
	return NULL;
}

/* pid's path in the cgroup v2 hierarchy into out ("" if none); 0 if unreadable. */
static int cgroup2_of(const char *pid, char *out, size_t cap)
{
	char path[64], line[4096];
	snprintf(path, sizeof(path), "/proc/%s/cgroup", pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	out[0] = '\0';
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "0::", 3) == 0) {
			line[strcspn(line, "\n")] = '\0';
			snprintf(out, cap, "%s", line + 3);
			break;
		}
	}
	fclose(f);
	return 1;
}

/*
 * After a successful create: does the container's init already sit in a cgroup v2
 * node of its own (runc does that on hybrid hosts): not the root, and not ours,
 * which it would have inherited? Then the service has nothing left to do and we
 * need not wait for it. Any doubt: 0, and the service checks.
 */
static int init_in_own_cgroup2(char **args)
{
	const char *pid_file = flag_value(args, "pid-file");
	if (!pid_file)
		return 0;
	FILE *f = fopen(pid_file, "re");
	if (!f)
		return 0;
	long pid = 0;
	int ok = fscanf(f, "%ld", &pid) == 1 && pid > 0;
	fclose(f);
	if (!ok)
		return 0;
	char init_pid[32], init_cg[4096], own_cg[4096];
	snprintf(init_pid, sizeof(init_pid), "%ld", pid);
	if (!cgroup2_of(init_pid, init_cg, sizeof(init_cg)) ||
	    !cgroup2_of("self", own_cg, sizeof(own_cg)))
		return 0;
	int placed = init_cg[0] == '/' && init_cg[1] != '\0' && strcmp(init_cg, own_cg) != 0;
	return placed;
}

/*
 * Time namespaces (timens.py has the why): create/run get one of their own, made by
 * this (single-threaded) child before it execs the runtime, so the runtime, runc init
 * and the container are all in it (execve moves the caller into time_for_children).
 * Its monotonic and boot clocks start at the fraction of a second the host's are past
 * a whole second. It is pinned (a bind mount of the nsfs file) where every later
 * runtime command on the container joins it: runc and crun check an init's start time,
 * which the kernel shows relative to the reader's time namespace, against the one they
 * read at create, inside it.
 */
static int pin_time_ns(const char *path)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		return -1;
	*slash = '\0';
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return -1;
	for (int i = 0; i < 16 && umount2(path, MNT_DETACH) == 0; i++)
		; /* whatever a killed create of the same id left there */
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -1;
	close(fd);
	if (mount("/proc/self/ns/time_for_children", path, NULL, MS_BIND, NULL) < 0) {
		int e = errno;
		unlink(path); /* a plain file there would fail every later join */
		errno = e;
		return -1;
	}
	return 0;
}

/* A kernel without CONFIG_TIME_NS (EINVAL) keeps today's behaviour; so does any other
 * refusal, with a warning. */
static int time_ns_new(const char *pin)
{
	struct timespec mono, boot;
	char buf[96];
	int own = open("/proc/self/ns/time", O_RDONLY | O_CLOEXEC);
	if (own < 0)
		return 0; /* no time namespaces */
	if (unshare(CLONE_NEWTIME) < 0) {
		if (errno != EINVAL)
			fprintf(stderr, "interceptd-runc: warning: no time namespace: unshare: %s\n",
				strerror(errno));
		close(own);
		return 0;
	}
	/* Whole seconds: the kernel refuses an offset that makes a clock negative. */
	int fd = -1, ok = clock_gettime(CLOCK_MONOTONIC, &mono) == 0 &&
			  clock_gettime(CLOCK_BOOTTIME, &boot) == 0;
	if (ok) {
		int n = snprintf(buf, sizeof(buf), "monotonic -%lld 0\nboottime -%lld 0\n",
				 (long long)mono.tv_sec, (long long)boot.tv_sec);
		fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
		ok = fd >= 0 && write_all(fd, buf, (size_t)n) == 0 && pin_time_ns(pin) == 0;
	}
	if (fd >= 0)
		close(fd);
	if (!ok) {
		/* Back to our own: a namespace later commands cannot find would make the
		 * runtime lose the container. */
		fprintf(stderr, "interceptd-runc: warning: no time namespace: %s\n",
			strerror(errno));
		if (setns(own, CLONE_NEWTIME) < 0) {
			perror("interceptd-runc: setns back to the host's time namespace");
			close(own);
			return -1;
		}
	}
	close(own);
	return 0;
}

/* Join the pinned namespace at `pin`, if any. setns(CLONE_NEWTIME) wants a
 * single-threaded caller: this process is. Fails closed: the runtime would take the
 * container for stopped. */
static int time_ns_join(const char *pin)
{
	int fd = open(pin, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : -1; /* no pin: a container without one */
	struct stat theirs, ours;
	int rc = -1;
	if (fstat(fd, &theirs) == 0 && stat("/proc/self/ns/time", &ours) == 0)
		rc = theirs.st_ino == ours.st_ino && theirs.st_dev == ours.st_dev ? 0
			: setns(fd, CLONE_NEWTIME);
	close(fd);
	return rc;
}

/* The "timens=" word of the service's OK line (the rest of the line), applied in the
 * runtime's child. */
static int time_ns(const char *header)
{
	const char *t = strstr(header, " timens=");
	if (!t)
		return 0;
	t += 8;
	if (strncmp(t, "new:", 4) == 0)
		return time_ns_new(t + 4);
	if (strncmp(t, "join:", 5) == 0 && time_ns_join(t + 5) == 0)
		return 0;
	fprintf(stderr, "interceptd-runc: cannot join the container's time namespace (%s): %s\n",
		t, strerror(errno));
	return -1;
}

/* zlib's crc32, as records.container_key uses it. */
static unsigned long crc32_of(const char *s)
{
	unsigned long c = 0xffffffffUL;
	for (; *s; s++) {
		c ^= (unsigned char)*s;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0xedb88320UL : c >> 1;
	}
	return c ^ 0xffffffffUL;
}

/*
 * A pass-through command naming a container the shim gave a time namespace (state,
 * start, kill, ...): join it first. The id is the first operand after the command
 * whose pin exists (timens.pin_path: <state-dir>/runtime/timens/<records key>).
 */
static int join_named(int argc, char **argv, const char *cmd)
{
	int i = 1;
	while (i < argc && argv[i] != cmd)
		i++;
	const char *root = flag_value(argv, "root");
	char *owned = NULL;
	const char *dir = state_dir(&owned);
	int rc = 0;
	for (i++; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] == '-' || strlen(a) > 1024)
			continue;
		char safe[129], pin[PATH_MAX];
		size_t n = 0;
		for (; a[n] && n < 128; n++) {
			unsigned char c = (unsigned char)a[n];
			int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
				 (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
			safe[n] = ok ? (char)c : '_';
		}
		safe[n] = '\0';
		if ((size_t)snprintf(pin, sizeof(pin), "%s/runtime/timens/%s.%08lx", dir, safe,
				     crc32_of(root ? root : "")) >= sizeof(pin))
			continue;
		struct stat st;
		if (lstat(pin, &st) < 0)
			continue;
		rc = time_ns_join(pin);
		if (rc < 0)
			fprintf(stderr, "interceptd-runc: cannot join the time namespace of %s: %s\n",
				a, strerror(errno));
		break;
	}
	free(owned);
	return rc;
}

static volatile pid_t child_pid;

static void relay(int sig)
{
	if (child_pid > 0)
		kill(child_pid, sig);
}

/*
 * Returns -1 when the service is not usable (the caller falls back to Python);
 * otherwise the exit status to exit with.
 */
static int via_service(int argc, char **argv, const char *cmd)
{
	char *owned = NULL;
	const char *dir = state_dir(&owned);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if ((size_t)snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/runtime.sock", dir) >=
	    sizeof(sa.sun_path)) {
		free(owned);
		return -1;
	}
	free(owned);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	struct buf req = {0};
	char cwd[4096];
	if (!getcwd(cwd, sizeof(cwd)))
		goto fallback;
	static const char *const env_keys[] = {
		"INTERCEPTD_RUNTIME", "INTERCEPTD_STATE_DIR", "INTERCEPTD_CONFIG", NULL,
	};
	int bad = buf_add(&req, "{\"argv\":[", 9);
	for (int i = 1; i < argc; i++) {
		if (i > 1)
			bad |= buf_add(&req, ",", 1);
		bad |= buf_json_str(&req, argv[i]);
	}
	bad |= buf_add(&req, "],\"cwd\":", 8);
	bad |= buf_json_str(&req, cwd);
	bad |= buf_add(&req, ",\"env\":{", 8);
	int first = 1;
	for (int i = 0; env_keys[i]; i++) {
		const char *v = getenv(env_keys[i]);
		if (!v)
			continue;
		if (!first)
			bad |= buf_add(&req, ",", 1);
		first = 0;
		bad |= buf_json_str(&req, env_keys[i]);
		bad |= buf_add(&req, ":", 1);
		bad |= buf_json_str(&req, v);
	}
	bad |= buf_add(&req, "}}\n", 3);
	if (bad || write_all(fd, req.p, req.len) < 0)
		goto fallback;
	free(req.p);
	req = (struct buf){0};

	/* The header line, then (for OK) n NUL-terminated strings. */
	struct buf in = {0};
	char *nl;
	while (!(in.p && (nl = memchr(in.p, '\n', in.len))))
		if (read_some(fd, &in) <= 0)
			goto fallback_in;
	if (strncmp(in.p, "FALLBACK", 8) == 0)
		goto fallback_in;
	if (strncmp(in.p, "ERR ", 4) == 0) {
		*nl = '\0';
		fprintf(stderr, "interceptd-runc: %s\n", in.p + 4);
		free(in.p);
		close(fd);
		return 1;
	}
	if (strncmp(in.p, "OK ", 3) != 0)
		goto fallback_in;
	long n = strtol(in.p + 3, NULL, 10);
	if (n < 2 || n > 100000)
		goto fallback_in;
	size_t start = (size_t)(nl - in.p) + 1;
	char header[PATH_MAX + 64];
	snprintf(header, sizeof(header), "%.*s", (int)(nl - in.p), in.p);
	for (;;) {
		long nuls = 0;
		for (size_t i = start; i < in.len; i++)
			nuls += in.p[i] == '\0';
		if (nuls >= n)
			break;
		if (read_some(fd, &in) <= 0)
			goto fallback_in;
	}
	char **args = calloc((size_t)n + 1, sizeof(char *)); /* NULL-terminated for execv */
	if (!args)
		goto fallback_in;
	char *p = in.p + start;
	for (long i = 0; i < n; i++) {
		args[i] = p;
		p += strlen(p) + 1;
	}
	/* args[0] is the runtime's path, args[1..] its argv. */
	child_pid = fork();
	if (child_pid < 0) {
		perror("interceptd-runc: fork");
		return 1;
	}
	if (child_pid == 0) {
		if (time_ns(header) < 0)
			_exit(1);
		set_guard("");
		execv(args[0], args + 1);
		fprintf(stderr, "interceptd-runc: cannot exec %s: %s\n", args[0], strerror(errno));
		_exit(127);
	}
	static const int relayed[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
				      SIGWINCH, 0};
	struct sigaction act = {.sa_handler = relay};
	sigemptyset(&act.sa_mask);
	for (int i = 0; relayed[i]; i++)
		sigaction(relayed[i], &act, NULL);
	int status = 0;
	while (waitpid(child_pid, &status, 0) < 0 && errno == EINTR)
		;
	int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	/* A create whose init is placed already needs no finish: the caller can go on. */
	int placed = rc == 0 && strcmp(cmd, "create") == 0 && init_in_own_cgroup2(args + 1);
	char msg[32];
	int len = snprintf(msg, sizeof(msg), "RC %d%s\n", rc, placed ? " placed" : "");
	/* Otherwise the service finishes (rollback, cgroup, teardown) before we report. */
	if (write_all(fd, msg, (size_t)len) == 0 && !placed) {
		struct buf done = {0};
		while (!(done.p && memchr(done.p, '\n', done.len)))
			if (read_some(fd, &done) <= 0)
				break;
		free(done.p);
	}
	close(fd);
	return rc;

fallback_in:
	free(in.p);
fallback:
	free(req.p);
	close(fd);
	return -1;
}

/* Is path this very launcher (or a link to it)? */
static int is_self(const char *path)
{
	struct stat me, it;
	if (stat("/proc/self/exe", &me) < 0 || stat(path, &it) < 0)
		return 0;
	return me.st_dev == it.st_dev && me.st_ino == it.st_ino;
}

/* Exec the real runtime for a pass-through command; returns only on failure. */
static int exec_runtime(char **argv)
{
	const char *rt = getenv("INTERCEPTD_RUNTIME");
	char *from_cfg = NULL;
	if (!rt || !*rt)
		rt = from_cfg = config_value("runtime", "runtime");
	if (!rt || !*rt)
		rt = "runc";
	const char *base = strrchr(rt, '/');
	argv[0] = (char *)(base ? base + 1 : rt);
	set_guard("");
	if (strchr(rt, '/')) {
		/* A runtime that is this launcher would exec itself forever. */
		if (is_self(rt)) {
			fprintf(stderr, "interceptd-runc: real runtime %s is interceptd-runc itself\n",
				rt);
			free(from_cfg);
			return 1;
		}
		execv(rt, argv);
		fprintf(stderr, "interceptd-runc: cannot exec real runtime %s: %s\n", rt,
			strerror(errno));
		free(from_cfg);
		return 1;
	}
	/*
	 * A bare name: PATH, then the sbin directories containerd's PATH may lack,
	 * skipping this launcher, which a set-up puts first in dockerd's and
	 * containerd's PATH as `runc` (packaging/systemd).
	 */
	static const char *const fallback = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	const char *env_path = getenv("PATH");
	size_t len = (env_path ? strlen(env_path) : 0) + strlen(fallback) + 2;
	char *dirs = malloc(len), path[PATH_MAX];
	if (!dirs) {
		perror("interceptd-runc: malloc");
		return 1;
	}
	snprintf(dirs, len, "%s:%s", env_path ? env_path : "", fallback);
	for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
		if (d[0] != '/')
			continue; /* a relative PATH entry depends on the caller's cwd */
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", d, rt) >= sizeof(path))
			continue;
		if (access(path, X_OK) != 0 || is_self(path))
			continue;
		execv(path, argv);
	}
	free(dirs);
	fprintf(stderr, "interceptd-runc: real runtime %s not found (interceptd-runc itself "
		"skipped)\n", rt);
	free(from_cfg);
	return 1;
}

int main(int argc, char **argv)
{
	const char *cmd;
	int kind = decide(argc, argv, &cmd);
#ifdef INTERCEPTD_DECIDE_ONLY
	printf("%s\n", kind == CMD_PASS ? "pass" : kind == CMD_SHIM ? "shim" : "refuse");
	return 0;
#endif
	const char *guard = getenv(GUARD_ENV);
	char mine[32];
	snprintf(mine, sizeof(mine), "%ld", (long)getpid());
	if (guard && strcmp(guard, mine) == 0) {
		fprintf(stderr, "interceptd-runc: refusing to run as its own real runtime "
			"(the real runtime resolves to interceptd-runc; set [runtime] runtime "
			"to the path of runc or crun)\n");
		return 1;
	}
	if (kind == CMD_PASS) {
		if (cmd && join_named(argc, argv, cmd) < 0)
			return 1;
		return exec_runtime(argv);
	}
	const char *no_service = getenv("INTERCEPTD_RUNC_NO_SERVICE");
	if (kind == CMD_SHIM && !(no_service && *no_service)) {
		int rc = via_service(argc, argv, cmd);
		if (rc >= 0)
			return rc;
	}
	/* The shim, or its refusal with the reason. */
	return run_python(argc, argv);
}
