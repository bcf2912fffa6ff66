"""A pod's members: finding, signalling and reaping its processes.

Members are the processes spawned through the pod (:class:`PodProcess`,
which are our children) and everything they and the holder started.  Every
process nsbox signals is pinned by a pidfd first, and kept only if it is
still in the pod (or still the child of where it was found), so a PID that
was reused meanwhile is never signalled.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from typing import Callable, Optional

from . import _proc, _syscalls
from .spawn import PodProcess

__all__ = ["Members", "terminate_all"]


class Members:
    """The processes of one pod, apart from its holder."""

    def __init__(self, holder_pid: int, kinds: tuple[str, ...], inodes: dict[str, int],
                 holder_reaped_elsewhere: Callable[[], bool] = lambda: False):
        self.holder_pid = holder_pid
        # Once someone else's waitpid(-1) reaped the holder, its PID may name
        # another process: its children are then not looked for.
        self.holder_reaped_elsewhere = holder_reaped_elsewhere
        self.kinds = kinds
        self.inodes = inodes  # the pod's namespaces: kind -> inode
        self.spawned: list[PodProcess] = []

    def add(self, proc: PodProcess) -> None:
        self.spawned.append(proc)

    def reap(self) -> list[int]:
        """Reap the spawned members that have exited; return the pidfds of
        those still running (to wait on)."""
        for p in self.spawned:
            if p.returncode is None:
                p.poll()
        self.spawned = [p for p in self.spawned if p.returncode is None]
        return [p.pidfd for p in self.spawned if p.pidfd >= 0]

    def terminate(self, deadline: float) -> None:
        """SIGTERM to every member; wait until ``deadline`` for them to exit.
        Without a PID namespace (where the holder's exit kills nobody) the
        ones still running then get SIGKILL."""
        terminate_all([self], deadline)

    def kill_all(self) -> None:
        """SIGKILL to every member found (a pod whose holder died)."""
        for fd in self.signal_all(signal.SIGKILL):
            os.close(fd)

    def signal_all(self, sig: int) -> list[int]:
        """Send ``sig`` to every member found; return their pidfds (close them)."""
        fds = self._open_all()
        for fd in fds:
            _syscalls.signal_quietly(fd, sig)
        return fds

    def kill_spawned(self) -> None:
        """SIGKILL and reap every spawned member still running (a pod without
        a PID namespace that ended takes them along)."""
        for p in self.spawned:
            if p.returncode is None:
                p.kill()
                p.wait()
        self.spawned = []

    def reap_strays(self) -> None:
        """The holder is exiting, but the kernel waits until every process of
        its PID namespace is reaped: zombies that are *our* children and not
        spawned members (started with plain subprocess inside
        ``pod.joined("pid")``) would block it forever.  Reap those -- and only
        those in this pod's PID namespace: another zombie child of ours is
        someone else's to wait for."""
        pod_pid_ns = self.inodes.get("pid")
        if pod_pid_ns is None:
            return
        known = {p.pid for p in self.spawned}
        for pid in _proc.children(os.getpid()):
            if pid in known or pid == self.holder_pid:
                continue
            st = _proc.stat(pid)
            # (Our unreaped child: its PID cannot be reused before we reap it.)
            if st is not None and st.state == "Z" and _proc.ns_inode(pid, "pid") == pod_pid_ns:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def _open_all(self) -> list[int]:
        """pidfds of every process of the pod we can find, holder excluded:
        the holder's descendants, the spawned processes and their descendants,
        and (without a PID namespace) every process in the pod's namespace."""
        kind = "pid" if "pid" in self.kinds else self.kinds[0]
        inode = self.inodes.get(kind)
        spawned = {p.pid: p for p in self.spawned if p.returncode is None}
        candidates: dict[int, int] = {}  # pid -> the parent it was found under
        roots = list(spawned) if self.holder_reaped_elsewhere() else [self.holder_pid, *spawned]
        stack: list[tuple[int, int]] = [(pid, 0) for pid in roots]
        while stack:
            pid, parent = stack.pop()
            if pid in candidates:
                continue
            candidates[pid] = parent
            stack.extend((child, pid) for child in _proc.children(pid))
        if "pid" not in self.kinds and inode is not None:
            for pid in _proc.pids_in_namespace(kind, inode):
                candidates.setdefault(pid, 0)
        fds: list[int] = []
        for pid, parent in candidates.items():
            # Not the holder; not this process either (its main thread may be
            # inside the pod's namespaces: joined(), join()).
            if pid in (self.holder_pid, os.getpid()):
                continue
            if pid in spawned:
                fd = spawned[pid].dup_pidfd()  # ours and unreaped: no reuse possible
                if fd >= 0:
                    fds.append(fd)
                continue
            fd = _open_if_still(pid, parent, kind, inode)
            if fd >= 0:
                fds.append(fd)
        return fds


def _open_if_still(pid: int, parent: int, kind: str, inode: Optional[int]) -> int:
    """A pidfd on ``pid`` if, once pinned, it is still in the pod's ``kind``
    namespace or still the child of ``parent`` (the PID could have been
    reused before pidfd_open); else -1."""
    try:
        fd = _syscalls.pidfd_open(pid)
    except OSError:
        return -1
    if (inode is not None and _proc.ns_inode(pid, kind) == inode) or (parent and getattr(_proc.stat(pid), "ppid", 0) == parent):
        return fd
    os.close(fd)
    return -1


def terminate_all(pods: Sequence[Members], deadline: float) -> None:
    """:meth:`Members.terminate` for several pods at once: every member of
    every pod gets SIGTERM first, then all are given until ``deadline``
    together (a stubborn member of one pod must not eat the grace period of
    the next)."""
    signalled = [(m, m.signal_all(signal.SIGTERM)) for m in pods]
    try:
        pending = [fd for _, fds in signalled for fd in fds]
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            done = set(_syscalls.wait_any(pending, min(left, 0.05)))
            for m, _ in signalled:
                m.reap()
            pending = [fd for fd in pending if fd not in done]
        still = set(pending)
        for m, fds in signalled:
            if "pid" not in m.kinds:  # the holder's exit kills nobody: we must
                for fd in fds:
                    if fd in still:
                        _syscalls.signal_quietly(fd, signal.SIGKILL)
    finally:
        for _, fds in signalled:
            for fd in fds:
                os.close(fd)
