"""What a pod *is*: its configuration as immutable, validated, serialisable
data.

A :class:`PodSpec` is checked once, when it is made; a :class:`~nsbox.Pod`
holds one and a running state.  ``to_json()``/``from_json()`` round-trip it
exactly: what a record of a pod stores, what a restart rebuilds from, what a
command line prints.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .errors import ConfigError, UnsupportedError
from .kinds import DEFAULT_KINDS, KindsArg, parse_kinds
from .net import Bridge, Network, network_from_dict
from .net.network import NetworkConfig
from .net.ports import parse_ports
from .podfiles import DNS, check_hostname, check_hosts
from .sysctls import check_sysctls
from .volumes import Volume, check_volumes, volume_from_dict

__all__ = ["PodSpec", "IdMap"]

IdMap = Union[str, Sequence[tuple[int, int, int]]]
Port = tuple[str, int, int]  # (protocol, host port, pod port)

_HOSTNAME_MAX = 64
_FORMAT = 1  # version of the to_dict() layout


@dataclass(frozen=True)
class PodSpec:
    """A pod's configuration (see :class:`nsbox.Pod` for each field).

    Made from ``Pod``'s arguments by :meth:`from_args`, or directly; either
    way every field is validated and normalised in ``__post_init__``:
    ``kinds`` in canonical order, ``mount_proc`` a bool, id maps as
    ``/proc/PID/uid_map`` text (the default maps filled in), ``networks`` and
    ``ports`` as tuples.
    """

    kinds: tuple[str, ...] = DEFAULT_KINDS
    hostname: Optional[str] = None
    mount_proc: Optional[bool] = None  # None: on when both mnt and pid are present
    uid_map: Optional[str] = None
    gid_map: Optional[str] = None
    networks: tuple[Network, ...] = ()
    ports: tuple[Port, ...] = field(default=())
    restart: bool = False  # a new sandbox when the holder dies without stop()
    volumes: tuple[tuple[str, Volume], ...] = ()  # ((mount path, volume), ...), parents first
    hosts: tuple[tuple[str, str], ...] = ()  # ((name, address), ...): extra /etc/hosts lines
    dns: Optional[DNS] = None  # the pod's /etc/resolv.conf; None: the host's (loopback servers left out)
    sysctls: tuple[tuple[str, str], ...] = ()  # ((name, value), ...)

    @classmethod
    def from_args(
        cls,
        kinds: KindsArg = DEFAULT_KINDS,
        *,
        hostname: Optional[str] = None,
        mount_proc: Optional[bool] = None,
        uid_map: Optional[IdMap] = None,
        gid_map: Optional[IdMap] = None,
        network: Any = None,
        ports: Any = None,
        restart: bool = False,
        volumes: Any = None,
        hosts: Any = None,
        dns: Optional[DNS] = None,
        sysctls: Any = None,
    ) -> "PodSpec":
        """A spec from the arguments of :class:`nsbox.Pod` (``network``: one
        network or a list; ``ports``: ``{host_port: pod_port}``; ``volumes``:
        ``{mount path: volume}``; ``hosts``: ``{name: address}``;
        ``sysctls``: ``{name: value}``)."""
        if network is None:
            networks: tuple = ()
        elif isinstance(network, (list, tuple)):
            networks = tuple(network)
        else:
            networks = (network,)
        if ports and not networks:
            raise ConfigError("ports= needs a network (network=nsbox.Bridge(...) or nsbox.Veth(...))")
        return cls(
            kinds=parse_kinds(kinds),
            hostname=hostname,
            mount_proc=mount_proc,
            uid_map=uid_map,  # type: ignore[arg-type]  # normalised to text below
            gid_map=gid_map,  # type: ignore[arg-type]
            networks=networks,
            ports=tuple(parse_ports(ports)) if ports else (),
            restart=restart,
            volumes=_pairs(volumes),
            hosts=_pairs(hosts),
            dns=dns,
            sysctls=_pairs(sysctls),
        )

    def __post_init__(self) -> None:
        kinds = parse_kinds(self.kinds)
        for name in ("networks", "ports"):
            if not isinstance(getattr(self, name), (tuple, list)):
                raise ConfigError(f"{name} must be a tuple, not {type(getattr(self, name)).__name__}")
        if self.mount_proc is not None and not isinstance(self.mount_proc, bool):
            raise ConfigError(f"mount_proc must be True, False or None, not {self.mount_proc!r}")
        if not isinstance(self.restart, bool):
            raise ConfigError(f"restart must be True or False, not {self.restart!r}")
        if "time" in kinds:
            raise UnsupportedError(
                "the 'time' kind is not supported for pods: a new time namespace applies only to "
                "the children of the process that creates it and must be configured before any "
                "of them starts, so the holder cannot hold one for its members"
            )
        mount_proc = self.mount_proc
        if mount_proc is None:
            mount_proc = "mnt" in kinds and "pid" in kinds
        elif mount_proc and "mnt" not in kinds:
            raise ConfigError("mount_proc=True needs the 'mnt' kind (a private mount namespace)")
        if (self.uid_map is not None or self.gid_map is not None) and "user" not in kinds:
            raise ConfigError("uid_map/gid_map need the 'user' kind")
        uid_map = gid_map = None
        if "user" in kinds:
            uid_map = _format_id_map("uid_map", self.uid_map, os.geteuid())
            gid_map = _format_id_map("gid_map", self.gid_map, os.getegid())
        networks = _check_networks(self.networks, kinds)
        ports = tuple(self.ports)
        if ports:
            if not networks:
                raise ConfigError("ports= needs a network (network=nsbox.Bridge(...) or nsbox.Veth(...))")
            try:
                as_mapping = {f"{host}/{proto}": pod for proto, host, pod in ports}
            except (TypeError, ValueError):
                raise ConfigError(f"ports must be (protocol, host port, pod port) triples, not {ports!r}") from None
            ports = tuple(parse_ports(as_mapping))
            networks[0].check_publishable()
        volumes = check_volumes(_mapping("volumes", self.volumes), kinds) if self.volumes else ()
        hosts = check_hosts(_mapping("hosts", self.hosts)) if self.hosts else ()
        if self.dns is not None and not isinstance(self.dns, DNS):
            raise ConfigError(f"dns must be an nsbox.DNS, not {self.dns!r}")
        if (hosts or self.dns is not None) and "mnt" not in kinds:
            raise ConfigError("hosts= and dns= need the 'mnt' kind (the pod's own /etc/hosts and "
                              "/etc/resolv.conf are mounted in its mount namespace); add 'mnt' to kinds")
        sysctls = check_sysctls(_mapping("sysctls", self.sysctls), kinds) if self.sysctls else ()
        hostname = _check_hostname(self.hostname, kinds)
        if hostname is not None and ("mnt" in kinds or any(isinstance(n, Bridge) for n in networks)):
            hostname = check_hostname(hostname)  # (it goes into /etc/hosts files)
        for name, value in (("volumes", volumes), ("hosts", hosts), ("sysctls", sysctls),
                            ("kinds", kinds), ("hostname", hostname),
                            ("mount_proc", bool(mount_proc)), ("uid_map", uid_map), ("gid_map", gid_map),
                            ("networks", networks), ("ports", ports)):
            object.__setattr__(self, name, value)

    @property
    def network(self) -> Optional[Network]:
        """The primary network (the first), or None."""
        return self.networks[0] if self.networks else None

    # ---- serialisation -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able); :meth:`from_dict` makes an equal spec from it."""
        return {
            "format": _FORMAT,
            "kinds": list(self.kinds),
            "hostname": self.hostname,
            "mount_proc": self.mount_proc,
            "uid_map": self.uid_map,
            "gid_map": self.gid_map,
            "networks": [net.to_dict() for net in self.networks],
            "ports": [list(p) for p in self.ports],
            "restart": self.restart,
            "volumes": [[path, vol.to_dict()] for path, vol in self.volumes],
            "hosts": [list(h) for h in self.hosts],
            "dns": self.dns.to_dict() if self.dns is not None else None,
            "sysctls": [list(s) for s in self.sysctls],
        }

    @classmethod
    def from_dict(cls, data: Any) -> "PodSpec":
        if not isinstance(data, dict):
            raise ConfigError(f"a pod spec must be a mapping, not {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", _FORMAT)
        if fmt != _FORMAT:
            raise ConfigError(f"pod spec format {fmt!r} is not supported (this nsbox reads format {_FORMAT})")
        known = {"kinds", "hostname", "mount_proc", "uid_map", "gid_map", "networks", "ports", "restart",
                 "volumes", "hosts", "dns", "sysctls"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown pod spec field(s): {', '.join(unknown)}")
        nets = data.get("networks") or []
        ports = data.get("ports") or []
        kinds = data.get("kinds", DEFAULT_KINDS)
        for name, value in (("networks", nets), ("ports", ports), ("kinds", kinds)):
            if not isinstance(value, list) and not (name == "kinds" and isinstance(value, tuple)):
                raise ConfigError(f"pod spec field {name!r} must be a list, not {value!r}")
        if not all(isinstance(p, list) and len(p) == 3 and isinstance(p[0], str)
                   and all(isinstance(n, int) and not isinstance(n, bool) for n in p[1:]) for p in ports):
            raise ConfigError(f"pod spec field 'ports' must be a list of [protocol, host port, pod port], not {ports!r}")
        port_tuples = tuple((p[0], p[1], p[2]) for p in ports)
        for name in ("volumes", "hosts", "sysctls"):
            value = data.get(name) or []
            if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
                raise ConfigError(f"pod spec field {name!r} must be a list of pairs, not {value!r}")
        dns = data.get("dns")
        return cls(
            kinds=tuple(kinds),
            hostname=data.get("hostname"),
            mount_proc=data.get("mount_proc"),
            uid_map=data.get("uid_map"),
            gid_map=data.get("gid_map"),
            networks=tuple(network_from_dict(n) for n in nets),
            ports=port_tuples,
            restart=data.get("restart", False),
            volumes=tuple((p, volume_from_dict(v)) for p, v in data.get("volumes") or []),
            hosts=tuple((n, a) for n, a in data.get("hosts") or []),
            dns=DNS.from_dict(dns) if dns is not None else None,
            sysctls=tuple((n, v) for n, v in data.get("sysctls") or []),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "PodSpec":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"a pod spec must be JSON: {e}") from None
        return cls.from_dict(data)


# ---- validation ------------------------------------------------------------------


def _pairs(value: Any) -> tuple:
    """``{key: value}`` (as Pod takes them) as a tuple of pairs; None as ()."""
    if value is None:
        return ()
    if isinstance(value, dict):
        return tuple(value.items())
    return value  # (checked by __post_init__)


def _mapping(name: str, value: Any) -> dict:
    """A field of pairs (or a mapping) as a dict; a repeated key is an error."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, (tuple, list)):
        raise ConfigError(f"{name} must be a mapping, not {type(value).__name__}")
    out: dict = {}
    for item in value:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConfigError(f"{name} must be a mapping (or a list of pairs), not {value!r}")
        if item[0] in out:
            raise ConfigError(f"{name}: {item[0]!r} is given twice")
        out[item[0]] = item[1]
    return out


def _check_networks(networks: Iterable[Any], kinds: tuple[str, ...]) -> tuple[Network, ...]:
    nets = tuple(networks)
    for net in nets:
        # (isinstance on a runtime Protocol costs ~10 us: the known classes first)
        if not isinstance(net, NetworkConfig) and not isinstance(net, Network):
            raise ConfigError(f"network must be an nsbox.Veth or nsbox.Bridge (or a list of them), not {net!r}")
    if nets and "net" not in kinds:
        raise ConfigError("network= needs the 'net' kind (a network namespace of the pod's own)")
    names = [net.ifname for net in nets]
    if len(set(names)) != len(names):
        raise ConfigError(f"each network of a pod needs its own ifname; got {names} (use ifname='eth1', ...)")
    return nets


def _check_hostname(hostname: Optional[str], kinds: tuple[str, ...]) -> Optional[str]:
    if hostname is None:
        return None
    if not isinstance(hostname, str):
        raise ConfigError(f"hostname must be a str, not {type(hostname).__name__}")
    if "uts" not in kinds:
        raise ConfigError("hostname needs the 'uts' kind (a UTS namespace of the pod's own)")
    raw = hostname.encode("utf-8", "surrogateescape")
    if not raw or len(raw) > _HOSTNAME_MAX:
        raise ConfigError(f"hostname must be 1 to {_HOSTNAME_MAX} bytes long, got {len(raw)}: {hostname!r}")
    if any(c.isspace() or not c.isprintable() for c in hostname):
        raise ConfigError(f"hostname must not contain whitespace or control characters: {hostname!r}")
    return hostname


def _format_id_map(name: str, value: Optional[IdMap], own_id: int) -> str:
    if value is None:
        value = [(0, 0, 65536)] if own_id == 0 else [(0, own_id, 1)]
    if isinstance(value, str):
        lines: list[Any] = [line.split() for line in value.strip().splitlines()]
    else:
        try:
            lines = [list(t) for t in value]
        except TypeError:
            raise ConfigError(f"{name} must be a string or a list of (inside, outside, count)") from None
    if not lines:
        raise ConfigError(f"{name} is empty")
    out = []
    for entry in lines:
        try:
            inside, outside, count = (int(x) for x in entry)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: each entry must be 'inside outside count' integers, got {entry!r}") from None
        if min(inside, outside) < 0 or count <= 0 or max(inside, outside) + count >= 2**32:  # (ids are u32; -1 is none)
            raise ConfigError(f"{name}: entry {entry!r} is out of range")
        out.append(f"{inside} {outside} {count}")
    return "\n".join(out) + "\n"
