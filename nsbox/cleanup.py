"""``nsbox.gc()``: remove what dead pods left behind.

Most of a pod goes with its holder by itself: the kernel frees its
namespaces when the last process (or pin) holding them is gone, and with a
network namespace the veth pairs in it.  What needs gc after a crash:

- a persistent pod whose holder is dead: its pins (they would keep empty
  namespaces alive), its host links, leases and port rules (from its record);
  the record is kept, marked exited, so the pod can be restarted or removed;
- a persistent pod whose creator died while starting it: the half-made
  sandbox (its holder is killed) and its record; one whose stopper died
  half-way: the stop is finished;
- of any pod whose holder is dead: its CNI attachments (DEL of the plugins
  replayed from ``$NSBOX_RUN_DIR/cni/<container id>/state.json``, then its
  network namespace's pin is removed); IPAM leases and published-port rules and
  reservations (owned by the holder's (pid, start time): a reused PID is not
  the owner).
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import time

from . import _proc, _syscalls, podfs
from .net import cni, ipam, nft, ports
from .net.podnet import PodNetwork
from .net.rundir import locked, prune
from .persist import readable_records
from .records import Record, names, pods_dir, unpin, unshare_pods_dir

__all__ = ["gc"]


def gc() -> list[str]:
    """Remove what dead pods left; safe to call at any time, from any
    process.  Returns what was removed, one line each.  It never touches
    what nsbox did not make, nor anything of a pod whose holder runs."""
    removed: list[str] = []
    with locked():
        records = readable_records()
        removed += _debris()
        removed += podfs.sweep(set(names()))
    for rec in records:
        if rec.state in ("starting", "stopping") and rec.creator_alive():
            continue  # in progress in another process: not ours to touch
        alive = rec.holder_alive()
        # A start or stop whose process died half-way: gc finishes it.
        abandoned = rec.state in ("starting", "stopping") and not rec.creator_alive()
        if alive and not abandoned:
            continue
        if alive and rec.holder is not None:
            _kill(*rec.holder)
            what = "start" if rec.state == "starting" else "stop"
            removed.append(f"pod {rec.name}: the holder (PID {rec.holder[0]}) of a {what} whose process died")
        net = PodNetwork.from_record(rec.network)
        if net.attachments:
            try:
                net.detach(background=False)  # (gc is done when it returns)
                removed.append(f"pod {rec.name}: host links, leases and port rules")
            except Exception as e:
                removed.append(f"pod {rec.name}: tearing down its network failed: {e}")
        with locked():
            cur = Record.load(rec.name)
            if cur is None or cur.holder != rec.holder or cur.state != rec.state:
                continue  # changed meanwhile (restarted, removed): not ours to touch
            if cur.state == "starting":
                cur.delete()
                removed.append(f"pod {rec.name}: the record of a start that never finished")
            elif cur.pins or cur.state in ("running", "stopping"):
                unpin(cur.name)
                cur.state = "stopped" if cur.state == "stopping" else "exited"
                cur.holder, cur.pins, cur.network = None, {}, []
                cur.save()
                removed.append(f"pod {rec.name}: pins (the pod is {cur.state}; restart or remove it)")
    removed += cni.sweep()  # CNI attachments of dead holders: DEL from their state, then the pin
    removed += ipam.sweep()
    from .net import names as bridge_names

    removed += bridge_names.sweep()
    if nft.available() or shutil.which("nft"):  # (without either, no rule can have been made)
        removed += ports.sweep()
    return removed


def _debris() -> list[str]:
    """Pod directories without a record: a creator killed while it wrote
    the first one (call under the state lock)."""
    out: list[str] = []
    try:
        dirs = [d for d in pods_dir().iterdir() if d.is_dir() and not (d / "record.json").exists()]
    except FileNotFoundError:
        return out
    for d in dirs:
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a start is going on in it
            (d / ".record.json.tmp").unlink(missing_ok=True)
            unpin(d.name)
            prune(d)
            if not d.exists():
                out.append(f"pod {d.name}: a record that was never finished")
        finally:
            os.close(fd)
    unshare_pods_dir()
    return out


def _kill(pid: int, start_time: int) -> None:
    """SIGKILL the holder ``(pid, start_time)`` and wait until it is gone."""
    try:
        fd = _syscalls.pidfd_open(pid)
    except OSError:
        return
    try:
        if _proc.owner(pid) != (pid, start_time):
            return  # another process has that PID now
        _syscalls.signal_quietly(fd, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _syscalls.pid_is_alive(fd) and time.monotonic() < deadline:
            _syscalls.wait_any([fd], 0.05)
        try:  # ours to reap if we are its parent
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            pass
        except OSError as e:  # pragma: no cover
            if e.errno != errno.ECHILD:
                raise
    finally:
        os.close(fd)
