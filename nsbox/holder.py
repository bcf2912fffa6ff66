"""The holder: the native init that is PID 1 of a pod.

The holder is exec'd (never a forked Python interpreter), created by one
clone() with all the pod's new namespaces, and configured before exec by the
native child (hostname, ``lo`` up, private mounts and /proc).  It is tied to
the lifetime of the creating *process* through a pidfd it polls: when the
creator exits for any reason, even SIGKILL, the holder exits and the kernel
kills everything left in the pod's PID namespace.

:class:`Holder` is one running holder: its PID, a pidfd on it, and its exit
status once reaped.
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from . import _clone, _proc, _syscalls
from .errors import Failure, NotRunningError, failure_error
from .kinds import KINDS, flags_of

__all__ = ["INIT_PATH", "Holder", "start_holder", "begin_holder", "creator_pidfd"]

INIT_PATH = Path(__file__).resolve().parent / "_native" / "nsbox-init"

_CREATOR_FD = 3
_LIFELINE_FD = 4

log = logging.getLogger("nsbox")

# Set once pidfd_getfd was refused (EPERM/EACCES: a seccomp filter, as
# Docker's default without CAP_SYS_PTRACE, Yama, an LSM; ENOSYS): holders
# started from then on get a lifeline this process makes itself, its read
# end kept from the start (one more fd per pod).
_getfd_refused = False

# Held while a lifeline's write end is open in this process (only holders
# started after _getfd_refused), and by os.fork() (its before-fork hook): a
# process forked then would keep a copy of it, and the holder's death would
# not close the pipe.  (subprocess's vfork+exec children close it at exec:
# it is close-on-exec.)  The fork hooks are the lock's own methods, written
# in C: no Python frame runs between fork() and the acquire or release, so
# no signal handler (Ctrl-C) can raise in between and leave the lock taken
# for good; an acquire a signal interrupts while waiting leaves the lock to
# its holder, and the release after the fork then fails, which CPython only
# reports.  An RLock: a signal handler that forks while its thread holds
# the lock does not deadlock (the child then keeps a copy of the write end:
# the lifeline says nothing until that child exits, a degraded case only).
_no_fork = threading.RLock()
os.register_at_fork(before=_no_fork.acquire, after_in_parent=_no_fork.release,
                    after_in_child=_no_fork._at_fork_reinit)  # type: ignore[attr-defined]


_creator_lock = threading.Lock()
_creator: Optional[tuple[int, int]] = None  # (pid, pidfd of this process)


def _forget_creator() -> None:
    """After fork: the child is a new creator; drop the parent's pidfd."""
    global _creator
    if _creator is not None:
        try:
            os.close(_creator[1])
        except OSError:
            pass
    _creator = None


os.register_at_fork(after_in_child=_forget_creator)

def _lifeline_ends_match(pid: int) -> bool:
    """True if fds 4 and 5 of ``pid`` are the two ends of one pipe."""
    try:
        w, r = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (_LIFELINE_FD, _LIFELINE_FD + 1))
    except OSError:
        return False
    return w == r and w.startswith("pipe:")


def creator_pidfd() -> int:
    """A pidfd on this process, opened once and shared by all its holders."""
    global _creator
    with _creator_lock:
        pid = os.getpid()
        if _creator is None or _creator[0] != pid:
            _creator = (pid, _syscalls.park(_syscalls.pidfd_open(pid)))
        return _creator[1]


