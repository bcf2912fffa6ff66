"""The rtnetlink transport: sockets (in a chosen network namespace), one
batch of requests per ``send()``, and the answers.

Why not ``pyroute2.IPRoute``: its 0.9 core opens its socket lazily, per
thread, in whatever network namespace the *using* thread is in, and its
``netns=`` form forks a helper per call.  nsbox must know exactly which
namespace a request goes to, so it opens the socket itself — in the pod's
namespace when needed (see :func:`socket_in_netns`) — and uses pyroute2 only
to encode messages (:mod:`nsbox.net.messages`).

A request's answers are returned by the call that sent it (:meth:`Rtnl.ask`),
never kept on the socket object: the shared socket serves every thread.
A request the kernel refuses comes back as a :class:`~nsbox.NetworkError`
whose message names the step and carries the kernel's own explanation.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional, TypeVar

from ..errors import NetworkError

__all__ = ["Rtnl", "Request", "Answer", "socket_in_netns", "shared", "shared_in", "in_netns", "HEADER",
           "hold_netns", "release_netns", "call_in_netns", "home_netns_fd", "go_home"]

NETLINK_ROUTE = 0
CLONE_NEWNET = 0x40000000
T = TypeVar("T")
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SOL_NETLINK = 270
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
_TIMEOUT = 10.0  # seconds: the kernel answers at once, or something is badly wrong
HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, seq, pid
_RECV_BUF = 1 << 16  # answers are acks, single links and routes (< 2 kB each), one per datagram
_MSG_TRUNC = int(socket.MSG_TRUNC)  # (an IntFlag: its & costs a Python call per answer)


class Request:
    """One rtnetlink message: a pyroute2 message object (or its encoding, a
    ``bytearray`` whose header is patched here), its type and flags.

    ``what`` says what it does, for error messages: a ``str.format`` string
    and its ``args``, formatted only when needed (formatting addresses for
    every request costs more than encoding the message).  An ``aside`` (a
    request whose refusal the caller ignores) is not the one a batch's
    timeout names."""

    __slots__ = ("msg", "type", "flags", "_what", "_args", "aside")

    def __init__(self, msg: Any, type: int, flags: int, what: str, *args: Any):
        self.msg, self.type, self.flags, self._what, self._args = msg, type, flags, what, args
        self.aside = False

    @property
    def what(self) -> str:
        return self._what.format(*self._args) if self._args else self._what


class Answer(NamedTuple):
    """What the kernel said to one request: its refusal (or None), and the
    messages it answered with (raw, header included), e.g. a link or route."""

    error: Optional[NetworkError]
    replies: list


def socket_in_netns(ns_fd: int) -> socket.socket:
    """A NETLINK_ROUTE socket bound to the network namespace ``ns_fd``.

    The native call moves the *calling* thread into that namespace and back
    within one C call, with every signal blocked, so no Python code ever runs
    in the pod's namespace; it falls back to a short-lived helper thread
    only if the thread could not come back (then it never leaves)."""
    from .. import _syscalls

    fd = _syscalls.socket_in_netns(ns_fd, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    return _setup(socket.socket(fileno=fd))


_shared: Optional["Rtnl"] = None  # the home namespace's
_shared_lock = threading.Lock()
# The process's own network namespace (where pods are normally made).
# An fd on it, kept for the process's life (a forked child's own too): how
# threads born elsewhere (inside a pod) get back, and where a pod made at
# home restarts whichever thread restarts it.
_HOME_FD = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
HOME_INO = os.fstat(_HOME_FD).st_ino


def shared() -> "Rtnl":
    """An rtnetlink socket in the calling thread's network namespace.

    In the process's own namespace it is one long-lived socket shared by all
    threads (requests are serialized by its lock), whose ``netns_fd`` is an
    fd on that namespace kept open: pods remember where their host side
    lives without one fd each.  In any other namespace (a thread inside a
    pod making a nested pod) it is a private socket with a private
    ``netns_fd``, both closed by ``close()``: keeping them would keep that
    namespace alive.  Forgotten in forked children."""
    global _shared
    from .. import _syscalls

    if os.stat("/proc/thread-self/ns/net").st_ino != HOME_INO:
        r = Rtnl()
        try:
            r.netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            r.close()
            raise
        r.owns_netns = True
        return r
    with _shared_lock:
        if _shared is None:
            r = Rtnl(shared=True)
            r.netns_fd = _syscalls.park(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            _shared = r
        return _shared


# Namespaces other than the home one that host sides of this process's pods
# live in (pods made from a thread inside another pod, a "router"): one fd
# per namespace, shared by all those pods' attachments and counted, instead
# of an fd each (10,000 such pods would not fit the fd limit).
# (st_dev, st_ino) -> [fd, references]; fd -> (st_dev, st_ino).
_held_ns: dict[tuple[int, int], list[int]] = {}
_held_fds: dict[int, tuple[int, int]] = {}
# (An RLock: a garbage collection inside hold_netns may run a Pod's
# __del__, whose stop() releases a hold in the same thread.)
_held_lock = threading.RLock()


def home_netns_fd() -> int:
    """An fd on the process's own network namespace (the one ``HOME_INO``
    names), whichever namespace the calling thread is in."""
    return _HOME_FD


def go_home() -> None:
    """Move the calling thread to the process's own network namespace if it
    is elsewhere (a thread started by a thread inside a pod): a long-lived
    thread there would keep that namespace alive, and talk to the wrong one.
    Best effort (it cannot fail for our own namespace)."""
    from .. import _syscalls

    try:
        if os.stat("/proc/thread-self/ns/net").st_ino != HOME_INO:
            _syscalls.setns(_HOME_FD, CLONE_NEWNET)
    except OSError:  # pragma: no cover
        pass


def hold_netns(netns_fd: int) -> int:
    """An fd on the namespace ``netns_fd`` names, kept open until every
    :func:`release_netns` of it: the same fd for every holder of one
    namespace."""
    from .. import _syscalls

    st = os.fstat(netns_fd)
    key = (st.st_dev, st.st_ino)
    with _held_lock:
        entry = _held_ns.get(key)
        if entry is None:
            fd = _syscalls.park(os.dup(netns_fd))  # (high: out of the way of children's low fds)
            entry = _held_ns[key] = [fd, 0]
            _held_fds[fd] = key
        entry[1] += 1
        return entry[0]


def release_netns(fd: int) -> None:
    """Drop one hold of :func:`hold_netns`'s ``fd``; the last one closes it."""
    with _held_lock:
        key = _held_fds.get(fd)
        if key is None:
            return
        entry = _held_ns[key]
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held_ns[key], _held_fds[fd]
    os.close(fd)


