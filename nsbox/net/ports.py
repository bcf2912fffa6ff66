"""Port publishing (like CNI portmap) with nftables.

``Pod(ports={8080: 80})`` makes host port 8080 reach pod port 80 from the
host, at any of its own addresses (127.0.0.1 and the gateway included).
Traffic that arrives from elsewhere (other pods, other machines) is DNATed
too, but forwarding it needs ``net.ipv4.ip_forward=1``, a host-wide setting
nsbox leaves to you.  Rules are tagged with the owning holder and interface
(``nsbox:PID:START_TIME:IFNAME``), added and removed in one nftables
transaction, in this process, over netlink (libnftables, :mod:`nsbox.net.nft`),
found by tag (never by a remembered handle), and rules whose holder is dead
are swept whenever rules change.  They live in this process's kernel-owned
table ``ip nsbox-PID`` (``flags owner``: the kernel deletes it when this
process dies, even by SIGKILL), or, for pods that outlive their creator
(``kernel_owned=False``), in the shared table ``ip nsbox``.
Host ports are reserved under ``/run/nsbox/ports/`` (under nsbox's state
lock), so two pods, in any processes, never publish the same one.
"""
from __future__ import annotations

import errno
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError, NetworkError
from . import nft
from .ipam import Owner, owner_of
from .rundir import locked as _locked
from .rundir import prune, run_dir

__all__ = ["parse_ports", "publish", "Published"]

TABLE = "nsbox"
_RULE = re.compile(r'comment "(nsbox:(\d+):(\d+):([^"]*))".*# handle (\d+)')
_CHAINS = (
    ("guard", "filter", "prerouting", -200),
    ("prerouting", "nat", "prerouting", -100),
    ("output", "nat", "output", -100),
    ("postrouting", "nat", "postrouting", 100),
)


def parse_ports(ports: Any) -> list[tuple[str, int, int]]:
    """``{8080: 80, "5353/udp": 53}`` -> ``[("tcp", 8080, 80), ("udp", 5353, 53)]``."""
    if not isinstance(ports, Mapping):
        raise ConfigError(f"ports must be a mapping like {{8080: 80}} (host port: pod port), not {ports!r}")
    out = []
    seen = set()
    for key, value in ports.items():
        proto = "tcp"
        if isinstance(key, str) and "/" in key:
            key, proto = key.split("/", 1)
            proto = proto.lower()
            if proto not in ("tcp", "udp"):
                raise ConfigError(f"port protocol must be tcp or udp, not {proto!r}")
        host_port = _port(key, "host port")
        pod_port = _port(value, "pod port")
        if (proto, host_port) in seen:
            raise ConfigError(f"host port {host_port}/{proto} is given twice")
        seen.add((proto, host_port))
        out.append((proto, host_port, pod_port))
    return out


def _port(value: Any, what: str) -> int:
    try:
        port = -1 if isinstance(value, (bool, float)) else int(value)  # (a float would be cut short)
    except (TypeError, ValueError):
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} must be a number from 1 to 65535, not {value!r}")
    return port


@dataclass
class Published:
    owner: Owner
    ports: list[tuple[str, int, int]]
    route_ifname: str = ""
    # Whose the host-port reservations are, when not ``owner``'s (the pod's
    # holder): this process's while a stopped pod is torn down in the background.
    reserved_by: Optional[Owner] = None
    table: str = TABLE  # the nftables table (ip family) holding the rules

    @property
    def tag(self) -> str:
        return _tag(self.owner, self.route_ifname)

    def to_record(self) -> dict[str, Any]:
        return {"owner": list(self.owner), "ports": [list(p) for p in self.ports], "route_ifname": self.route_ifname,
                "reserved_by": None if self.reserved_by is None else list(self.reserved_by), "table": self.table}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Published":
        pid, start = record["owner"]
        ports = [(str(proto), int(hp), int(cp)) for proto, hp, cp in record["ports"]]
        by = record.get("reserved_by")
        return cls((int(pid), int(start)), ports, str(record["route_ifname"]),
                   None if by is None else (int(by[0]), int(by[1])), str(record.get("table", TABLE)))

    def transfer_reservations(self, owner: Owner) -> None:
        """Make the host-port reservations ``owner``'s (still held ones only)."""
        with _locked():
            for proto, host_port, _ in self.ports:
                path = _reservation(proto, host_port)
                if _read_owner(path) == (self.reserved_by or self.owner):
                    path.write_text(f"{owner[0]} {owner[1]}\n")
            self.reserved_by = owner

    def remove(self) -> None:
        """Delete this pod's rules and reservations; idempotent.  Rules are
        found by their tag, never by a remembered handle: after a sweep, a
        handle may name another pod's rule."""
        with _locked():
            mine = [(t, chain, handle) for t, chain, handle, tag in _rules() if tag == self.tag]
            foreign = {t for t, _, _ in mine if t not in (TABLE, owned_table())}
            if foreign:
                # (Before anything is released: the host ports stay reserved.)
                raise NetworkError(errno.EPERM, f"the port rules of {self.tag} are in the kernel-owned table "
                                   f"{', '.join(sorted(foreign))} of a live process: only it can remove them "
                                   "(they vanish when it exits)")
            _delete(mine)
            for proto, host_port, _ in self.ports:
                path = _reservation(proto, host_port)
                if _read_owner(path) == (self.reserved_by or self.owner):
                    path.unlink(missing_ok=True)
            _sweep_dead_rules()
            _finish_interface(self.route_ifname)
            _drop_tables_if_empty()


