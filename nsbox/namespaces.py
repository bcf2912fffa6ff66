"""Namespace handles and the one primitive that moves the calling thread:
:func:`join` (and its restoring form :func:`joined`).

setns(2) acts on the *calling thread* only.  nsbox never calls it on your
threads behind your back; these two functions are the explicit exception.
"""
from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from typing import Any, Optional, Union, cast

from . import _syscalls
from .errors import ConfigError, NamespaceError, NotRunningError, ThreadingError, namespace_error
from ._syscalls import CLONE_FS
from .kinds import KINDS, KindsArg, flags_of, parse_kinds

__all__ = ["Namespace", "join", "joined", "Target"]

# Something whose namespaces can be joined: a PID, a Pod, or anything with a
# ``pidfd`` attribute (a pidfd is immune to PID reuse).
Target = Union[int, Any]


class Namespace:
    """An open handle (a close-on-exec fd) on one namespace.

    Two handles are equal when they name the same namespace (same st_dev and
    st_ino), whatever their fd numbers.  Use as a context manager, or call
    :meth:`close`.
    """

    __slots__ = ("kind", "_fd", "_dev", "_ino")

    def __init__(self, fd: int, kind: str):
        if kind not in KINDS:
            parse_kinds(kind)  # raises KindError with the valid names
        st = os.fstat(fd)
        self.kind = kind
        self._fd = fd
        self._dev = st.st_dev
        self._ino = st.st_ino

    @classmethod
    def from_path(cls, path: Union[str, os.PathLike], kind: str) -> "Namespace":
        """Open a namespace file such as ``/proc/42/ns/net`` or a bind mount of one."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise NotRunningError(e.errno, f"no namespace file at {os.fspath(path)!r}") from None
        try:
            return cls(fd, kind)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_pid(cls, pid: int, kind: str, *, for_children: bool = False) -> "Namespace":
        """The ``kind`` namespace of process ``pid`` (``for_children``: the
        pid/time namespace its future children get)."""
        name = _proc_name(kind, for_children)
        try:
            return cls.from_path(f"/proc/{int(pid)}/ns/{name}", kind)
        except NotRunningError:
            raise NotRunningError(errno.ESRCH, f"no process with PID {pid}") from None

    @classmethod
    def current(cls, kind: str, *, for_children: bool = False) -> "Namespace":
        """The calling *thread's* namespace (not the process's: they can differ)."""
        return cls.from_path(f"/proc/thread-self/ns/{_proc_name(kind, for_children)}", kind)

    @property
    def inode(self) -> int:
        return self._ino

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("I/O operation on closed Namespace")
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Namespace):
            return NotImplemented
        return (self._dev, self._ino) == (other._dev, other._ino)

    def __hash__(self) -> int:
        return hash((self._dev, self._ino))

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<nsbox.Namespace {self.kind}:[{self._ino}] {state}>"

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()


def _proc_name(kind: str, for_children: bool) -> str:
    parse_kinds(kind)
    if for_children:
        if kind not in ("pid", "time"):
            raise ConfigError(f"for_children applies to 'pid' and 'time' only, not {kind!r}")
        return f"{kind}_for_children"
    return kind


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


@contextlib.contextmanager
def _target_pidfd(target: Target, kinds: tuple[str, ...] = ()) -> Iterator[tuple[int, str]]:
    """Yield ``(pidfd, description)`` for ``target`` (whose ``kinds`` are
    about to be joined); closes what it opened."""
    dup = getattr(target, "_dup_pidfd", None)
    if dup is not None:
        with cast(Any, target)._lock:
            fd = dup(kinds)  # a private copy: valid even if the pod is stopped meanwhile
        try:
            yield fd, repr(target)
        finally:
            os.close(fd)
        return
    pidfd = getattr(target, "pidfd", None)
    if pidfd is not None and not isinstance(target, int):
        if pidfd < 0:
            raise NotRunningError(errno.ESRCH, f"{target!r} is not running")
        yield pidfd, repr(target)
        return
    if isinstance(target, bool) or not isinstance(target, int) or target <= 0:
        raise ConfigError(f"join target must be a positive PID, a Pod or have a pidfd, not {target!r}")
    try:
        fd = _syscalls.pidfd_open(target)
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise NotRunningError(errno.ESRCH, f"no process with PID {target}: it has exited") from None
        raise namespace_error(e.errno, f"opening a pidfd for PID {target}") from None
    try:
        yield fd, f"PID {target}"
    finally:
        os.close(fd)


def _check_join(kinds: tuple[str, ...]) -> None:
    if "time" in kinds or "user" in kinds:
        n = _thread_count()
        if n > 1:
            which = "user" if "user" in kinds else "time"
            raise ThreadingError(
                f"cannot join a {which} namespace from a process with {n} threads (the kernel "
                "allows it only for single-threaded processes); use pod.spawn()/pod.run(), "
                "which join it in a fresh child process"
            )


def join(target: Target, kinds: KindsArg) -> None:
    """Move the **calling thread** into the ``kinds`` namespaces of ``target``.

    ``target`` is a PID, a :class:`~nsbox.Pod`, or any object with a ``pidfd``
    attribute.  Passing a Pod (or a pidfd) is immune to PID reuse: a stopped
    pod raises :class:`NotRunningError` even if its PID now names another
    process.  All kinds are entered at once by one setns(2) on a pidfd: either
    all or none.

    Rules the kernel imposes (see docs/threading.md):

    - only the calling thread moves; threads it starts later inherit its
      namespaces;
    - ``mnt``: the thread first stops sharing its cwd/root/umask with the
      other threads (``unshare(CLONE_FS)``), which is permanent;
    - ``pid``: changes the namespace of the thread's future *children* only;
    - ``user`` and ``time``: the process must be single-threaded.
    """
    kinds = parse_kinds(kinds)
    _check_join(kinds)
    _syscalls.require_kernel()
    with _target_pidfd(target, kinds) as (pidfd, desc):
        if "mnt" in kinds:
            _unshare_fs()
        try:
            _syscalls.setns(pidfd, flags_of(kinds))
        except OSError as e:
            if e.errno == errno.ESRCH:
                raise NotRunningError(errno.ESRCH, f"cannot join {desc}: it has exited") from None
            raise namespace_error(e.errno, f"joining the {', '.join(kinds)} namespaces of {desc}") from None


def _unshare_fs() -> None:
    try:
        _syscalls.unshare(CLONE_FS)
    except OSError as e:
        raise namespace_error(e.errno, "unshare(CLONE_FS) before joining a mount namespace") from None


@contextlib.contextmanager
def joined(target: Target, kinds: KindsArg) -> Iterator[None]:
    """Like :func:`join`, and put the calling thread back where it was on exit.

    The ``user`` kind cannot be used here: a thread that entered a user
    namespace has no privilege left in its old one, so it cannot go back.
    """
    kinds = parse_kinds(kinds)
    if "user" in kinds:
        raise ConfigError(
            "joined() cannot include 'user': a user namespace cannot be left once joined; "
            "use pod.run()/pod.spawn() (or nsbox.join() in a process of its own)"
        )
    places: list[int] = []
    if "mnt" in kinds:
        _unshare_fs()
        # setns(mnt) moves cwd and root to the new namespace's root: keep them.
        places = [os.open("/", os.O_PATH | os.O_CLOEXEC), os.open(".", os.O_PATH | os.O_CLOEXEC)]
    saved: list[Namespace] = []
    try:
        for k in kinds:
            saved.append(Namespace.current(k, for_children=k in ("pid", "time")))
        join(target, kinds)
    except BaseException:
        for ns in saved:
            ns.close()
        _close_all(places)
        raise
    try:
        yield
    finally:
        try:
            _restore(saved)
            if places:
                os.fchdir(places[0])
                os.chroot(".")
                os.fchdir(places[1])
        finally:
            _close_all(places)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _restore(saved: list[Namespace]) -> None:
    failed: Optional[OSError] = None
    for ns in saved:
        try:
            if failed is None:
                _syscalls.setns(ns.fileno(), KINDS[ns.kind])
        except OSError as e:
            err = e.errno or errno.EIO
            failed = NamespaceError(
                err,
                f"could not return this thread to its {ns.kind} namespace: {os.strerror(err)}; "
                "the thread is left inside the pod",
            )
        finally:
            ns.close()
    if failed is not None:
        raise failed
