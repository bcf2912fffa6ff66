"""rtnetlink message builders: each returns a :class:`~nsbox.net.rtnl.Request`.

pyroute2's message classes encode the messages; :mod:`nsbox.net.rtnl` sends
them.  Most shapes are encoded once with placeholder values and then
patched (see "templates" below).
"""
from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from typing import Any, Callable, Optional

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELQDISC,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWQDISC,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .rtnl import HEADER, Request

__all__ = [
    "CREATE", "REPLACE", "CHANGE", "veth", "bridge", "link_set", "link_up", "link_del",
    "get_link", "get_link_by_index", "addr_add", "addr_del", "route_add", "fib_match", "qdisc", "qdisc_del",
    "netns_id",
]

CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
CHANGE = NLM_F_REQUEST | NLM_F_ACK
IFF_UP = 0x1
RTM_F_FIB_MATCH = 0x2000  # RTM_GETROUTE: answer with the matching route, not a resolved one

# ---- templates -----------------------------------------------------------------
#
# pyroute2 encodes a message slowly, in Python (see docs/performance.md).
# Messages of one shape differ only in a few fixed-size values, so pyroute2
# encodes each shape once with placeholders (values no real message has),
# and later messages are that encoding with the real values patched in.

# Placeholders for 32-bit fields, each named after the field it stands for.
LINK_INDEX = 0x7EADBEEF  # the link's own ifindex (ifinfomsg/ifaddrmsg index, RTA_OIF)
PEER_NETNS_FD = 0x7EADBEE1  # the veth peer's IFLA_NET_NS_FD
PEER_INDEX = 0x7EADBEE2  # the veth peer's ifindex
MASTER_INDEX = 0x7EADBEE3  # IFLA_MASTER: the bridge's ifindex
# Placeholders for addresses, per IP version: the address itself (or gateway)
# and a route's destination (documentation ranges, never on a real link).
ADDRESS = {4: ipaddress.ip_address("198.51.100.77"), 6: ipaddress.ip_address("2001:db8:7e57::77")}
DESTINATION = {4: ipaddress.ip_address("198.51.100.78"), 6: ipaddress.ip_address("2001:db8:7e57::78")}


def link_name(n: int) -> str:
    """Placeholder for a link's IFLA_IFNAME of ``n`` bytes."""
    return "Q" * n


def peer_name(n: int) -> str:
    """Placeholder for the veth peer's IFLA_IFNAME of ``n`` bytes."""
    return "J" * n


def _i32(value: int) -> bytes:
    return struct.pack("=i", value)


_templates: dict = {}


def _templated(key: tuple, build: Callable[[], Any], values: dict) -> bytearray:
    """``build()`` makes the message with placeholders (the keys of
    ``values``, encoded); returns its encoding with each placeholder
    replaced by its value."""
    t = _templates.get(key)
    if t is None:
        m = build()
        m.encode()
        data = bytes(m.data)
        offsets = []
        for placeholder in values:
            i = data.find(placeholder, HEADER.size)
            while i >= 0:
                offsets.append((i, placeholder))
                i = data.find(placeholder, i + len(placeholder))
        t = _templates[key] = (data, offsets)
    data, offsets = t
    out = bytearray(data)
    for off, placeholder in offsets:
        out[off : off + len(placeholder)] = values[placeholder]
    return out


# ---- links -----------------------------------------------------------------------

_VETH_WHAT = "creating veth pair {} <-> {}"


