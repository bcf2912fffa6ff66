"""Who is on which bridge, by name, across processes: what keeps the
``/etc/hosts`` of pods on a bridge listing each other.

One file per bridge, ``/run/nsbox/names/<bridge>.json`` (``$NSBOX_RUN_DIR``
moves it)::

    {"10.201.0.2": {"hostname": "web-0", "owner": [PID, START_TIME], "files": "/run/.../etc"},
     "10.201.0.3": {"hostname": null, "owner": [...], "files": null}}

keyed by address (the IPAM lease, :mod:`nsbox.net.ipam`, says who holds
one: a new entry replaces whatever was registered at its address, so a dead
pod's entry goes when its address is reused).  ``owner`` is the pod's holder
as ``(pid, start time)`` (PID-reuse safe, as for leases); ``files`` the
directory of its :class:`nsbox.podfiles.PodFiles` (None: a pod without a
mount namespace, which is listed but has no ``/etc/hosts`` to refresh).

Every change happens under nsbox's state lock (:func:`rundir.locked`) and
is one read and one atomic write (tmp + rename) of the bridge's file; no
/proc scan (entries of dead owners are replaced by address or removed by
:func:`sweep`, i.e. ``nsbox.gc()``).  Then the hosts file of every entry
with ``files`` is rewritten in place, if its peers changed.

Cost, with N pods on a bridge (F of them with files, P with a hostname):
a join or leave of a named pod reads and writes the JSON (O(N) bytes),
reads the F ``hosts.json`` files and rewrites F hosts files of O(P) lines
each: O(F * P) bytes, so starting N such pods one after another writes
O(N^3) bytes in all.  Measured (tmpfs, one process): a join or leave
takes ~3 ms at N = 100 and ~30 ms at N = 1,000 (20 KB hosts files), so
starting 1,000 named pods with files costs ~14 s of refreshes in all.  A
pod without a hostname changes no other pod's peers: only its own hosts
file (if it has one) is written (~2 ms at N = 1,000: the JSON).  A pod on several bridges also reads the JSON
of its other bridges when it is refreshed (once per event per bridge).
"""
from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from .. import podfiles
from .._proc import Owner
from .._proc import owner as owner_of
from ..errors import ConfigError, NetworkError
from .rundir import locked, prune, run_dir

__all__ = ["join", "leave", "peers", "sweep"]

log = logging.getLogger("nsbox")

Entries = dict[str, dict[str, Any]]  # {address: {"hostname", "owner", "files"}}


def _names_dir() -> Path:
    return run_dir() / "names"


def _path(bridge: str) -> Path:
    if not isinstance(bridge, str) or not bridge or "/" in bridge or bridge.startswith(".") or "\0" in bridge:
        raise ConfigError(f"bridge name {bridge!r} cannot name a file (a link name, e.g. 'nsbr0')")
    return _names_dir() / f"{bridge}.json"


def _canonical(address: Any) -> str:
    try:
        if isinstance(address, str) and "/" in address:
            return str(ipaddress.ip_interface(address).ip)
        return str(ipaddress.ip_address(address if not isinstance(address, str) else address.strip()))
    except ValueError:
        raise ConfigError(f"{address!r} is not an IP address") from None


