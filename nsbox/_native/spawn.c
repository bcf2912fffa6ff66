/*
 * Process creation for nsbox: clone a child into new and/or joined
 * namespaces and exec a program in it, with no Python code (and nothing that
 * is not async-signal-safe) between clone and exec.  Modelled on CPython's
 * _posixsubprocess: the parent prepares everything, the child only makes
 * system calls and reports a failure as (step, errno) over a CLOEXEC pipe.
 *
 * The child is cloned with CLONE_VM on its own small stack (no page-table
 * copy, so the cost does not grow with the caller's memory) and CLONE_PIDFD
 * (the caller gets a handle, not just a reusable PID).  Joining a PID
 * namespace changes the namespace of the *children* of the calling thread,
 * so that setns is done around the clone and undone right after.
 *
 * Except when the child changes its credentials (uid, gid, groups): then it
 * gets a copy of the caller's memory instead (no CLONE_VM), for the reason
 * CPython refuses vfork() then (bpo-35823).  Credentials belong to the
 * task, but the "dumpable" flag belongs to the memory: a child changing its
 * euid while sharing the caller's mm would make the *caller* non-dumpable
 * for good (no core dumps, /proc/PID owned by root, no ptrace by its user),
 * and a child running as another user on the caller's memory is one more
 * process that could be used to reach into it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <linux/kcmp.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fds.h"
#include "nsbox.h"

#define CHILD_STACK_SIZE (256 * 1024)
#define RELOCATE_MIN_FD 10
#define LOW_FD_LIMIT 64     /* source fds above this are passed as low duplicates */

/* What the child writes when a step fails. */
struct child_error {
	char tag;          /* 'E': the first byte the parent reads */
	char pad[3];
	int stage;         /* enum nsbox_stage */
	int err;
};

struct spawn_ctx {
	const struct nsbox_spawn_req *req;   /* the caller keeps it alive until finish */
	int status_wr;     /* child -> parent, CLOEXEC */
	int sync_rd;       /* parent -> child "maps written", or -1 */
	int sync_wr;       /* the parent's end: the child must close its copy */
	int keep_below;    /* every fd the child needs is below this */
	int close_range;   /* close_range(2) works here: see "errno" below */
	int join_fd;       /* r->join_pidfd, or a low duplicate of it */
	int extra_fd_src[2];  /* r->extra_fd_src[i], or a low duplicate of it */
};

int nsbox_pidfd_open(int pid, unsigned int flags)
{
	return (int)syscall(SYS_pidfd_open, pid, flags);
}

int nsbox_pidfd_getfd(int pidfd, int targetfd)
{
	return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, 0);
}

int nsbox_pidfd_send_signal(int pidfd, int sig)
{
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int nsbox_setns(int fd, int nstype)
{
	return setns(fd, nstype);
}

int nsbox_unshare(int flags)
{
	return unshare(flags);
}

int nsbox_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
		const char *data)
{
	return mount(source, target, fstype, flags, data);
}

int nsbox_umount2(const char *target, int flags)
{
	return umount2(target, flags);
}

/* The new mount API, by syscall number (glibc's wrappers are recent). */
int nsbox_open_tree(int dfd, const char *path, unsigned int flags)
{
	return (int)syscall(SYS_open_tree, dfd, path, flags);
}

int nsbox_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path,
		     unsigned int flags)
{
	return (int)syscall(SYS_move_mount, from_dfd, from_path, to_dfd, to_path, flags);
}

int nsbox_pivot_root(const char *new_root, const char *put_old)
{
	return (int)syscall(SYS_pivot_root, new_root, put_old);
}

struct netns_socket_args {
	int nsfd, domain, type, protocol;
	int fd, err;
};

static void *netns_socket_thread(void *arg)
{
	struct netns_socket_args *a = arg;

	if (setns(a->nsfd, CLONE_NEWNET) < 0) {
		a->err = errno;
		return NULL;
	}
	a->fd = socket(a->domain, a->type | SOCK_CLOEXEC, a->protocol);
	if (a->fd < 0)
		a->err = errno;
	return NULL;
}

/*
 * A socket in the network namespace nsfd.  A socket belongs to the
 * namespace of the thread that creates it.  The calling thread enters the
 * namespace, creates the socket and returns, all inside this one call with
 * every signal blocked, so no other code ever runs on it in the wrong
 * namespace (and no thread is made: see docs/performance.md).  Only when it
 * could not come back (it lacks CAP_SYS_ADMIN over its own namespace, which
 * is checked first) does a helper thread do it instead.
 */
