"""Thin wrappers around the cffi module: validate, call, turn errno into
OSError; and the constants of the native contract, read from ``lib``.

Only this module and :mod:`nsbox._clone` touch ``nsbox._native._nsbox``.
"""
from __future__ import annotations

import enum
import fcntl
import os
import re
import resource
import select
from typing import Optional

from ._native._nsbox import ffi, lib
from .errors import UnsupportedError

__all__ = [
    "KERNEL_FLOOR", "require_kernel",
    "CLONE_NEW", "CLONE_FS", "Stage",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "setns", "unshare", "socket_in_netns", "park", "close_parked",
    "signal_quietly", "fd_readable", "pid_is_alive", "wait_any", "bind_mount", "make_shared", "umount",
]

# Namespace kind -> its CLONE_NEW* flag, from the kernel headers nsbox was built against.
CLONE_NEW: dict[str, int] = {
    "user": lib.CLONE_NEWUSER,
    "mnt": lib.CLONE_NEWNS,
    "pid": lib.CLONE_NEWPID,
    "net": lib.CLONE_NEWNET,
    "ipc": lib.CLONE_NEWIPC,
    "uts": lib.CLONE_NEWUTS,
    "cgroup": lib.CLONE_NEWCGROUP,
    "time": lib.CLONE_NEWTIME,
}
CLONE_FS: int = lib.CLONE_FS

# The steps of a native spawn (enum nsbox_stage in nsbox.h), by name.
Stage = enum.IntEnum(  # type: ignore[misc]
    "Stage",
    sorted(((name[len("NSBOX_STAGE_"):], getattr(lib, name)) for name in dir(lib) if name.startswith("NSBOX_STAGE_")),
           key=lambda item: item[1]),
)

# setns(2) on a pidfd (one call joins several namespaces of a process, and
# a pidfd cannot name a reused PID) came in Linux 5.8; pidfd_open in 5.3,
# CLONE_PIDFD in 5.2.  (close_range, 5.9, has a fallback: see fds.h.)
KERNEL_FLOOR = (5, 8)
_kernel_ok = False


def require_kernel(release: Optional[str] = None) -> None:
    """Raise :class:`~nsbox.UnsupportedError` on a kernel older than
    :data:`KERNEL_FLOOR` (``release``: as ``uname -r`` prints it; default:
    this machine's, checked once)."""
    global _kernel_ok
    if release is None:
        if _kernel_ok:
            return
        release = os.uname().release
    m = re.match(r"(\d+)\.(\d+)", release)
    if m and (int(m.group(1)), int(m.group(2))) < KERNEL_FLOOR:
        raise UnsupportedError(
            f"nsbox needs Linux {KERNEL_FLOOR[0]}.{KERNEL_FLOOR[1]} or newer (setns on a pidfd); "
            f"this kernel is {release}"
        )
    if release == os.uname().release:
        _kernel_ok = True


_park_base = 0


def park(fd: int) -> int:
    """Move a long-lived fd (a pidfd, a namespace fd) to a high number and
    return the new number (or ``fd`` if there is no room up there).

    Child processes keep only the fds below the highest one they need: kept
    out of the low range, the fds of many pods cost a new child nothing."""
    global _park_base
    for _ in range(2):
        if not _park_base:
            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            _park_base = max(soft // 2, 64) if soft != resource.RLIM_INFINITY else 1 << 16
        try:
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _park_base)
        except OSError:
            _park_base = 0  # the limit changed: look again, once
            continue
        os.close(fd)
        return new
    return fd


def close_parked(fd: int) -> None:
    """Close an fd that :func:`park` returned."""
    os.close(fd)


def _raise(path: object = None) -> None:
    err = ffi.errno
    if path is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), path)