def publish(owner: Owner, address: Any, route_ifname: str, ports: list[tuple[str, int, int]], *,
            kernel_owned: bool = True) -> Published:
    """Reserve the host ports and add the DNAT/masquerade rules for one pod.

    ``kernel_owned``: the rules go in this process's kernel-owned table
    (``ip nsbox-PID``, ``flags owner``), which the kernel deletes when this
    process dies, however it dies; pass False for a pod that outlives its
    creator (its rules go in the shared table ``ip nsbox``, swept once its
    holder is dead).  Without kernel support (Linux < 5.12) or libnftables,
    the shared table is used."""
    if address.version != 4:
        raise ConfigError("port publishing supports IPv4 pod addresses only (for now)")
    table = owned_table() if kernel_owned and _owner_supported() else TABLE
    pub = Published(owner, ports, route_ifname, table=table)
    with _locked():
        stale = False
        for proto, host_port, _ in ports:
            holder = _read_owner(_reservation(proto, host_port))
            if holder is not None and owner_of(holder[0]) == holder:
                raise NetworkError(errno.EADDRINUSE, f"host port {host_port}/{proto} is already published by another pod")
            stale = stale or holder is not None
            _check_free(proto, host_port)
        if stale:
            # A dead pod's reservation: its rules for that port (if its creator
            # survived it, or it used the shared table) would still win.
            _sweep_dead_rules()
        _state_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
        for proto, host_port, _ in ports:
            path = _reservation(proto, host_port)
            path.write_text(f"{owner[0]} {owner[1]}\n")
        try:
            nft.run(_script(table, pub.tag, address.ip, route_ifname, ports))
            _set_route_localnet(route_ifname, True)
        except BaseException:
            _delete([(table, c, h) for t, c, h, tag in _rules() if tag == pub.tag and t == table])
            for proto, host_port, _ in ports:
                _reservation(proto, host_port).unlink(missing_ok=True)
            _finish_interface(route_ifname)
            _drop_tables_if_empty()
            raise
    return pub


def _script(table: str, tag: str, ip: Any, route_ifname: str, ports: list[tuple[str, int, int]]) -> str:
    """One transaction: the table and chains (if missing) and the pod's rules."""
    comment = f'comment "{tag}"'
    flags = " flags owner ;" if table != TABLE else ""
    lines = [f"add table ip {table} {{{flags} }}\n"]
    for chain, ctype, hook, prio in _CHAINS:
        lines.append(f"add chain ip {table} {chain} {{ type {ctype} hook {hook} priority {prio} ; }}\n")
    # route_localnet (see publish) lets 127.0.0.1-sourced packets leave through
    # the pod's interface; it would also let the pods behind it reach the
    # host's 127.0.0.1-only services (CVE-2020-8558): refuse that.
    lines.append(f'add rule ip {table} guard iifname "{route_ifname}" ip daddr 127.0.0.0/8 drop {comment}\n')
    for proto, hp, cp in ports:
        dnat = f"fib daddr type local {proto} dport {hp} dnat to {ip}:{cp} {comment}\n"
        lines.append(f"add rule ip {table} output {dnat}")
        lines.append(f"add rule ip {table} prerouting {dnat}")
        # 127.0.0.1 can't be a source on the wire: rewrite it to ours.
        lines.append(f"add rule ip {table} postrouting ip saddr 127.0.0.0/8 ip daddr {ip} "
                     f"{proto} dport {cp} masquerade {comment}\n")
    return "".join(lines)


def owned_table() -> str:
    """The name of this process's kernel-owned table."""
    return f"{TABLE}-{os.getpid()}"


_owner_ok: Optional[bool] = None


def _owner_supported() -> bool:
    """Can this process own a table (libnftables, Linux >= 5.12, nft >= 0.9.9)?"""
    global _owner_ok
    if _owner_ok is None:
        if not nft.available():
            _owner_ok = False
        else:
            probe = f"{TABLE}-probe-{os.getpid()}"
            try:
                nft.run(f"add table ip {probe} {{ flags owner ; }}\ndelete table ip {probe}\n")
                _owner_ok = True
            except NetworkError:
                _owner_ok = False
    return _owner_ok


# ---- helpers --------------------------------------------------------------------


def _state_dir():
    return run_dir() / "ports"


def _reservation(proto: str, port: int):
    return _state_dir() / f"{proto}-{port}"


def _read_owner(path) -> Any:
    try:
        pid, start = path.read_text().split()
        return int(pid), int(start)
    except (OSError, ValueError):
        return None