int nsbox_socket_in_netns(int nsfd, int domain, int type, int protocol)
{
	struct netns_socket_args a = {nsfd, domain, type, protocol, -1, 0};
	sigset_t all, old;
	pthread_t t;
	int self, e;

	self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (self >= 0) {
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		if (setns(self, CLONE_NEWNET) == 0) {    /* can we come back? */
			if (setns(nsfd, CLONE_NEWNET) < 0) {
				a.err = errno;
			} else {
				a.fd = socket(domain, type | SOCK_CLOEXEC, protocol);
				a.err = errno;
				if (setns(self, CLONE_NEWNET) < 0) {
					/* Checked above, so it cannot happen; if it did, this
					 * thread would go on in the pod's namespace. */
					static const char msg[] = "nsbox: cannot return to the thread's network namespace\n";
					if (write(2, msg, sizeof(msg) - 1) < 0) { /* nothing more to do */ }
					abort();
				}
			}
			pthread_sigmask(SIG_SETMASK, &old, NULL);
			close(self);
			if (a.fd < 0)
				errno = a.err;
			return a.fd;
		}
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		close(self);
	}
	e = pthread_create(&t, NULL, netns_socket_thread, &a);
	if (e) {
		errno = e;
		return -1;
	}
	pthread_join(t, NULL);
	if (a.fd < 0)
		errno = a.err;
	return a.fd;
}

/* ---- child side: async-signal-safe only ------------------------------- */

/*
 * errno.  The child is cloned with CLONE_VM and no TLS of its own, so its
 * errno *is* the calling thread's.  With nsbox_spawn_begin() that thread
 * runs (Python) while the child sets up: on its success path the child must
 * therefore make no call that fails (a failed call writes errno, and, say,
 * os.listdir() in the caller then sees a readdir() error that never was).
 * On a failure path it writes errno and exits; the caller then gets that
 * failure from nsbox_spawn_finish(), which supersedes whatever it was doing.
 * (So the parent finds out whether close_range() works, and the child never
 * tries a call that may fail merely to learn it.)
 * (nsbox_spawn() itself waits for the exec: its PATH search may fail freely.)
 */

static void child_fail(int status_wr, enum nsbox_stage stage, int err)
{
	struct child_error e;

	memset(&e, 0, sizeof(e));
	e.tag = 'E';
	e.stage = stage;
	e.err = err;
	while (write(status_wr, &e, sizeof(e)) < 0 && errno == EINTR)
		;
	_exit(127);
}

static int loopback_up(void)
{
	struct ifreq ifr;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (s < 0)
		return -1;
	memset(&ifr, 0, sizeof(ifr));
	memcpy(ifr.ifr_name, "lo", 3);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		goto fail;
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		goto fail;
	close(s);
	return 0;
fail:
	{
		int e = errno;
		close(s);
		errno = e;
	}
	return -1;
}

/*
 * Set one signal to SIG_DFL.  The raw system call, because glibc's
 * sigaction() refuses its internal signals (32, 33), and an inherited SIG_IGN
 * on those must not reach the new program either.
 */
static void reset_signal(int sig)
{
#if defined(__x86_64__) || defined(__aarch64__)
	struct {
		void (*handler)(int);
		unsigned long flags;
		void (*restorer)(void);
		unsigned long mask;
	} ksa;
	memset(&ksa, 0, sizeof(ksa));
	ksa.handler = SIG_DFL;
	syscall(SYS_rt_sigaction, sig, &ksa, NULL, sizeof(ksa.mask)); /* EINVAL for KILL/STOP */
#else
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	sigaction(sig, &sa, NULL);
#endif
}

/* Sort the few extra fds the child keeps (insertion sort: no allocation). */
static void sort_fds(int *fds, int n)
{
	for (int a = 1; a < n; a++)
		for (int b = a; b > 0 && fds[b - 1] > fds[b]; b--) {
			int t = fds[b];

			fds[b] = fds[b - 1];
			fds[b - 1] = t;
		}
}

