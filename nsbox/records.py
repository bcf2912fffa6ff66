"""Persistent pods on disk: their records and their pinned namespaces.

A persistent pod lives under ``/run/nsbox/pods/NAME/`` (``$NSBOX_RUN_DIR``
moves the root): ``record.json`` says what the pod is and what it made, and
``ns/KIND`` are bind mounts of its namespace files (like ``ip netns add`` and
CRI-O's pinns), so ``nsenter --net=/run/nsbox/pods/NAME/ns/net`` works and
the namespaces are found again after the creator exits.

Every change happens under nsbox's state lock.  The record names the holder
by ``(pid, start time)`` and is written before the resources it names are
made, so a crash at any moment leaves enough for :func:`nsbox.gc` to clean.
"""
from __future__ import annotations

import errno
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import _proc, _syscalls
from .errors import ConfigError, NsboxError
from .net.rundir import prune, run_dir, share, unshare

__all__ = ["Record", "check_name", "pod_dir", "names", "pin", "unpin", "RECORD_FORMAT"]

RECORD_FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Kinds that are pinned.  Not mnt: a bind mount of a mount namespace inside
# the mount tree can make propagation loops; the pod's mounts are reached
# through the holder (nsenter --mount=/proc/PID/ns/mnt) while it runs.
PINNED = ("user", "pid", "net", "ipc", "uts", "cgroup")


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"a pod name must be 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, not {name!r}"
        )
    return name


def pods_dir() -> Path:
    return run_dir() / "pods"


def pod_dir(name: str) -> Path:
    return pods_dir() / name


def names() -> list[str]:
    """Names of the pods that have a record (call under the state lock)."""
    try:
        return sorted(p.name for p in pods_dir().iterdir() if _NAME.match(p.name) and (p / "record.json").exists())
    except FileNotFoundError:
        return []


@dataclass
class Record:
    """What is on disk about one persistent pod."""

    name: str
    spec: dict[str, Any]
    state: str = "starting"  # starting -> running -> stopped | exited
    creator: Optional[tuple[int, int]] = None  # (pid, start time) of the process starting or stopping it
    holder: Optional[tuple[int, int]] = None  # (pid, start time) of the running holder
    inodes: dict[str, int] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)  # kind -> path
    network: list[dict[str, Any]] = field(default_factory=list)  # PodNetwork.to_record()
    restarts: int = 0
    returncode: Optional[int] = None
    exited_at: Optional[float] = None
    created_at: float = field(default_factory=time.time)

    @property
    def path(self) -> Path:
        return pod_dir(self.name) / "record.json"

    def save(self) -> None:
        """Write atomically (call under the state lock)."""
        data = {"format": RECORD_FORMAT, **asdict(self)}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(".record.json.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, name: str) -> Optional["Record"]:
        """The record of ``name``, or None (call under the state lock)."""
        path = pod_dir(check_name(name)) / "record.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise NsboxError(f"the record of pod {name!r} at {path} is unreadable: {e}; remove the directory") from None
        if data.pop("format", None) != RECORD_FORMAT:
            raise NsboxError(f"the record of pod {name!r} at {path} has an unknown format")
        for key in ("creator", "holder"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    def holder_alive(self) -> bool:
        """True while the holder the record names runs (a reused PID is not it)."""
        return self.holder is not None and _proc.owner(self.holder[0]) == tuple(self.holder)

    def creator_alive(self) -> bool:
        return self.creator is not None and _proc.owner(self.creator[0]) == tuple(self.creator)

    def delete(self) -> None:
        """Remove the record, the pins and the pod's directory (under the lock)."""
        from .podfs import fs_dir, remove_storage, storage_key

        unpin(self.name)
        remove_storage(fs_dir() / storage_key(self.name, True))  # (its volumes go with its name)
        self.path.unlink(missing_ok=True)
        # (and a newer version a creator killed in save() left half-written)
        self.path.with_name(".record.json.tmp").unlink(missing_ok=True)
        prune(pod_dir(self.name))
        unshare_pods_dir()


def _share_pods_dir() -> None:
    """Make the pods directory a shared mount point of its own, once (as
    ``ip netns`` does with /run/netns): pins made in it then appear in the
    mount namespaces that copied it, whatever the propagation of the mount
    it lives on.  (Under the state lock.)"""
    share(pods_dir())


def unshare_pods_dir() -> None:
    """Once no pod is left in it: unmount the pods directory and remove it
    (nothing of nsbox stays mounted).  (Under the state lock.)"""
    unshare(pods_dir())


def pin(name: str, pid: int, kinds: tuple[str, ...]) -> dict[str, str]:
    """Bind-mount ``/proc/PID/ns/KIND`` at ``pods/NAME/ns/KIND`` for each
    pinnable kind; returns ``{kind: path}``.  On failure, undoes what it did."""
    pods_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        _share_pods_dir()
    except OSError as e:
        raise NsboxError(f"making {pods_dir()} a shared mount point: {e.strerror}") from None
    ns_dir = pod_dir(name) / "ns"
    ns_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pins: dict[str, str] = {}
    try:
        for kind in kinds:
            if kind not in PINNED:
                continue
            target = ns_dir / kind
            target.touch(mode=0o444)
            _syscalls.bind_mount(f"/proc/{pid}/ns/{kind}", str(target))
            pins[kind] = str(target)
    except OSError as e:
        unpin(name)
        raise NsboxError(f"pinning the {kind} namespace of pod {name!r} at {target}: {e.strerror}") from None
    return pins


def unpin(name: str) -> None:
    """Unmount and remove every pin of ``name``; idempotent."""
    ns_dir = pod_dir(name) / "ns"
    try:
        entries = list(ns_dir.iterdir())
    except FileNotFoundError:
        return
    for target in entries:
        try:
            _syscalls.umount(str(target))
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
                raise
        target.unlink(missing_ok=True)
    prune(ns_dir)
