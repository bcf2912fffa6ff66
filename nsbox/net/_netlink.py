"""A minimal rtnetlink client: pyroute2's message classes, our own socket.

Why not ``pyroute2.IPRoute``: its 0.9 core opens its socket lazily, per
thread, in whatever network namespace the *using* thread is in, and its
``netns=`` form forks a helper per call.  nsbox must know exactly which
namespace a request goes to, so it opens the socket itself — in the pod's
namespace when needed (see :func:`socket_in_netns`) — and uses pyroute2 only
to encode messages.  Requests can be batched: one ``send()``, one ack each.
"""
from __future__ import annotations

import errno
import functools
import ipaddress
import os
import select
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any, Optional

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_DELQDISC,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWQDISC,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from ..errors import NetworkError

__all__ = ["Rtnl", "Request", "NetlinkError", "socket_in_netns"]

NETLINK_ROUTE = 0
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SOL_NETLINK = 270
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
IFF_UP = 0x1
_TIMEOUT = 10.0  # seconds: the kernel answers at once, or something is badly wrong
_HDR = struct.Struct("=IHHII")
_RECV_BUF = 1 << 16  # answers are acks and single links (< 2 kB each), one per datagram

CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
CHANGE = NLM_F_REQUEST | NLM_F_ACK


class NetlinkError(OSError):
    """A request the kernel refused; ``errno`` and the kernel's own message."""


class Request:
    """One rtnetlink message: a pyroute2 message object, its type and flags.

    ``what`` says what it does, for error messages: a ``str.format`` string
    and its ``args``, formatted only when needed (formatting addresses for
    every request costs more than encoding the message)."""

    __slots__ = ("msg", "type", "flags", "_what", "_args")

    def __init__(self, msg: Any, type: int, flags: int, what: str, *args: Any):
        self.msg, self.type, self.flags, self._what, self._args = msg, type, flags, what, args

    @property
    def what(self) -> str:
        return self._what.format(*self._args) if self._args else self._what

    @what.setter
    def what(self, value: str) -> None:
        self._what, self._args = value, ()