static int child_main(void *arg)
{
	struct spawn_ctx *ctx = arg;
	const struct nsbox_spawn_req *r = ctx->req;
	int st = ctx->status_wr;
	int tmp[3] = {-1, -1, -1}, extra_tmp[2] = {-1, -1}, life_tmp[2] = {-1, -1};
	int extras[5], n_extras = 0;
	int saved_errno = 0;
	sigset_t empty;

	/*
	 * With share_fds we were cloned with CLONE_FILES: no copy of a huge fd
	 * table (a process with 1000 pods holds 1000 pidfds).  Take a private table
	 * holding only the fds below keep_below (all we need) before touching
	 * any fd, then tell the parent, which may then close its ends.
	 */
	if (r->share_fds) {
		if (ctx->close_range) {
			if (syscall(SYS_close_range, (unsigned int)ctx->keep_below, ~0U, CLOSE_RANGE_UNSHARE) < 0)
				child_fail(st, NSBOX_STAGE_UNSHARE_FD_TABLE, errno);
		} else if (unshare(CLONE_FILES) < 0) {
			child_fail(st, NSBOX_STAGE_UNSHARE_FD_TABLE, errno);
		}
		while (write(st, "U", 1) < 0 && errno == EINTR)
			;
	}

	/* Wait until the parent has written the user namespace maps. */
	if (ctx->sync_rd >= 0) {
		char c;
		ssize_t n;
		/* Our copy of the write end would keep us from seeing EOF if the
		 * parent dies before it releases us. */
		close(ctx->sync_wr);
		do
			n = read(ctx->sync_rd, &c, 1);
		while (n < 0 && errno == EINTR);
		if (n != 1)
			child_fail(st, NSBOX_STAGE_WAIT_ID_MAPS, n < 0 ? errno : EPIPE);
		close(ctx->sync_rd);
	}

	if (ctx->join_fd >= 0 && (r->join_flags & ~CLONE_NEWPID)) {
		if (setns(ctx->join_fd, r->join_flags & ~CLONE_NEWPID) < 0)
			child_fail(st, NSBOX_STAGE_SETNS, errno);
	}
	if (r->new_flags & CLONE_NEWNS) {
		/* Keep our mounts from propagating back to the host. */
		if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
			child_fail(st, NSBOX_STAGE_MAKE_ROOT_PRIVATE, errno);
		if (r->mount_proc &&
			mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
			child_fail(st, NSBOX_STAGE_MOUNT_PROC, errno);
	}
	if (r->hostname && sethostname(r->hostname, strlen(r->hostname)) < 0)
		child_fail(st, NSBOX_STAGE_SETHOSTNAME, errno);
	if (r->loopback_up && loopback_up() < 0)
		child_fail(st, NSBOX_STAGE_LOOPBACK_UP, errno);

	/*
	 * File descriptors.  Move every source above the targets first, so that
	 * installing one target can never clobber another source.
	 */
	if (st < RELOCATE_MIN_FD) {
		int fd = fcntl(st, F_DUPFD_CLOEXEC, RELOCATE_MIN_FD);
		if (fd < 0)
			child_fail(st, NSBOX_STAGE_RELOCATE_STATUS_FD, errno);
		st = fd;
	}
	for (int i = 0; i < 3; i++) {
		if (r->null_stdio & (1 << i)) {
			if (tmp[0] >= 0 && (r->null_stdio & 1))  /* one /dev/null serves all */
				tmp[i] = tmp[0];
			else if (tmp[1] >= 0 && (r->null_stdio & 2))
				tmp[i] = tmp[1];
			else if ((tmp[i] = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0)
				child_fail(st, NSBOX_STAGE_OPEN_DEVNULL, errno);
			else if (tmp[i] < RELOCATE_MIN_FD) {
				int fd = fcntl(tmp[i], F_DUPFD_CLOEXEC, RELOCATE_MIN_FD);
				if (fd < 0)
					child_fail(st, NSBOX_STAGE_OPEN_DEVNULL, errno);
				close(tmp[i]);
				tmp[i] = fd;
			}
		} else if (r->stdio[i] >= 0 &&
				   (tmp[i] = fcntl(r->stdio[i], F_DUPFD_CLOEXEC, RELOCATE_MIN_FD)) < 0) {
			child_fail(st, NSBOX_STAGE_DUP_STDIO, errno);
		}
	}
	for (int i = 0; i < 2; i++)
		if (ctx->extra_fd_src[i] >= 0 &&
		    (extra_tmp[i] = fcntl(ctx->extra_fd_src[i], F_DUPFD_CLOEXEC, RELOCATE_MIN_FD)) < 0)
			child_fail(st, NSBOX_STAGE_DUP_FD, errno);
	/* The lifeline: a pipe of the child's own, both ends kept across exec
	 * (write end at lifeline_fd, read end at lifeline_fd + 1).  Only the
	 * program holds the write end, so a read end polls EOF as soon as it
	 * starts to exit; the parent takes a copy of the read end if and when
	 * it needs one (pidfd_getfd), and no copy of the write end can ever
	 * leak into a process forked meanwhile. */
	if (r->lifeline_fd >= 0) {
		int p[2];

		if (pipe2(p, O_CLOEXEC) < 0)
			child_fail(st, NSBOX_STAGE_PIPE, errno);
		for (int i = 0; i < 2; i++) {
			if ((life_tmp[i] = fcntl(p[i], F_DUPFD_CLOEXEC, RELOCATE_MIN_FD)) < 0)
				child_fail(st, NSBOX_STAGE_PIPE, errno);
			close(p[i]);
		}
	}
	for (int i = 0; i < 3; i++)
		if (tmp[i] >= 0 && dup2(tmp[i], i) < 0)
			child_fail(st, NSBOX_STAGE_INSTALL_STDIO, errno);
	for (int i = 0; i < 2; i++) {
		if (extra_tmp[i] < 0)
			continue;
		if (dup2(extra_tmp[i], r->extra_fd_dst[i]) < 0)
			child_fail(st, NSBOX_STAGE_INSTALL_FD, errno);
		extras[n_extras++] = r->extra_fd_dst[i];
	}
	if (r->lifeline_fd >= 0) {
		if (dup2(life_tmp[1], r->lifeline_fd) < 0 || dup2(life_tmp[0], r->lifeline_fd + 1) < 0)
			child_fail(st, NSBOX_STAGE_INSTALL_FD, errno);
		extras[n_extras++] = r->lifeline_fd;
		extras[n_extras++] = r->lifeline_fd + 1;
	}
	extras[n_extras++] = st;   /* CLOEXEC: gone at exec, needed until then */
	for (int i = 0; i < r->n_keep; i++)
		if (r->keep_fds[i] >= 3 && fcntl(r->keep_fds[i], F_SETFD, 0) < 0)
			child_fail(st, NSBOX_STAGE_PASS_FDS, errno);
	sort_fds(extras, n_extras);
	if (nsbox_close_fds_except(r->keep_fds, r->n_keep, extras, n_extras, ctx->close_range) < 0)
		child_fail(st, NSBOX_STAGE_CLOSE_FDS, errno);

	if (r->cwd && chdir(r->cwd) < 0)
		child_fail(st, NSBOX_STAGE_CHDIR, errno);
	if (r->umask >= 0)
		umask((mode_t)r->umask);
	if (r->setsid && setsid() < 0)
		child_fail(st, NSBOX_STAGE_SETSID, errno);
	if (r->pgid >= 0 && setpgid(0, r->pgid) < 0)
		child_fail(st, NSBOX_STAGE_SETPGID, errno);
	/*
	 * Raw system calls: glibc's wrappers broadcast the change with signals
	 * to every thread they believe this process has -- the parent's, whose
	 * memory (or a copy of it: a child that changes credentials is cloned
	 * without CLONE_VM) we run on.
	 */
	if (r->n_groups >= 0 && syscall(SYS_setgroups, (size_t)r->n_groups, (const gid_t *)r->groups) < 0)
		child_fail(st, NSBOX_STAGE_SETGROUPS, errno);
	if (r->gid >= 0 && syscall(SYS_setresgid, (gid_t)r->gid, (gid_t)r->gid, (gid_t)r->gid) < 0)
		child_fail(st, NSBOX_STAGE_SETGID, errno);
	if (r->uid >= 0 && syscall(SYS_setresuid, (uid_t)r->uid, (uid_t)r->uid, (uid_t)r->uid) < 0)
		child_fail(st, NSBOX_STAGE_SETUID, errno);

	/* A clean signal state: default dispositions, nothing blocked -- except
	 * for a program that asked to start with everything blocked (the holder:
	 * a signal sent before it routes them to its signalfd stays pending). */
	for (int sig = 1; sig < _NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)  /* EINVAL: see "errno" above */
			reset_signal(sig);
	if (!r->keep_signals_blocked) {
		sigemptyset(&empty);
		sigprocmask(SIG_SETMASK, &empty, NULL);
	} else {
		/* Every signal, the C library's own included (its sigfillset()
		 * leaves them out): none may kill the program before it takes
		 * them over.  Raw, for the reason above. */
		sigset_t all;

		memset(&all, 0xff, sizeof(all));
		syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, NULL, (size_t)(_NSIG - 1) / 8);
	}

	for (const char *const *p = r->exec_paths; *p; p++) {
		if (r->envp)
			execve(*p, r->argv, r->envp);
		else
			execv(*p, r->argv);
		if (errno != ENOENT && errno != ENOTDIR && saved_errno == 0)
			saved_errno = errno;
	}
	child_fail(st, NSBOX_STAGE_EXEC, saved_errno ? saved_errno : errno);
	return 127;
}

/* ---- parent side ------------------------------------------------------- */

static int keep_below(const struct nsbox_spawn_req *r, const struct spawn_ctx *ctx, int status_wr,
					  const int *sync)
{
	int m = status_wr;

#define KEEP(fd) do { if ((fd) > m) m = (fd); } while (0)
	KEEP(sync[0]);
	KEEP(sync[1]);
	for (int i = 0; i < 3; i++)
		KEEP(r->stdio[i]);
	KEEP(ctx->extra_fd_src[0]);
	KEEP(ctx->extra_fd_src[1]);
	KEEP(ctx->join_fd);
	for (int i = 0; i < r->n_keep; i++)
		KEEP(r->keep_fds[i]);
#undef KEEP
	return m + 1 < 3 ? 3 : m + 1;
}

static int write_file(const char *path, const char *data)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	size_t len = strlen(data);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, data, len);
	if (n < 0 || (size_t)n != len) {
		int e = n < 0 ? errno : EIO;
		close(fd);
		errno = e;
		return -1;
	}
	return close(fd);
}

