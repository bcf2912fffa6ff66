"""nftables from inside this process: libnftables (``libnftables.so.1``,
Debian's ``libnftables1``, a dependency of ``nft``) through ctypes, so a
rule change costs ~0.1-0.3 ms instead of an ``nft`` process (~5-10 ms).

A :class:`Context` is one libnftables context, and so one netlink socket.
That matters for tables made with ``flags owner`` (Linux >= 5.12): the
kernel deletes such a table, with its rules, when the socket that made it
is closed — when its process dies, however it dies — and refuses changes to
it from any other socket.  :func:`run` uses this process's one context,
so the tables it makes are this process's.

Without libnftables, scripts go to an ``nft -f -`` process (as before),
and owned tables are not available (the socket would die with ``nft``).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import socket
import subprocess
import threading
from typing import Optional

from ..errors import NetworkError

__all__ = ["Context", "available", "run", "context", "close"]

NFT_CTX_OUTPUT_HANDLE = 1 << 3
NETLINK_NETFILTER = 12
_lib: Optional[ctypes.CDLL] = None
_loaded = False
_load_lock = threading.Lock()


def _library() -> Optional[ctypes.CDLL]:
    global _lib, _loaded
    with _load_lock:
        if not _loaded:
            _loaded = True
            try:
                lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
            except OSError:
                return None
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_free.restype = None
            for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                getattr(lib, name).argtypes = [ctypes.c_void_p]
                getattr(lib, name).restype = ctypes.c_char_p
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            _lib = lib
        return _lib


def available() -> bool:
    """True if scripts run in-process (libnftables), else through ``nft``."""
    return _library() is not None


def _sockets() -> set[int]:
    """This process's NETLINK_NETFILTER sockets (fds)."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(name))) as s:
                if s.family == socket.AF_NETLINK and s.proto == NETLINK_NETFILTER:
                    out.add(int(name))
        except OSError:
            pass
    return out


class Context:
    """One libnftables context (its own netlink socket, made in the calling
    thread's network namespace).  Not thread-safe: callers hold a lock."""

    def __init__(self, track_socket: bool = False):
        lib = _library()
        if lib is None:
            raise NetworkError(errno.ENOENT, "libnftables.so.1 is not installed (Debian package libnftables1)")
        self._lib = lib
        before = _sockets() if track_socket else set()
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise NetworkError(errno.ENOMEM, "nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        lib.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_HANDLE)
        # libnftables opens its socket without O_CLOEXEC: a child that execs
        # must not keep it (and with it an owned table) alive.
        self.socket_fds = sorted(_sockets() - before) if track_socket else []
        for fd in self.socket_fds:
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)

    def run(self, script: str) -> str:
        """Run ``script`` (nft syntax, one transaction); its output, or
        NetworkError with nft's own error text."""
        if self._ctx is None:
            raise NetworkError(errno.EBADF, "nftables context is closed")
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            code = errno.EPERM if "Operation not permitted" in err else errno.EIO
            raise NetworkError(code, err.strip() or "nftables refused the change")
        return out

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run(script: str) -> str:
    """Run ``script`` through this process's :func:`context` (or an ``nft
    -f -`` process without libnftables); raise NetworkError if nftables
    refuses it."""
    if available():
        with _ctx_lock:
            return context().run(script)
    if shutil.which("nft") is None:
        raise NetworkError(errno.ENOENT, "port publishing needs libnftables or the nft command (Debian package nftables)")
    r = subprocess.run(["nft", "-a", "-f", "-"], input=script, capture_output=True, text=True)
    if r.returncode != 0:
        raise NetworkError(errno.EIO, r.stderr.strip() or "nft failed")
    return r.stdout


# ---- this process's context ----------------------------------------------------------

_ctx: Optional[Context] = None
_ctx_lock = threading.RLock()


def context() -> Context:
    """This process's one context, made on first use and kept open: the
    tables it makes with ``flags owner`` are this process's, deleted by the
    kernel when it exits.  Never made and closed per call: closing a
    netfilter socket right after a change waits for the kernel to finish
    destroying the old rules (an RCU grace period), and a fresh context
    costs the next change ~0.8 ms more (measured).  Its socket is one fd
    kept open, like the shared rtnetlink socket's."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            _ctx = Context(track_socket=True)
        return _ctx


def close() -> None:
    """Close this process's context: the kernel deletes the tables it owns
    (and the caller waits for that: an RCU grace period).  (Exit does it too.)"""
    global _ctx
    with _ctx_lock:
        if _ctx is not None:
            _ctx.close()
            _ctx = None


def _forget() -> None:
    # A forked child must not keep the parent's owned table alive, nor use its socket.
    global _ctx, _ctx_lock
    _ctx_lock = threading.RLock()
    if _ctx is not None:
        for fd in _ctx.socket_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        _ctx = None  # (its memory is the parent's copy: not freed here)


os.register_at_fork(after_in_child=_forget)
