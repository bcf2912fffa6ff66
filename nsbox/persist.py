"""What a persistent pod does at each step of its life, on disk.

:class:`Persistence` is the part of a :class:`~nsbox.Pod` made with
``persist=True``: ``Pod`` calls it at each step (starting, holder cloned,
running, stopping, ended, removed) and it keeps the pod's record and pins
(:mod:`nsbox.records`) in step, under nsbox's state lock.  The pod's
holder then outlives the process that made it.
"""
from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional

from . import _proc
from .errors import ConfigError, NotRunningError
from .net.rundir import locked
from .records import Record, pin, pod_dir

if TYPE_CHECKING:
    from .lifecycle import PodStatus

__all__ = ["Persistence", "pods", "readable_records"]


class Persistence:
    def __init__(self, name: str, record: Optional[Record] = None):
        self.name = name
        self.record = record  # None until started (or attached)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Only one process at a time starts or restarts this pod: a lock on
        its directory (not the state lock, which starting takes itself)."""
        while True:
            with locked():  # (gc prunes empty pod directories under this lock)
                pod_dir(self.name).mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(pod_dir(self.name), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_nlink:
                    break  # (else removed while we waited: lock the new one)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)

    def starting(self, spec_record: dict[str, Any], first: bool) -> Optional[Record]:
        """Before anything is made.  A first start claims the name; a restart
        returns the record if another process restarted the pod meanwhile
        (then adopt its holder instead of making a second sandbox)."""
        creator = _proc.owner(os.getpid())
        with locked():
            rec = Record.load(self.name)
            if first and rec is not None:
                what = "running" if rec.holder_alive() else "stopped" if rec.state == "stopped" else "exited"
                raise ConfigError(
                    f"a pod named {self.name!r} exists ({what}); attach to it (nsbox.Pod.attach), "
                    "restart it, or remove it first"
                )
            if not first and rec is not None and rec.state == "running" and rec.holder_alive():
                if self.record is None or rec.holder != self.record.holder:
                    self.record = rec
                    return rec  # someone else's new sandbox
            if rec is None:
                rec = Record(name=self.name, spec=spec_record)
            rec.state, rec.creator, rec.holder = "starting", creator, None
            rec.inodes, rec.pins, rec.network = {}, {}, []
            rec.save()  # before the holder exists: a crash from here on leaves a record for gc
            self.record = rec
        return None

    def holder_cloned(self, pid: int) -> None:
        """Right after clone, before anything else is made for the pod."""
        assert self.record is not None
        with locked():
            self.record.holder = _proc.owner(pid)
            self.record.save()

    def network_made(self, network: list[dict[str, Any]]) -> None:
        assert self.record is not None
        with locked():
            self.record.network = network
            self.record.save()

    def running(self, pid: int, kinds: tuple[str, ...], inodes: dict[str, int], network: list[dict[str, Any]],
                restarts: int) -> None:
        assert self.record is not None
        with locked():
            self.record.pins = pin(self.name, pid, kinds)
            self.record.inodes, self.record.network, self.record.state = dict(inodes), network, "running"
            self.record.restarts = restarts
            self.record.save()

    def failed(self, first: bool) -> None:
        """A start that failed and was rolled back."""
        if self.record is None:
            return
        with locked():
            if first:
                self.record.delete()
                self.record = None
            else:
                self.record.state, self.record.holder, self.record.pins, self.record.network = "exited", None, {}, []
                self.record.save()

    def stopping(self) -> None:
        """Before the holder is told to exit: no process restarts it then
        (and gc finishes the stop if this process dies before it did).  Only
        if the record still names this pod's holder: a stale Pod whose
        sandbox another process replaced must not mark (or get killed) the
        new one."""
        with locked():
            rec = Record.load(self.name)
            if rec is None or self.record is None or rec.holder is None or rec.holder != self.record.holder:
                return
            rec.state, rec.creator = "stopping", _proc.owner(os.getpid())
            rec.save()

    def wants_restart(self) -> bool:
        """After a holder death: false if some process is stopping the pod."""
        with locked():
            rec = Record.load(self.name)
        return rec is not None and rec.state not in ("stopping", "stopped")

    def ended(self, stopped: bool, returncode: Optional[int], exited_at: float, restarts: int) -> None:
        """The holder is reaped and the network detached: unpin, say so."""
        from .records import unpin

        with locked():
            rec = Record.load(self.name)
            if rec is None:
                return
            if self.record is not None and rec.holder not in (None, self.record.holder):
                return  # the record names another process's newer sandbox
            unpin(self.name)
            rec.state = "stopped" if stopped or rec.state == "stopping" else "exited"
            rec.holder, rec.pins, rec.network = None, {}, []
            rec.returncode, rec.exited_at, rec.restarts = returncode, exited_at, restarts
            rec.save()
            self.record = rec

    def remove(self) -> None:
        with locked():
            rec = Record.load(self.name)
            if rec is not None:
                if rec.holder_alive():
                    raise ConfigError(f"pod {self.name!r} is running (PID {rec.holder and rec.holder[0]}); stop it first")
                if rec.state in ("starting", "stopping") and rec.creator_alive():
                    raise ConfigError(
                        f"pod {self.name!r} is {rec.state} (by PID {rec.creator and rec.creator[0]}); try again once it is done"
                    )
                rec.delete()
            self.record = None

    def _update(self, **fields: Any) -> None:
        with locked():
            rec = Record.load(self.name)
            if rec is None:
                return
            for key, value in fields.items():
                setattr(rec, key, value)
            rec.save()

    @staticmethod
    def load(name: str) -> Record:
        with locked():
            rec = Record.load(name)
        if rec is None:
            raise NotRunningError(errno.ESRCH, f"no persistent pod named {name!r} (nsbox.pods() lists them)")
        return rec


def pods() -> list["PodStatus"]:
    """The persistent pods on this machine (their records), with their status."""
    from .lifecycle import PodStatus

    out = []
    with locked():
        records = readable_records()
    for rec in records:
        alive = rec.holder_alive()
        state = rec.state
        if state in ("starting", "stopping") and rec.creator_alive():
            pass  # in progress in another process
        elif state == "stopping" and alive:
            pass  # its stopper died: gc finishes the stop
        elif state in ("starting", "running", "stopping") and not alive:
            state = "exited"
        out.append(PodStatus(
            state=state, pid=rec.holder[0] if alive and rec.holder else None,
            start_time=rec.holder[1] if alive and rec.holder else None, returncode=rec.returncode,
            exited_at=rec.exited_at, restarts=rec.restarts, inodes=dict(rec.inodes) if alive else {},
            name=rec.name, pins=dict(rec.pins) if alive else {},
        ))
    return out


def readable_records() -> list[Record]:
    """Every record that can be read (call under the state lock); one that
    cannot is logged and skipped, so it never blocks the others."""
    import logging

    from .errors import NsboxError
    from .records import names

    out = []
    for name in names():
        try:
            rec = Record.load(name)
        except NsboxError as e:
            logging.getLogger("nsbox").warning("skipping pod %r: %s", name, e)
            continue
        if rec is not None:
            out.append(rec)
    return out