static void set_error(struct nsbox_spawn_result *res, enum nsbox_stage stage, int err)
{
	res->stage = stage;
	res->err = err;
}

static int write_id_maps(const struct nsbox_spawn_req *r, pid_t pid, struct nsbox_spawn_result *res)
{
	char path[64];

	if (r->gid_map) {
		snprintf(path, sizeof(path), "/proc/%d/gid_map", (int)pid);
		if (write_file(path, r->gid_map) < 0) {
			/* Without CAP_SETGID the kernel takes a gid_map only once
			 * setgroups() is disabled in the new namespace: do that, retry. */
			char sg[64];
			int e = errno;
			snprintf(sg, sizeof(sg), "/proc/%d/setgroups", (int)pid);
			if (e != EPERM || write_file(sg, "deny") < 0 || write_file(path, r->gid_map) < 0) {
				set_error(res, NSBOX_STAGE_WRITE_GID_MAP, e);
				return -1;
			}
		}
	}
	if (r->uid_map) {
		snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pid);
		if (write_file(path, r->uid_map) < 0) {
			set_error(res, NSBOX_STAGE_WRITE_UID_MAP, errno);
			return -1;
		}
	}
	return 0;
}

/* Kill and reap a child that failed before it became the caller's to manage. */
static void discard_child(pid_t pid, int pidfd)
{
	if (pidfd >= 0)
		nsbox_pidfd_send_signal(pidfd, SIGKILL);
	while (waitpid(pid, NULL, __WALL) < 0 && errno == EINTR)
		;
	if (pidfd >= 0)
		close(pidfd);
}

