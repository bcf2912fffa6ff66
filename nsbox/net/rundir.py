"""nsbox's shared state directory and its one lock.

Everything lives under ``/run/nsbox`` (``$NSBOX_RUN_DIR`` moves it).  All
changes happen under an exclusive ``flock`` on that directory itself, so no
lock file ever has to be created or removed, and empty subdirectories can
be removed safely: nothing is left behind once the last pod is gone.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import NetworkError

__all__ = ["run_dir", "locked", "prune", "is_mount_point", "share", "unshare"]


def run_dir() -> Path:
    return Path(os.environ.get("NSBOX_RUN_DIR", "/run/nsbox"))


# The state lock's fds open in this process, by the thread holding it.  A
# fork() by another thread meanwhile gives the child a copy of the locked
# file description: flock() holds until every copy is closed, so the lock
# would outlive its holder's ``with`` for as long as the child lives (a
# multiprocessing worker: for ever).  The child closes those copies at once.
# Between open() and the entry here, and between the entry's removal and
# close(), an fd is not known as a lock fd: os.fork() waits for _opening
# (its before-fork hook), which covers both steps.  The parent's hooks are
# the RLock's own C methods: no Python frame runs between fork() and the
# acquire or release, so no signal handler can raise in between and leave
# it taken (an acquire interrupted while waiting leaves it to its holder;
# the release after the fork then fails, which CPython only reports).  An
# RLock: a signal handler that forks inside those steps does not deadlock.
_held: dict[int, int] = {}
_opening = threading.RLock()


def _in_child() -> None:
    _opening._at_fork_reinit()  # type: ignore[attr-defined]
    me = threading.get_ident()
    for fd, holder in list(_held.items()):
        if holder != me:  # (the forking thread's own lock it still releases itself)
            del _held[fd]
            try:
                os.close(fd)
            except OSError:
                pass


os.register_at_fork(before=_opening.acquire, after_in_parent=_opening.release, after_in_child=_in_child)


@contextlib.contextmanager
def locked() -> Iterator[Path]:
    """Hold the state lock (threads and processes alike); yields the directory."""
    root = run_dir()
    try:
        with _opening:
            try:
                fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                root.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            _held[fd] = threading.get_ident()
    except OSError as e:
        raise NetworkError(e.errno, f"cannot open nsbox's state directory {root}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield root
    finally:
        with _opening:
            del _held[fd]
            os.close(fd)  # releases the lock


def prune(path: Path) -> None:
    """Remove ``path`` and its empty parents up to the state directory (with the lock held)."""
    root = run_dir()
    while path != root and root in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def is_mount_point(path: Path) -> bool:
    """True if ``path`` is a mount point in this mount namespace.
    /proc/self/mountinfo names mount points by their real path, octal-escaped:
    compare with ``path`` resolved (a run directory reached through a
    symlink, such as /var/run, must not be bind-mounted again and again: each
    new bind mount would hide the pins made below the previous one)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(_unescape(line.split()[4]) == real for line in f)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def share(path: Path) -> None:
    """Make ``path`` a shared mount point of its own, once (as ``ip netns``
    does with /run/netns): pins made below it then appear in the mount
    namespaces that copied it, whatever the propagation of the mount it
    lives on.  OSError if it cannot; nothing is left mounted then.  (Under
    the state lock.)"""
    from .. import _syscalls

    if is_mount_point(path):
        return
    _syscalls.bind_mount(str(path), str(path))
    try:
        _syscalls.make_shared(str(path))
    except OSError:
        _syscalls.umount(str(path))
        raise


def unshare(path: Path) -> None:
    """Once nothing is left in ``path``: unmount what :func:`share` made and
    remove it (nothing of nsbox stays mounted).  (Under the state lock.)"""
    from .. import _syscalls

    try:
        if any(path.iterdir()):
            return
    except FileNotFoundError:
        return
    if is_mount_point(path):
        try:
            _syscalls.umount(str(path))
        except OSError:
            return
    prune(path)
