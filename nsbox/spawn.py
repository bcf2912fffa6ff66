"""Starting processes inside a pod: a real :class:`subprocess.Popen`.

:class:`PodProcess` is a ``subprocess.Popen`` whose child is created by the
native spawner (nsbox/_native/spawn.c) instead of ``_posixsubprocess``: it
joins the pod's namespaces in C between clone and exec, so no Python code
runs in the child and threaded callers are safe.  Pipes, ``communicate``,
``wait``, timeouts and context-manager use are the standard library's own.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, Optional

from . import _clone, _syscalls
from .errors import ConfigError, Failure, failure_error

__all__ = ["PodProcess", "run_process"]

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

    def __init__(self, args: Any, *, _join_pidfd: int, _join_flags: int, _desc: str, _joins_user: bool = False,
                 **kwargs: Any):
        check_popen_kwargs(kwargs)
        self.pidfd = -1
        self._pidfd_lock = threading.Lock()
        self._join_pidfd = _join_pidfd
        self._join_flags = _join_flags
        self._desc = _desc
        self._joins_user = _joins_user
        super().__init__(args, **kwargs)

    # Signature of CPython 3.11+'s POSIX _execute_child; 3.10 has no process_group.
    def _execute_child(
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
        req = _clone.SpawnRequest(
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
            self.pid, self.pidfd = _clone.spawn(req)
            self._child_created = True
        except _clone.SpawnFailed as f:
            raise failure_error(Failure(
                "spawn", f.stage.name, f.errno, target=self._desc, joins_user=self._joins_user,
                executable=orig_executable, cwd=cwd,
            )) from None
        finally:
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # type: ignore[attr-defined]

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

    def dup_pidfd(self) -> int:
        """A private duplicate of :attr:`pidfd` (close it), or -1 once the
        child is reaped.  Taken under the lock that closes the pidfd: a
        concurrent ``wait()`` cannot close it, and its number be reused by
        another process's pidfd, between the check and the copy."""
        with self._pidfd_lock:
            if self.pidfd < 0:
                return -1
            return os.dup(self.pidfd)

    def _handle_exitstatus(self, *args: Any, **kwargs: Any) -> None:
        super()._handle_exitstatus(*args, **kwargs)  # type: ignore[misc]
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        lock = getattr(self, "_pidfd_lock", None)
        if lock is None:
            return
        with lock:
            if self.pidfd >= 0:
                fd, self.pidfd = self.pidfd, -1
                _syscalls.close_parked(fd)

    def __del__(self, _warn: Any = None) -> None:
        super().__del__()
        # (returncode is missing when the options were rejected before Popen.__init__)
        if getattr(self, "returncode", None) is not None:
            self._close_pidfd()


def run_process(
    spawn: Callable[..., subprocess.Popen],
    *,
    input: Any = None,
    capture_output: bool = False,
    timeout: Optional[float] = None,
    check: bool = False,
    **popen_kwargs: Any,
) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` over ``spawn(**popen_kwargs)`` (a Popen maker)."""
    if input is not None:
        if popen_kwargs.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        popen_kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        if popen_kwargs.get("stdout") is not None or popen_kwargs.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        popen_kwargs["stdout"] = subprocess.PIPE
        popen_kwargs["stderr"] = subprocess.PIPE
    with spawn(**popen_kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            # As subprocess.run: the output read so far is already on the
            # exception; wait for the process only (reading on would also wait
            # for whatever else holds the pipes, e.g. a background child).
            process.wait()
            raise
        except BaseException:
            process.kill()
            raise
        retcode = process.poll()
        assert retcode is not None
        if check and retcode:
            raise subprocess.CalledProcessError(retcode, process.args, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(process.args, retcode, stdout, stderr)