/* Read an error record (its first byte, if given, is already read). */
static void read_child_error(int fd, struct nsbox_spawn_result *res, size_t got, int fallback)
{
	struct child_error e;

	e.tag = 'E';
	while (got < sizeof(e)) {
		ssize_t m = read(fd, (char *)&e + got, sizeof(e) - got);
		if (m < 0 && errno == EINTR)
			continue;
		if (m <= 0)
			break;
		got += (size_t)m;
	}
	if (got == sizeof(e) && e.tag == 'E') {
		set_error(res, (enum nsbox_stage)e.stage, e.err);
	} else {
		set_error(res, NSBOX_STAGE_READ_STATUS, fallback);
	}
}

/* Undo a begun spawn: the child must be gone before its stack is unmapped. */
static void abandon(struct nsbox_spawn_pending *p)
{
	discard_child(p->pid, p->pidfd);
	if (p->stack)
		munmap(p->stack, CHILD_STACK_SIZE);
	close(p->status_rd);
	p->status_rd = p->pidfd = p->pid = -1;
	p->stack = NULL;
}

static int do_spawn_begin(const struct nsbox_spawn_req *r, struct nsbox_spawn_result *res,
						  struct nsbox_spawn_pending *p)
{
	int status[2] = {-1, -1}, sync[2] = {-1, -1}, low[3] = {-1, -1, -1};
	int pidfd = -1, rc = -1;
	int need_sync = (r->new_flags & CLONE_NEWUSER) && (r->uid_map || r->gid_map);
	int share_vm = r->uid < 0 && r->gid < 0 && r->n_groups < 0;  /* see the top of this file */
	struct spawn_ctx *ctx;
	void *stack;
	pid_t pid;

