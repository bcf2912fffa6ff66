"""Interface names and addresses: validation shared by the network modes."""
from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Optional, Union

from ..errors import ConfigError

IFNAMSIZ = 16
HOST_PREFIX = "nsbx"  # every host-side link nsbox names itself starts with this
_RESERVED = {"lo", "all", "default", ".", ".."}
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

Interface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]


def check_ifname(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"{what} must be a str, not {type(name).__name__}")
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise ConfigError(f"{what} {name!r} must be 1 to {IFNAMSIZ - 1} bytes long")
    if "/" in name or ":" in name or any(c.isspace() or not c.isprintable() for c in name):
        raise ConfigError(f"{what} {name!r} must not contain '/', ':', whitespace or control characters")
    if name in _RESERVED:
        raise ConfigError(f"{what} {name!r} is reserved; pick another name")
    return name


def random_host_name() -> str:
    return HOST_PREFIX + os.urandom(4).hex()


def check_interface(value: Any, what: str) -> Interface:
    """A CIDR like '10.200.1.2/24' -> IPv4Interface (or IPv6Interface)."""
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        iface = value
    else:
        if not isinstance(value, str) or "/" not in value:
            raise ConfigError(f"{what} must be an address with a prefix length like '10.200.1.2/24', not {value!r}")
        try:
            iface = ipaddress.ip_interface(value)
        except ValueError as e:
            raise ConfigError(f"{what} {value!r} is not a valid CIDR address: {e}") from None
    net = iface.network
    if net.prefixlen == net.max_prefixlen:
        raise ConfigError(f"{what} {iface} has no room for a peer: use a shorter prefix (e.g. /24)")
    if iface.version == 4 and net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise ConfigError(f"{what} {iface} is the network or broadcast address of {net}")
    return iface


def check_mtu(mtu: Any) -> Optional[int]:
    if mtu is None:
        return None
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise ConfigError(f"mtu must be an int from 68 to 65535, not {mtu!r}")
    return mtu


def check_mac(mac: Any, what: str) -> Optional[str]:
    if mac is None:
        return None
    if not isinstance(mac, str) or not _MAC.match(mac):
        raise ConfigError(f"{what} must look like '02:00:00:00:00:01', not {mac!r}")
    if int(mac[:2], 16) & 1:
        raise ConfigError(f"{what} {mac} is a multicast address; the first byte must be even")
    return mac.lower()