def _check_free(proto: str, port: int) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise NetworkError(errno.EADDRINUSE, f"host port {port}/{proto} is in use by a host process") from None
            raise NetworkError(e.errno, f"checking host port {port}/{proto}: {e.strerror}") from None


def _tag(owner: Owner, ifname: str) -> str:
    return f"nsbox:{owner[0]}:{owner[1]}:{ifname}"


def _set_route_localnet(ifname: str, on: bool) -> None:
    """Let 127.0.0.1-sourced, DNATed packets leave through ``ifname`` (or not)."""
    path = f"/proc/sys/net/ipv4/conf/{ifname}/route_localnet"
    try:
        with open(path, "w") as f:
            f.write("1" if on else "0")
    except FileNotFoundError:
        if on:
            raise NetworkError(errno.ENODEV, f"enabling route_localnet: no interface {ifname}") from None
    except OSError as e:
        raise NetworkError(e.errno, f"setting route_localnet on {ifname}: {e.strerror}") from None


def _finish_interface(ifname: str) -> None:
    """Turn route_localnet off again once no published pod uses ``ifname``
    (in any process's table)."""
    if ifname and not any(tag.split(":", 3)[3] == ifname for _, _, _, tag in _rules()):
        _set_route_localnet(ifname, False)


_TABLE_LINE = re.compile(r"table ip (\S+) \{")
_CHAIN_LINE = re.compile(r"\s*chain (\w+) \{")


def _rules() -> list[tuple[str, str, int, str]]:
    """``(table, chain, handle, tag)`` of every tagged rule in nsbox's
    tables: the shared one and every process's owned one."""
    return _ruleset()[1]


def _ruleset() -> tuple[set[str], list[tuple[str, str, int, str]]]:
    """nsbox's tables (ip family), and :func:`_rules`, from one listing."""
    try:
        text = nft.run("list ruleset ip\n")
    except NetworkError:
        return set(), []
    table = chain = None
    tables = set()
    out = []
    for line in text.splitlines():
        m = _TABLE_LINE.match(line)
        if m:
            name = m.group(1)
            table = name if name == TABLE or name.startswith(TABLE + "-") else None
            if table is not None:
                tables.add(table)
            chain = None
            continue
        if table is None:
            continue
        m = _CHAIN_LINE.match(line)
        if m:
            chain = m.group(1)
            continue
        m = _RULE.search(line)
        if m and chain:
            out.append((table, chain, int(m.group(5)), m.group(1)))
    return tables, out


def _delete(rules: list[tuple[str, str, int]]) -> None:
    """Delete ``(table, chain, handle)`` rules: one transaction per table."""
    by_table: dict[str, list[str]] = {}
    for t, c, h in rules:
        by_table.setdefault(t, []).append(f"delete rule ip {t} {c} handle {h}\n")
    for lines in by_table.values():
        try:
            nft.run("".join(lines))
        except NetworkError as e:
            raise NetworkError(e.errno, f"removing port rules failed: {e}") from None


def _sweep_dead_rules() -> list[str]:
    """Delete rules whose holder is gone (a creator killed with SIGKILL),
    in the shared table and this process's own; returns what went."""
    dead = []
    ifaces = set()
    removed = []
    alive: dict[str, bool] = {}  # by tag: one /proc lookup per pod, not per rule
    for table, chain, handle, tag in _rules():
        if table not in (TABLE, owned_table()):
            continue  # another live process's own table (a dead one's is gone)
        _, pid, start, ifname = tag.split(":", 3)
        if tag not in alive:
            alive[tag] = owner_of(int(pid)) == (int(pid), int(start))
        if not alive[tag]:
            dead.append((table, chain, handle))
            ifaces.add(ifname)
            removed.append(f"port rule {tag} (chain {chain})")
    _delete(dead)
    for ifname in ifaces:
        _finish_interface(ifname)
    if _state_dir().exists():
        for path in _state_dir().glob("*-*"):
            owner = _read_owner(path)
            if owner is None or owner_of(owner[0]) != owner:
                path.unlink(missing_ok=True)
                removed.append(f"host port reservation {path.name}")
    return removed


def sweep() -> list[str]:
    """Remove every rule and reservation of dead pods (safe to call any
    time); returns what went.  Rules in the kernel-owned table of a process
    that died are gone already."""
    with _locked():
        removed = _sweep_dead_rules()
        _drop_tables_if_empty()
    return removed


def _drop_tables_if_empty() -> None:
    """The shared table goes when its last rule does; this process's owned
    table too."""
    tables, rules = _ruleset()
    used = {t for t, _, _, _ in rules}
    if TABLE in tables and TABLE not in used:
        nft.run(f"delete table ip {TABLE}\n")
    if owned_table() in tables and owned_table() not in used:
        # (Not by closing the context that owns it: the next pod with ports
        # would pay ~0.8 ms for a new one, and the close waits for the kernel.)
        nft.run(f"delete table ip {owned_table()}\n")
    prune(_state_dir())
