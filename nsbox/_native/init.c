/*
 * nsbox-init: the holder ("pause") process of an nsbox pod.
 *
 * It is PID 1 of the pod's PID namespace (or a child subreaper when the pod
 * has no PID namespace).  Its whole job:
 *   - keep the pod's namespaces alive by existing;
 *   - reap every child, including orphans re-parented to it;
 *   - exit 0 on SIGTERM or SIGINT (the kernel then kills the rest of the
 *     PID namespace), and ignore every other signal;
 *   - exit when the process that created the pod is gone (-p FD, a pidfd),
 *     so a crashed creator never leaves a pod behind -- until SIGUSR1 says
 *     the pod is persistent (its record names the holder now): from then on
 *     it outlives its creator;
 *   - hold FD open (-l FD, a pipe's write end; FD+1, its read end, for the
 *     creator to take a copy of with pidfd_getfd): the kernel closes it as soon
 *     as the holder starts to exit, before a PID namespace's init waits for
 *     its members to be reaped, so the creator learns of the death at once.
 *
 * Signals are blocked and read from a signalfd: no work happens in a signal
 * handler.  A waitpid(-1, WNOHANG) loop runs after every wake-up until
 * nothing is left to reap, so coalesced SIGCHLDs leave no zombie behind;
 * an idle holder never wakes up.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fds.h"

#ifndef NSBOX_VERSION
#define NSBOX_VERSION "0.1.0"
#endif

static int verbose_reap;

/*
 * Signals the kernel raises synchronously for a fault: never block them.
 * (SIGABRT, SIGTRAP and SIGSYS are blocked: abort() and the kernel force
 * them through anyway, and blocked they cannot be sent to kill the holder.)
 */
static const int kernel_signals[] = {SIGFPE, SIGILL, SIGSEGV, SIGBUS};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: nsbox-init [-v] [-h] [-s] [-w] [-r FD] [-p FD] [-l FD]\n"
		"  -v     print the version and exit\n"
		"  -s     quiet subreaper mode when not PID 1 (pods without a PID namespace)\n"
		"  -w     log every reaped process to stderr\n"
		"  -r FD  write 'R' to FD once ready, then close it\n"
		"  -p FD  FD is a pidfd of the creator: exit when it exits (until SIGUSR1)\n"
		"  -l FD  keep FD and FD+1 open (a pipe's write and read ends: the kernel\n"
		"         closes them when the holder starts to exit)\n");
}

static int parse_fd(const char *s)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < 0 || v > 1 << 20)
		return -1;
	return (int)v;
}

/* Close every fd >= 3 except the ones we were asked to keep (-1: none). */
static void close_inherited_fds(const int *want, int n_want)
{
	int keep[4], n = 0;

	for (int i = 0; i < n_want && n < 4; i++) {
		int fd = want[i], seen = 0;

		for (int j = 0; j < n; j++)
			seen |= keep[j] == fd;
		if (fd >= 3 && !seen)
			keep[n++] = fd;
	}
	for (int i = 1; i < n; i++)  /* sort the few */
		for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
			int t = keep[j];

			keep[j] = keep[j - 1];
			keep[j - 1] = t;
		}
	if (nsbox_close_fds_except(keep, n, NULL, 0, 1) < 0)
		perror("nsbox-init: warning: failed to close inherited fds");
}

static void stdin_from_devnull(void)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (fd != 0) {
		dup2(fd, 0);
		close(fd);
	}
}

/* Reap until there is nothing left to reap. */
static void reap(void)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);

		if (pid > 0) {
			if (verbose_reap)
				fprintf(stderr, "nsbox-init: reaped pid %d, status 0x%x\n", (int)pid, status);
			continue;
		}
		if (pid < 0 && errno == EINTR)
			continue;
		/* 0: children left but none has exited; ECHILD: no children. */
		return;
	}
}

static int setup_signals(sigset_t *set)
{
	/* Every signal, by raw system calls: the C library's sigfillset()
	 * leaves out the signals it keeps for itself (32 and 33 with glibc,
	 * 32-34 with musl), and unblocked with their default action they
	 * would kill a holder that is not a PID namespace's init.  (A sigset_t
	 * filled by hand has the kernel's layout; the kernel's size of it is
	 * (_NSIG - 1) / 8 bytes.) */
	memset(set, 0xff, sizeof(*set));
	for (size_t i = 0; i < sizeof(kernel_signals) / sizeof(kernel_signals[0]); i++)
		sigdelset(set, kernel_signals[i]);
	if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, set, NULL, (size_t)(_NSIG - 1) / 8) < 0) {
		perror("nsbox-init: failed to block signals");
		return -1;
	}
	int fd = (int)syscall(SYS_signalfd4, -1, set, (size_t)(_NSIG - 1) / 8, SFD_CLOEXEC | SFD_NONBLOCK);
	if (fd < 0)
		perror("nsbox-init: failed to create signalfd");
	return fd;
}