	if (pipe2(status, O_CLOEXEC) < 0) {
		set_error(res, NSBOX_STAGE_PIPE, errno);
		return -1;
	}
	if (need_sync && pipe2(sync, O_CLOEXEC) < 0) {
		set_error(res, NSBOX_STAGE_PIPE, errno);
		goto out;
	}
	stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (stack == MAP_FAILED) {
		set_error(res, NSBOX_STAGE_MMAP_STACK, errno);
		goto out;
	}

	/* The child reads its context after this function has returned: it
	 * lives at the bottom of the child's stack mapping (the stack grows down
	 * from the top), which stays mapped until the child has exec'd (or, for
	 * a child with its own copy of our memory, until it is cloned). */
	ctx = stack;
	ctx->req = r;
	ctx->status_wr = status[1];
	ctx->sync_rd = sync[0];
	ctx->sync_wr = sync[1];
	/* The child keeps only the fds below the highest one it needs: a source
	 * fd parked high (a pod's pidfd, the creator's) would make it copy the
	 * whole fd table.  Pass low duplicates instead. */
	ctx->join_fd = r->join_pidfd;
	ctx->extra_fd_src[0] = r->extra_fd_src[0];
	ctx->extra_fd_src[1] = r->extra_fd_src[1];
	if ((r->join_pidfd >= LOW_FD_LIMIT &&
	     (ctx->join_fd = low[0] = fcntl(r->join_pidfd, F_DUPFD_CLOEXEC, 3)) < 0) ||
	    (r->extra_fd_src[0] >= LOW_FD_LIMIT &&
	     (ctx->extra_fd_src[0] = low[1] = fcntl(r->extra_fd_src[0], F_DUPFD_CLOEXEC, 3)) < 0) ||
	    (r->extra_fd_src[1] >= LOW_FD_LIMIT &&
	     (ctx->extra_fd_src[1] = low[2] = fcntl(r->extra_fd_src[1], F_DUPFD_CLOEXEC, 3)) < 0)) {
		set_error(res, NSBOX_STAGE_DUP_FD, errno);
		munmap(stack, CHILD_STACK_SIZE);
		goto out;
	}
	ctx->keep_below = keep_below(r, ctx, status[1], sync);
	/* Whether close_range() works (Linux >= 5.9, no seccomp filter against
	 * it) is found out here, where a failed call may write errno: in the
	 * child, a call that fails on the success path is not allowed. */
	ctx->close_range = syscall(SYS_close_range, ~0U - 1, ~0U - 1, 0) == 0;
	pid = clone(child_main, (char *)stack + CHILD_STACK_SIZE,
			(share_vm ? CLONE_VM : 0) | (r->share_fds ? CLONE_FILES : 0) | CLONE_PIDFD |
			r->new_flags | SIGCHLD,
			ctx, &pidfd);
	if (pid < 0) {
		set_error(res, NSBOX_STAGE_CLONE, errno);
		munmap(stack, CHILD_STACK_SIZE);
		goto out;
	}
	if (!share_vm) {
		munmap(stack, CHILD_STACK_SIZE);  /* the child runs on its own copy */
		stack = NULL;
	}
	p->pid = pid;
	p->pidfd = pidfd;
	p->stack = stack;
	p->status_rd = status[0];
	status[0] = -1;   /* p's now */
	/* Until the child has its own fd table, our fds are its fds. */
	if (r->share_fds) {
		char c = 0;
		ssize_t n;
		do
			n = read(p->status_rd, &c, 1);
		while (n < 0 && errno == EINTR);
		if (n != 1 || c != 'U') {
			/* It failed before (an error record starts with 'E') or died. */
			if (n == 1 && c == 'E')
				read_child_error(p->status_rd, res, 1, EPROTO);
			else
				set_error(res, NSBOX_STAGE_UNSHARE_FD_TABLE, n == 1 ? EPROTO : ECHILD);
			abandon(p);
			goto out;
		}
	}
	close(status[1]);
	status[1] = -1;

