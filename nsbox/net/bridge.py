"""Bridge mode (like CNI bridge + host-local): pods on one Linux bridge,
addresses from a subnet handed out by :mod:`nsbox.net.ipam`.

The bridge is created on first use, with the gateway address, under the
IPAM lock, so concurrent pods (threads or processes) never race to create
it.  Pod teardown never deletes the bridge; :meth:`Bridge.remove` does,
once no pod uses it.
"""
from __future__ import annotations

import errno
import ipaddress
import os
from typing import Any, Optional

from ..errors import ConfigError, NetworkError
from . import messages as msg
from . import rtnl, teardown
from .validate import check_ifname, check_mac, check_mtu
from .attachment import Attachment, attach
from .ipam import Ipam, Owner, owner_of
from .link import index_of, link_index, link_info, ports_of
from .network import NetworkConfig
from .shaping import Shaping

__all__ = ["Bridge"]


# A bridge's port numbers are 10 bits, port 0 reserved (BR_MAX_PORTS): the
# 1,024th port is refused with EXFULL.
MAX_PORTS = 1023


# Bridges this process has made sure of, in its own network namespace:
# (name, subnet) -> ifindex (see Bridge._bridge_index).  Guarded by the
# state lock.
_known: dict[tuple[str, str], int] = {}
os.register_at_fork(after_in_child=_known.clear)


