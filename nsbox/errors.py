"""The nsbox exception hierarchy, and the one place where errno becomes one.

Every nsbox exception derives from :class:`NsboxError` *and* from the closest
built-in exception, so callers may catch either (``except ValueError`` keeps
working for bad input, ``except PermissionError`` for missing privileges).
"""
from __future__ import annotations

import errno as _errno
import os

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


def namespace_error(err: int, what: str, filename: object = None) -> OSError:
    """Map an errno from clone/setns/unshare to the matching nsbox exception.

    ``what`` says what was being attempted, e.g. ``"joining net, uts of PID 42"``.
    """
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
