"""The nsbox exception hierarchy, and the one place where errno (and the
native step that failed) becomes one.

Every nsbox exception derives from :class:`NsboxError` *and* from the closest
built-in exception, so callers may catch either (``except ValueError`` keeps
working for bad input, ``except PermissionError`` for missing privileges).
"""
from __future__ import annotations

import errno as _errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

__all__ = [
    "NsboxError",
    "KindError",
    "ConfigError",
    "NotRunningError",
    "NamespaceError",
    "PrivilegeError",
    "PodStartError",
    "ThreadingError",
    "UnsupportedError",
    "NetworkError",
]


class NsboxError(Exception):
    """Base class of every error nsbox raises on purpose."""

    __module__ = "nsbox"


class KindError(NsboxError, ValueError):
    """An unknown or unusable namespace kind was named."""

    __module__ = "nsbox"


class ConfigError(NsboxError, ValueError):
    """Arguments that are invalid or do not fit together."""

    __module__ = "nsbox"


class NotRunningError(NsboxError, ProcessLookupError):
    """The pod (or the process to join) is not running: never started,
    stopped, or its holder has exited."""

    __module__ = "nsbox"


class NamespaceError(NsboxError, OSError):
    """A namespace operation (clone, setns, unshare) failed; ``errno`` says why."""

    __module__ = "nsbox"


class PrivilegeError(NamespaceError, PermissionError):
    """The operation needs a capability (usually CAP_SYS_ADMIN) this process lacks."""

    __module__ = "nsbox"


class PodStartError(NsboxError, OSError):
    """A step of starting the pod failed; everything it did was rolled back."""

    __module__ = "nsbox"


class ThreadingError(NsboxError, RuntimeError):
    """The operation cannot be done by a process that has several threads."""

    __module__ = "nsbox"


class UnsupportedError(NsboxError, NotImplementedError):
    """A feature the kernel has but nsbox does not (yet) support."""

    __module__ = "nsbox"


class NetworkError(NsboxError, OSError):
    """Setting up or tearing down a pod's network failed; what was already
    made for the pod was removed.  ``errno`` is the kernel's."""

    __module__ = "nsbox"


_PRIVILEGE_HINT = (
    "creating or joining namespaces needs CAP_SYS_ADMIN: run as root "
    "(or add the 'user' kind for an unprivileged pod)"
)


def os_error(cls: type[OSError], err: int, message: str, filename: object = None) -> OSError:
    """Build ``cls(errno, message[, filename])`` (the OSError constructor form)."""
    if filename is None:
        return cls(err, message)
    return cls(err, message, filename)


def namespace_error(err: Optional[int], what: str, filename: object = None) -> OSError:
    """Map an errno from clone/setns/unshare to the matching nsbox exception.

    ``what`` says what was being attempted, e.g. ``"joining net, uts of PID 42"``.
    """
    err = err or _errno.EIO
    reason = os.strerror(err)
    if err == _errno.EPERM:
        return os_error(PrivilegeError, err, f"{what}: {reason}; {_PRIVILEGE_HINT}", filename)
    if err == _errno.ESRCH:
        return NotRunningError(err, f"{what}: the process has exited")
    if err in (_errno.ENOSPC, _errno.EUSERS):
        return os_error(
            NamespaceError,
            err,
            f"{what}: {reason}; the namespace limit was reached "
            "(see /proc/sys/user/max_*_namespaces, or stop unused pods)",
            filename,
        )
    if err == _errno.ENOMEM:
        return os_error(
            NamespaceError,
            err,
            f"{what}: {reason} (a PID namespace whose init has exited accepts no new process)",
            filename,
        )
    return os_error(NamespaceError, err, f"{what}: {reason}", filename)


# ---- native failures: (operation, step, errno) -> exception ------------------


@dataclass(frozen=True)
class Failure:
    """A failed native spawn, with what a message about it needs.

    ``op`` is what nsbox was doing: ``"start"`` (the holder of a pod) or
    ``"spawn"`` (a process into a pod).  ``stage`` is the name of the native
    step (an ``nsbox._syscalls.Stage`` name, e.g. ``"CLONE"``)."""

    op: str
    stage: str
    errno: int
    target: str = "the pod"  # what was started or joined, for messages
    kinds: tuple[str, ...] = ()  # start: the namespaces created
    joins_user: bool = False  # spawn: the pod's user namespace is joined too
    executable: object = None  # spawn: for an exec failure, as subprocess reports it
    cwd: object = None

    @property
    def step(self) -> str:
        """The step in words, as messages show it."""
        return _STEP_WORDS.get(self.stage) or self.stage.lower().replace("_", " ")


# Steps whose name in words is not just the stage's name in lower case.
_STEP_WORDS = {
    "WRITE_UID_MAP": "write uid_map",
    "WRITE_GID_MAP": "write gid_map",
    "WAIT_ID_MAPS": "wait for id maps",
    "OPEN_PID_FOR_CHILDREN": "open pid_for_children",
    "RESTORE_PID_NS": "restore pid namespace",
    "MMAP_STACK": "mmap child stack",
    "MAKE_ROOT_PRIVATE": "make / private",
    "MOUNT_PROC": "mount /proc",
    "LOOPBACK_UP": "bring lo up",
    "OPEN_DEVNULL": "open /dev/null",
    "DUP_FD": "duplicate fd",
    "DUP_STDIO": "duplicate stdio fd",
    "INSTALL_STDIO": "install stdio fd",
    "PASS_FDS": "pass_fds",
    "CLOSE_FDS": "close inherited fds",
}