def call_in_netns(netns_fd: int, fn: Callable[[], T], undo: Optional[Callable[[T], Any]] = None) -> T:
    """``fn()`` on a short-lived helper thread inside the network namespace
    ``netns_fd`` (the calling thread stays where it is).  Interrupted while
    it runs, the caller waits for it anyway and ``undo``-es its result."""
    from .. import _syscalls

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            _syscalls.setns(netns_fd, CLONE_NEWNET)
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, name="nsbox-in-netns", daemon=True)
    t.start()
    try:
        t.join()
    except BaseException:
        while t.is_alive():  # (another Ctrl-C meanwhile: keep waiting, the result must be undone)
            try:
                t.join()
            except BaseException:
                pass
        if "result" in box and undo is not None:
            try:
                undo(box["result"])
            except Exception:
                pass  # (the interruption is what the caller must see)
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]


def _forget_held() -> None:
    global _held_lock
    _held_lock = threading.RLock()  # (the fds stay: a forked child's pods share them, as before the fork)


os.register_at_fork(after_in_child=_forget_held)


def shared_in(netns_fd: int) -> Optional["Rtnl"]:
    """The shared socket if ``netns_fd`` is its namespace's fd; never makes one."""
    r = _shared
    return r if r is not None and r.netns_fd == netns_fd else None


def in_netns(netns_fd: int) -> "Rtnl":
    """An rtnetlink socket in the namespace ``netns_fd`` (-1: the calling
    thread's): the shared one if it is that namespace's (never a new shared
    one, which would keep a namespace alive), else a private one."""
    if netns_fd < 0:
        return Rtnl()
    r = shared_in(netns_fd)
    return r if r is not None else Rtnl(socket_in_netns(netns_fd))


def _forget_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.sock.close()
        os.close(_shared.netns_fd)
        _shared = None


os.register_at_fork(after_in_child=_forget_shared)


def _open() -> socket.socket:
    return _setup(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE))


def _setup(s: socket.socket) -> socket.socket:
    try:
        s.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        s.settimeout(None)  # blocking, whatever socket.setdefaulttimeout() says: see Rtnl._recv
        s.bind((0, 0))
    except BaseException:
        s.close()
        raise
    return s


