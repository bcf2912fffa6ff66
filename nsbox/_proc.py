"""Reading ``/proc``: one process's state, parent, flags and start time; its
children; the namespaces of a process.  Every /proc parse in nsbox is here.

A PID names a process only for as long as it lives: these functions say what
/proc shows at the moment of the call.  Callers that act on a process pin
it with a pidfd first (see :mod:`nsbox.members`), and use the start time to
recognise a process from a record (:func:`owner`).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

__all__ = ["Stat", "stat", "owner", "Owner", "children", "ns_inode", "pids_in_namespace", "PF_EXITING"]

PF_EXITING = 0x4  # the task is inside exit() (include/linux/sched.h)

# A process as a record can name it: (pid, start time in clock ticks after boot).
Owner = tuple[int, int]


class Stat(NamedTuple):
    """The fields of ``/proc/PID/stat`` nsbox uses."""

    state: str  # R, S, D, Z, ...
    ppid: int
    flags: int  # PF_* (include/linux/sched.h)
    start_time: int  # clock ticks after boot: with the PID, names one process


def stat(pid: int) -> Optional[Stat]:
    """``/proc/PID/stat`` of ``pid``, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and ')': split after the last ')'.
    fields = data.rsplit(b")", 1)[1].split()
    try:
        return Stat(fields[0].decode(), int(fields[1]), int(fields[6]), int(fields[19]))
    except (IndexError, ValueError):  # pragma: no cover - the kernel's format is stable
        return None


def owner(pid: int) -> Optional[Owner]:
    """``(pid, start time)`` of a live (not zombie) process, or None."""
    st = stat(pid)
    if st is None or st.state == "Z":
        return None
    return pid, st.start_time


def children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (empty if it is gone)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def ns_inode(pid: int, kind: str) -> Optional[int]:
    """The inode of ``pid``'s ``kind`` namespace, or None.  (A zombie still
    has its ``pid`` namespace; the others go at exit.)"""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def pids_in_namespace(kind: str, inode: int) -> list[int]:
    """Every process (host PIDs) whose ``kind`` namespace is ``inode``."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and ns_inode(int(name), kind) == inode]
