"""Port publishing (like CNI portmap) with nftables.

``Pod(ports={8080: 80})`` makes host port 8080 reach pod port 80 from the
host, at any of its own addresses (127.0.0.1 and the gateway included).
Traffic that arrives from elsewhere (other pods, other machines) is DNATed
too, but forwarding it needs ``net.ipv4.ip_forward=1``, a host-wide setting
nsbox leaves to you.  Rules live in the table ``ip nsbox``, are tagged with the
owning holder and interface (``nsbox:PID:START_TIME:IFNAME``), added and
removed in one ``nft`` batch, found by tag (never by a remembered handle),
and rules whose holder is dead are swept whenever rules change.
Host ports are reserved under ``/run/nsbox/ports/`` (under nsbox's state
lock), so two pods, in any processes, never publish the same one.
"""
from __future__ import annotations

import errno
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigError, NetworkError
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

    @property
    def tag(self) -> str:
        return _tag(self.owner, self.route_ifname)

    def to_record(self) -> dict[str, Any]:
        return {"owner": list(self.owner), "ports": [list(p) for p in self.ports], "route_ifname": self.route_ifname,
                "reserved_by": None if self.reserved_by is None else list(self.reserved_by)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Published":
        pid, start = record["owner"]
        ports = [(str(proto), int(hp), int(cp)) for proto, hp, cp in record["ports"]]
        by = record.get("reserved_by")
        return cls((int(pid), int(start)), ports, str(record["route_ifname"]),
                   None if by is None else (int(by[0]), int(by[1])))

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
            rules = _rules()
            mine = [(chain, handle) for chain, handle, tag in rules if tag == self.tag]
            _delete(mine)
            for proto, host_port, _ in self.ports:
                path = _reservation(proto, host_port)
                if _read_owner(path) == (self.reserved_by or self.owner):
                    path.unlink(missing_ok=True)
            _sweep_dead_rules()
            _finish_interface(self.route_ifname)
            _drop_table_if_empty()


def publish(owner: Owner, address: Any, route_ifname: str, ports: list[tuple[str, int, int]]) -> Published:
    """Reserve the host ports and add the DNAT/masquerade rules for one pod."""
    if address.version != 4:
        raise ConfigError("port publishing supports IPv4 pod addresses only (for now)")
    if shutil.which("nft") is None:
        raise NetworkError(errno.ENOENT, "port publishing needs the nft command (Debian package nftables)")
    pub = Published(owner, ports, route_ifname)
    with _locked():
        _sweep_dead_rules()
        for proto, host_port, _ in ports:
            holder = _read_owner(_reservation(proto, host_port))
            if holder is not None and owner_of(holder[0]) == holder:
                raise NetworkError(errno.EADDRINUSE, f"host port {host_port}/{proto} is already published by another pod")
            _check_free(proto, host_port)
        _state_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
        for proto, host_port, _ in ports:
            path = _reservation(proto, host_port)
            path.write_text(f"{owner[0]} {owner[1]}\n")
        try:
            comment = f'comment "{pub.tag}"'
            lines = [f"add table ip {TABLE}\n"]
            for chain, ctype, hook, prio in _CHAINS:
                lines.append(f"add chain ip {TABLE} {chain} {{ type {ctype} hook {hook} priority {prio} ; }}\n")
            # route_localnet (below) lets 127.0.0.1-sourced packets leave through
            # the pod's interface; it would also let the pods behind it reach the
            # host's 127.0.0.1-only services (CVE-2020-8558): refuse that.
            lines.append(f'add rule ip {TABLE} guard iifname "{route_ifname}" ip daddr 127.0.0.0/8 drop {comment}\n')
            ip = address.ip
            for proto, hp, cp in ports:
                dnat = f"fib daddr type local {proto} dport {hp} dnat to {ip}:{cp} {comment}\n"
                lines.append(f"add rule ip {TABLE} output {dnat}")
                lines.append(f"add rule ip {TABLE} prerouting {dnat}")
                # 127.0.0.1 can't be a source on the wire: rewrite it to ours.
                lines.append(f"add rule ip {TABLE} postrouting ip saddr 127.0.0.0/8 ip daddr {ip} "
                             f"{proto} dport {cp} masquerade {comment}\n")
            r = _nft("".join(lines), check=False)
            if r.returncode != 0:
                raise NetworkError(errno.EIO, f"adding port rules failed: {r.stderr.strip()}")
            _set_route_localnet(route_ifname, True)
        except BaseException:
            _delete([(c, h) for c, h, tag in _rules() if tag == pub.tag])
            for proto, host_port, _ in ports:
                _reservation(proto, host_port).unlink(missing_ok=True)
            _finish_interface(route_ifname)
            _drop_table_if_empty()
            raise
    return pub


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
    """Turn route_localnet off again once no published pod uses ``ifname``."""
    if ifname and not any(tag.split(":", 3)[3] == ifname for _, _, tag in _rules()):
        _set_route_localnet(ifname, False)


def _nft(script: str, *, check: bool = True, echo: bool = False) -> subprocess.CompletedProcess:
    argv = ["nft", "-f", "-"]
    if echo:
        argv[1:1] = ["--echo", "--handle"]
    r = subprocess.run(argv, input=script, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise NetworkError(errno.EIO, f"nft failed: {r.stderr.strip()}")
    return r


def _list_table() -> str:
    r = subprocess.run(["nft", "-a", "list", "table", "ip", TABLE], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else ""


def _rules() -> list[tuple[str, int, str]]:
    """``(chain, handle, tag)`` of every tagged rule in the table."""
    chain = None
    out = []
    for line in _list_table().splitlines():
        m = re.match(r"\s*chain (\w+) \{", line)
        if m:
            chain = m.group(1)
            continue
        m = _RULE.search(line)
        if m and chain:
            out.append((chain, int(m.group(5)), m.group(1)))
    return out


def _delete(rules: list[tuple[str, int]]) -> None:
    if rules:
        r = _nft("".join(f"delete rule ip {TABLE} {c} handle {h}\n" for c, h in rules), check=False)
        if r.returncode != 0:
            raise NetworkError(errno.EIO, f"removing port rules failed: {r.stderr.strip()}")


def _sweep_dead_rules() -> None:
    """Delete rules whose holder is gone (a creator killed with SIGKILL)."""
    dead = []
    ifaces = set()
    for chain, handle, tag in _rules():
        _, pid, start, ifname = tag.split(":", 3)
        if owner_of(int(pid)) != (int(pid), int(start)):
            dead.append((chain, handle))
            ifaces.add(ifname)
    _delete(dead)
    for ifname in ifaces:
        _finish_interface(ifname)
    if _state_dir().exists():
        for path in _state_dir().glob("*-*"):
            owner = _read_owner(path)
            if owner is None or owner_of(owner[0]) != owner:
                path.unlink(missing_ok=True)


def sweep() -> None:
    """Remove every rule and reservation of dead pods (safe to call any time)."""
    with _locked():
        _sweep_dead_rules()
        _drop_table_if_empty()


def _drop_table_if_empty() -> None:
    text = _list_table()
    if text and "nsbox:" not in text:
        _nft(f"delete table ip {TABLE}\n", check=False)
    prune(_state_dir())
