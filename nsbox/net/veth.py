"""Veth mode (like CNI ptp): one veth pair, the pod end born in the pod.

The pair is created by one RTM_NEWLINK whose peer carries the pod's netns
fd, so the pod side (``eth0``) never exists in the host namespace (no
collision with the host's own ``eth0``, no ~15 ms link move).
"""
from __future__ import annotations

import errno
import ipaddress
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import ConfigError, NetworkError
from . import _netlink as nl
from ._names import Interface, check_ifname, check_interface, check_mac, check_mtu, random_host_name
from .shaping import Shaping, shape_link

__all__ = ["Veth", "Attachment", "detach_all"]

_NAME_TRIES = 10
# The ifindex asked for the primary pod end: a fresh namespace has only lo (1).
_PEER_INDEX = 2
# How long teardown waits for the kernel to delete a pod's veth with its
# namespace before deleting it explicitly.
_KERNEL_CLEANUP = 2.0


@dataclass
class Attachment:
    """What a network made for one pod: enough to undo it by name, even
    when the pod's namespace is already gone."""

    host_ifname: str
    ifname: str
    address: Optional[Interface] = None
    host_address: Optional[Interface] = None
    shaping: Shaping = field(default_factory=Shaping)
    route_ifname: str = ""  # the host interface the pod is routed through
    host_index: int = 0
    peer_index: int = 0  # the pod end's ifindex when nsbox chose it, else 0
    host_netns: int = -1  # fd of the namespace the host side lives in
    owns_host_netns: bool = False  # else it is the shared socket's, never closed
    detached: bool = False
    undo: list = field(default_factory=list)  # extra teardown steps, run in reverse

    def detach(self, wait: float = 0.0, link_gone: bool = False) -> None:
        """Remove the host side; idempotent (a missing link is fine).

        Deletes the link (by ifindex, which the kernel does not reuse soon,
        in the namespace the link was made in), then the lease and rules.
        With ``wait``, first waits that long for the kernel to delete it with
        the pod's namespace (see :func:`detach_all`); ``link_gone``: known
        to be gone already."""
        if self.detached:
            return
        errors: list = []
        if not link_gone:
            try:
                with _host_rtnl(self.host_netns) as host:
                    wait_gone(host, [self], wait)
                    err = host.run([nl.link_del(self.host_ifname, self.host_index)])[0]
                if err is not None and err.errno not in (errno.ENODEV, errno.ENOENT):
                    errors.append(err)
            except OSError as e:
                errors.append(e)
        self._undo(errors)
        self.detached = True
        if self.owns_host_netns:
            os.close(self.host_netns)
            self.owns_host_netns = False
        if errors:
            e = errors[0]
            raise NetworkError(getattr(e, "errno", None) or errno.EIO, f"tearing down {self.host_ifname}: {e}")

    def publish(self, owner: Any, ports: list) -> None:  # TEMPORARY shim
        from .ports import publish
        published = publish(owner, self.address, self.route_ifname, ports)
        self.undo.append(published.remove)

    def shape(self, shaping: Shaping, pod_netns_fd: int) -> None:  # TEMPORARY shim
        try:
            shape_link(self.host_ifname, self.ifname, pod_netns_fd, shaping)
        except BaseException:
            try:
                shape_link(self.host_ifname, self.ifname, pod_netns_fd, self.shaping)
            except Exception:
                pass
            raise
        self.shaping = shaping

    def _undo(self, errors: list) -> None:
        for step in reversed(self.undo):
            try:
                step()
            except Exception as e:  # keep going: remove as much as possible
                errors.append(e)
        self.undo.clear()


def wait_gone(host: nl.Rtnl, atts: list, timeout: float) -> None:
    """Wait (polling, ~1 ms apart) until the host links of ``atts`` are gone."""
    pending = [a.host_index for a in atts if a.host_index]
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while pending:
        pending = sorted(host.existing(pending))
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def detach_all(atts: list, wait: float = _KERNEL_CLEANUP) -> None:
    """Tear down many pods' host sides at once.

    An RTM_DELLINK waits for an RCU grace period (~20 ms each); once the pods'
    namespaces are freed, the kernel deletes their veth pairs itself, in one
    batch.  So: wait up to ``wait`` seconds for that, then delete whatever is
    left (something else may keep a namespace alive) and release leases and
    rules."""
    gone: set[int] = set()
    by_netns: dict[int, list] = {}
    for att in atts:
        by_netns.setdefault(att.host_netns, []).append(att)
    for netns, group in by_netns.items():
        try:
            with _host_rtnl(netns) as host:
                wait_gone(host, group, wait)
                still = host.existing([a.host_index for a in group if a.host_index])
            gone.update(id(a) for a in group if a.host_index and a.host_index not in still)
        except OSError:
            pass  # unknown: each one is checked and deleted below
    errors = []
    for att in atts:
        try:
            att.detach(link_gone=id(att) in gone)
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


def _host_rtnl(netns_fd: int) -> nl.Rtnl:
    """An rtnetlink socket in the namespace a host side was made in (the
    shared one of that namespace if there is one: never a new shared one,
    which would keep a namespace alive)."""
    if netns_fd < 0:
        return nl.Rtnl()
    host = nl.shared_in(netns_fd)
    return host if host is not None else nl.Rtnl(nl.socket_in_netns(netns_fd))


