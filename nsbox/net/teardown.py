"""Background teardown: a stopped pod's host side goes away without its
``stop()`` waiting for it.

Deleting a link (``RTM_DELLINK``) waits for an RCU grace period: 10-30 ms,
most of a networked pod's stop.  But once a pod's holder is reaped, its
network namespace is freed and the kernel deletes the pod's veth pair by
itself (in batches, in its ``cleanup_net`` worker).  Waiting for that in
the caller is no faster than deleting (measured on 6.18: 27 ms against 17
ms median), so neither is done in the caller: :func:`defer` hands the
attachment to one reaper thread, which polls the links (``RTM_GETLINK``,
~1-10 ms apart) until the kernel has deleted them, deletes any still there
after :data:`KERNEL_CLEANUP` seconds (a namespace kept alive by something
else), and only then removes the port rules and releases the reservations
and the address lease.

Nothing still in use is handed out meanwhile: before an attachment is
deferred, its lease and host-port reservations are made this *process's*
(they were the dead holder's, which any process may reclaim), so other
processes see them taken; a pod of this process that needs one of them (the
same fixed address or port, a restart) waits for the reaper (:func:`settle`)
and retries once.  If this process dies first, the kernel still deletes
the links with their namespaces, and the lease and reservations become
reclaimable (their owner is dead).

:func:`settle` waits until everything deferred is done (tests' leak checks
call it; it also runs at interpreter exit).
"""
from __future__ import annotations

import atexit
import collections
import errno
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional, TypeVar

from ..errors import NetworkError
from . import link

if TYPE_CHECKING:
    from .attachment import Attachment

__all__ = ["defer", "settle", "pending", "retry_settled", "KERNEL_CLEANUP"]

# How long the reaper waits for the kernel to delete a link with its
# namespace before deleting it explicitly.
KERNEL_CLEANUP = 2.0
_POLL_MIN, _POLL_MAX = 0.001, 0.01

_cond = threading.Condition()
# (attachment, deadline), oldest first, guarded by _cond.  The reaper looks
# at the oldest _SAMPLE at a time (the kernel frees namespaces in about the
# order they died), so a poll costs one round trip however many pods were
# stopped one by one (asking about all of them cost a round trip per 32,
# and a list.remove() each, at every poll).
_queue: collections.deque[tuple["Attachment", float]] = collections.deque()
_SAMPLE = 32
_busy = 0  # attachments the reaper took from _queue and is finishing, guarded by _cond
_errors: list[Exception] = []  # teardown failures not yet reported by settle()
_thread: Optional[threading.Thread] = None

T = TypeVar("T")


def defer(att: "Attachment") -> None:
    """Tear ``att`` down in the background (its pod's namespace is gone or
    going): wait for the kernel to delete its link, then release the rest."""
    global _thread
    with _cond:
        _queue.append((att, time.monotonic() + KERNEL_CLEANUP))
        if _thread is None:
            _thread = threading.Thread(target=_run, name="nsbox-teardown", daemon=True)
            _thread.start()
        _cond.notify_all()


def pending() -> int:
    """How many attachments are still being torn down in the background."""
    with _cond:
        return len(_queue) + _busy


def settle(timeout: float = 10.0) -> None:
    """Wait until every deferred teardown is done: no link, rule, port
    reservation or lease of a stopped pod is left.  Raises the first
    teardown failure since the last call (as :class:`~nsbox.NetworkError`),
    or ``NetworkError(ETIMEDOUT)`` if not done within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with _cond:
        while _queue or _busy:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NetworkError(errno.ETIMEDOUT, f"{len(_queue) + _busy} pod network(s) still being torn down "
                                   f"after {timeout} s")
            _cond.notify_all()  # (wake the reaper: someone is waiting)
            _cond.wait(left)
        errors, _errors[:] = list(_errors), []
    if errors:
        first = errors[0]
        if isinstance(first, NetworkError):
            raise first
        raise NetworkError(getattr(first, "errno", None) or errno.EIO, str(first)) from first


def retry_settled(fn: Callable[[], T]) -> T:
    """``fn()``; if it fails because an address, name, host port or bridge
    port is taken while teardowns are pending (a stopped pod of this process
    may still hold it), settle them and try once more."""
    try:
        return fn()
    except NetworkError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EEXIST, errno.EXFULL) or not pending():
            raise
    settle()
    return fn()


# ---- the reaper thread ---------------------------------------------------------------


def _run() -> None:
    from . import rtnl as rt

    # This thread lives in the home namespace (ports, /proc/sys/net): a
    # thread starts in its creator's namespace, which may be a pod's.
    rt.go_home()
    global _busy
    delay = _POLL_MIN
    while True:
        with _cond:
            while not _queue:
                delay = _POLL_MIN
                _cond.wait()
            batch = [_queue[i] for i in range(min(_SAMPLE, len(_queue)))]
        now = time.monotonic()
        alive: set[int] = set()  # (ids of attachments whose link is still there)
        by_ns: dict[int, list["Attachment"]] = {}  # (host sides in the home namespace, or a router's)
        for a, _ in batch:
            if a.host_index and not a.detached:
                by_ns.setdefault(a.host_netns, []).append(a)
        for ns, group in by_ns.items():
            try:
                with rt.in_netns(ns) as host:
                    still = link.existing(host, [a.host_index for a in group])
                alive.update(id(a) for a in group if a.host_index in still)
            except Exception:
                alive.update(id(a) for a in group)  # unknown: try again, delete at the deadline
        done = [(a, d) for a, d in batch if id(a) not in alive]
        late = [(a, d) for a, d in batch if id(a) in alive and now >= d]
        finished = done + late
        if finished:
            gone = {id(a) for a, _ in finished}
            with _cond:
                # (the batch is the queue's front: defer() only appends)
                keep = [_queue.popleft() for _ in range(len(batch))]
                _queue.extendleft(reversed([item for item in keep if id(item[0]) not in gone]))
                _busy += len(finished)
            try:
                for att, _ in done:
                    _finish(att, link_gone=True)
                for att, _ in late:
                    _finish(att, link_gone=False)  # still there: delete it now
            finally:
                with _cond:
                    _busy -= len(finished)
                    _cond.notify_all()
            delay = _POLL_MIN
            continue
        with _cond:
            _cond.wait(delay)
        delay = min(delay * 2, _POLL_MAX)


def _finish(att: "Attachment", link_gone: bool) -> None:
    try:
        att.detach(link_gone=link_gone)
    except Exception as e:
        with _cond:
            _errors.append(e)


def _at_exit() -> None:
    try:
        settle(KERNEL_CLEANUP + 5.0)
    except Exception as e:
        warnings.warn(f"nsbox: tearing down stopped pods' networks at exit: {e}", RuntimeWarning, stacklevel=1)


def _forget() -> None:
    # A forked child has no reaper thread; the parent tears its pods down.
    global _thread, _busy, _cond
    from . import rtnl as rt

    _cond = threading.Condition()  # (another thread may have held it at fork)
    for att, _ in _queue:
        if att.owns_host_netns:  # (a router's namespace: the child must not keep it alive)
            rt.release_netns(att.host_netns)
            att.owns_host_netns = False
    _queue.clear()
    _errors.clear()
    _busy = 0
    _thread = None


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_forget)