def veth(name: str, peer: str, peer_netns_fd: int, *, mtu: Optional[int] = None,
         mac: Optional[str] = None, peer_mac: Optional[str] = None,
         master: Optional[int] = None, index: int = 0, peer_index: int = 0) -> Request:
    """Create a veth pair whose peer is born in another namespace, the host
    end enslaved to ``master`` — one request (both ends start down).
    ``index``/``peer_index`` ask for those ifindexes (EBUSY if taken)."""
    if mtu is None and mac is None and peer_mac is None and len(name) != len(peer):
        raw, raw_peer = name.encode(), peer.encode()
        values = {
            link_name(len(raw)).encode(): raw,
            peer_name(len(raw_peer)).encode(): raw_peer,
            _i32(PEER_NETNS_FD): _i32(peer_netns_fd),
            _i32(LINK_INDEX): _i32(index),
            _i32(PEER_INDEX): _i32(peer_index),
        }
        if master is not None:
            values[_i32(MASTER_INDEX)] = _i32(master)
        key = ("veth", len(raw), len(raw_peer), master is not None)
        placeholders = (link_name(len(raw)), peer_name(len(raw_peer)), PEER_NETNS_FD, None, None, None,
                        MASTER_INDEX if master is not None else None, LINK_INDEX, PEER_INDEX)
        msg = _templated(key, lambda: _veth_msg(*placeholders), values)
        return Request(msg, RTM_NEWLINK, CREATE, _VETH_WHAT, name, peer)
    m = _veth_msg(name, peer, peer_netns_fd, mtu, mac, peer_mac, master, index, peer_index)
    return Request(m, RTM_NEWLINK, CREATE, _VETH_WHAT, name, peer)


def _veth_msg(name: str, peer: str, peer_netns_fd: int, mtu: Optional[int], mac: Optional[str],
              peer_mac: Optional[str], master: Optional[int], index: int, peer_index: int) -> Any:
    # One queue each way, asked for at creation: else the kernel allocates
    # one per CPU and then cuts the real number to one, which waits for an
    # expedited RCU grace period per end (synchronize_net, under rtnl) --
    # the creator's longest sleep per pod, and longer the busier the CPUs
    # (issue 13).  One queue is what a veth uses by default anyway.
    queues = [("IFLA_NUM_TX_QUEUES", 1), ("IFLA_NUM_RX_QUEUES", 1)]
    peer_attrs: list = [("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", peer_netns_fd), *queues]
    attrs: list = [("IFLA_IFNAME", name), *queues]
    if mtu:
        attrs.append(("IFLA_MTU", mtu))
        peer_attrs.append(("IFLA_MTU", mtu))
    if mac:
        attrs.append(("IFLA_ADDRESS", mac))
    if peer_mac:
        peer_attrs.append(("IFLA_ADDRESS", peer_mac))
    if master is not None:
        attrs.append(("IFLA_MASTER", master))
    # (The peer can't be created up: the kernel answers ENOTCONN.)
    peer_msg = {"index": peer_index, "attrs": peer_attrs}
    attrs.append(("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "veth"),
        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer_msg)]}),
    ]}))
    m = ifinfmsg()
    m["index"] = index
    m["attrs"] = attrs
    return m


RTM_NEWNSID = 88
NETNSA_NSID, NETNSA_FD = 1, 3
# nlmsghdr (type, flags and seq patched by rtnl), struct rtgenmsg (family,
# padded to 4), NETNSA_NSID (s32), NETNSA_FD (u32).
_NSID_MSG = struct.Struct("=IHHII4xHHiHHI")


def netns_id(netns_fd: int, nsid: int) -> Request:
    """Give the namespace ``netns_fd`` the id ``nsid`` in the socket's own
    namespace (what ``ip netns set NAME NSID`` does; EEXIST if it has one,
    or if another namespace has that id)."""
    raw = bytearray(_NSID_MSG.pack(_NSID_MSG.size, RTM_NEWNSID, 0, 0, 0, 8, NETNSA_NSID, nsid, 8, NETNSA_FD, netns_fd))
    r = Request(raw, RTM_NEWNSID, CREATE, "giving the pod's network namespace the id {}", nsid)
    r.aside = True  # (create_pair ignores its answer)
    return r


def bridge(name: str, mac: Optional[str] = None, multicast_snooping: bool = True) -> Request:
    m = ifinfmsg()
    info: list = [("IFLA_INFO_KIND", "bridge")]
    if not multicast_snooping:
        info.append(("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_MCAST_SNOOPING", 0)]}))
    m["attrs"] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": info})]
    if mac is not None:
        m["attrs"].append(("IFLA_ADDRESS", mac))
    return Request(m, RTM_NEWLINK, CREATE, "creating bridge {}", name)