def pidfd_open(pid: int) -> int:
    """A close-on-exec pidfd for ``pid``; ProcessLookupError if it does not exist."""
    fd = lib.nsbox_pidfd_open(pid, 0)
    if fd < 0:
        _raise()
    return fd


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A close-on-exec copy of fd ``targetfd`` of the process ``pidfd``
    names (Linux >= 5.6; ptrace access to it is needed)."""
    fd = lib.nsbox_pidfd_getfd(pidfd, targetfd)
    if fd < 0:
        _raise()
    return fd


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    if lib.nsbox_pidfd_send_signal(pidfd, sig) < 0:
        _raise()


def setns(fd: int, nstype: int) -> None:
    if lib.nsbox_setns(fd, nstype) < 0:
        _raise()


def unshare(flags: int) -> None:
    if lib.nsbox_unshare(flags) < 0:
        _raise()


def bind_mount(source: str, target: str) -> None:
    """``mount --bind source target``."""
    if lib.nsbox_mount(os.fsencode(source), os.fsencode(target), ffi.NULL, lib.MS_BIND, ffi.NULL) < 0:
        _raise(target)


def make_shared(target: str) -> None:
    """``mount --make-rshared target``: mounts made below it propagate to
    the copies of this mount in other mount namespaces, and back."""
    if lib.nsbox_mount(ffi.NULL, os.fsencode(target), ffi.NULL, lib.MS_SHARED | lib.MS_REC, ffi.NULL) < 0:
        _raise(target)


def umount(target: str) -> None:
    """Detach the mount at ``target`` (lazily, not following a symlink)."""
    if lib.nsbox_umount2(os.fsencode(target), lib.MNT_DETACH | lib.UMOUNT_NOFOLLOW) < 0:
        _raise(target)


def mount(source: Optional[str], target: str, fstype: Optional[str], flags: int, data: Optional[str] = None) -> None:
    """mount(2); OSError names ``target``."""
    src = ffi.NULL if source is None else os.fsencode(source)
    fs = ffi.NULL if fstype is None else os.fsencode(fstype)
    dat = ffi.NULL if data is None else os.fsencode(data)
    if lib.nsbox_mount(src, os.fsencode(target), fs, flags, dat) < 0:
        _raise(target)


def open_tree(path: str, *, dir_fd: int = -1, recursive: bool = True) -> int:
    """A close-on-exec fd of a detached copy of the mount tree at ``path``
    (``mount --rbind`` made in two steps: attach it with :func:`move_mount`,
    possibly in another mount namespace)."""
    flags = lib.OPEN_TREE_CLONE | lib.OPEN_TREE_CLOEXEC | (lib.AT_RECURSIVE if recursive else 0)
    fd = lib.nsbox_open_tree(lib.AT_FDCWD if dir_fd < 0 else dir_fd, os.fsencode(path), flags)
    if fd < 0:
        _raise(path)
    return fd


def move_mount(tree_fd: int, target: str) -> None:
    """Attach the detached tree ``tree_fd`` (from :func:`open_tree`) at ``target``."""
    if lib.nsbox_move_mount(tree_fd, b"", lib.AT_FDCWD, os.fsencode(target), lib.MOVE_MOUNT_F_EMPTY_PATH) < 0:
        _raise(target)


def pivot_root(new_root: str, put_old: str) -> None:
    if lib.nsbox_pivot_root(os.fsencode(new_root), os.fsencode(put_old)) < 0:
        _raise(new_root)


def socket_in_netns(nsfd: int, domain: int, type: int, protocol: int) -> int:
    """An fd of a new close-on-exec socket in the network namespace ``nsfd``."""
    fd = lib.nsbox_socket_in_netns(nsfd, domain, type, protocol)
    if fd < 0:
        _raise()
    return fd




# ---- pidfds --------------------------------------------------------------------


def signal_quietly(pidfd: int, sig: int) -> None:
    """Send ``sig`` through ``pidfd``; a process that has exited is fine."""
    try:
        pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass


def fd_readable(fd: int) -> bool:
    """True if ``fd`` polls readable (or hung up) right now."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


def pid_is_alive(pidfd: int) -> bool:
    """True while the process behind ``pidfd`` has not exited."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return not p.poll(0)


def wait_any(pidfds: list[int], timeout: Optional[float]) -> list[int]:
    """Wait until one of ``pidfds`` exits (or ``timeout``); return the exited ones."""
    p = select.poll()
    for fd in pidfds:
        p.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000))
    return [fd for fd, _ in p.poll(ms)]
