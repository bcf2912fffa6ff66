"""Veth mode (like CNI ptp): one veth pair, the pod end born in the pod.

The pair is created by one RTM_NEWLINK whose peer carries the pod's netns
fd, so the pod side (``eth0``) never exists in the host namespace (no
collision with the host's own ``eth0``, no link move).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any, Optional

from ..errors import ConfigError
from . import rtnl, teardown
from .validate import check_ifname, check_interface, check_mac, check_mtu
from .attachment import Attachment, attach
from .network import NetworkConfig
from .shaping import Shaping

__all__ = ["Veth"]


class Veth(NetworkConfig):
    """A point-to-point link between the pod and the host.

    ::

        nsbox.Pod(network=nsbox.Veth(address="10.200.1.2/24", host_address="10.200.1.1/24"))

    ``address`` is the pod end's address (``pod.address``); ``host_address``
    the host end's, in the same subnet, and the pod's default gateway.
    ``ifname`` names the pod end (default ``eth0``); ``host_ifname`` the host
    end (default: ``nsbx`` + 8 random hex digits, retried if taken).  ``routes``
    adds routes to more networks via the host end.

    ``delay``/``jitter`` (``"50ms"``), ``loss`` (percent) and ``rate``
    (``"10mbit"``) shape the link in each direction; change them on a running
    pod with :meth:`nsbox.Pod.shape`.
    """

    def __init__(
        self,
        address: Any,
        host_address: Any = None,
        *,
        ifname: str = "eth0",
        host_ifname: Optional[str] = None,
        mtu: Optional[int] = None,
        mac: Optional[str] = None,
        host_mac: Optional[str] = None,
        routes: Iterable[Any] = (),
        default_route: bool = True,
        delay: Any = None,
        jitter: Any = None,
        loss: Optional[float] = None,
        rate: Any = None,
    ):
        self.address = check_interface(address, "address")
        self.shaping = Shaping.parse(delay, jitter, loss, rate)
        self.host_address = None if host_address is None else check_interface(host_address, "host_address")
        if self.host_address is not None:
            if self.host_address.version != self.address.version:
                raise ConfigError(f"address {self.address} and host_address {self.host_address} are of different IP versions")
            if self.host_address.network != self.address.network:
                raise ConfigError(
                    f"address {self.address} and host_address {self.host_address} are in different subnets "
                    f"({self.address.network} vs {self.host_address.network}); give both the same prefix"
                )
            if self.host_address.ip == self.address.ip:
                raise ConfigError(f"address and host_address are both {self.address.ip}")
        self.ifname = check_ifname(ifname, "ifname")
        self.host_ifname = None if host_ifname is None else check_ifname(host_ifname, "host_ifname")
        self.mtu = check_mtu(mtu)
        self.mac = check_mac(mac, "mac")
        self.host_mac = check_mac(host_mac, "host_mac")
        self.routes = []
        for r in routes:
            try:
                net = ipaddress.ip_network(r, strict=False)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"route {r!r} is not a network like '10.201.0.0/16': {e}") from None
            if net.version != self.address.version:
                raise ConfigError(f"route {net} is not of the address's IP version")
            if net.prefixlen == 0:
                raise ConfigError(f"route {net} is the default route: use default_route=True instead")
            self.routes.append(net)
        self.default_route = bool(default_route) and self.host_address is not None
        if self.routes and self.host_address is None:
            raise ConfigError("routes need host_address (the gateway)")

    def __repr__(self) -> str:
        return f"Veth(address={str(self.address)!r}, host_address={str(self.host_address) if self.host_address else None!r})"

    KIND = "veth"
    LO_UP = True

    def to_dict(self) -> dict[str, Any]:
        """The configuration, JSON-able: ``network_from_dict()`` makes an equal Veth."""
        return {
            "type": self.KIND,
            "address": str(self.address),
            "host_address": None if self.host_address is None else str(self.host_address),
            "ifname": self.ifname,
            "host_ifname": self.host_ifname,
            "mtu": self.mtu,
            "mac": self.mac,
            "host_mac": self.host_mac,
            "routes": [str(r) for r in self.routes],
            "default_route": self.default_route,
            **self.shaping.to_kwargs(),
        }

    def check_publishable(self) -> None:
        """Raise ConfigError unless ``ports=`` can be published through this network."""
        if self.address.version != 4:
            raise ConfigError("ports= supports IPv4 networks only (for now)")
        if self.host_address is None:
            raise ConfigError("ports= with a Veth needs host_address (the host must route to the pod)")

    def attach(self, pod_netns_fd: int, holder_pid: int, *, primary: bool = True) -> Attachment:
        """Make this network's link for the pod whose network namespace is
        ``pod_netns_fd``; only the ``primary`` network gives it a default route."""
        # A stopped pod of this process may still hold the host address or
        # name (its link is being torn down in the background): retry_settled.
        return teardown.retry_settled(lambda: self._attach(pod_netns_fd, primary))

    def _attach(self, pod_netns_fd: int, primary: bool) -> Attachment:
        gateway = self.host_address.ip if primary and self.default_route and self.host_address else None
        with rtnl.shared() as host:
            return attach(host, pod_netns_fd, ifname=self.ifname, address=self.address,
                          host_ifname=self.host_ifname, host_address=self.host_address,
                          address_on_host_link=True, gateway=gateway, routes=self.routes,
                          mtu=self.mtu, mac=self.mac, host_mac=self.host_mac, primary=primary,
                          shaping=self.shaping, lo_up=primary)