def socket_in_netns(ns_fd: int) -> socket.socket:
    """A NETLINK_ROUTE socket bound to the network namespace ``ns_fd``
    (made by a native helper thread: the caller's threads never move)."""
    from .. import _syscalls

    fd = _syscalls.socket_in_netns(ns_fd, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    return _setup(socket.socket(fileno=fd))


_shared: Optional["Rtnl"] = None  # the home namespace's
_shared_lock = threading.Lock()
# The process's own network namespace (where pods are normally made).
_HOME_INO = os.stat("/proc/self/ns/net").st_ino


def shared() -> "Rtnl":
    """An rtnetlink socket in the calling thread's network namespace.

    In the process's own namespace it is one long-lived socket shared by all
    threads (requests are serialized by its lock), whose ``netns_fd`` is an
    fd on that namespace kept open: pods remember where their host side
    lives without one fd each.  In any other namespace (a thread inside a
    pod making a nested pod) it is a private socket with a private
    ``netns_fd``, both closed by ``close()``: keeping them would keep that
    namespace alive.  Forgotten in forked children."""
    global _shared
    from .. import _syscalls

    if os.stat("/proc/thread-self/ns/net").st_ino != _HOME_INO:
        r = Rtnl()
        try:
            r.netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            r.close()
            raise
        r._owns_netns = True
        return r
    with _shared_lock:
        if _shared is None:
            r = Rtnl(shared=True)
            r.netns_fd = _syscalls.park(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            _shared = r
        return _shared


def shared_in(netns_fd: int) -> Optional["Rtnl"]:
    """The shared socket if ``netns_fd`` is its namespace's fd; never makes one."""
    r = _shared
    return r if r is not None and r.netns_fd == netns_fd else None


def _forget_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.sock.close()
        os.close(_shared.netns_fd)
        _shared = None


os.register_at_fork(after_in_child=_forget_shared)


def _open() -> socket.socket:
    return _setup(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE))


def _setup(s: socket.socket) -> socket.socket:
    try:
        s.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        s.settimeout(None)  # blocking, whatever socket.setdefaulttimeout() says: see Rtnl._recv
        s.bind((0, 0))
    except BaseException:
        s.close()
        raise
    return s


class Rtnl:
    """An rtnetlink socket in one network namespace (the caller's by default)."""

    def __init__(self, sock: Optional[socket.socket] = None, shared: bool = False):
        self.sock = sock if sock is not None else _open()
        self._seq = 0
        self._lock = threading.Lock()
        self._shared = shared
        self.netns_fd = -1  # from shared(): an fd on its namespace
        self._owns_netns = False
        self._buf = bytearray(_RECV_BUF)

    @property
    def is_shared(self) -> bool:
        return self._shared

    def close(self) -> None:
        if not self._shared:
            self.sock.close()
            if self._owns_netns and self.netns_fd >= 0:
                os.close(self.netns_fd)
                self.netns_fd = -1

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, requests: Sequence[Request]) -> list[Optional[NetlinkError]]:
        """Send ``requests`` in one batch; return one error (or None) each.

        The kernel handles them in order; a failed one does not stop the rest.
        """
        with self._lock:
            seqs = []
            chunks = []
            for r in requests:
                self._seq += 1
                if isinstance(r.msg, bytearray):  # from a template: patch the header
                    struct.pack_into("=HHI", r.msg, 4, r.type, r.flags, self._seq)
                    chunks.append(r.msg)
                else:
                    r.msg["header"]["type"] = r.type
                    r.msg["header"]["flags"] = r.flags
                    r.msg["header"]["sequence_number"] = self._seq
                    r.msg.reset()
                    r.msg.encode()
                    chunks.append(r.msg.data)
                seqs.append(self._seq)
            self.sock.send(b"".join(chunks))
            results: dict[int, Optional[NetlinkError]] = {}
            replies: dict[int, list[bytes]] = {}
            wanted = set(seqs)
            while len(results) < len(seqs):
                data, sender = self._recv(requests[0])
                if sender != 0:
                    continue  # not from the kernel
                off = 0
                while off + _HDR.size <= len(data):
                    length, mtype, flags, seq, _pid = _HDR.unpack_from(data, off)
                    if length < _HDR.size:
                        break
                    body = data[off + _HDR.size : off + length]
                    if seq not in wanted:
                        pass  # a late answer to an earlier, abandoned batch
                    elif mtype == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", body)
                        results[seq] = None if code == 0 else self._error(-code, body, flags, seq, seqs, requests)
                    elif mtype == NLMSG_DONE:
                        results.setdefault(seq, None)
                    else:
                        replies.setdefault(seq, []).append(data[off : off + length])
                    off += (length + 3) & ~3
            self.replies = [replies.get(s, []) for s in seqs]
            return [results[s] for s in seqs]

    def _recv(self, first: Optional[Request]) -> tuple[bytes, int]:
        """The next datagram and its sender.  The kernel handles a request
        inside send() and queues the answer before send() returns, so it is
        read without waiting (no poll() per answer); poll only if it is not
        there yet, and give up after _TIMEOUT."""
        while True:
            try:
                # Into a buffer kept per socket: recvfrom(1 MB) would allocate
                # (mmap and fault in) a fresh megabyte per answer (~30 us).
                n, _anc, flags, (sender, _groups) = self.sock.recvmsg_into([self._buf], 0, socket.MSG_DONTWAIT)
                if flags & socket.MSG_TRUNC:
                    raise NetworkError(errno.EMSGSIZE, "an answer from the kernel did not fit the receive buffer")
                return bytes(self._buf[:n]), sender
            except BlockingIOError:
                pass
            poller = select.poll()  # (select() fails for fds >= 1024)
            poller.register(self.sock, select.POLLIN)
            if not poller.poll(_TIMEOUT * 1000):
                what = first.what if first is not None else "looking up links"
                raise NetworkError(errno.ETIMEDOUT, f"{what}: no answer from the kernel")

    def check(self, requests: Sequence[Request]) -> None:
        """Run and raise the first error."""
        for err in self.run(requests):
            if err is not None:
                raise err

    @staticmethod
    def _error(code: int, body: bytes, flags: int, seq: int, seqs: list[int], requests: Sequence[Request]) -> NetlinkError:
        what = requests[seqs.index(seq)].what
        detail = ""
        if flags & NLM_F_ACK_TLVS:
            off = 4 + _HDR.size  # error code + the (capped) original header
            while off + 4 <= len(body):
                alen, atype = struct.unpack_from("=HH", body, off)
                if alen < 4:
                    break
                if atype == NLMSGERR_ATTR_MSG:
                    detail = body[off + 4 : off + alen].split(b"\0", 1)[0].decode(errors="replace")
                off += (alen + 3) & ~3
        msg = f"{what}: {os.strerror(code)}" + (f" ({detail})" if detail else "")
        return NetlinkError(code, msg)

    # ---- queries ---------------------------------------------------------

    def existing(self, indexes: Sequence[int]) -> set[int]:
        """Which of ``indexes`` still name a link (batches of RTM_GETLINK, small
        enough that the answers fit the socket's receive buffer)."""
        out: set[int] = set()
        for i in range(0, len(indexes), 32):
            out |= self._existing(indexes[i : i + 32])
        return out

    def _existing(self, indexes: Sequence[int]) -> set[int]:
        with self._lock:
            chunks, by_seq = [], {}
            for index in indexes:
                self._seq += 1
                by_seq[self._seq] = index
                chunks.append(_HDR.pack(32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, self._seq, 0)
                              + struct.pack("=BxHiII", 0, 0, index, 0, 0))
            self.sock.send(b"".join(chunks))
            alive, answered = set(), set()
            while len(answered) < len(by_seq):
                data, sender = self._recv(None)
                if sender != 0:
                    continue
                off = 0
                while off + _HDR.size <= len(data):
                    length, mtype, _flags, seq, _pid = _HDR.unpack_from(data, off)
                    if length < _HDR.size:
                        break
                    if seq in by_seq:
                        if mtype == RTM_NEWLINK:
                            alive.add(by_seq[seq])
                        elif mtype == NLMSG_ERROR:
                            answered.add(seq)
                    off += (length + 3) & ~3
            return alive

    def link_index(self, name: str) -> Optional[int]:
        """The ifindex of ``name`` in this socket's namespace, or None."""
        encoded = name.encode()

        def build() -> Any:
            m = ifinfmsg()
            m["attrs"] = [("IFLA_IFNAME", "Q" * len(encoded))]
            return m

        msg = _templated(("getlink", len(encoded)), build, {b"Q" * len(encoded): encoded})
        err = self.run([Request(msg, RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, "looking up {}", name)])[0]
        if err is not None:
            if err.errno == errno.ENODEV:
                return None
            raise err
        for raw in self.replies[0]:
            # struct ifinfomsg: family(1) pad(1) type(2) index(4) ...
            (index,) = struct.unpack_from("=i", raw, _HDR.size + 4)
            return index
        return None