	if (need_sync) {
		close(sync[0]);
		sync[0] = -1;
		if (write_id_maps(r, pid, res) < 0) {
			abandon(p);
			goto out;
		}
		if (write(sync[1], "G", 1) != 1) {
			set_error(res, NSBOX_STAGE_RELEASE_CHILD, errno);
			abandon(p);
			goto out;
		}
	}
	rc = 0;
out:
	/* The child has its own fd table by now (copied at clone, or unshared
	 * before it said 'U'). */
	for (int i = 0; i < 2; i++) {
		if (status[i] >= 0)
			close(status[i]);
		if (sync[i] >= 0)
			close(sync[i]);
	}
	for (int i = 0; i < 3; i++)
		if (low[i] >= 0)
			close(low[i]);
	return rc;
}

int nsbox_spawn_begin(const struct nsbox_spawn_req *r, struct nsbox_spawn_result *res,
					  struct nsbox_spawn_pending *p)
{
	sigset_t all, old;
	int rc, saved_pid_ns = -1;

	res->pid = res->pidfd = -1;
	res->err = 0;
	res->stage = NSBOX_STAGE_NONE;
	p->pid = p->pidfd = p->status_rd = -1;
	p->stack = NULL;
	/* No signal handler may run in the child while it shares our memory:
	 * it starts with our mask, all blocked, and resets the handlers. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	if (r->join_pidfd >= 0 && (r->join_flags & CLONE_NEWPID)) {
		/*
		 * setns(CLONE_NEWPID) changes the namespace of the calling thread's
		 * future children only.  Switch it for the clone below and switch it
		 * back before returning: with signals blocked and inside this one
		 * call, nothing else can fork from this thread meanwhile, and no
		 * Python code can observe it (a helper thread would cost more).
		 */
		saved_pid_ns = open("/proc/thread-self/ns/pid_for_children", O_RDONLY | O_CLOEXEC);
		if (saved_pid_ns < 0) {
			set_error(res, NSBOX_STAGE_OPEN_PID_FOR_CHILDREN, errno);
			rc = -1;
			goto out;
		}
		if (setns(r->join_pidfd, CLONE_NEWPID) < 0) {
			set_error(res, NSBOX_STAGE_SETNS_PID, errno);
			close(saved_pid_ns);
			rc = -1;
			goto out;
		}
	}
	rc = do_spawn_begin(r, res, p);
	if (saved_pid_ns >= 0) {
		if (setns(saved_pid_ns, CLONE_NEWPID) < 0) {
			/* Cannot happen (it is our own or a descendant namespace); if it
			 * did, the thread's children would land in the pod: say so. */
			int e = errno;
			if (rc == 0)
				abandon(p);
			set_error(res, NSBOX_STAGE_RESTORE_PID_NS, e);
			rc = -1;
		}
		close(saved_pid_ns);
	}
out:
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc == 0) {
		res->pid = p->pid;
		res->pidfd = p->pidfd;
	} else {
		errno = res->err;
	}
	return rc;
}

/* Where a cloned child is, as far as exec goes. */
enum exec_state { EXEC_NOT_YET, EXEC_DONE, EXEC_DIED, EXEC_UNKNOWN };

/*
 * Read from /proc/PID/stat: PF_FORKNOEXEC is set in every cloned task and
 * cleared by exec once the new program's memory has replaced the old (past
 * the point of no return); a task that is a zombie with the flag still set
 * died before exec.
 */
static enum exec_state child_exec_state(pid_t pid)
{
	char path[32], buf[512];
	unsigned long flags = 0;
	char *p, state;
	ssize_t n;
	int fd, field;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return EXEC_UNKNOWN;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return EXEC_UNKNOWN;
	buf[n] = 0;
	p = strrchr(buf, ')');  /* the command name may hold anything */
	if (!p || p[1] != ' ' || !p[2])
		return EXEC_UNKNOWN;
	state = p[2];
	/* p + 3 is the space before ppid; flags follow ppid pgrp session tty_nr tpgid */
	p += 3;
	for (field = 0; field < 5 && p; field++)
		p = strchr(p + 1, ' ');
	if (!p)
		return EXEC_UNKNOWN;
	flags = strtoul(p + 1, NULL, 10);
	if (!(flags & 0x40))  /* PF_FORKNOEXEC */
		return EXEC_DONE;
	return state == 'Z' || state == 'X' ? EXEC_DIED : EXEC_NOT_YET;
}

