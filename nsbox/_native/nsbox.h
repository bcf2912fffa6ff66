/*
 * The contract between the native spawner (spawn.c) and Python, read both by
 * the C compiler and by cffi's cdef parser (build.py): plain C, no macros,
 * no includes.  Constants that come from the kernel headers (CLONE_*) are
 * declared for cffi in constants.cdef instead, so their values are read from
 * the system headers when the module is compiled, never copied by hand.
 */

/*
 * The step of a spawn that failed.  Python reads these from `lib` (as
 * nsbox._syscalls.Stage) and nsbox/errors.py turns (stage, errno) into an
 * nsbox exception.  The order is the order of the steps.
 */
enum nsbox_stage {
	NSBOX_STAGE_NONE = 0,
	/* parent, before and around clone */
	NSBOX_STAGE_OPEN_PID_FOR_CHILDREN = 1,
	NSBOX_STAGE_SETNS_PID = 2,
	NSBOX_STAGE_PIPE = 3,
	NSBOX_STAGE_MMAP_STACK = 4,
	NSBOX_STAGE_DUP_FD = 5,
	NSBOX_STAGE_CLONE = 6,
	NSBOX_STAGE_WRITE_GID_MAP = 7,
	NSBOX_STAGE_WRITE_UID_MAP = 8,
	NSBOX_STAGE_RELEASE_CHILD = 9,
	NSBOX_STAGE_RESTORE_PID_NS = 10,
	NSBOX_STAGE_READ_STATUS = 11,
	NSBOX_STAGE_FINISH = 12,
	/* child, between clone and exec */
	NSBOX_STAGE_UNSHARE_FD_TABLE = 20,
	NSBOX_STAGE_WAIT_ID_MAPS = 21,
	NSBOX_STAGE_SETNS = 22,
	NSBOX_STAGE_MAKE_ROOT_PRIVATE = 23,
	NSBOX_STAGE_MOUNT_PROC = 24,
	NSBOX_STAGE_SETHOSTNAME = 25,
	NSBOX_STAGE_LOOPBACK_UP = 26,
	NSBOX_STAGE_RELOCATE_STATUS_FD = 27,
	NSBOX_STAGE_OPEN_DEVNULL = 28,
	NSBOX_STAGE_DUP_STDIO = 29,
	NSBOX_STAGE_INSTALL_STDIO = 30,
	NSBOX_STAGE_INSTALL_FD = 31,
	NSBOX_STAGE_PASS_FDS = 32,
	NSBOX_STAGE_CLOSE_FDS = 33,
	NSBOX_STAGE_CHDIR = 34,
	NSBOX_STAGE_SETSID = 35,
	NSBOX_STAGE_SETPGID = 36,
	NSBOX_STAGE_SETGROUPS = 37,
	NSBOX_STAGE_SETGID = 38,
	NSBOX_STAGE_SETUID = 39,
	NSBOX_STAGE_EXEC = 40
};

struct nsbox_spawn_req {
	const char *const *exec_paths;  /* NULL-terminated list of paths to try */
	char *const *argv;
	char *const *envp;              /* NULL: the caller's environ */

	int new_flags;                  /* CLONE_NEW* namespaces to create */
	int join_pidfd;                 /* pidfd whose namespaces to join, or -1 */
	int join_flags;                 /* CLONE_NEW* namespaces to join (pid: for the child) */
	const char *hostname;           /* sethostname() in the child, or NULL */
	int loopback_up;                /* bring "lo" up in the child's netns */
	int mount_proc;                 /* new mnt ns: mount a fresh /proc */
	const char *uid_map;            /* new user ns: maps written by the parent */
	const char *gid_map;

	const char *cwd;                /* NULL: inherit */
	int stdio[3];                   /* fds installed as 0, 1, 2; -1: inherit */
	int null_stdio;                 /* bit i set: fd i is /dev/null, opened by the child */
	int extra_fd_src[2];            /* each installed as extra_fd_dst[i], or -1 */
	int extra_fd_dst[2];
	int lifeline_fd;                /* >= 0: a new pipe, its write end installed
	                                   here and its read end at lifeline_fd + 1 */
	const int *keep_fds;            /* sorted; kept open and made inheritable */
	int n_keep;
	int keep_signals_blocked;       /* exec with every signal still blocked */
	int share_fds;                  /* clone with CLONE_FILES: no fd table copy,
	                                   one more handshake */
	int setsid;
	int pgid;                       /* < 0: leave */
	int umask;                      /* < 0: leave */
	int uid;                        /* < 0: leave */
	int gid;                        /* < 0: leave */
	const unsigned int *groups;
	int n_groups;                   /* < 0: leave */
};

struct nsbox_spawn_result {
	int pid;
	int pidfd;
	int stage;                      /* enum nsbox_stage of the failed step */
	int err;                        /* its errno */
};

/* A child cloned but not yet known to have exec'd: it may still run on
 * memory of the caller (the request, its stack).  Finish it exactly once. */
struct nsbox_spawn_pending {
	int pid;
	int pidfd;
	int status_rd;
	void *stack;                    /* NULL once the child cannot use it */
};

int nsbox_spawn(const struct nsbox_spawn_req *req, struct nsbox_spawn_result *res);
int nsbox_spawn_begin(const struct nsbox_spawn_req *req, struct nsbox_spawn_result *res,
		      struct nsbox_spawn_pending *pending);
int nsbox_spawn_finish(struct nsbox_spawn_pending *pending, struct nsbox_spawn_result *res);
int nsbox_pidfd_open(int pid, unsigned int flags);
int nsbox_pidfd_getfd(int pidfd, int targetfd);
int nsbox_pidfd_send_signal(int pidfd, int sig);
int nsbox_setns(int fd, int nstype);
int nsbox_unshare(int flags);
int nsbox_socket_in_netns(int nsfd, int domain, int type, int protocol);
int nsbox_mount(const char *source, const char *target, const char *fstype, unsigned long flags,
		const char *data);
int nsbox_umount2(const char *target, int flags);
int nsbox_open_tree(int dfd, const char *path, unsigned int flags);
int nsbox_move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path,
		     unsigned int flags);
int nsbox_pivot_root(const char *new_root, const char *put_old);
