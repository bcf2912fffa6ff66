"""A pod's life after ``start()``: its status, and the one watcher that
notices a holder's death at once.

The watcher is a single daemon thread per process with every running pod's
holder pidfd in one ``epoll`` set: no thread per pod, no busy loop.  When a
holder exits for any reason (``kill`` from outside, ``kill 1`` inside, the
OOM killer), the watcher reaps it at once -- no zombie waits for the creator
to call a pod method -- tears down what the pod made, restarts it if its
spec says so, and runs the pod's done callbacks.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import weakref
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

from . import _syscalls

if TYPE_CHECKING:
    from .pod import Pod

__all__ = ["PodStatus", "watch", "watch_also", "unwatch", "DoneCallbacks", "Backoff"]

log = logging.getLogger("nsbox")


@dataclass(frozen=True)
class PodStatus:
    """A snapshot of a pod's state (``pod.status()``).

    ``state`` is ``"new"`` (never started), ``"running"``, ``"exited"`` (the
    holder ended without ``stop()``: killed from outside, its creator gone...)
    or ``"stopped"`` (by ``stop()``).  ``returncode`` is the holder's exit
    status (negative: the signal that killed it) and ``exited_at`` when it
    was reaped (``time.time()``), for the last sandbox; ``restarts`` counts the
    sandboxes made after the first."""

    state: str
    pid: Optional[int] = None
    start_time: Optional[int] = None  # the holder's, clock ticks after boot (with pid: its identity)
    returncode: Optional[int] = None
    exited_at: Optional[float] = None
    restarts: int = 0
    inodes: dict[str, int] = field(default_factory=dict)  # kind -> namespace inode
    error: Optional[str] = None  # what went wrong tearing down or restarting, if anything
    name: Optional[str] = None
    pins: dict[str, str] = field(default_factory=dict)  # kind -> pinned path (persistent pods)

    @property
    def running(self) -> bool:
        return self.state == "running"


class _Watcher:
    """One thread, one epoll set: fds that report a holder's death -> its pod.

    The fds stay the pod's (its holder's pidfd and lifeline); the pod
    unwatches them before it closes them.  Each is registered one-shot: a
    pod whose lock is taken when its holder dies is looked at again every
    20 ms until it is free, without epoll reporting it over and over."""

    def __init__(self) -> None:
        # Reentrant: a pod freed by the garbage collector while this thread
        # holds the lock may stop itself (__del__) and unwatch from here.
        self._lock = threading.RLock()
        self._epoll: Optional[select.epoll] = None
        self._pods: dict[int, weakref.ref[Pod]] = {}  # fd -> pod
        self._fds: dict[int, list[int]] = {}  # id(pod) -> its fds
        self._busy: set[int] = set()  # fds to look at again shortly (pod locked, or still readable)
        self._thread: Optional[threading.Thread] = None

    def watch(self, pod: Pod, fds: list[int]) -> None:
        with self._lock:
            if self._epoll is None:
                self._epoll = select.epoll()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="nsbox-watcher", daemon=True)
                self._thread.start()
            ref = weakref.ref(pod)
            done: list[int] = []
            try:
                for fd in fds:
                    self._epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
                    done.append(fd)
                    self._pods[fd] = ref
            except BaseException:
                for fd in done:
                    self._epoll.unregister(fd)
                    del self._pods[fd]
                raise
            self._fds[id(pod)] = fds

    def watch_also(self, pod: Pod, fd: int) -> None:
        with self._lock:
            fds = self._fds.get(id(pod))
            if not fds or self._epoll is None:
                return  # not watched (stopped meanwhile): nothing to add to
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT)
            self._pods[fd] = self._pods[fds[0]]
            fds.append(fd)

    def unwatch(self, pod: Pod) -> None:
        # Bounded: at interpreter exit a daemon watcher thread can be frozen
        # holding the lock (it waits for the GIL forever).  The caller closes
        # the fds next, which takes them out of the epoll set anyway.
        if not self._lock.acquire(timeout=1.0):
            return
        try:
            for fd in self._fds.pop(id(pod), ()):
                del self._pods[fd]
                self._busy.discard(fd)
                if self._epoll is not None:
                    try:
                        self._epoll.unregister(fd)
                    except OSError:  # pragma: no cover - closed behind our back
                        pass
        finally:
            self._lock.release()

    def _run(self) -> None:
        from .net import rtnl

        rtnl.go_home()  # (and so do the restart timers it starts)
        while True:
            with self._lock:
                ep = self._epoll
                retry = bool(self._busy)
            if ep is None:  # pragma: no cover - forgotten after fork
                return
            try:
                events = ep.poll(0.02 if retry else -1)
            except OSError:  # pragma: no cover - closed after fork in a child
                return
            with self._lock:  # (only weak references here: no pod can be freed under the lock)
                fds = {fd for fd, _ in events} | self._busy
                self._busy.clear()
                refs = [(fd, self._pods[fd]) for fd in fds if fd in self._pods]
            seen: set[int] = set()
            for fd, ref in refs:
                self._handle(fd, ref, seen)
            del refs

    def _handle(self, fd: int, ref: weakref.ref[Pod], seen: set[int]) -> None:
        pod = ref()
        if pod is None or id(pod) in seen:
            return
        seen.add(id(pod))
        try:
            handled = pod._holder_exited()
        except BaseException:  # never let the watcher die: every pod depends on it
            log.exception("nsbox watcher: handling the exit of %r", pod)
            handled = True
        with self._lock:
            if fd in self._pods and self._pods[fd] is ref:
                if not handled or _syscalls.fd_readable(fd):
                    # Its lock was taken, or it still polls readable although
                    # the pod says its holder runs: look again in 20 ms (a
                    # level-triggered fd re-armed now would fire at once, forever).
                    self._busy.add(fd)
                elif self._epoll is not None:
                    self._epoll.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)

    def forget(self) -> None:
        """After fork: the child has no watcher thread, and the epoll
        instance is shared with the parent: start afresh."""
        self._lock = threading.RLock()
        self._epoll = None
        self._pods, self._fds, self._busy = {}, {}, set()
        self._thread = None


_watcher = _Watcher()
os.register_at_fork(after_in_child=_watcher.forget)


def watch(pod: Pod, fds: list[int]) -> None:
    """Have the watcher call ``pod._holder_exited()`` when one of ``fds``
    (the holder's pidfd, its lifeline) polls readable.  ``fds`` stay the
    pod's: :func:`unwatch` before closing them."""
    _watcher.watch(pod, fds)


def watch_also(pod: Pod, fd: int) -> None:
    """Add ``fd`` to the fds watched for ``pod`` (its lifeline, taken when
    it was first needed); nothing if the pod is not watched."""
    _watcher.watch_also(pod, fd)


def unwatch(pod: Pod) -> None:
    """Stop watching ``pod`` (idempotent)."""
    _watcher.unwatch(pod)




class DoneCallbacks:
    """A pod's done callbacks.  Each exit takes a snapshot of them (with the
    pod's lock held, as the exit happens); the snapshot is run once, with no
    lock held.  A callback added after an exit is not in its snapshot."""

    def __init__(self) -> None:
        self.fns: list[Callable[[Pod], object]] = []
        self._due: list[Callable[[Pod], object]] = []

    def remove(self, fn: Callable[[Pod], object]) -> int:
        before = len(self.fns)
        self.fns = [f for f in self.fns if f != fn]
        return before - len(self.fns)

    def exited(self) -> None:
        """An exit happened: its callbacks are due.  (Pod lock held.)"""
        self._due.extend(self.fns)

    def take_due(self) -> list[Callable[[Pod], object]]:
        """(Pod lock held.)"""
        due, self._due = self._due, []
        return due

    @staticmethod
    def call(pod: Pod, fns: list[Callable[[Pod], object]]) -> None:
        """Run ``fns`` (no lock held): an exception is logged, never raised."""
        for fn in fns:
            try:
                fn(pod)
            except Exception:
                log.exception("exception calling done callback %r of %r", fn, pod)


class Backoff:
    """``restart=True``: how long to wait before the next sandbox, as the
    kubelet's CrashLoopBackOff.  The first restart is immediate; from the
    second sandbox in a row that lived less than ``STABLE_RUN`` seconds on,
    ``FIRST`` seconds, doubling up to ``MAX``."""

    STABLE_RUN = 10.0
    FIRST = 0.1
    MAX = 10.0

    def __init__(self) -> None:
        self.short_lives = 0  # sandboxes in a row that died young

    def delay(self, lived: float) -> float:
        """The wait before the next sandbox, after one that lived ``lived`` s."""
        self.short_lives = self.short_lives + 1 if lived < self.STABLE_RUN else 0
        if self.short_lives <= 1:
            return 0.0
        return min(self.FIRST * 2 ** (self.short_lives - 2), self.MAX)

    def reset(self) -> None:
        self.short_lives = 0
