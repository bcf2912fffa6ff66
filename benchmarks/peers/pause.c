/*
 * A pause-like holder, written for the benchmark (not shipped): what the
 * Kubernetes pause container does -- exit on SIGINT/SIGTERM, reap children
 * on SIGCHLD, otherwise sleep in pause() -- built static, as pause is, so
 * that nsbox-init's memory can be compared with it side by side.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig)
{
	fprintf(stderr, "pause: got signal %d, exiting\n", sig);
	exit(0);
}

static void on_child(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(void)
{
	struct sigaction stop = {.sa_handler = on_stop};
	struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};

	if (getpid() != 1)
		fprintf(stderr, "pause: warning: not PID 1\n");
	if (sigaction(SIGINT, &stop, NULL) || sigaction(SIGTERM, &stop, NULL) ||
	    sigaction(SIGCHLD, &child, NULL))
		return 1;
	for (;;)
		pause();
}