# ---- message builders ---------------------------------------------------------


_VETH_WHAT = "creating veth pair {} <-> {}"


def veth(name: str, peer: str, peer_netns_fd: int, *, mtu: Optional[int] = None,
         mac: Optional[str] = None, peer_mac: Optional[str] = None,
         master: Optional[int] = None, index: int = 0, peer_index: int = 0) -> Request:
    """Create a veth pair whose peer is born in another namespace, the host
    end enslaved to ``master`` — one request (both ends start down).
    ``index``/``peer_index`` ask for those ifindexes (EBUSY if taken)."""
    flags = CREATE
    sentinels = {
        b"Q" * len(name.encode()): name.encode(),
        b"J" * len(peer.encode()): peer.encode(),
        struct.pack("=i", 0x7EADBEE1): struct.pack("=i", peer_netns_fd),
        _SENTINEL_INDEX: struct.pack("=i", index),
        struct.pack("=i", 0x7EADBEE2): struct.pack("=i", peer_index),
    }
    if master is not None:
        sentinels[struct.pack("=i", 0x7EADBEE3)] = struct.pack("=i", master)
    if mtu is None and mac is None and peer_mac is None and len(name) != len(peer):
        key = ("veth", len(name.encode()), len(peer.encode()), master is not None)
        return Request(_templated(key, lambda: _veth_msg(*_veth_sentinel_args(name, peer, master)), sentinels),
                       RTM_NEWLINK, flags, _VETH_WHAT, name, peer)
    m = _veth_msg(name, peer, peer_netns_fd, mtu, mac, peer_mac, master, index, peer_index)
    return Request(m, RTM_NEWLINK, flags, _VETH_WHAT, name, peer)


def _veth_sentinel_args(name: str, peer: str, master: Optional[int]) -> tuple:
    return ("Q" * len(name.encode()), "J" * len(peer.encode()), 0x7EADBEE1, None, None, None,
            0x7EADBEE3 if master is not None else None, 0x7EADBEEF, 0x7EADBEE2)


def _veth_msg(name: str, peer: str, peer_netns_fd: int, mtu: Optional[int], mac: Optional[str],
              peer_mac: Optional[str], master: Optional[int], index: int, peer_index: int) -> Any:
    peer_attrs: list = [("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", peer_netns_fd)]
    attrs: list = [("IFLA_IFNAME", name)]
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


