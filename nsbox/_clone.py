"""The native spawn request and its two forms: :func:`spawn` (clone, wait
for exec) and :class:`PendingSpawn` (clone now, wait for exec later).

Python prepares everything the child needs (CPython's _posixsubprocess does
the same) and the native side (nsbox/_native/spawn.c) clones, sets up and
execs with no Python code in the child.  A failed step comes back as
:class:`SpawnFailed` with its :class:`~nsbox._syscalls.Stage` and errno;
:mod:`nsbox.errors` turns that into an nsbox exception.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ._native._nsbox import ffi, lib
from ._syscalls import Stage, close_parked, park, pidfd_send_signal

__all__ = ["SpawnRequest", "SpawnFailed", "spawn", "Prepared", "PendingSpawn"]

# Children are cloned sharing the fd table (CLONE_FILES) and first take a
# private copy of only the fds below the highest one they need
# (close_range(CLOSE_RANGE_UNSHARE)): copying the whole table at clone would
# cost in proportion to its size, which parked fds make large.
SHARE_FDS = True


@dataclass
class SpawnRequest:
    """Everything the native child needs; see nsbox/_native/nsbox.h."""

    exec_paths: Sequence[bytes]
    argv: Sequence[bytes]
    envp: Optional[Sequence[bytes]] = None
    new_flags: int = 0
    join_pidfd: int = -1
    join_flags: int = 0
    hostname: Optional[bytes] = None
    loopback_up: bool = False
    mount_proc: bool = False
    uid_map: Optional[bytes] = None
    gid_map: Optional[bytes] = None
    cwd: Optional[bytes] = None
    stdio: tuple[int, int, int] = (-1, -1, -1)
    null_stdio: int = 0  # bit i: fd i is /dev/null (opened by the child)
    extra_fds: Sequence[tuple[int, int]] = ()  # (source fd, installed as), at most 2
    lifeline_fd: int = -1  # >= 0: a new pipe's write end installed here, its read end at +1
    keep_fds: Sequence[int] = field(default_factory=tuple)
    keep_signals_blocked: bool = False
    share_fds: Optional[bool] = None  # None: SHARE_FDS
    setsid: bool = False
    pgid: int = -1
    umask: int = -1
    uid: int = -1
    gid: int = -1
    groups: Optional[Sequence[int]] = None


class SpawnFailed(Exception):
    """Raised by :func:`spawn`: ``stage`` is the step that failed, ``errno`` its errno."""

    def __init__(self, stage: Stage, err: int):
        super().__init__(stage, err)
        self.stage = stage
        self.errno = err


def _cstring(value: bytes) -> Any:
    # C strings end at the first NUL: a NUL inside would silently cut the
    # value short (argv "a\0b" run as "a").  subprocess refuses; so do we.
    if b"\0" in value:
        raise ValueError("embedded null byte")
    return ffi.new("char[]", value)


def _strings(items: Sequence[bytes], keep: list) -> object:
    cells = [_cstring(bytes(s)) for s in items]
    array = ffi.new("char *[]", cells + [ffi.NULL])
    keep.extend(cells)
    keep.append(array)  # a struct field does not keep its cdata alive
    return array


def _opt(value: Optional[bytes], keep: list) -> object:
    if value is None:
        return ffi.NULL
    cell = _cstring(value)
    keep.append(cell)
    return cell


def _request(r: SpawnRequest, keep: list) -> Any:
    req = ffi.new("struct nsbox_spawn_req *")
    req.exec_paths = _strings(r.exec_paths, keep)
    req.argv = _strings(r.argv, keep)
    req.envp = _strings(r.envp, keep) if r.envp is not None else ffi.NULL
    req.new_flags = r.new_flags
    req.join_pidfd = r.join_pidfd
    req.join_flags = r.join_flags
    req.hostname = _opt(r.hostname, keep)
    req.loopback_up = int(r.loopback_up)
    req.mount_proc = int(r.mount_proc)
    req.uid_map = _opt(r.uid_map, keep)
    req.gid_map = _opt(r.gid_map, keep)
    req.cwd = _opt(r.cwd, keep)
    req.stdio = list(r.stdio)
    req.null_stdio = r.null_stdio
    if len(r.extra_fds) > 2:
        raise ValueError("at most two extra fds")
    extra = list(r.extra_fds) + [(-1, -1)] * (2 - len(r.extra_fds))
    req.extra_fd_src = [src for src, _ in extra]
    req.extra_fd_dst = [dst for _, dst in extra]
    # (The child moves its own fds to 10 and up before it installs these.)
    if r.lifeline_fd >= 0 and (r.lifeline_fd < 3 or r.lifeline_fd + 1 >= 10 or {r.lifeline_fd, r.lifeline_fd + 1}
                               & ({dst for _, dst in r.extra_fds} | set(r.keep_fds))):
        raise ValueError("lifeline_fd and lifeline_fd + 1 must be in 3..9 and not be extra or kept fds")
    req.lifeline_fd = r.lifeline_fd
    keep_fds = sorted(set(int(fd) for fd in r.keep_fds))
    kf = ffi.new("int[]", keep_fds or [0])
    keep.append(kf)
    req.keep_fds = kf
    req.n_keep = len(keep_fds)
    req.keep_signals_blocked = int(r.keep_signals_blocked)
    req.share_fds = int(SHARE_FDS if r.share_fds is None else r.share_fds)
    req.setsid = int(r.setsid)
    req.pgid = r.pgid
    req.umask = r.umask
    req.uid = r.uid
    req.gid = r.gid
    if r.groups is None:
        req.n_groups = -1
    else:
        groups = ffi.new("unsigned int[]", list(r.groups) or [0])
        keep.append(groups)
        req.groups = groups
        req.n_groups = len(r.groups)
    return req


def _failed(res: Any) -> SpawnFailed:
    try:
        stage = Stage(res.stage)
    except ValueError:  # pragma: no cover - a stage this Python does not know
        stage = Stage(lib.NSBOX_STAGE_NONE)
    return SpawnFailed(stage, res.err)


def spawn(r: SpawnRequest) -> tuple[int, int]:
    """Clone and exec as described by ``r``; returns ``(pid, pidfd)``.

    Raises :class:`SpawnFailed` when a step fails; the child is then already
    reaped and nothing is left open.
    """
    keep: list = []
    req = _request(r, keep)
    res = ffi.new("struct nsbox_spawn_result *")
    if lib.nsbox_spawn(req, res) < 0:
        raise _failed(res)
    return res.pid, park(res.pidfd)


class Prepared:
    """A :class:`SpawnRequest` in native form, reusable for many spawns
    (the native side only reads it) as long as the fds it names stay open."""

    __slots__ = ("req", "_keep")

    def __init__(self, r: SpawnRequest):
        self._keep: list = []
        self.req = _request(r, self._keep)


class PendingSpawn:
    """A child that is cloned (its namespaces exist: ``pid``, ``pidfd``) but
    may not have exec'd yet: the caller can work on its namespaces meanwhile,
    then must call :meth:`finish` exactly once (it runs on the caller's
    memory until then, which this object keeps alive)."""

    def __init__(self, r: "SpawnRequest | Prepared", second_extra_fd: int = -1):
        # Everything __del__ needs is set before the child exists: an
        # exception (a KeyboardInterrupt held back while signals were blocked
        # in the call) can come right after it returns.
        self._owner = os.getpid()
        self._prepared = r if isinstance(r, Prepared) else Prepared(r)
        self._req: Any = self._prepared.req
        if second_extra_fd >= 0:
            # This spawn's own copy of the shared request (other threads may
            # be using it), with its own source for the second extra fd.
            self._req = ffi.new("struct nsbox_spawn_req *", self._req[0])
            self._req.extra_fd_src[1] = second_extra_fd
        self._pending = ffi.new("struct nsbox_spawn_pending *")
        self._pending.status_rd = -1
        res = ffi.new("struct nsbox_spawn_result *")
        if lib.nsbox_spawn_begin(self._req, res, self._pending) < 0:
            raise _failed(res)
        self.pid: int = self._pending.pid
        self.pidfd: int = self._pending.pidfd

    def finish(self) -> tuple[int, int]:
        """Wait until the child has exec'd; returns ``(pid, pidfd)`` (the
        pidfd parked).  Raises :class:`SpawnFailed` if a step before exec
        failed; the child is then reaped and its pidfd closed."""
        res = ffi.new("struct nsbox_spawn_result *")
        if lib.nsbox_spawn_finish(self._pending, res) < 0:
            raise _failed(res)
        self.pid, self.pidfd = res.pid, park(res.pidfd)
        return self.pid, self.pidfd

    def __del__(self) -> None:
        # A pending spawn nobody finished: wait for its exec (its memory must
        # outlive it), then kill and reap it: nobody owns it.  Not in a
        # forked copy of the process, whose pidfd would name our holder.
        pending = getattr(self, "_pending", None)
        if pending is not None and pending.status_rd >= 0 and self._owner == os.getpid():
            try:
                pid, pidfd = self.finish()
            except SpawnFailed:
                return
            try:
                pidfd_send_signal(pidfd, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
            close_parked(pidfd)