def link_set(index: int, name: str, *, up: bool = True, master: Optional[int] = None,
             alias: Optional[str] = None, no_ipv6_ll: bool = False) -> Request:
    """Set a link up (and/or its master, alias).  ``no_ipv6_ll``: no IPv6
    link-local address (addrgenmode none): an IPv4-only pod link then costs
    the kernel no DAD and router solicitations."""

    def build(index: int = LINK_INDEX, master: Optional[int] = None if master is None else MASTER_INDEX) -> Any:
        m = ifinfmsg()
        m["index"] = index
        if up:
            m["flags"] = IFF_UP
            m["change"] = IFF_UP
        attrs: list = []
        if master is not None:
            attrs.append(("IFLA_MASTER", master))
        if alias is not None:
            attrs.append(("IFLA_IFALIAS", alias))  # (only a change sets it, not a create)
        if no_ipv6_ll:  # (only a change sets it, not a create: EAFNOSUPPORT)
            attrs.append(("IFLA_AF_SPEC", {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]}))
        m["attrs"] = attrs
        return m

    if alias is not None:
        return Request(build(index, master), RTM_NEWLINK, CHANGE, "setting up link {}", name)
    values = {_i32(LINK_INDEX): _i32(index)}
    if master is not None:
        values[_i32(MASTER_INDEX)] = _i32(master)
    key = ("link_set", up, master is not None, no_ipv6_ll)
    return Request(_templated(key, build, values), RTM_NEWLINK, CHANGE, "setting up link {}", name)


def link_up(index: int, name: str, *, no_ipv6_ll: bool = False) -> list[Request]:
    """Requests that set a link up; ``no_ipv6_ll`` first sets addrgenmode
    none in a request of its own: in one request the kernel brings the link
    up *before* it applies the mode, so a link-local address is made, its
    solicited-node group joined, and MLD reports go on being sent (to the
    host, where each one is routed past one ff00::/8 route per pod link)."""
    reqs = [link_set(index, name, up=False, no_ipv6_ll=True)] if no_ipv6_ll else []
    reqs.append(link_set(index, name, up=True))
    return reqs


def link_del(name: str, index: int = 0) -> Request:
    """Delete a link by ``index`` when given (ifindexes are not reused), else by name."""
    m = ifinfmsg()
    if index:
        m["index"] = index
    else:
        m["attrs"] = [("IFLA_IFNAME", name)]
    return Request(m, RTM_DELLINK, CHANGE, "deleting link {}", name)


def get_link(name: str) -> Request:
    """Look a link up by name (answer: RTM_NEWLINK, or ENODEV)."""
    raw = name.encode()

    def build() -> Any:
        m = ifinfmsg()
        m["attrs"] = [("IFLA_IFNAME", link_name(len(raw)))]
        return m

    msg = _templated(("getlink", len(raw)), build, {link_name(len(raw)).encode(): raw})
    return Request(msg, RTM_GETLINK, CHANGE, "looking up {}", name)


# struct ifinfomsg: family(1) pad(1) type(2) index(4) flags(4) change(4)
_IFINFOMSG = struct.Struct("=BxHiII")


def get_link_by_index(index: int) -> Request:
    """Look a link up by ifindex (answer: RTM_NEWLINK, or ENODEV)."""
    msg = bytearray(HEADER.pack(HEADER.size + _IFINFOMSG.size, 0, 0, 0, 0) + _IFINFOMSG.pack(0, 0, index, 0, 0))
    return Request(msg, RTM_GETLINK, CHANGE, "looking up link {}", index)


# ---- addresses and routes ----------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _placeholder_iface(version: int, prefixlen: int) -> Any:
    return ipaddress.ip_interface(f"{ADDRESS[version]}/{prefixlen}")


def addr_add(index: int, name: str, iface: Any) -> Request:
    """``iface``: an ipaddress.IPv4Interface/IPv6Interface."""
    prefixlen = iface.network.prefixlen
    placeholder = _placeholder_iface(iface.version, prefixlen)
    brd = iface.version == 4 and prefixlen < 31

    def build() -> Any:
        m = ifaddrmsg()
        m["family"] = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        m["prefixlen"] = prefixlen
        m["index"] = LINK_INDEX
        attrs: list = [("IFA_LOCAL", str(placeholder.ip)), ("IFA_ADDRESS", str(placeholder.ip))]
        if brd:
            attrs.append(("IFA_BROADCAST", str(placeholder.network.broadcast_address)))
        if iface.version == 6:
            attrs.append(("IFA_FLAGS", 0x02))  # IFA_F_NODAD: usable at once
        m["attrs"] = attrs
        return m

    values = {_i32(LINK_INDEX): _i32(index), placeholder.ip.packed: iface.ip.packed}
    if brd:
        values[placeholder.network.broadcast_address.packed] = iface.network.broadcast_address.packed
    msg = _templated(("addr", iface.version, prefixlen), build, values)
    return Request(msg, RTM_NEWADDR, CREATE, "adding address {} to {}", iface, name)