def _fd_limit(f: Failure) -> OSError:
    return PodStartError(
        f.errno,
        f"starting the pod failed at '{f.step}': {os.strerror(f.errno)}; every running pod keeps "
        "one file descriptor (its holder's pidfd): stop unused pods, or raise the limit "
        "(resource.setrlimit(resource.RLIMIT_NOFILE, ...), ulimit -n)",
    )


def _clone_refused(f: Failure) -> OSError:
    if f.errno == _errno.EPERM and "user" not in f.kinds and not _has_cap_sys_admin():
        return PrivilegeError(
            f.errno,
            f"creating the {', '.join(f.kinds)} namespaces needs CAP_SYS_ADMIN, which this process "
            "lacks: run as root, or add the 'user' kind for an unprivileged pod",
        )
    return namespace_error(f.errno, f"creating the {', '.join(f.kinds)} namespaces")


def _has_cap_sys_admin() -> bool:
    """Checked only after a refused clone (the check costs more than a clone)."""
    try:
        import prctl
    except ImportError:  # pragma: no cover - python-prctl is a dependency
        return True
    return bool(prctl.cap_effective.sys_admin)


def _id_map_refused(f: Failure) -> OSError:
    which = "uid_map" if f.stage == "WRITE_UID_MAP" else "gid_map"
    own = os.geteuid() if which == "uid_map" else os.getegid()
    return PrivilegeError(
        f.errno,
        f"the kernel refused this {which}: without CAP_SETUID/CAP_SETGID a process may only map "
        f"its own id, once (e.g. {which}='0 {own} 1'); pass such a map, or run as root",
    )


def _holder_not_executable(f: Failure) -> OSError:
    return PodStartError(
        f.errno,
        f"the holder program could not start (exec: {os.strerror(f.errno)}); "
        "reinstall nsbox so that nsbox/_native/nsbox-init is built",
    )


def _start_failed(f: Failure) -> OSError:
    return PodStartError(f.errno, f"starting the pod failed at '{f.step}': {os.strerror(f.errno)}")


def _exec_failed(f: Failure) -> OSError:
    return OSError(f.errno, os.strerror(f.errno), f.executable)  # exactly what subprocess raises


def _chdir_failed(f: Failure) -> OSError:
    return OSError(f.errno, os.strerror(f.errno), f.cwd)


def _pid_join_refused(f: Failure) -> OSError:
    if not f.joins_user:
        return _join_refused(f)
    return PrivilegeError(
        f.errno,
        f"joining the PID namespace of {f.target} needs CAP_SYS_ADMIN in this process "
        "(the pod's user namespace is entered after it, by the child); run as root, or "
        "spawn with kinds= leaving out 'pid' (nsbox does not yet do this rootless)",
    )


def _holder_gone(f: Failure) -> OSError:
    return NotRunningError(_errno.ESRCH, f"cannot spawn into {f.target}: its holder has exited")


def _join_refused(f: Failure) -> OSError:
    return namespace_error(f.errno, f"joining the namespaces of {f.target}")


def _pid_namespace_dying(f: Failure) -> OSError:
    return NotRunningError(_errno.ESRCH, f"cannot spawn into {f.target}: its PID namespace is dying")


def _spawn_failed(f: Failure) -> OSError:
    return OSError(f.errno, f"starting a process in {f.target} failed at '{f.step}': {os.strerror(f.errno)}")


_ANY = None
_SETNS = {"SETNS", "SETNS_PID"}
# (operation, steps or _ANY, errnos or _ANY, exception maker): the first match wins.
_FAILURES: list[tuple[str, Optional[set[str]], Optional[set[int]], Callable[[Failure], OSError]]] = [
    ("start", _ANY, {_errno.EMFILE, _errno.ENFILE}, _fd_limit),
    ("start", {"CLONE"}, _ANY, _clone_refused),
    ("start", {"WRITE_UID_MAP", "WRITE_GID_MAP"}, {_errno.EPERM}, _id_map_refused),
    ("start", {"EXEC"}, _ANY, _holder_not_executable),
    ("start", _ANY, _ANY, _start_failed),
    ("spawn", {"EXEC"}, _ANY, _exec_failed),
    ("spawn", {"CHDIR"}, _ANY, _chdir_failed),
    ("spawn", {"CLONE"}, {_errno.ENOMEM}, _pid_namespace_dying),
    ("spawn", {"SETNS_PID"}, {_errno.EPERM}, _pid_join_refused),
    ("spawn", _SETNS, {_errno.ESRCH}, _holder_gone),
    ("spawn", _SETNS, _ANY, _join_refused),
    ("spawn", _ANY, _ANY, _spawn_failed),
]


def failure_error(f: Failure) -> OSError:
    """The exception to raise for a failed native spawn."""
    for op, stages, errnos, make in _FAILURES:
        if op == f.op and (stages is None or f.stage in stages) and (errnos is None or f.errno in errnos):
            return make(f)
    raise AssertionError(f"no error for {f}")  # pragma: no cover - every op ends with a catch-all
