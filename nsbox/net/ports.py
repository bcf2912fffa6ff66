"""Port publishing (like CNI portmap) with nftables.

``Pod(ports={8080: 80})`` makes host port 8080 reach pod port 80 from the
host, at any of its own addresses (127.0.0.1 and the gateway included).
Traffic that arrives from elsewhere (other pods, other machines) is DNATed
too, but forwarding it needs ``net.ipv4.ip_forward=1``, a host-wide setting
nsbox leaves to you.  Rules live in the table ``ip nsbox``, are tagged with the
owning holder (``nsbox:PID:START_TIME``), added and removed in one ``nft``
batch, and rules whose holder is dead are swept on the next publish.
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
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, NetworkError
from .ipam import Owner, owner_of
from .state import locked as _locked
from .state import prune, run_dir

__all__ = ["parse_ports", "publish", "Published"]

TABLE = "nsbox"
_TAG = re.compile(r'comment "nsbox:(\d+):(\d+)".*# handle (\d+)')
_CHAINS = (
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
        port = int(value) if not isinstance(value, bool) else -1
    except (TypeError, ValueError):
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} must be a number from 1 to 65535, not {value!r}")
    return port


@dataclass
class Published:
    owner: Owner
    ports: list[tuple[str, int, int]]
    handles: list[tuple[str, int]] = field(default_factory=list)  # (chain, handle)

    def remove(self) -> None:
        """Delete this pod's rules and reservations; idempotent."""
        with _locked():
            if self.handles:
                script = "".join(f"delete rule ip {TABLE} {chain} handle {h}\n" for chain, h in self.handles)
                r = _nft(script, check=False)
                if r.returncode != 0 and "No such file or directory" not in r.stderr:
                    raise NetworkError(errno.EIO, f"removing port rules failed: {r.stderr.strip()}")
                self.handles = []
            for proto, host_port, _ in self.ports:
                path = _reservation(proto, host_port)
                if _read_owner(path) == self.owner:
                    path.unlink(missing_ok=True)
            _drop_table_if_empty()


def publish(owner: Owner, address: Any, route_ifname: str, ports: list[tuple[str, int, int]]) -> Published:
    """Reserve the host ports and add the DNAT/masquerade rules for one pod."""
    if address.version != 4:
        raise ConfigError("port publishing supports IPv4 pod addresses only (for now)")
    if shutil.which("nft") is None:
        raise NetworkError(errno.ENOENT, "port publishing needs the nft command (Debian package nftables)")
    pub = Published(owner, ports)
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
            _route_localnet(route_ifname)
            tag = f'comment "nsbox:{owner[0]}:{owner[1]}"'
            lines = [f"add table ip {TABLE}\n"]
            for chain, ctype, hook, prio in _CHAINS:
                lines.append(f"add chain ip {TABLE} {chain} {{ type {ctype} hook {hook} priority {prio} ; }}\n")
            ip = address.ip
            for proto, hp, cp in ports:
                dnat = f"fib daddr type local {proto} dport {hp} dnat to {ip}:{cp} {tag}\n"
                lines.append(f"add rule ip {TABLE} output {dnat}")
                lines.append(f"add rule ip {TABLE} prerouting {dnat}")
                # 127.0.0.1 can't be a source on the wire: rewrite it to ours.
                lines.append(f"add rule ip {TABLE} postrouting ip saddr 127.0.0.0/8 ip daddr {ip} {proto} dport {cp} masquerade {tag}\n")
            r = _nft("".join(lines), check=False, echo=True)
            if r.returncode != 0:
                raise NetworkError(errno.EIO, f"adding port rules failed: {r.stderr.strip()}")
            for line in r.stdout.splitlines():
                m = re.match(rf"add rule ip {TABLE} (\w+) .*# handle (\d+)", line)
                if m:
                    pub.handles.append((m.group(1), int(m.group(2))))
        except BaseException:
            for proto, host_port, _ in ports:
                _reservation(proto, host_port).unlink(missing_ok=True)
            prune(_state_dir())
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
            raise


def _route_localnet(ifname: str) -> None:
    """Let 127.0.0.1-sourced, DNATed packets leave through ``ifname``."""
    path = f"/proc/sys/net/ipv4/conf/{ifname}/route_localnet"
    try:
        with open(path, "w") as f:
            f.write("1")
    except OSError as e:
        raise NetworkError(e.errno, f"enabling route_localnet on {ifname}: {e.strerror}") from None


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


def _sweep_dead_rules() -> None:
    """Delete rules whose holder is gone (a creator killed with SIGKILL)."""
    chain = None
    dead = []
    for line in _list_table().splitlines():
        m = re.match(r"\s*chain (\w+) \{", line)
        if m:
            chain = m.group(1)
            continue
        m = _TAG.search(line)
        if m and chain:
            owner = (int(m.group(1)), int(m.group(2)))
            if owner_of(owner[0]) != owner:
                dead.append((chain, int(m.group(3))))
    if dead:
        _nft("".join(f"delete rule ip {TABLE} {c} handle {h}\n" for c, h in dead), check=False)
    if not _state_dir().exists():
        return
    for path in _state_dir().glob("*-*"):
        owner = _read_owner(path)
        if owner is None or owner_of(owner[0]) != owner:
            path.unlink(missing_ok=True)


def _drop_table_if_empty() -> None:
    text = _list_table()
    if text and "nsbox:" not in text:
        _nft(f"delete table ip {TABLE}\n", check=False)
    prune(_state_dir())