class Holder:
    """One holder, from clone until it is reaped.

    :meth:`begin` returns as soon as the holder is cloned: its namespaces
    exist (a netns can be wired) while it sets itself up and execs;
    :meth:`finish` then waits for that.  Failures raise nsbox exceptions
    (:func:`nsbox.errors.failure_error`), with nothing left behind.
    """

    def __init__(self, pending: _clone.PendingSpawn, kinds: tuple[str, ...]):
        self._pending: Optional[_clone.PendingSpawn] = pending
        self.kinds = kinds
        self.pid: int = pending.pid
        self.pidfd = -1  # parked, once exec'd
        self.ours = True  # our child, started with a lifeline (not adopted)
        # Our copy of the read end of the holder's lifeline, a pipe whose only
        # write end the holder holds: it reports EOF as soon as the holder
        # starts to exit (see init.c -l).  Taken only when needed
        # (:meth:`take_lifeline`): most pods never need it, and a process
        # with 10,000 pods would otherwise hold 20,000 fds.
        self.lifeline = -1
        self.returncode: Optional[int] = None

    @classmethod
    def adopt(cls, pid: int, start_time: int, kinds: tuple[str, ...]) -> "Holder":
        """The running holder ``(pid, start_time)`` of a pod another process
        started (not our child: it is reaped by its parent, or init).
        NotRunningError if that process is gone (or the PID names another)."""
        try:
            pidfd = _syscalls.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = -1
        # Pinned by the pidfd now: is it still the holder the record names?
        st = _proc.stat(pid) if pidfd >= 0 else None
        if st is None or st.state == "Z" or st.start_time != start_time:
            if pidfd >= 0:
                os.close(pidfd)
            raise NotRunningError(errno.ESRCH, f"the holder (PID {pid}) has exited")
        holder = cls.__new__(cls)
        holder._pending = None
        holder.kinds = kinds
        holder.pid = pid
        holder.pidfd = _syscalls.park(pidfd)
        # A persistent pod this process started, attached again: our child,
        # whose lifeline (fds 4 and 5, one pipe) it may take like its own.
        holder.ours = st.ppid == os.getpid() and _lifeline_ends_match(pid)
        holder.lifeline = -1
        holder.returncode = None
        return holder

    @classmethod
    def begin(cls, kinds: tuple[str, ...], **options: Any) -> "Holder":
        """Clone the holder in new ``kinds`` namespaces (``options``: those of
        :func:`begin_holder`) and return at once."""
        if _getfd_refused:
            return cls._begin_with_our_lifeline(kinds, **options)
        try:
            pending = begin_holder(kinds, lifeline=True, **options)
        except _clone.SpawnFailed as f:
            raise failure_error(Failure("start", f.stage.name, f.errno, kinds=kinds)) from None
        return cls(pending, kinds)

    @classmethod
    def _begin_with_our_lifeline(cls, kinds: tuple[str, ...], **options: Any) -> "Holder":
        """:meth:`begin` where pidfd_getfd is refused: the lifeline is a pipe
        of ours, its write end passed to the holder and closed here at once."""
        with _no_fork:  # a fork meanwhile would keep a copy of the write end
            rd, wr = os.pipe2(os.O_CLOEXEC)
            try:
                pending = begin_holder(kinds, lifeline=True, lifeline_source=wr, **options)
            except _clone.SpawnFailed as f:
                os.close(rd)
                raise failure_error(Failure("start", f.stage.name, f.errno, kinds=kinds)) from None
            except BaseException:
                os.close(rd)
                raise
            finally:
                os.close(wr)  # (the holder has its own copy by now)
        holder = cls(pending, kinds)
        holder.lifeline = _syscalls.park(rd)
        return holder

    def take_lifeline(self) -> int:
        """Our copy of the holder's lifeline (taken from the holder the first
        time: ``pidfd_getfd``), or -1 if there is none (an adopted holder of
        another process; one that is exiting; pidfd_getfd refused: holders
        started later get a lifeline of ours, see :meth:`begin`).  Raises
        OSError (EMFILE) when this process is out of fds."""
        global _getfd_refused
        if self.lifeline < 0 and self.ours and self.pidfd >= 0 and self.returncode is None:
            try:
                self.lifeline = _syscalls.park(_syscalls.pidfd_getfd(self.pidfd, _LIFELINE_FD + 1))
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    raise
                if e.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS) and not _getfd_refused:
                    _getfd_refused = True
                    log.warning("pidfd_getfd is refused here (%s): pods started from now on keep one more "
                                "fd each (their lifeline); see docs/lifecycle.md", e)
                # else exiting (ESRCH, EBADF): its pidfd says when it is gone
        return self.lifeline

    def exiting(self, deep: bool = True) -> bool:
        """True once the holder has started to exit (or has exited): its
        lifeline reports EOF, or its pidfd that it has exited; ``deep``
        (not for a mere snapshot): else ``/proc`` says it is inside exit() --
        for a holder without a lifeline of ours, or one whose lifeline a
        copy of its write end keeps open.  (The init of a PID namespace
        finishes exiting only once children of ours in it are reaped.)"""
        if self.lifeline >= 0 and _syscalls.fd_readable(self.lifeline):
            return True
        if not deep:
            return not self.alive
        st = _proc.stat(self.pid)
        if not self.alive:  # (asked after the read: alive now, the PID was still its own then)
            return True
        return st is not None and bool(st.flags & _proc.PF_EXITING)

    def finish(self) -> None:
        """Wait until the holder has exec'd.  If a step before its exec
        failed, the native side has reaped it: raise that step's error."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            self.pid, self.pidfd = pending.finish()
        except _clone.SpawnFailed as f:
            self.returncode = -1
            raise failure_error(Failure("start", f.stage.name, f.errno, kinds=self.kinds)) from None

    @property
    def alive(self) -> bool:
        return self.pidfd >= 0 and self.returncode is None and _syscalls.pid_is_alive(self.pidfd)

    def outlive_creator(self) -> None:
        """From now on the holder outlives this process (a persistent pod,
        once its record names the holder: a creator that dies before leaves
        no holder behind)."""
        self.signal(signal.SIGUSR1)

    def reaped_elsewhere(self) -> bool:
        """True once the holder was reaped by someone else's ``waitpid(-1)``:
        its PID may then name another process."""
        if self.returncode is not None:
            return self.returncode == -1
        if self.pidfd < 0 or _syscalls.pid_is_alive(self.pidfd):
            return False
        try:
            os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return False

    def signal(self, sig: int) -> None:
        if self.pidfd >= 0 and self.returncode is None:
            _syscalls.signal_quietly(self.pidfd, sig)

    def dup_pidfd(self) -> int:
        """A private duplicate of the pidfd: it names the holder even after
        :meth:`close`, and the number cannot be reused meanwhile."""
        return os.dup(self.pidfd)

    def reap(self, deadline: Optional[float], members_pidfds: Callable[[], list[int]],
             on_exiting: Callable[[], None]) -> bool:
        """Wait for the holder to exit and reap it; False if ``deadline``
        passed first.  Meanwhile ``members_pidfds()`` reaps the members that
        are our children and says which to wait on too (a PID namespace's
        init cannot finish exiting while members that are our children are
        unreaped zombies), and ``on_exiting()`` runs once the holder is
        inside exit() (to reap other zombies that would block it)."""
        if self.returncode is not None or self.pidfd < 0:
            return True
        while True:
            fds = [self.pidfd, *members_pidfds()]
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            _syscalls.wait_any(fds, 0.05 if left is None else min(left, 0.05))
            if not _syscalls.pid_is_alive(self.pidfd):
                break
            st = _proc.stat(self.pid)  # our unreaped child: the PID is still the holder's
            if st is not None and st.flags & _proc.PF_EXITING:
                on_exiting()
        try:
            info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED)
        except ChildProcessError:
            self.returncode = -1  # reaped by someone else (waitpid(-1) elsewhere)
            return True
        assert info is not None
        self.returncode = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        return True

    def kill_and_reap(self) -> None:
        """For a failed start: SIGKILL, wait, reap (also if never exec'd)."""
        if self._pending is not None:
            try:
                self.finish()
            except Exception:
                return  # reaped by the native side
        self.signal(signal.SIGKILL)
        self.reap(None, list, lambda: None)

    def close(self) -> None:
        """Close the pidfd (once reaped: the PID may then name another
        process) and the lifeline."""
        for name in ("pidfd", "lifeline"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                _syscalls.close_parked(fd)


def start_holder(kinds: tuple[str, ...], **options: Any) -> tuple[int, int]:
    """Start nsbox-init in new ``kinds`` namespaces (``options``: those of
    :func:`begin_holder`); returns ``(pid, pidfd)`` once it runs.

    Raises :class:`nsbox._clone.SpawnFailed`.
    """
    return begin_holder(kinds, **options).finish()


def begin_holder(
    kinds: tuple[str, ...],
    *,
    hostname: Optional[str] = None,
    mount_proc: bool = False,
    uid_map: Optional[str] = None,
    gid_map: Optional[str] = None,
    verbose: bool = False,
    lifeline: bool = False,
    lifeline_source: int = -1,
    tied: bool = True,
    loopback_up: bool = True,
) -> _clone.PendingSpawn:
    """Clone the holder in new ``kinds`` namespaces and return at once: its
    namespaces exist (a netns can be wired) while it sets itself up and
    execs; ``finish()`` the result to wait for that.

    ``lifeline``: give the holder a lifeline, a pipe of its own made before
    exec (write end: its fd 4, read end: fd 5, for
    :meth:`Holder.take_lifeline`); with ``lifeline_source``, that fd (a
    pipe's write end) is installed as its fd 4 instead.  The holder exits when this process does, until
    :meth:`Holder.outlive_creator`; ``tied=False`` (a pod that will) only
    keeps it off this process's stderr.  ``loopback_up=False``: the caller
    sets the new network namespace's ``lo`` up itself.

    Raises :class:`nsbox._clone.SpawnFailed`.
    """
    _syscalls.require_kernel()
    creator = creator_pidfd()
    assert lifeline or lifeline_source < 0, "lifeline_source needs lifeline=True"
    ours = lifeline_source >= 0
    key = (INIT_PATH, kinds, hostname, mount_proc, uid_map, gid_map, verbose, creator, lifeline, ours, tied,
           loopback_up)
    prepared = _prepared.get(key)
    if prepared is None:
        prepared = _prepare(kinds, hostname, mount_proc, uid_map, gid_map, verbose, creator, lifeline, ours, tied,
                            loopback_up)
        if len(_prepared) >= 64:
            _prepared.clear()
        _prepared[key] = prepared
    return _clone.PendingSpawn(prepared, second_extra_fd=lifeline_source)


# Holder requests in native form, by shape: pods of one shape reuse one.
_prepared: dict = {}
os.register_at_fork(after_in_child=_prepared.clear)


def _prepare(kinds: tuple[str, ...], hostname: Optional[str], mount_proc: bool, uid_map: Optional[str],
             gid_map: Optional[str], verbose: bool, creator: int, lifeline: bool, our_lifeline: bool,
             tied: bool, loopback_up: bool) -> _clone.Prepared:
    init = os.fsencode(INIT_PATH)
    # No readiness handshake (init's -r): the holder runs from exec on with
    # every signal blocked, so a signal sent before its signalfd exists stays
    # pending instead of being lost; exec itself is confirmed by the
    # close-on-exec status pipe.  Hostname, lo, mounts: all done before exec.
    argv = [init, b"-p", str(_CREATOR_FD).encode()]
    if lifeline:
        argv += [b"-l", str(_LIFELINE_FD).encode()]
    if "pid" not in kinds:
        argv.append(b"-s")  # not PID 1: a quiet child subreaper
    if verbose:
        argv.append(b"-w")
    return _clone.Prepared(
        _clone.SpawnRequest(
            exec_paths=[init],
            argv=argv,
            envp=[],
            new_flags=flags_of(k for k in kinds if k in KINDS),
            hostname=hostname.encode() if hostname is not None else None,
            loopback_up="net" in kinds and loopback_up,
            mount_proc=mount_proc,
            uid_map=uid_map.encode() if uid_map is not None else None,
            gid_map=gid_map.encode() if gid_map is not None else None,
            cwd=b"/",
            setsid=True,  # its own session from exec on (init's own setsid() then gets EPERM)
            # stdin, stdout: /dev/null; stderr: the creator's (for -w) -- not for a
            # holder that outlives it: whoever reads that pipe would wait forever
            null_stdio=0b011 if tied or verbose else 0b111,
            # (our_lifeline: its source is set per spawn, PendingSpawn's second_extra_fd)
            extra_fds=[(creator, _CREATOR_FD)] + ([(-1, _LIFELINE_FD)] if lifeline and our_lifeline else []),
            lifeline_fd=_LIFELINE_FD if lifeline and not our_lifeline else -1,
            keep_signals_blocked=True,  # nothing is lost before its signalfd exists
        )
    )