/* Returns the signal number that asks us to exit, or 0; *detach is set on SIGUSR1. */
static int drain_signals(int sfd, int *detach)
{
	struct signalfd_siginfo si;

	for (;;) {
		ssize_t n = read(sfd, &si, sizeof(si));

		if (n != (ssize_t)sizeof(si))
			return 0; /* EAGAIN: drained. Anything else: nothing to do. */
		switch (si.ssi_signo) {
		case SIGTERM:
		case SIGINT:
			return (int)si.ssi_signo;
		case SIGUSR1:
			/* The creator made the pod persistent: outlive it from now on. */
			*detach = 1;
			break;
		default:
			/* SIGCHLD is handled by the reap loop; everything else is ignored. */
			break;
		}
	}
}

int main(int argc, char **argv)
{
	int ready_fd = -1, parent_fd = -1, lifeline_fd = -1, quiet_subreaper = 0, opt;
	sigset_t set;

	while ((opt = getopt(argc, argv, "+vhswr:p:l:")) != -1) {
		switch (opt) {
		case 'v':
			printf("nsbox-init %s\n", NSBOX_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		case 's':
			quiet_subreaper = 1;
			break;
		case 'w':
			verbose_reap = 1;
			break;
		case 'r':
			if ((ready_fd = parse_fd(optarg)) < 0) {
				fprintf(stderr, "nsbox-init: invalid -r fd: %s\n", optarg);
				return 2;
			}
			break;
		case 'p':
			if ((parent_fd = parse_fd(optarg)) < 0) {
				fprintf(stderr, "nsbox-init: invalid -p fd: %s\n", optarg);
				return 2;
			}
			break;
		case 'l':
			if ((lifeline_fd = parse_fd(optarg)) < 0) {
				fprintf(stderr, "nsbox-init: invalid -l fd: %s\n", optarg);
				return 2;
			}
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}

	if (getpid() != 1) {
		if (!quiet_subreaper)
			fprintf(stderr, "nsbox-init: warning: not PID 1; becoming a child subreaper "
					"(only descendants are reaped)\n");
		if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
			perror("nsbox-init: warning: failed to become a child subreaper");
	}

	if (chdir("/") < 0)
		perror("nsbox-init: warning: failed to chdir to /");
	/* EPERM: already a session leader (started by a caller that did setsid). */
	if (setsid() < 0 && errno != EPERM)
		perror("nsbox-init: warning: setsid failed");
	stdin_from_devnull();
	{
		/* -l FD: the lifeline's write end, and its read end at FD + 1 (for
		 * the creator to take a copy of when it needs one: see spawn.c) */
		int keep[4] = {ready_fd, parent_fd, lifeline_fd, lifeline_fd >= 0 ? lifeline_fd + 1 : -1};

		close_inherited_fds(keep, 4);
	}

	int sfd = setup_signals(&set);
	if (sfd < 0)
		return 1;

	if (ready_fd >= 0) {
		/* Readiness: signals are blocked and routed to the signalfd now. */
		ssize_t n;
		do
			n = write(ready_fd, "R", 1);
		while (n < 0 && errno == EINTR);
		close(ready_fd);
	}

	/*
	 * From here on no error may end the pod: only SIGTERM/SIGINT or the
	 * creator's death do.
	 */
	struct pollfd pfd[2] = {
		{.fd = sfd, .events = POLLIN},
		{.fd = parent_fd, .events = POLLIN},
	};
	nfds_t nfds = parent_fd >= 0 ? 2 : 1;

	for (;;) {
		/* No timeout: an idle pod costs no CPU at all (10,000 holders
		 * waking once a second took ~7% of a CPU).  No zombie can be
		 * missed: SIGCHLD stays pending in the signalfd until it is read,
		 * the reap loop runs after every read, and a child that exits
		 * after the loop's last waitpid() raises a new SIGCHLD (orphans
		 * reparented to us as zombies are signalled too). */
		int n = poll(pfd, nfds, -1);

		if (n > 0 && (pfd[0].revents & POLLIN)) {
			int detach = 0;
			int sig = drain_signals(sfd, &detach);

			if (sig) {
				reap();
				return 0;
			}
			if (detach && nfds == 2) {
				close(parent_fd);
				nfds = 1;
			}
		}
		if (n > 0 && nfds == 2 && pfd[1].revents) {
			/* The creator process is gone: so is the pod. */
			return 0;
		}
		reap();
	}
}