/*
 * Wait until the status pipe has something to say (an error record, or EOF
 * once the child has exec'd) and return EXEC_NOT_YET then: read it.  Or
 * return EXEC_DONE / EXEC_DIED when the child has exec'd or died although
 * the pipe says nothing.  That happens when another thread fork()ed while
 * the pipe's write end was open here: the forked process holds a copy of it
 * until it execs or exits (a multiprocessing worker: forever), and EOF never
 * comes.  So every 50 ms, look at the child itself.
 */
static enum exec_state wait_for_status(int status_rd, pid_t pid, int pidfd, int shares_vm)
{
	struct pollfd pfd = {status_rd, POLLIN, 0};

	for (;;) {
		enum exec_state st;
		int n = poll(&pfd, 1, 50);

		if (n < 0 && errno == EINTR)
			continue;
		if (n != 0)
			return EXEC_NOT_YET;  /* readable (or a poll error: let read() tell) */
		st = child_exec_state(pid);
		if (st == EXEC_UNKNOWN) {
			struct pollfd gone = {pidfd, POLLIN, 0};

			if (poll(&gone, 1, 0) > 0) {
				/* Exited and reaped by someone else's waitpid(-1), with no
				 * word on the pipe: whatever it did, it is gone. */
				st = EXEC_DIED;
			} else if (shares_vm) {
				/* No /proc: does it still share our memory?  After exec it has its own. */
				n = (int)syscall(SYS_kcmp, getpid(), pid, KCMP_VM, 0, 0);
				st = n > 0 ? EXEC_DONE : EXEC_NOT_YET;
			}
		}
		if (st == EXEC_DONE || st == EXEC_DIED) {
			/* A record may have raced in just before: read it. */
			pfd.revents = 0;
			return poll(&pfd, 1, 0) > 0 ? EXEC_NOT_YET : st;
		}
	}
}

int nsbox_spawn_finish(struct nsbox_spawn_pending *p, struct nsbox_spawn_result *res)
{
	enum exec_state st = EXEC_NOT_YET;
	char c;
	ssize_t n;
	int rc = -1;

	if (p->status_rd < 0) {
		set_error(res, NSBOX_STAGE_FINISH, EINVAL);
		errno = EINVAL;
		return -1;
	}
	/* EOF: exec done (the pipe is close-on-exec); else an error record. */
	for (;;) {
		st = wait_for_status(p->status_rd, p->pid, p->pidfd, p->stack != NULL);
		if (st != EXEC_NOT_YET) {
			n = 0;  /* no news on the pipe: its write end lives on elsewhere */
			break;
		}
		n = read(p->status_rd, &c, 1);
		if (n >= 0 || errno != EINTR)
			break;
	}
	/* (EOF also comes when the child was killed before exec, leaving no
	 * record: like subprocess, that shows as its exit status, not here.) */
	if (n == 0 && st == EXEC_DIED) {
		set_error(res, NSBOX_STAGE_READ_STATUS, ECHILD);
	} else if (n == 0) {
		rc = 0;
	} else if (n == 1 && c == 'E') {
		read_child_error(p->status_rd, res, 1, EPROTO);
	} else {
		set_error(res, NSBOX_STAGE_READ_STATUS, n < 0 ? errno : EPROTO);
	}
	if (rc < 0) {
		abandon(p);
		errno = res->err;
		return -1;
	}
	/* exec'd: the child no longer uses our memory. */
	if (p->stack)
		munmap(p->stack, CHILD_STACK_SIZE);
	close(p->status_rd);
	res->pid = p->pid;
	res->pidfd = p->pidfd;
	p->status_rd = p->pidfd = p->pid = -1;
	p->stack = NULL;
	return 0;
}

int nsbox_spawn(const struct nsbox_spawn_req *r, struct nsbox_spawn_result *res)
{
	struct nsbox_spawn_pending p;

	if (nsbox_spawn_begin(r, res, &p) < 0)
		return -1;
	return nsbox_spawn_finish(&p, res);
}