def _random_mac() -> str:
    """A random unicast, locally administered MAC address.  A bridge made
    without one takes the lowest of its ports' and changes it as ports come
    and go (each time, the pods' gateway changes its MAC under their ARP
    caches), and recomputes it at every port added."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


class Bridge(NetworkConfig):
    """A Linux bridge shared by pods, with IPAM.

    ::

        net = nsbox.Bridge("nsbr0", subnet="10.201.0.0/24")
        a = nsbox.Pod(network=net).start()     # a.address: 10.201.0.2/24
        b = nsbox.Pod(network=net).start()     # b.address: 10.201.0.3/24, reaches a
        ...
        net.remove()                           # once every pod is stopped

    ``gateway`` defaults to the subnet's first address; the bridge gets it and
    pods route through it.  ``address`` asks for a specific pod address
    instead of the next free one.  ``ifname``, ``host_ifname``, ``mtu`` and
    ``mac`` are as for :class:`nsbox.Veth`, and so are the shaping keywords
    ``delay``, ``jitter``, ``loss`` and ``rate`` (applied to the pod's port).

    A bridge nsbox makes has a MAC address of its own (random, locally
    administered), so the pods' gateway keeps its MAC as pods come and go,
    and multicast snooping off unless ``multicast_snooping=True``: every
    multicast frame reaches every pod on the bridge, as on a plain switch,
    querier or not, and adding a port does not re-arm snooping on every
    other port (docs/networking.md).
    Both apply when nsbox creates the bridge; a bridge that exists is
    used as it is.
    """

    def __init__(
        self,
        name: str,
        subnet: Any,
        *,
        gateway: Any = None,
        address: Any = None,
        ifname: str = "eth0",
        host_ifname: Optional[str] = None,
        mtu: Optional[int] = None,
        mac: Optional[str] = None,
        delay: Any = None,
        jitter: Any = None,
        loss: Optional[float] = None,
        rate: Any = None,
        multicast_snooping: bool = False,
    ):
        self.name = check_ifname(name, "bridge name")
        if not isinstance(multicast_snooping, bool):
            raise ConfigError(f"multicast_snooping must be True or False, not {multicast_snooping!r}")
        self.multicast_snooping = multicast_snooping
        self.shaping = Shaping.parse(delay, jitter, loss, rate)
        try:
            self.subnet = ipaddress.ip_network(subnet)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"subnet {subnet!r} is not a network like '10.201.0.0/24': {e}") from None
        hosts = self.subnet.num_addresses - (2 if self.subnet.version == 4 else 1)
        if hosts < 2:
            raise ConfigError(f"subnet {self.subnet} is too small for a gateway and a pod")
        first = next(self.subnet.hosts())
        gw = first if gateway is None else _address_in(gateway, self.subnet, "gateway")
        self.gateway = ipaddress.ip_interface(f"{gw}/{self.subnet.prefixlen}")
        self.address = None
        if address is not None:
            addr = _address_in(address, self.subnet, "address")
            if addr == gw:
                raise ConfigError(f"address {addr} is the bridge's gateway")
            self.address = ipaddress.ip_interface(f"{addr}/{self.subnet.prefixlen}")
        self.ifname = check_ifname(ifname, "ifname")
        self.host_ifname = None if host_ifname is None else check_ifname(host_ifname, "host_ifname")
        self.mtu = check_mtu(mtu)
        self.mac = check_mac(mac, "mac")
        self._ipam = Ipam(self.name, self.subnet, {gw})

    def __repr__(self) -> str:
        return f"Bridge({self.name!r}, subnet={str(self.subnet)!r}, gateway={str(self.gateway.ip)!r})"

    # ---- pods ------------------------------------------------------------

    KIND = "bridge"
    LO_UP = True

    def to_dict(self) -> dict[str, Any]:
        """The configuration, JSON-able: ``network_from_dict()`` makes an equal Bridge."""
        return {
            "type": self.KIND,
            "name": self.name,
            "subnet": str(self.subnet),
            "gateway": str(self.gateway.ip),
            "address": None if self.address is None else str(self.address.ip),
            "ifname": self.ifname,
            "host_ifname": self.host_ifname,
            "mtu": self.mtu,
            "mac": self.mac,
            **self.shaping.to_kwargs(),
            # (only when on: a record an older nsbox can still read)
            **({"multicast_snooping": True} if self.multicast_snooping else {}),
        }

    def check_publishable(self) -> None:
        """Raise ConfigError unless ``ports=`` can be published through this network."""
        if self.subnet.version != 4:
            raise ConfigError("ports= supports IPv4 networks only (for now)")

    def attach(self, pod_netns_fd: int, holder_pid: int, *, primary: bool = True) -> Attachment:
        """Lease an address and make this network's link for the pod whose
        network namespace is ``pod_netns_fd``, its host end a port of the
        bridge (made if needed); only the ``primary`` network gives the pod a
        default route."""
        owner = owner_of(holder_pid)
        if owner is None:
            raise NetworkError(errno.ESRCH, "the pod's holder exited while its network was being set up")
        # A stopped pod of this process may still hold the address asked
        # for, or the host name (torn down in the background): retry_settled.
        return teardown.retry_settled(lambda: self._attach(pod_netns_fd, owner, primary))

    def _attach(self, pod_netns_fd: int, owner: Owner, primary: bool) -> Attachment:
        with rtnl.shared() as host:
            for fresh in (False, True):
                with self._ipam.locked():
                    bridge_index, known = self._bridge_index(host, fresh)
                    lease = self._ipam.lease(owner, self.address.ip if self.address else None)
                address = ipaddress.ip_interface((lease.address, self.subnet.prefixlen))
                try:
                    return attach(host, pod_netns_fd, ifname=self.ifname, address=address,
                                  host_ifname=self.host_ifname, host_address=self.gateway,
                                  gateway=self.gateway.ip if primary else None, master=bridge_index,
                                  route_ifname=self.name, mtu=self.mtu, mac=self.mac, primary=primary,
                                  shaping=self.shaping, lease=lease, lo_up=primary)
                except NetworkError as e:
                    if known and e.errno in (errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP):
                        continue  # the bridge we knew went (or was replaced) behind our back: look again
                    if e.errno != errno.EXFULL:
                        raise
                    raise NetworkError(
                        errno.EXFULL,
                        f"bridge {self.name} is full: a Linux bridge takes at most {MAX_PORTS} ports (the "
                        "kernel's limit), and all are in use; put further pods on another nsbox.Bridge (its own "
                        "name and subnet) -- pods on two bridges reach each other through the host's routing "
                        "(net.ipv4.ip_forward=1)") from None
            raise AssertionError("unreachable")  # pragma: no cover

    def _bridge_index(self, host: rtnl.Rtnl, fresh: bool) -> tuple[int, bool]:
        """The bridge's ifindex, and whether it was already known.  A bridge
        this process made sure of (made, or found to be nsbox's for this
        subnet, and given its gateway and set up) is not looked at again for
        every pod -- two round trips, a third of a bridge pod's netlink
        (issue 13) -- unless ``fresh``: making a port on it then fails if it
        went away.  (Under the state lock.)"""
        key = (self.name, str(self.subnet))
        if host.is_shared and not fresh and key in _known:
            return _known[key], True
        index = self._ensure_bridge(host)
        if host.is_shared:
            _known[key] = index
        return index, False

    @property
    def _alias(self) -> str:
        return f"nsbox:{self.subnet}"

    def _ensure_bridge(self, host: rtnl.Rtnl) -> int:
        """The bridge's ifindex, creating it (with the gateway, up) if needed.

        A bridge nsbox creates carries the alias ``nsbox:<subnet>``; any other
        link of that name (another bridge, a bridge for another subnet) is
        refused, never adopted."""
        info = link_info(host, self.name)
        if info is None:
            host.check([msg.bridge(self.name, mac=_random_mac(), multicast_snooping=self.multicast_snooping)])
            index = index_of(host, self.name)
            errors = host.run([msg.addr_add(index, self.name, self.gateway),
                               msg.link_set(index, self.name, up=True, alias=self._alias)])
            failed = next((e for e in errors if e is not None), None)
            if failed is not None:
                host.run([msg.link_del(self.name)])
                raise failed
            return index
        index = self._check_ours(info)
        errors = host.run([msg.addr_add(index, self.name, self.gateway), msg.link_set(index, self.name, up=True)])
        for err in errors:
            if err is not None and err.errno != errno.EEXIST:
                raise err
        return index

    def _check_ours(self, info: tuple[int, str, str]) -> int:
        """The ifindex of the existing link ``info`` (from ``link_info``),
        if it is the bridge nsbox made for this subnet; else NetworkError."""
        index, kind, alias = info
        if kind != "bridge":
            raise NetworkError(errno.EEXIST, f"{self.name!r} exists and is not a bridge; pick another name")
        if alias != self._alias:
            what = f"was made by nsbox for {alias[6:]}" if alias.startswith("nsbox:") else "was not made by nsbox"
            raise NetworkError(
                errno.EEXIST,
                f"bridge {self.name!r} {what}; nsbox neither adopts nor removes it: pick another name",
            )
        return index

    # ---- the bridge itself -------------------------------------------------

    @property
    def exists(self) -> bool:
        """True if the bridge exists (in the calling thread's network namespace)."""
        with rtnl.Rtnl() as host:
            info = link_info(host, self.name)
        return info is not None and info[1] == "bridge"

    def ports(self) -> list[str]:
        """Host-side interfaces attached to the bridge."""
        with rtnl.Rtnl() as host:
            return self._ports(host)

    def _ports(self, host: rtnl.Rtnl) -> list[str]:
        index = link_index(host, self.name)
        return [] if index is None else ports_of(host, index)

    def leases(self) -> dict:
        """Live address leases: ``{address: (holder pid, start time)}``."""
        with self._ipam.locked():
            return self._ipam.live_leases()

    def remove(self) -> None:
        """Delete the bridge and its IPAM state.  Raises NetworkError (EBUSY)
        while a pod still uses it (a port, or a live address lease: also when
        the bridge itself is gone), (EEXIST) for a link of that name nsbox
        did not make for this subnet; a no-op when it does not exist.  Stopped
        pods' teardowns still in the background are waited for first."""
        if teardown.pending():
            teardown.settle()
        with rtnl.Rtnl() as host, self._ipam.locked():
            _known.pop((self.name, str(self.subnet)), None)
            info = link_info(host, self.name)
            leases = self._ipam.live_leases()
            # (No bridge here -- deleted behind nsbox's back, or this thread is
            # in another network namespace -- but live pods' leases: refused too.)
            ports = [] if info is None else ports_of(host, self._check_ours(info))
            if leases or ports:
                raise NetworkError(
                    errno.EBUSY,
                    f"bridge {self.name} is still used by {len(leases)} pod(s) "
                    f"(ports: {', '.join(ports) or 'none'}); stop them first",
                )
            if info is None:
                self._ipam.destroy()
                return
            err = host.run([msg.link_del(self.name)])[0]
            if err is not None and err.errno not in (errno.ENODEV, errno.ENOENT):
                raise err
            self._ipam.destroy()


def _address_in(value: Any, subnet: Any, what: str) -> Any:
    try:
        addr = ipaddress.ip_address(str(value).split("/")[0])
    except ValueError as e:
        raise ConfigError(f"{what} {value!r} is not an IP address: {e}") from None
    if addr not in subnet:
        raise ConfigError(f"{what} {addr} is outside the bridge subnet {subnet}")
    if subnet.version == 4 and subnet.prefixlen < 31 and addr in (subnet.network_address, subnet.broadcast_address):
        raise ConfigError(f"{what} {addr} is the network or broadcast address of {subnet}")
    return addr