class Rtnl:
    """An rtnetlink socket in one network namespace (the caller's by default).

    ``netns_fd`` is an fd on that namespace when known (see :func:`shared`),
    else -1; ``owns_netns``: ``close()`` closes it."""

    def __init__(self, sock: Optional[socket.socket] = None, shared: bool = False):
        self.sock = sock if sock is not None else _open()
        self._seq = 0
        self._lock = threading.Lock()
        self._shared = shared
        self.netns_fd = -1
        self.owns_netns = False
        self._buf = bytearray(_RECV_BUF)  # used only with _lock held

    @property
    def is_shared(self) -> bool:
        return self._shared

    def close(self) -> None:
        if not self._shared:
            self.sock.close()
            if self.owns_netns and self.netns_fd >= 0:
                os.close(self.netns_fd)
                self.netns_fd = -1

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, requests: Sequence[Request]) -> list[Optional[NetworkError]]:
        """Send ``requests`` in one batch; return the kernel's refusal (or
        None) of each.  The kernel handles them in order; a failed one does
        not stop the rest."""
        return [a.error for a in self.ask(requests)]

    def check(self, requests: Sequence[Request]) -> None:
        """Run ``requests`` and raise the first refusal."""
        for a in self.ask(requests):
            if a.error is not None:
                raise a.error

    def ask(self, requests: Sequence[Request]) -> list[Answer]:
        """Send ``requests`` in one batch; return each one's :class:`Answer`."""
        with self._lock:
            seqs = []
            chunks = []
            for r in requests:
                self._seq += 1
                if isinstance(r.msg, bytearray):  # already encoded: patch the header
                    struct.pack_into("=HHI", r.msg, 4, r.type, r.flags, self._seq)
                    chunks.append(r.msg)
                else:
                    r.msg["header"]["type"] = r.type
                    r.msg["header"]["flags"] = r.flags
                    r.msg["header"]["sequence_number"] = self._seq
                    r.msg.reset()
                    r.msg.encode()
                    chunks.append(r.msg.data)
                seqs.append(self._seq)
            self.sock.send(b"".join(chunks))
            errors: dict[int, Optional[NetworkError]] = {}
            replies: dict[int, list[bytes]] = {}
            first = seqs[0] if seqs else 0

            def waiting_for() -> str:  # (on a timeout: the first unanswered request that counts)
                return next((requests[i] for i, s in enumerate(seqs) if s not in errors and not requests[i].aside),
                            requests[0]).what

            while len(errors) < len(seqs):
                data, sender = self._recv(waiting_for)
                if sender != 0:
                    continue  # not from the kernel
                off = 0
                while off + HEADER.size <= len(data):
                    length, mtype, flags, seq, _pid = HEADER.unpack_from(data, off)
                    if length < HEADER.size:
                        break
                    if not first <= seq < first + len(seqs):
                        pass  # a late answer to an earlier, abandoned batch
                    elif mtype == NLMSG_ERROR:
                        body = data[off + HEADER.size : off + length]
                        (code,) = struct.unpack_from("=i", body)
                        errors[seq] = None if code == 0 else _refusal(-code, body, flags, requests[seq - first])
                    elif mtype == NLMSG_DONE:
                        errors.setdefault(seq, None)
                    else:
                        replies.setdefault(seq, []).append(data[off : off + length])
                    off += (length + 3) & ~3
            return [Answer(errors[s], replies.get(s, [])) for s in seqs]

    def _recv(self, waiting_for: Callable[[], str]) -> tuple[bytes, int]:
        """The next datagram and its sender.  The kernel handles a request
        inside send() and queues the answer before send() returns, so it is
        read without waiting (no poll() per answer); poll only if it is not
        there yet, and give up after _TIMEOUT."""
        while True:
            try:
                # Into a buffer kept per socket: recvfrom(1 MB) would allocate
                # (mmap and fault in) a fresh megabyte per answer.
                n, _anc, flags, (sender, _groups) = self.sock.recvmsg_into([self._buf], 0, socket.MSG_DONTWAIT)
                if flags & _MSG_TRUNC:
                    raise NetworkError(errno.EMSGSIZE, "an answer from the kernel did not fit the receive buffer")
                return bytes(self._buf[:n]), sender
            except BlockingIOError:
                pass
            poller = select.poll()  # (select() fails for fds >= 1024)
            poller.register(self.sock, select.POLLIN)
            if not poller.poll(_TIMEOUT * 1000):
                raise NetworkError(errno.ETIMEDOUT, f"{waiting_for()}: no answer from the kernel")


def _refusal(code: int, body: bytes, flags: int, request: Request) -> NetworkError:
    """The error for a refused ``request``: what it did, strerror, and the
    kernel's extended-ack message if it sent one."""
    detail = ""
    if flags & NLM_F_ACK_TLVS:
        off = 4 + HEADER.size  # error code + the (capped) original header
        while off + 4 <= len(body):
            alen, atype = struct.unpack_from("=HH", body, off)
            if alen < 4:
                break
            if atype == NLMSGERR_ATTR_MSG:
                detail = body[off + 4 : off + alen].split(b"\0", 1)[0].decode(errors="replace")
            off += (alen + 3) & ~3
    return NetworkError(code, f"{request.what}: {os.strerror(code)}" + (f" ({detail})" if detail else ""))


def attributes(raw: bytes, offset: int) -> dict[int, bytes]:
    """The top-level attributes (type -> payload) of the message ``raw``
    (header included), whose fixed part ends at ``offset``."""
    out = {}
    off = offset
    while off + 4 <= len(raw):
        alen, atype = struct.unpack_from("=HH", raw, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = raw[off + 4 : off + alen]  # (without NLA_F_NESTED/NET_BYTEORDER)
        off += (alen + 3) & ~3
    return out