def bridge(name: str) -> Request:
    m = ifinfmsg()
    m["attrs"] = [("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})]

    return Request(m, RTM_NEWLINK, CREATE, "creating bridge {}", name)


def link_set(index: int, name: str, *, up: bool = True, master: Optional[int] = None,
             alias: Optional[str] = None, no_ipv6_ll: bool = False) -> Request:
    """Set a link up (and/or its master, alias).  ``no_ipv6_ll``: no IPv6
    link-local address (addrgenmode none): an IPv4-only pod link then costs
    the kernel no DAD and router solicitations."""

    def build(index: int = 0x7EADBEEF, master: Optional[int] = None if master is None else 0x7EADBEE3) -> Any:
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
    values = {_SENTINEL_INDEX: struct.pack("=i", index)}
    if master is not None:
        values[struct.pack("=i", 0x7EADBEE3)] = struct.pack("=i", master)
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


# ---- templates -----------------------------------------------------------------
#
# pyroute2 encodes a message in ~100-150 us of Python.  Messages of one shape
# differ only in a few fixed-size values, so pyroute2 encodes each shape once,
# with sentinel values, and later messages are that encoding with the real
# values patched in (~3 us).

_SENTINEL_INDEX = struct.pack("=i", 0x7EADBEEF)
_SENTINEL_IP = {4: (ipaddress.ip_address("198.51.100.77"), ipaddress.ip_address("198.51.100.78")),
                6: (ipaddress.ip_address("2001:db8:7e57::77"), ipaddress.ip_address("2001:db8:7e57::78"))}
_templates: dict = {}


def _templated(key: tuple, build: Any, values: dict) -> bytearray:
    """``build()`` makes the message with sentinels (the keys of ``values``);
    returns its encoding with each sentinel replaced by its value."""
    t = _templates.get(key)
    if t is None:
        m = build()
        m.encode()
        data = bytes(m.data)
        offsets = []
        for sentinel in values:
            i = data.find(sentinel, _HDR.size)
            while i >= 0:
                offsets.append((i, sentinel))
                i = data.find(sentinel, i + len(sentinel))
        t = _templates[key] = (data, offsets)
    data, offsets = t
    out = bytearray(data)
    for off, sentinel in offsets:
        out[off : off + len(sentinel)] = values[sentinel]
    return out


@functools.lru_cache(maxsize=None)
def _sentinel_iface(version: int, prefixlen: int) -> Any:
    return ipaddress.ip_interface(f"{_SENTINEL_IP[version][0]}/{prefixlen}")


def addr_add(index: int, name: str, iface: Any) -> Request:
    """``iface``: an ipaddress.IPv4Interface/IPv6Interface."""
    prefixlen = iface.network.prefixlen
    sip = _SENTINEL_IP[iface.version][0]
    sentinel_iface = _sentinel_iface(iface.version, prefixlen)
    brd = iface.version == 4 and prefixlen < 31

    def build() -> Any:
        m = ifaddrmsg()
        m["family"] = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        m["prefixlen"] = prefixlen
        m["index"] = 0x7EADBEEF
        attrs: list = [("IFA_LOCAL", str(sip)), ("IFA_ADDRESS", str(sip))]
        if brd:
            attrs.append(("IFA_BROADCAST", str(sentinel_iface.network.broadcast_address)))
        if iface.version == 6:
            attrs.append(("IFA_FLAGS", 0x02))  # IFA_F_NODAD: usable at once
        m["attrs"] = attrs
        return m

    values = {_SENTINEL_INDEX: struct.pack("=i", index), sip.packed: iface.ip.packed}
    if brd:
        values[sentinel_iface.network.broadcast_address.packed] = iface.network.broadcast_address.packed
    msg = _templated(("addr", iface.version, prefixlen), build, values)
    return Request(msg, RTM_NEWADDR, CREATE, "adding address {} to {}", iface, name)




def route_add(gateway: Any, *, dst: Any = None, oif: Optional[int] = None) -> Request:
    """Route ``dst`` (a network; None: default) via ``gateway`` (an address)."""
    version = gateway.version
    sgw, sdst = _SENTINEL_IP[version]
    dst_len = dst.prefixlen if dst is not None else 0

    def build() -> Any:
        m = rtmsg()
        m["family"] = socket.AF_INET if version == 4 else socket.AF_INET6
        m["table"] = 254  # main
        m["proto"] = 3  # RTPROT_BOOT, as `ip route add`
        m["scope"] = 0  # universe
        m["type"] = 1  # unicast
        attrs: list = [("RTA_GATEWAY", str(sgw)), ("RTA_TABLE", 254)]
        if dst_len:
            m["dst_len"] = dst_len
            attrs.append(("RTA_DST", str(sdst)))
        if oif is not None:
            attrs.append(("RTA_OIF", 0x7EADBEEF))
        m["attrs"] = attrs
        return m

    values = {sgw.packed: gateway.packed}
    if dst_len:
        values[sdst.packed] = dst.network_address.packed
    if oif is not None:
        values[_SENTINEL_INDEX] = struct.pack("=i", oif)
    msg = _templated(("route", version, dst_len, oif is not None), build, values)
    return Request(msg, RTM_NEWROUTE, CREATE, "adding route {} via {}", dst if dst_len else "default", gateway)


def qdisc(index: int, name: str, kind: str, options: Any, *, handle: int = 0x10000, parent: int = 0xFFFFFFFF) -> Request:
    from pyroute2.netlink.rtnl.tcmsg import tcmsg

    m = tcmsg()
    m["index"] = index
    m["handle"] = handle
    m["parent"] = parent
    m["attrs"] = [("TCA_KIND", kind), ("TCA_OPTIONS", options)]
    return Request(m, RTM_NEWQDISC, REPLACE, "setting {} qdisc on {}", kind, name)
