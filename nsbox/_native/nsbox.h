/* Declarations shared by the cffi cdef (build.py) and spawn.c. Keep it plain C
 * that cffi's parser understands: no macros, no includes. */

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
    int extra_fd_src;               /* installed as extra_fd_dst, or -1 */
    int extra_fd_dst;
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
    int err;                        /* errno of the failed step */
    char stage[28];                 /* which step failed */
};

/* A child cloned but not yet known to have exec'd: it may still run on
 * memory of the caller (the request, its stack).  Finish it exactly once. */
struct nsbox_spawn_pending {
    int pid;
    int pidfd;
    int status_rd;
    void *stack;
};

int nsbox_spawn(const struct nsbox_spawn_req *req, struct nsbox_spawn_result *res);
int nsbox_spawn_begin(const struct nsbox_spawn_req *req, struct nsbox_spawn_result *res,
                      struct nsbox_spawn_pending *pending);
int nsbox_spawn_finish(struct nsbox_spawn_pending *pending, struct nsbox_spawn_result *res);
int nsbox_pidfd_open(int pid, unsigned int flags);
int nsbox_pidfd_send_signal(int pidfd, int sig);
int nsbox_setns(int fd, int nstype);
int nsbox_unshare(int flags);
int nsbox_socket_in_netns(int nsfd, int domain, int type, int protocol);
