"""Starting processes inside a pod: a real :class:`subprocess.Popen`.

:class:`PodProcess` is a ``subprocess.Popen`` whose child is created by the
native spawner (nsbox/_native/spawn.c) instead of ``_posixsubprocess``: it
joins the pod's namespaces in C between clone and exec, so no Python code
runs in the child and threaded callers are safe.  Pipes, ``communicate``,
``wait``, timeouts and context-manager use are the standard library's own.
"""
from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import threading
from typing import Any, Optional

from . import _syscalls
from .errors import ConfigError, NotRunningError, PrivilegeError, namespace_error, os_error

__all__ = ["PodProcess"]

_UNSUPPORTED = {
    "preexec_fn": "it would run Python code between fork and exec, which is unsafe in a "
    "threaded program and cannot place the child in a PID namespace",
    "startupinfo": "it is a Windows option",
    "creationflags": "it is a Windows option",
}


def check_popen_kwargs(kwargs: dict[str, Any]) -> None:
    """Reject the Popen options nsbox cannot honour, naming the option."""
    for name, why in _UNSUPPORTED.items():
        if kwargs.get(name) not in (None, 0):
            raise ConfigError(f"{name} is not supported by nsbox: {why}")
    if kwargs.get("close_fds", True) is not True:
        raise ConfigError(
            "close_fds=False is not supported: pod processes inherit only fds 0, 1, 2 and "
            "pass_fds; list the fds the process needs in pass_fds"
        )
    if kwargs.get("restore_signals", True) is not True:
        raise ConfigError(
            "restore_signals=False is not supported: pod processes always start with default "
            "signal dispositions and an empty signal mask"
        )


class PodProcess(subprocess.Popen):
    """A :class:`subprocess.Popen` started inside a pod's namespaces.

    In addition to the Popen API it has :attr:`pidfd` (a pidfd on the child,
    closed once the child is reaped), and :meth:`send_signal` uses that pidfd,
    so signalling can never hit an unrelated process that reused the PID.
    """

    pidfd: int

    def __init__(self, args: Any, *, _join_pidfd: int, _join_flags: int, _desc: str, **kwargs: Any):
        check_popen_kwargs(kwargs)
        self.pidfd = -1
        self._pidfd_lock = threading.Lock()
        self._join_pidfd = _join_pidfd
        self._join_flags = _join_flags
        self._desc = _desc
        super().__init__(args, **kwargs)

    # Signature of CPython 3.11+'s POSIX _execute_child; 3.10 has no process_group.
    def _execute_child(  # type: ignore[override]
        self, args, executable, preexec_fn, close_fds, pass_fds, cwd, env,
        startupinfo, creationflags, shell, p2cread, p2cwrite, c2pread, c2pwrite,
        errread, errwrite, restore_signals, gid, gids, uid, umask,
        start_new_session, process_group=-1,
    ):
        if isinstance(args, (str, bytes)):
            args = [args]
        elif isinstance(args, os.PathLike):
            if shell:
                raise TypeError("path-like args is not allowed when shell is true")
            args = [args]
        else:
            args = list(args)
        if shell:
            args = ["/bin/sh", "-c"] + args
            if executable:
                args[0] = executable
        if executable is None:
            executable = args[0]
        sys.audit("subprocess.Popen", executable, args, cwd, env)

        # Everything the child needs is converted here, before clone.
        if env is not None:
            env_list = []
            for k, v in env.items():
                k = os.fsencode(k)
                if b"=" in k:
                    raise ValueError("illegal environment variable name")
                env_list.append(k + b"=" + os.fsencode(v))
        else:
            env_list = None
        orig_executable = executable
        executable = os.fsencode(executable)
        if os.path.dirname(executable):
            exec_paths = [executable]
        else:
            exec_paths = [os.path.join(os.fsencode(d), executable) for d in os.get_exec_path(env)]
        argv = [os.fsencode(a) for a in args]
        cwd_b = os.fsencode(cwd) if cwd is not None else None
        req = _syscalls.SpawnRequest(
            exec_paths=exec_paths,
            argv=argv,
            envp=env_list,
            join_pidfd=self._join_pidfd,
            join_flags=self._join_flags,
            cwd=cwd_b,
            stdio=(p2cread, c2pwrite, errwrite),
            keep_fds=tuple(pass_fds),
            setsid=bool(start_new_session),
            pgid=process_group if process_group is not None and process_group >= 0 else -1,
            umask=umask if umask is not None else -1,
            uid=uid if uid is not None else -1,
            gid=gid if gid is not None else -1,
            groups=gids,
        )
        try:
            self.pid, self.pidfd = _syscalls.spawn(req)
            self._child_created = True
        except _syscalls.SpawnFailed as f:
            raise self._spawn_error(f, orig_executable, cwd) from None
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)

    def _spawn_error(self, f: _syscalls.SpawnFailed, executable: Any, cwd: Any) -> BaseException:
        if f.stage == "exec":
            # Exactly what subprocess raises: FileNotFoundError & co.
            return OSError(f.errno, os.strerror(f.errno), executable)
        if f.stage == "chdir":
            return OSError(f.errno, os.strerror(f.errno), cwd)
        if f.stage == "setns pid" and f.errno == errno.EPERM and self._join_flags & 0x10000000:
            return os_error(
                PrivilegeError, f.errno,
                f"joining the PID namespace of {self._desc} needs CAP_SYS_ADMIN in this process "
                "(the pod's user namespace is entered after it, by the child); run as root, or "
                "spawn with kinds= leaving out 'pid' (nsbox does not yet do this rootless)",
            )
        if f.stage in ("setns", "setns pid"):
            if f.errno == errno.ESRCH:
                return NotRunningError(errno.ESRCH, f"cannot spawn into {self._desc}: its holder has exited")
            return namespace_error(f.errno, f"joining the namespaces of {self._desc}")
        if f.stage == "clone" and f.errno == errno.ENOMEM:
            return NotRunningError(errno.ESRCH, f"cannot spawn into {self._desc}: its PID namespace is dying")
        return OSError(f.errno, f"starting a process in {self._desc} failed at '{f.stage}': {os.strerror(f.errno)}")

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` through the pidfd: a no-op once the child is reaped."""
        self.poll()
        with self._pidfd_lock:
            if self.returncode is not None or self.pidfd < 0:
                return
            try:
                _syscalls.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass

    def _handle_exitstatus(self, *args: Any, **kwargs: Any) -> None:
        super()._handle_exitstatus(*args, **kwargs)
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        lock = getattr(self, "_pidfd_lock", None)
        if lock is None:
            return
        with lock:
            if self.pidfd >= 0:
                fd, self.pidfd = self.pidfd, -1
                _syscalls.close_parked(fd)

    def __del__(self, _warn: Any = None) -> None:  # type: ignore[override]
        super().__del__()
        # (returncode is missing when the options were rejected before Popen.__init__)
        if getattr(self, "returncode", None) is not None:
            self._close_pidfd()


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