class Veth:
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

    def check_publishable(self) -> None:  # TEMPORARY shim
        if self.address.version != 4:
            raise ConfigError("ports= supports IPv4 networks only (for now)")
        if self.host_address is None:
            raise ConfigError("ports= with a Veth needs host_address (the host must route to the pod)")

    def to_dict(self) -> dict:  # TEMPORARY shim
        raise NotImplementedError

    def attach(self, pod_netns_fd: int, holder_pid: int, *, primary: bool = True) -> Attachment:
        return self._attach(pod_netns_fd, holder_pid, primary)

    def _attach(self, pod_netns_fd: int, holder_pid: int, primary: bool = True) -> Attachment:
        with nl.shared() as host:
            att = create_pair(host, pod_netns_fd, self.ifname, self.host_ifname, mtu=self.mtu,
                              mac=self.mac, host_mac=self.host_mac, host_address=self.host_address,
                              peer_index=_PEER_INDEX if primary else 0, ipv6=self.address.version == 6)
            att.address, att.host_address = self.address, self.host_address
            att.route_ifname = att.host_ifname
            try:
                configure_pod_side(pod_netns_fd, self.ifname, self.address, index=att.peer_index,
                                   gateway=self.host_address.ip if primary and self.default_route and self.host_address else None,
                                   routes=self.routes, via=self.host_address.ip if self.host_address else None)
                if self.shaping:
                    shape_link(att.host_ifname, att.ifname, pod_netns_fd, self.shaping)
                    att.shaping = self.shaping
            except BaseException:
                _detach_quietly(att)
                raise
        return att


def create_pair(host: nl.Rtnl, pod_netns_fd: int, ifname: str, host_ifname: Optional[str], *,
                mtu: Optional[int] = None, mac: Optional[str] = None, host_mac: Optional[str] = None,
                master: Optional[int] = None, host_address: Optional[Interface] = None,
                peer_index: int = 0, ipv6: bool = False) -> Attachment:
    """Create the veth pair — the pod end born inside the pod (with ifindex
    ``peer_index`` if given), the host end up, in ``master``, with
    ``host_address`` — in one round trip: the host end gets an ifindex
    chosen here, so its address can go in the same batch."""
    tries = 1 if host_ifname else _NAME_TRIES
    for _ in range(tries):
        name = host_ifname or random_host_name()
        index = _random_index()
        reqs = [nl.veth(name, ifname, pod_netns_fd, mtu=mtu, mac=host_mac, peer_mac=mac, master=master,
                        index=index, peer_index=peer_index),
                *nl.link_up(index, name, no_ipv6_ll=not ipv6)]
        if host_address is not None:
            reqs.append(nl.addr_add(index, name, host_address))
        errors = host.run(reqs)
        err = errors[0]
        if err is None:
            att = Attachment(host_ifname=name, ifname=ifname, host_index=index, peer_index=peer_index)
            if host.is_shared:
                att.host_netns = host.netns_fd
            else:  # a nested pod: its own fd on the namespace, closed at detach
                att.host_netns, att.owns_host_netns = os.dup(host.netns_fd), True
            failed = next((e for e in errors[1:] if e is not None), None)
            if failed is not None:
                _detach_quietly(att)
                raise NetworkError(failed.errno, failed.strerror)
            return att
        if err.errno == errno.EBUSY and peer_index:
            peer_index = 0  # something took that ifindex in the pod: let the kernel choose
            continue
        if err.errno not in (errno.EEXIST, errno.EBUSY):
            raise NetworkError(err.errno, err.strerror)
        if host_ifname and err.errno == errno.EEXIST:
            raise NetworkError(errno.EEXIST, f"host interface name {host_ifname!r} is taken; pick another or leave host_ifname unset")
    raise NetworkError(errno.EEXIST, f"no free host interface name after {tries} random tries")


def _random_index() -> int:
    """An ifindex for a new host-side link: random in the upper half of the
    range, where the kernel's own (counting up from 1) won't be for years."""
    return 0x40000000 + int.from_bytes(os.urandom(4), "big") % 0x3FFFFFFF


def configure_pod_side(pod_netns_fd: int, ifname: str, address: Interface, *, gateway: Any,
                       routes: Iterable[Any] = (), via: Any = None, index: int = 0) -> None:
    """Address, up, default route and extra routes on the pod end: one batch
    (``index``: the pod end's ifindex when known, else it is looked up)."""
    with nl.Rtnl(nl.socket_in_netns(pod_netns_fd)) as pod:
        if not index:
            index = _index(pod, ifname)
        reqs = [*nl.link_up(index, ifname, no_ipv6_ll=address.version == 4),
                nl.addr_add(index, ifname, address)]
        if gateway is not None:
            reqs.append(nl.route_add(gateway, oif=index))
        for net in routes:
            reqs.append(nl.route_add(via, dst=net, oif=index))
        _check(pod, reqs)


def _index(rtnl: nl.Rtnl, name: str) -> int:
    index = rtnl.link_index(name)
    if index is None:
        raise NetworkError(errno.ENODEV, f"interface {name} vanished while it was being set up")
    return index


def _check(rtnl: nl.Rtnl, reqs: list) -> None:
    for err in rtnl.run(reqs):
        if err is not None:
            raise NetworkError(err.errno, err.strerror)


def _detach_quietly(att: Attachment) -> None:
    try:
        att.detach()
    except Exception:
        pass
