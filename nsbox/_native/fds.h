/*
 * Closing every inherited file descriptor but a few, for both C programs of
 * nsbox (the spawner's child and nsbox-init).  Async-signal-safe: no
 * allocation, so it may run in a child that shares its parent's memory.
 *
 * close_range(2) needs Linux 5.9.  Where it fails (an older kernel: ENOSYS;
 * a seccomp filter: EPERM), the open fds are listed from /proc/self/fd with
 * getdents64 and closed one by one, as catatonit and CPython do.  If even
 * that is impossible (no /proc), the caller is told: an fd that should have
 * been closed must never silently reach the new program.
 */
#ifndef NSBOX_FDS_H
#define NSBOX_FDS_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

struct nsbox_dirent64 {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

/* Is fd in the sorted list? */
static int nsbox_fd_listed(const int *list, int n, int fd)
{
	int lo = 0, hi = n - 1;

	while (lo <= hi) {
		int mid = lo + (hi - lo) / 2;

		if (list[mid] == fd)
			return 1;
		if (list[mid] < fd)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return 0;
}

static int nsbox_parse_fd_name(const char *s)
{
	int v = 0;

	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > (1 << 24))
			return -1;
		v = v * 10 + (*s - '0');
	}
	return v;
}

/* The fallback: close what /proc/self/fd lists, except fds 0-2 and a, b. */
static int nsbox_close_listed_fds(const int *a, int na, const int *b, int nb)
{
	char buf[1024] __attribute__((aligned(8)));
	int dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (dir < 0)
		return -1;
	for (;;) {
		long n = syscall(SYS_getdents64, dir, buf, sizeof(buf));

		if (n < 0) {
			int e = errno;

			close(dir);
			errno = e;
			return -1;
		}
		if (n == 0)
			break;
		for (long off = 0; off < n;) {
			struct nsbox_dirent64 *d = (struct nsbox_dirent64 *)(buf + off);
			int fd = nsbox_parse_fd_name(d->d_name);

			off += d->d_reclen;
			if (fd >= 3 && fd != dir && !nsbox_fd_listed(a, na, fd) && !nsbox_fd_listed(b, nb, fd))
				close(fd);
		}
	}
	close(dir);
	return 0;
}

/*
 * Close every fd >= 3 except those in a[] and b[] (each sorted ascending),
 * with close_range() if use_close_range (falling back on its failure), else
 * from the listing.  Returns 0, or -1 with errno when the fds could not be
 * closed.
 */
static int nsbox_close_fds_except(const int *a, int na, const int *b, int nb, int use_close_range)
{
	int i = 0, j = 0, next = 3;

	if (!use_close_range)
		return nsbox_close_listed_fds(a, na, b, nb);

	while (i < na || j < nb) {
		int k;

		if (j >= nb || (i < na && a[i] <= b[j]))
			k = a[i++];
		else
			k = b[j++];
		if (k < next)
			continue;
		if (k > next && syscall(SYS_close_range, (unsigned int)next, (unsigned int)(k - 1), 0) < 0)
			return nsbox_close_listed_fds(a, na, b, nb);
		next = k + 1;
	}
	if (syscall(SYS_close_range, (unsigned int)next, ~0U, 0) < 0)
		return nsbox_close_listed_fds(a, na, b, nb);
	return 0;
}

#endif
