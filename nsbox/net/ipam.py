"""Address allocation for bridges (like CNI host-local), safe across threads
and processes.

State lives under ``/run/nsbox/ipam/<bridge>/`` (``$NSBOX_RUN_DIR`` moves
it): one file per leased address, named after it, holding the owner — the
pod's holder — as ``PID START_TIME``.  The start time (``/proc/PID/stat``
field 22) makes the owner check immune to PID reuse: a lease whose holder is
gone, or whose PID now names another process, is free again.  Every change
happens under nsbox's state lock (:mod:`nsbox.net.rundir`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from .._proc import Owner
from .._proc import owner as owner_of
from ..errors import NetworkError
from .rundir import locked, prune, run_dir

__all__ = ["Ipam", "Lease", "Owner", "owner_of"]

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_MAX_SCAN = 1 << 16  # addresses looked at before giving up on a huge subnet


# Leases this process wrote and still holds, by lease directory: {address: owner}.
# Their owners are this process's running pods, so allocate() need not read
# each of those leases and check its owner in /proc again (else every
# allocation is O(pods on the bridge) in system calls; see docs/performance.md).
# Guarded by the state lock, like the files.
_ours: dict[Path, dict[str, Owner]] = {}
# Per lease directory: every candidate address below this index (in hosts()
# order) is reserved or one of ours, so a scan for the lowest free address
# starts there (else the scan itself grows with the pods).
_low: dict[Path, int] = {}


def _forget() -> None:
    _ours.clear()
    _low.clear()


os.register_at_fork(after_in_child=_forget)


@dataclass(frozen=True)
class Lease:
    """One leased address: where its lease file is, and whose it is."""

    dir: Path
    network: Network
    address: Address
    owner: Owner

    def release(self) -> None:
        """Give the address back if the owner still holds it; idempotent."""
        Ipam(self.dir.name, self.network, set(), dir=self.dir).release(self.address, self.owner)

    def transfer(self, owner: Owner) -> "Lease":
        """The same address leased to ``owner`` instead (e.g. this process,
        while a stopped pod's link is still being deleted); a lease no longer
        held is not taken back."""
        ipam = Ipam(self.dir.name, self.network, set(), dir=self.dir)
        with ipam.locked():
            path = ipam._lease_path(self.address)
            if ipam._owner(path) == self.owner:
                ipam._write(self.address, owner)
            ours = _ours.get(self.dir, {})
            if ours.get(str(self.address)) == self.owner:
                ours[str(self.address)] = owner
        return dataclasses.replace(self, owner=owner)

    def to_record(self) -> dict[str, Any]:
        return {"dir": str(self.dir), "network": str(self.network), "address": str(self.address),
                "owner": list(self.owner)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Lease":
        pid, start = record["owner"]
        return cls(Path(record["dir"]), ipaddress.ip_network(record["network"]),
                   ipaddress.ip_address(record["address"]), (int(pid), int(start)))


class Ipam:
    def __init__(self, key: str, network: Network, reserved: set, *, dir: Optional[Path] = None):
        self.dir = dir if dir is not None else run_dir() / "ipam" / key
        self.network = network
        self.reserved = set(reserved)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with locked():
            yield

    def _lease_path(self, addr: Address) -> Path:
        return self.dir / str(addr)

    def _owner(self, path: Path) -> Optional[Owner]:
        try:
            pid, start = path.read_text().split()
            return int(pid), int(start)
        except (OSError, ValueError):
            return None

    def _is_live(self, owner: Optional[Owner]) -> bool:
        return owner is not None and owner_of(owner[0]) == owner

    def allocate(self, owner: Owner, want: Optional[Address] = None) -> Address:
        """Lease ``want`` (or the lowest free address) to ``owner``.  Call
        inside :meth:`locked`."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ours = _ours.setdefault(self.dir, {})
        if want is not None:
            if str(want) in ours or self._is_live(self._owner(self._lease_path(want))):
                raise NetworkError(errno.EADDRINUSE, f"address {want} is in use by another pod")
            self._write(want, owner)
            ours[str(want)] = owner
            return want
        # No listing of the lease directory (O(leases) per allocation): the
        # scan starts past every address known to be ours, so the first
        # candidate is nearly always free, and a lease file is read only
        # for a candidate that is not ours (missing: free).
        first, count = self._hosts()
        make = type(self.network.network_address)
        low = _low.get(self.dir, 0)
        for i in range(low, min(count, low + _MAX_SCAN)):
            addr = make(first + i)
            if addr in self.reserved:
                continue
            name = str(addr)
            if name in ours or self._is_live(self._owner(self._lease_path(addr))):
                continue
            self._write(addr, owner)  # free, or reclaimed from a dead owner
            ours[name] = owner
            while low < count and (str(make(first + low)) in ours or make(first + low) in self.reserved):
                low += 1
            _low[self.dir] = low
            return addr
        raise NetworkError(
            errno.EADDRNOTAVAIL,
            f"no free address left in {self.network} (stop some pods, or use a larger subnet)",
        )

    def lease(self, owner: Owner, want: Optional[Address] = None) -> Lease:
        """:meth:`allocate`, as a :class:`Lease` (call inside :meth:`locked`)."""
        return Lease(self.dir, self.network, self.allocate(owner, want), owner)

    def _hosts(self) -> tuple[int, int]:
        """The first candidate address (as an int) and how many there are:
        what ``network.hosts()`` yields, without making every address."""
        net = self.network
        first, last = int(net.network_address), int(net.broadcast_address)
        if net.version == 4 and net.prefixlen < 31:
            first, last = first + 1, last - 1  # not the network and broadcast addresses
        elif net.version == 6 and net.prefixlen < 127:
            first += 1  # not the Subnet-Router anycast address
        return first, last - first + 1

    def _index(self, addr: Address) -> int:
        return int(addr) - self._hosts()[0]

    def _write(self, addr: Address, owner: Owner) -> None:
        path = self._lease_path(addr)
        tmp = path.with_name(f".{addr}.tmp")
        tmp.write_text(f"{owner[0]} {owner[1]}\n")
        os.replace(tmp, path)

    def release(self, addr: Address, owner: Owner) -> None:
        """Give ``addr`` back if ``owner`` still holds it; idempotent."""
        with self.locked():
            path = self._lease_path(addr)
            if self._owner(path) == owner:
                path.unlink(missing_ok=True)
            ours = _ours.get(self.dir, {})
            if ours.get(str(addr)) == owner:
                del ours[str(addr)]
                if self.dir in _low:
                    _low[self.dir] = min(_low[self.dir], max(self._index(addr), 0))
            if not ours:
                _ours.pop(self.dir, None)
                _low.pop(self.dir, None)
            prune(self.dir)  # the last lease gone: no directory left behind

    def live_leases(self) -> dict[Address, Owner]:
        out: dict[Address, Owner] = {}
        if not self.dir.exists():
            return out
        for path in self.dir.iterdir():
            if path.name.startswith("."):
                continue
            owner = self._owner(path)
            if owner is not None and self._is_live(owner):
                out[ipaddress.ip_address(path.name)] = owner
        return out

    def destroy(self) -> None:
        """Remove the state directory (call inside :meth:`locked`)."""
        if self.dir.exists():
            for path in self.dir.iterdir():
                path.unlink(missing_ok=True)
        _ours.pop(self.dir, None)
        _low.pop(self.dir, None)
        prune(self.dir)


def sweep() -> list[str]:
    """Remove every lease whose owner is dead (a creator killed before it
    could release it), in every lease directory; returns what went."""
    removed: list[str] = []
    with locked():
        root = run_dir() / "ipam"
        try:
            dirs = [d for d in root.iterdir() if d.is_dir()]
        except FileNotFoundError:
            return removed
        for lease_dir in dirs:
            for path in lease_dir.iterdir():
                if path.name.startswith("."):
                    continue
                try:
                    pid, start = (int(x) for x in path.read_text().split())
                except (OSError, ValueError):
                    continue
                if owner_of(pid) != (pid, start):
                    path.unlink(missing_ok=True)
                    ours = _ours.get(lease_dir, {})
                    ours.pop(path.name, None)
                    removed.append(f"lease {path.name} of bridge {lease_dir.name} (holder {pid} is gone)")
            _low.pop(lease_dir, None)
            prune(lease_dir)
    return removed