def addr_del(index: int, name: str, iface: Any) -> Request:
    """Delete address ``iface`` of link ``index`` (the encoding of
    :func:`addr_add`'s, as ``RTM_DELADDR``)."""
    add = addr_add(index, name, iface)
    return Request(add.msg, RTM_DELADDR, CHANGE, "deleting address {} of {}", iface, name)


def route_add(gateway: Any, *, dst: Any = None, oif: Optional[int] = None) -> Request:
    """Route ``dst`` (a network; None: default) via ``gateway`` (an address)."""
    version = gateway.version
    dst_len = dst.prefixlen if dst is not None else 0

    def build() -> Any:
        m = rtmsg()
        m["family"] = socket.AF_INET if version == 4 else socket.AF_INET6
        m["table"] = 254  # main
        m["proto"] = 3  # RTPROT_BOOT, as `ip route add`
        m["scope"] = 0  # universe
        m["type"] = 1  # unicast
        attrs: list = [("RTA_GATEWAY", str(ADDRESS[version])), ("RTA_TABLE", 254)]
        if dst_len:
            m["dst_len"] = dst_len
            attrs.append(("RTA_DST", str(DESTINATION[version])))
        if oif is not None:
            attrs.append(("RTA_OIF", LINK_INDEX))
        m["attrs"] = attrs
        return m

    values = {ADDRESS[version].packed: gateway.packed}
    if dst_len:
        values[DESTINATION[version].packed] = dst.network_address.packed
    if oif is not None:
        values[_i32(LINK_INDEX)] = _i32(oif)
    msg = _templated(("route", version, dst_len, oif is not None), build, values)
    return Request(msg, RTM_NEWROUTE, CREATE, "adding route {} via {}", dst if dst_len else "default", gateway)


def fib_match(address: Any) -> Request:
    """Which route the kernel would use for ``address`` (an IP address): the
    route itself (its prefix, type and link), not a resolved next hop.
    Answer: one RTM_NEWROUTE, or ENETUNREACH when nothing matches."""
    version = address.version

    def build() -> Any:
        m = rtmsg()
        m["family"] = socket.AF_INET if version == 4 else socket.AF_INET6
        m["dst_len"] = 32 if version == 4 else 128
        m["flags"] = RTM_F_FIB_MATCH
        m["attrs"] = [("RTA_DST", str(ADDRESS[version]))]
        return m

    msg = _templated(("fib_match", version), build, {ADDRESS[version].packed: address.packed})
    return Request(msg, RTM_GETROUTE, CHANGE, "looking up the route to {}", address)


# ---- traffic control -------------------------------------------------------------


def qdisc(index: int, name: str, kind: str, options: Any, *, handle: int = 0x10000, parent: int = 0xFFFFFFFF) -> Request:
    """Set (replace) the root qdisc of a link."""
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    m = tcmsg()
    m["index"] = index
    m["handle"] = handle
    m["parent"] = parent
    m["attrs"] = [("TCA_KIND", kind), ("TCA_OPTIONS", options)]
    return Request(m, RTM_NEWQDISC, REPLACE, "setting {} qdisc on {}", kind, name)


def qdisc_del(index: int, name: str, *, parent: int = 0xFFFFFFFF) -> Request:
    """Delete the root qdisc of a link (ENOENT/EINVAL when there is none)."""
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    m = tcmsg()
    m["index"] = index
    m["handle"] = 0x10000  # the handle qdisc() gives: any other root qdisc is left alone (EINVAL)
    m["parent"] = parent
    m["attrs"] = []
    return Request(m, RTM_DELQDISC, CHANGE, "removing shaping from {}", name)