def _load(path: Path) -> Entries:
    """A bridge's entries; none if it has no file.  A file that cannot be
    parsed (written by hand?) counts as empty and is replaced at the next
    change: better than refusing every pod on the bridge."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("nsbox: ignoring unreadable %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


def _save(path: Path, entries: Entries) -> None:
    """Write the bridge's entries atomically; no entries: no file (and no
    empty names directory) left."""
    if not entries:
        path.unlink(missing_ok=True)
        prune(path.parent)
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(entries, sort_keys=True))
    os.replace(tmp, path)


def _owner(entry: dict[str, Any]) -> Optional[Owner]:
    try:
        pid, start = entry["owner"]
        return int(pid), int(start)
    except (KeyError, TypeError, ValueError):
        return None


def _named(entries: Entries) -> list[tuple[str, str]]:
    return [(e["hostname"], a) for a, e in entries.items() if isinstance(e, dict) and e.get("hostname")]


def _refresh(bridge: str, entries: Entries, targets: Iterable[str], strict: Optional[str] = None) -> None:
    """Rewrite the hosts files of the ``targets`` (addresses) on ``bridge``
    that have files.  Call under the lock; ``entries`` is the bridge's
    current (saved) state.  A file that cannot be written raises for the
    ``strict`` address (the pod joining), else it is logged: the change
    itself is made, and the next event rewrites the file again."""
    loaded: dict[str, Entries] = {bridge: entries}
    blocks: dict[tuple[str, ...], podfiles._PeerBlock] = {}
    for address in targets:
        entry = entries.get(address)
        if not isinstance(entry, dict) or not entry.get("files"):
            continue
        dir = entry["files"]
        info = podfiles._HostsInfo.load(dir)
        if info is None:
            continue  # the pod's files are gone (its owner died): gc sweeps the entry
        bridges = tuple(sorted(set(info.bridges) | {bridge}))
        block = blocks.get(bridges)
        if block is None:
            pairs: list[tuple[str, str]] = []
            for other in bridges:
                if other not in loaded:
                    try:
                        loaded[other] = _load(_path(other))
                    except ConfigError:
                        loaded[other] = {}
                pairs += _named(loaded[other])
            block = blocks[bridges] = podfiles._PeerBlock(pairs)
        try:
            podfiles._refresh(dir, info, block)
        except (OSError, ConfigError) as e:
            if address == strict:
                raise
            log.warning("nsbox: cannot refresh %s/hosts (pod at %s on bridge %s): %s", dir, address, bridge, e)


def join(bridge: str, address: str, hostname: Optional[str], owner: Owner, files: Optional[Path]) -> None:
    """Register the pod ``owner`` at ``address`` on ``bridge`` (replacing
    whatever was registered at that address), then refresh the hosts files
    on the bridge: every one if ``hostname`` changes the bridge's peers,
    else just the pod's own (``files``, written by
    :meth:`nsbox.podfiles.PodFiles.write`).  Takes the state lock.  If the
    pod's own hosts file cannot be written, :class:`NetworkError` is raised
    with the entry already registered: :func:`leave` undoes it."""
    path = _path(bridge)
    address = _canonical(address)
    if hostname is not None:
        hostname = podfiles.check_hostname(hostname)
    pid, start = owner
    entry = {"hostname": hostname, "owner": [int(pid), int(start)], "files": str(files) if files is not None else None}
    with locked():
        entries = _load(path)
        old = entries.get(address)
        entries[address] = entry
        _save(path, entries)
        peers_changed = hostname is not None or (isinstance(old, dict) and bool(old.get("hostname")))
        try:
            _refresh(bridge, entries, list(entries) if peers_changed else [address], strict=address)
        except (OSError, ConfigError) as e:
            raise NetworkError(getattr(e, "errno", None) or errno.EIO,
                               f"writing /etc/hosts of the pod at {address} on bridge {bridge} "
                               f"(in {files}) failed: {e}") from e


def leave(bridge: str, address: str, owner: Owner) -> None:
    """Remove ``owner``'s entry at ``address`` from ``bridge`` (nothing if
    it is not there, or another owner's), refresh the rest; the bridge's
    file goes with its last entry.  Idempotent; takes the state lock."""
    path = _path(bridge)
    address = _canonical(address)
    with locked():
        entries = _load(path)
        entry = entries.get(address)
        if not isinstance(entry, dict) or _owner(entry) != tuple(owner):
            return
        del entries[address]
        _save(path, entries)
        if entry.get("hostname"):
            _refresh(bridge, entries, list(entries))


def peers(bridge: str) -> list[tuple[str, str]]:
    """``(hostname, address)`` of every pod on ``bridge`` that has a
    hostname, sorted.  Reads the file without the lock (it is replaced
    atomically), so it may be called with the lock held."""
    return sorted(_named(_load(_path(bridge))))


def _bridges() -> list[str]:
    try:
        return sorted(p.name[: -len(".json")] for p in _names_dir().iterdir()
                      if p.name.endswith(".json") and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def sweep() -> list[str]:
    """Drop every entry whose owner is dead (checked as leases are: the PID
    must still name the process started then), refresh the hosts files of
    the bridges that changed; returns one line per entry dropped."""
    removed: list[str] = []
    with locked():
        for bridge in _bridges():
            path = _path(bridge)
            entries = _load(path)
            dead = [a for a, e in entries.items() if not _alive(e)]
            if not dead:
                continue
            named = False
            for address in dead:
                entry = entries.pop(address)
                named = named or bool(isinstance(entry, dict) and entry.get("hostname"))
                who = entry.get("hostname") if isinstance(entry, dict) else None
                owner = _owner(entry) if isinstance(entry, dict) else None
                removed.append(f"name {who or '(no hostname)'} at {address} on bridge {bridge} "
                               f"(holder {owner[0] if owner else '?'} is gone)")
            _save(path, entries)
            if named:
                _refresh(bridge, entries, list(entries))
        prune(_names_dir())
    return removed


def _alive(entry: Any) -> bool:
    owner = _owner(entry) if isinstance(entry, dict) else None
    return owner is not None and owner_of(owner[0]) == owner

