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
import re
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
_USED = re.compile(rb"[^\0]")  # the first byte of a slot in use (or corrupt), found in C
_CHUNK = 1 << 16  # bytes read at a time when looking backwards for the last lease


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


def _write_slot(fd: int, slot: int, data: bytes) -> None:
    if os.pwrite(fd, data, slot * SLOT) != SLOT:  # pragma: no cover - a full /run
        raise OSError(errno.ENOSPC, "short write to the IPAM slot file")


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
        skipped = False
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
            if owner is not None and self._is_live(owner):
                if self._is_live(self.recorded(addr)):
                    skipped = True  # both held (an older and a newer nsbox sharing a run directory): leave it
                    continue
                self._put(addr, owner)
            os.unlink(path)
        if not skipped:  # (else looked at again next time)
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
                _write_slot(fd, slot, _FREE if owner is None else _encode(owner))

    def _entries(self, files: str = "subnet") -> tuple[list[tuple[Address, Owner, Optional[int]]], list[int]]:
        """Every lease recorded, alive or not -- (address, owner, its slot or
        None for a file of its own) -- and the slots that hold something
        that is not a lease (corrupt).  ``files``: which files of single
        leases to read: ``"subnet"`` (this subnet's), ``"all"`` or ``"none"``."""
        out: list[tuple[Address, Owner, Optional[int]]] = []
        corrupt: list[int] = []
        make = type(self.network.network_address)
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out, corrupt
        for name in names:
            if name.startswith(SLOTS_PREFIX):
                if os.path.join(self.dir, name) != self._slots:
                    continue  # of a bridge of this name for another subnet, earlier
                with open(self._slots, "rb") as f:
                    data = f.read()
                at = 0
                while (m := _USED.search(data, at)) is not None:  # (free slots skipped in C)
                    slot = m.start() // SLOT
                    owner = _parse(data[slot * SLOT:(slot + 1) * SLOT])
                    if owner is None:
                        corrupt.append(slot)
                    else:
                        out.append((make(self._first + slot), owner, slot))
                    at = (slot + 1) * SLOT
            elif not name.startswith(".") and files != "none":
                try:
                    addr = ipaddress.ip_address(name)
                    if files == "subnet" and addr not in self.network:
                        continue
                    with open(os.path.join(self.dir, name), "rb") as f:
                        owner = _parse(f.read())
                except (OSError, ValueError):
                    continue
                if owner is not None:
                    out.append((addr, owner, None))
        return out, corrupt

    def _trim(self, freed: Optional[int]) -> None:
        """After slot ``freed`` (None: any) was cleared: the slot file cut
        after its last lease, so reading it costs what the leases need; once
        no lease is left it goes, and the directory once empty.  Reads only
        what follows ``freed``, up to the first lease there, unless that is
        all free."""
        with self._slots_fd(create=False) as fd:
            if fd is not None:
                size = os.fstat(fd).st_size
                end = size
                if freed is not None:
                    at, step = (freed + 1) * SLOT, 4096
                    while at < size:  # forwards, in growing chunks, to the first later lease
                        if os.pread(fd, min(step, size - at), at).strip(b"\0"):
                            return  # a later slot is used: nothing to cut
                        at += step
                        step = min(step * 2, _CHUNK)
                    end = min(size, (freed + 1) * SLOT)  # (the freed slot itself is read again)
                used = 0
                while end > 0:  # backwards, a chunk at a time, to the last byte in use
                    start = max(0, end - _CHUNK)
                    chunk = os.pread(fd, end - start, start).rstrip(b"\0")
                    if chunk:
                        used = -(-(start + len(chunk)) // SLOT) * SLOT
                        break
                    end = start
                if used:
                    if used < size:
                        os.ftruncate(fd, used)
                    return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._slots)
        _migrated.discard(self._slots)
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
        low = _low.get(self._slots, 0)
        try:
            got = self._scan(owner, ours, low)
        except BaseException:
            self._trim(None)  # (a slot file made for nothing)
            raise
        if got is not None:
            return got
        self._trim(None)
        raise NetworkError(
            errno.EADDRNOTAVAIL,
            f"no free address left in {self.network} (stop some pods, or use a larger subnet)",
        )

    def _scan(self, owner: Owner, ours: dict[str, Owner], low: int) -> Optional[Address]:
        """Lease the lowest free candidate from index ``low`` on, or None."""
        first, count = self._first, self._count
        make = type(self.network.network_address)
        reserved = self.reserved
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
                    _write_slot(fd, i, _encode(owner))  # free, or reclaimed from a dead owner
                else:
                    if self._is_live(self.recorded(addr)):
                        continue
                    self._put(addr, owner)
                ours[name] = owner
                while low < count and (str(make(first + low)) in ours or make(first + low) in reserved):
                    low += 1
                _low[self._slots] = low
                return addr
        return None

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
            slot = self._slot(addr)
            cleared = self.recorded(addr) == owner
            if cleared:
                self._put(addr, None, slot)
            ours = _ours.get(self._slots, {})
            if ours.get(str(addr)) == owner:
                del ours[str(addr)]
                if self._slots in _low:
                    _low[self._slots] = min(_low[self._slots], max(int(addr) - self._first, 0))
            if not ours:
                _ours.pop(self._slots, None)
                _low.pop(self._slots, None)
            if not cleared:
                return  # (held by another owner now, or gone: nothing to cut)
            if slot is None:
                prune(self.dir)  # (once empty)
            else:
                self._trim(slot)  # the last lease gone: no file, no directory left behind

    def live_leases(self) -> dict[Address, Owner]:
        return {addr: owner for addr, owner, _ in self._entries()[0] if self._is_live(owner)}

    def sweep(self, files: str = "subnet") -> list[tuple[Address, Owner]]:
        """Clear every lease whose owner is dead, and slots that hold no
        lease (corrupt); returns the leases.  ``files`` as for
        :meth:`_entries`.  (Call inside :meth:`locked`.)"""
        entries, corrupt = self._entries(files)
        dead = [(addr, owner, slot) for addr, owner, slot in entries if not self._is_live(owner)]
        ours = _ours.get(self._slots, {})
        for addr, _, slot in dead:
            self._put(addr, None, slot)
            ours.pop(str(addr), None)
        make = type(self.network.network_address)
        for slot in corrupt:
            self._put(make(self._first + slot), None, slot)
        _low.pop(self._slots, None)
        self._trim(None)
        return [(addr, owner) for addr, owner, _ in dead]

    def destroy(self) -> None:
        """Remove this subnet's leases, live or not, and the directory once
        empty (call inside :meth:`locked`, once no pod uses the bridge)."""
        for addr, _, slot in self._entries()[0]:
            if slot is None:
                self._put(addr, None, None)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.dir):  # debris of this subnet: a write cut short, a file naming no owner
                try:
                    addr = ipaddress.ip_address(name[1:-4] if name.startswith(".") and name.endswith(".tmp") else name)
                except ValueError:
                    continue
                if addr in self.network and not _is_lease_file(self.dir / name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.dir / name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._slots)
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
            for i, ipam in enumerate(_ipams_in(lease_dir)):
                # (files of single leases: every subnet's, read once per directory)
                for addr, owner in ipam.sweep(files="all" if i == 0 else "none"):
                    removed.append(f"lease {addr} of bridge {lease_dir.name} (holder {owner[0]} is gone)")
            with contextlib.suppress(FileNotFoundError):  # (gone with its last lease)
                for name in os.listdir(lease_dir):
                    if not name.startswith(SLOTS_PREFIX) and not _is_lease_file(lease_dir / name):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(lease_dir / name)
            prune(lease_dir)
    return removed


def _is_lease_file(path: Path) -> bool:
    """False for debris: a write cut short (``.ADDRESS.tmp``; under the
    state lock none is in progress), or a file that names no owner."""
    try:
        ipaddress.ip_address(path.name)
        return _parse(path.read_bytes()) is not None
    except (OSError, ValueError):
        return False


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
