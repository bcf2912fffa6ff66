"""Starting the holder: the native init that is PID 1 of a pod.

The holder is exec'd (never a forked Python interpreter), created by one
clone() with all the pod's new namespaces, and configured before exec by the
native child (hostname, ``lo`` up, private mounts and /proc).  It is tied to
the lifetime of the creating *process* through a pidfd it polls: when the
creator exits for any reason, even SIGKILL, the holder exits and the kernel
kills everything left in the pod's PID namespace.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Optional

from . import _syscalls
from .kinds import KINDS, flags_of

__all__ = ["INIT_PATH", "start_holder", "begin_holder", "creator_pidfd"]

INIT_PATH = Path(__file__).resolve().parent / "_native" / "nsbox-init"

_CREATOR_FD = 3

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


def creator_pidfd() -> int:
    """A pidfd on this process, opened once and shared by all its holders."""
    global _creator
    with _creator_lock:
        pid = os.getpid()
        if _creator is None or _creator[0] != pid:
            _creator = (pid, _syscalls.park(_syscalls.pidfd_open(pid)))
        return _creator[1]


def start_holder(kinds: tuple[str, ...], **options: Any) -> tuple[int, int]:
    """Start nsbox-init in new ``kinds`` namespaces (``options``: those of
    :func:`begin_holder`); returns ``(pid, pidfd)`` once it runs.

    Raises :class:`nsbox._syscalls.SpawnFailed`.
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
) -> _syscalls.PendingSpawn:
    """Clone the holder in new ``kinds`` namespaces and return at once: its
    namespaces exist (a netns can be wired) while it sets itself up and
    execs; ``finish()`` the result to wait for that.

    Raises :class:`nsbox._syscalls.SpawnFailed`.
    """
    creator = creator_pidfd()
    key = (INIT_PATH, kinds, hostname, mount_proc, uid_map, gid_map, verbose, creator)
    prepared = _prepared.get(key)
    if prepared is None:
        prepared = _prepare(kinds, hostname, mount_proc, uid_map, gid_map, verbose, creator)
        if len(_prepared) >= 64:
            _prepared.clear()
        _prepared[key] = prepared
    return _syscalls.PendingSpawn(prepared)


# Holder requests in native form, by shape: pods of one shape reuse one.
_prepared: dict = {}
os.register_at_fork(after_in_child=_prepared.clear)


def _prepare(kinds: tuple[str, ...], hostname: Optional[str], mount_proc: bool, uid_map: Optional[str],
             gid_map: Optional[str], verbose: bool, creator: int) -> _syscalls.Prepared:
    init = os.fsencode(INIT_PATH)
    # No readiness handshake (init's -r): the holder runs from exec on with
    # every signal blocked, so a signal sent before its signalfd exists stays
    # pending instead of being lost; exec itself is confirmed by the
    # close-on-exec status pipe.  Hostname, lo, mounts: all done before exec.
    argv = [init, b"-p", str(_CREATOR_FD).encode()]
    if "pid" not in kinds:
        argv.append(b"-s")  # not PID 1: a quiet child subreaper
    if verbose:
        argv.append(b"-w")
    return _syscalls.Prepared(
        _syscalls.SpawnRequest(
            exec_paths=[init],
            argv=argv,
            envp=[],
            new_flags=flags_of(k for k in kinds if k in KINDS),
            hostname=hostname.encode() if hostname is not None else None,
            loopback_up="net" in kinds,
            mount_proc=mount_proc,
            uid_map=uid_map.encode() if uid_map is not None else None,
            gid_map=gid_map.encode() if gid_map is not None else None,
            cwd=b"/",
            setsid=True,  # its own session from exec on (init's own setsid() then gets EPERM)
            null_stdio=0b011,  # stdin, stdout: /dev/null; stderr: the creator's (for -w)
            extra_fd_src=creator,
            extra_fd_dst=_CREATOR_FD,
            keep_signals_blocked=True,  # nothing is lost before its signalfd exists
        )
    )
