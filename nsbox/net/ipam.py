"""Address allocation for bridges (like CNI host-local), safe across threads
and processes.

State lives under ``/run/nsbox/ipam/<bridge>/`` (``$NSBOX_RUN_DIR`` moves
it).  Its slot file (``slots-<network>_<prefix>``) has one fixed 32-byte
slot per candidate address (in ``network.hosts()`` order): ``PID
START_TIME`` of the owner -- the pod's holder -- or NUL bytes when free.  Addresses past the first
:data:`SLOTS` candidates (an ``address=`` far into an IPv6 subnet) get a
file of their own, named after the address, with the same content.  The
start time (``/proc/PID/stat`` field 22) makes the owner check immune to PID
reuse: a lease whose holder is gone, or whose PID now names another process,
is free again.  Every change happens under nsbox's state lock
(:mod:`nsbox.net.rundir`); a slot is written with one ``pwrite``.

Why slots and not a file per lease: creating and renaming a file costs
45-160 us on a disk-backed ``/run`` (ext4 here), a tenth of a bridge pod's
start; a ``pwrite`` into a file that exists costs a few (issue 13).
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
SLOT = 32  # bytes per slot: "PID START" padded with spaces, then "\n"
SLOTS = 1 << 20  # candidates with a slot (a sparse file of at most 32 MiB); the rest get a file each
SLOTS_PREFIX = "slots-"
_FREE = bytes(SLOT)


# Leases this process wrote and still holds, by slot file (bridge and
# subnet): {address: owner}.
# Their owners are this process's running pods, so allocate() need not read
# each of those leases and check its owner in /proc again (else every
# allocation is O(pods on the bridge) in system calls; see docs/performance.md).
# Guarded by the state lock, like the files.
_ours: dict[str, dict[str, Owner]] = {}
# Per slot file: every candidate address below this index (in hosts()
# order) is reserved or one of ours, so a scan for the lowest free address
# starts there (else the scan itself grows with the pods).
_low: dict[str, int] = {}
# Slot files whose directory this process has looked through for leases in
# the older form, a file per address (see Ipam._migrate).
_migrated: set[str] = set()


def _forget() -> None:
    _ours.clear()
    _low.clear()
    _migrated.clear()


os.register_at_fork(after_in_child=_forget)


def _parse(data: bytes) -> Optional[Owner]:
    """The owner a slot or lease file names, or None (free, or not a lease)."""
    try:
        pid, start = data.split()
        return int(pid), int(start)
    except ValueError:
        return None


def _encode(owner: Owner) -> bytes:
    return f"{owner[0]} {owner[1]}".encode().ljust(SLOT - 1) + b"\n"


@dataclass(frozen=True)
class Lease:
    """One leased address: where its lease is, and whose it is."""

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
            ipam._migrate()
            if ipam.recorded(self.address) == self.owner:
                ipam._put(self.address, owner)
            ours = _ours.get(ipam._slots, {})
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
        self._slots = os.path.join(self.dir, f"{SLOTS_PREFIX}{network.network_address}_{network.prefixlen}")
        self._first, self._count = self._hosts()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with locked():
            yield

    # ---- one lease, in its slot or its file (state lock held) -------------

    def _migrate(self) -> None:
        """Once per process and slot file: leases an older nsbox wrote as a
        file per address (its pods may outlive an upgrade) move into their
        slots, so that no allocation misses them."""
        if self._slots in _migrated:
            return
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if name.startswith((".", SLOTS_PREFIX)):
                continue
            try:
                addr = ipaddress.ip_address(name)
            except ValueError:
                continue
            if addr not in self.network or self._slot(addr) is None:
                continue
            path = os.path.join(self.dir, name)
            try:
                with open(path, "rb") as f:
                    owner = _parse(f.read())
            except OSError:
                continue
            if owner is not None:
                self._put(addr, owner)
            os.unlink(path)
        _migrated.add(self._slots)

    def _slot(self, addr: Address) -> Optional[int]:
        """The slot of ``addr``, or None when it has a file of its own."""
        index = int(addr) - self._first
        return index if 0 <= index < SLOTS else None

    @contextlib.contextmanager
    def _slots_fd(self, create: bool) -> Iterator[Optional[int]]:
        """The slot file, open for reading and writing (made, with the
        directory, when ``create``); None if it does not exist."""
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(self._slots, flags, 0o600)
        except FileNotFoundError:
            if not create:
                yield None
                return
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            fd = os.open(self._slots, flags, 0o600)
        try:
            yield fd
        finally:
            os.close(fd)

    def recorded(self, addr: Address) -> Optional[Owner]:
        """Who the lease of ``addr`` names (alive or not), or None."""
        slot = self._slot(addr)
        if slot is None:
            try:
                with open(os.path.join(self.dir, str(addr)), "rb") as f:
                    return _parse(f.read())
            except OSError:
                return None
        with self._slots_fd(create=False) as fd:
            return None if fd is None else _parse(os.pread(fd, SLOT, slot * SLOT))

    def _put(self, addr: Address, owner: Optional[Owner], slot: Any = "find") -> None:
        """Write (or, with None, clear) the lease of ``addr``: in ``slot``
        (found from the address unless given; None: a file of its own)."""
        if slot == "find":
            slot = self._slot(addr)
        if slot is None:
            path = os.path.join(self.dir, str(addr))
            if owner is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            tmp = os.path.join(self.dir, f".{addr}.tmp")
            with open(tmp, "wb") as f:
                f.write(_encode(owner))
            os.replace(tmp, path)
            return
        with self._slots_fd(create=owner is not None) as fd:
            if fd is not None:
                data = _FREE if owner is None else _encode(owner)
                if os.pwrite(fd, data, slot * SLOT) != SLOT:  # pragma: no cover - a full /run
                    raise OSError(errno.ENOSPC, "short write to the IPAM slot file")

    def _entries(self) -> list[tuple[Address, Owner, Optional[int]]]:
        """Every lease recorded, alive or not: (address, owner, its slot or
        None for a file of its own)."""
        out: list[tuple[Address, Owner, Optional[int]]] = []
        make = type(self.network.network_address)
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith(SLOTS_PREFIX):
                if os.path.join(self.dir, name) != self._slots:
                    continue  # of a bridge of this name for another subnet, earlier
                with open(self._slots, "rb") as f:
                    data = f.read()
                for at in range(0, len(data) - SLOT + 1, SLOT):
                    if data[at] and (owner := _parse(data[at:at + SLOT])) is not None:
                        out.append((make(self._first + at // SLOT), owner, at // SLOT))
            elif not name.startswith("."):
                try:
                    addr = ipaddress.ip_address(name)
                    with open(os.path.join(self.dir, name), "rb") as f:
                        owner = _parse(f.read())
                except (OSError, ValueError):
                    continue
                if owner is not None:
                    out.append((addr, owner, None))
        return out

    def _prune(self) -> None:
        """The slot file cut after its last lease (so reading it costs what
        the leases need); once no lease is left, it goes, and the directory
        once empty."""
        with self._slots_fd(create=False) as fd:
            if fd is not None:
                size = os.fstat(fd).st_size
                used = len(os.pread(fd, size, 0).rstrip(b"\0"))
                if used:
                    used = -(-used // SLOT) * SLOT
                    if used < size:
                        os.ftruncate(fd, used)
                    return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._slots)
        prune(self.dir)

    @staticmethod
    def _is_live(owner: Optional[Owner]) -> bool:
        return owner is not None and owner_of(owner[0]) == owner

    # ---- the API ------------------------------------------------------------

    def allocate(self, owner: Owner, want: Optional[Address] = None) -> Address:
        """Lease ``want`` (or the lowest free address) to ``owner``.  Call
        inside :meth:`locked`."""
        self._migrate()
        ours = _ours.setdefault(self._slots, {})
        if want is not None:
            if str(want) in ours or self._is_live(self.recorded(want)):
                raise NetworkError(errno.EADDRINUSE, f"address {want} is in use by another pod")
            self._put(want, owner)
            ours[str(want)] = owner
            return want
        # The scan starts past every address known to be ours, so the first
        # candidate is nearly always free, and only a candidate that is not
        # ours has its slot read (free, or its owner checked in /proc).
        first, count = self._first, self._count
        make = type(self.network.network_address)
        reserved = self.reserved
        low = _low.get(self._slots, 0)
        with self._slots_fd(create=True) as fd:
            assert fd is not None  # (made if missing)
            for i in range(low, min(count, low + _MAX_SCAN)):
                addr = make(first + i)
                if addr in reserved:
                    continue
                name = str(addr)
                if name in ours:
                    continue
                if i < SLOTS:
                    if self._is_live(_parse(os.pread(fd, SLOT, i * SLOT))):
                        continue
                    os.pwrite(fd, _encode(owner), i * SLOT)  # free, or reclaimed from a dead owner
                else:
                    if self._is_live(self.recorded(addr)):
                        continue
                    self._put(addr, owner)
                ours[name] = owner
                while low < count and (str(make(first + low)) in ours or make(first + low) in reserved):
                    low += 1
                _low[self._slots] = low
                return addr
        self._prune()  # (a slot file made above for nothing)
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

    def release(self, addr: Address, owner: Owner) -> None:
        """Give ``addr`` back if ``owner`` still holds it; idempotent."""
        with self.locked():
            self._migrate()
            if self.recorded(addr) == owner:
                self._put(addr, None)
            ours = _ours.get(self._slots, {})
            if ours.get(str(addr)) == owner:
                del ours[str(addr)]
                if self._slots in _low:
                    _low[self._slots] = min(_low[self._slots], max(int(addr) - self._first, 0))
            if not ours:
                _ours.pop(self._slots, None)
                _low.pop(self._slots, None)
            self._prune()  # the last lease gone: no file, no directory left behind

    def live_leases(self) -> dict[Address, Owner]:
        return {addr: owner for addr, owner, _ in self._entries() if self._is_live(owner)}

    def sweep(self) -> list[tuple[Address, Owner]]:
        """Clear every lease whose owner is dead; returns them.  (Call
        inside :meth:`locked`.)"""
        dead = [(addr, owner, slot) for addr, owner, slot in self._entries() if not self._is_live(owner)]
        ours = _ours.get(self._slots, {})
        for addr, _, slot in dead:
            self._put(addr, None, slot)
            ours.pop(str(addr), None)
        _low.pop(self._slots, None)
        self._prune()
        return [(addr, owner) for addr, owner, _ in dead]

    def destroy(self) -> None:
        """Remove the state directory (call inside :meth:`locked`)."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.dir):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, name))
        _ours.pop(self._slots, None)
        _low.pop(self._slots, None)
        _migrated.discard(self._slots)
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
            for ipam in _ipams_in(lease_dir):
                for addr, owner in ipam.sweep():
                    removed.append(f"lease {addr} of bridge {lease_dir.name} (holder {owner[0]} is gone)")
            prune(lease_dir)
    return removed


def _ipams_in(lease_dir: Path) -> list[Ipam]:
    """An Ipam per slot file in ``lease_dir`` (its network is in the file's
    name); a directory with files of single leases only gets one of its own."""
    out: list[Ipam] = []
    for name in sorted(os.listdir(lease_dir)):
        if name.startswith(SLOTS_PREFIX):
            try:
                net = ipaddress.ip_network(name[len(SLOTS_PREFIX):].replace("_", "/"))
            except ValueError:
                continue
            out.append(Ipam(lease_dir.name, net, set(), dir=lease_dir))
    # No slot file: files of single leases only (their slots are never looked up).
    return out or [Ipam(lease_dir.name, ipaddress.ip_network("0.0.0.0/32"), set(), dir=lease_dir)]
