"""Links: finding them, making a pod's veth pair, configuring its pod end,
and making sure a host address is not already somebody else's.

Used by both network modes (:mod:`nsbox.net.veth`, :mod:`nsbox.net.bridge`);
what a pod ends up owning is an :class:`~nsbox.net.attachment.Attachment`.
"""
from __future__ import annotations

import errno
import itertools
import os
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from ..errors import NetworkError
from . import messages as msg
from .validate import Interface, random_host_name
from .rtnl import HEADER, HOME_INO, Rtnl, attributes, socket_in_netns

__all__ = ["PEER_INDEX", "link_index", "index_of", "link_name", "existing", "wait_gone",
           "create_pair", "configure_pod_side", "subnet_lock", "check_unused"]

NAME_TRIES = 10
# The ifindex asked for the primary pod end: a fresh namespace has only lo (1).
PEER_INDEX = 2
LOOPBACK_INDEX = 1  # (every network namespace's first device)
IFLA_IFNAME = 3
RTA_OIF = 4
RTN_UNICAST, RTN_LOCAL = 1, 2
_IFINFOMSG_SIZE = 16
# struct rtmsg: family dst_len src_len tos table protocol scope type, flags(4)
_RTMSG = struct.Struct("=BBBBBBBBI")


# ---- finding links ---------------------------------------------------------------


def _get_link(rtnl: Rtnl, name: str) -> Optional[bytes]:
    """The RTM_NEWLINK answer about ``name`` in ``rtnl``'s namespace, or None."""
    answer = rtnl.ask([msg.get_link(name)])[0]
    if answer.error is not None:
        if answer.error.errno == errno.ENODEV:
            return None
        raise answer.error
    return answer.replies[0] if answer.replies else None


def link_index(rtnl: Rtnl, name: str) -> Optional[int]:
    """The ifindex of ``name`` in ``rtnl``'s namespace, or None."""
    raw = _get_link(rtnl, name)
    if raw is None:
        return None
    # struct ifinfomsg: family(1) pad(1) type(2) index(4) ...
    (index,) = struct.unpack_from("=i", raw, HEADER.size + 4)
    return int(index)


IFLA_MASTER, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_INFO_KIND = 10, 18, 20, 1
_NLM_F_DUMP = 0x300


def link_info(rtnl: Rtnl, name: str) -> Optional[tuple[int, str, str]]:
    """``(ifindex, kind, alias)`` of link ``name`` (kind: "bridge", "veth",
    "" for a plain device) in ``rtnl``'s namespace, or None if there is
    none: one round trip.  Over rtnetlink: /sys/class/net shows the
    namespace sysfs was mounted in, not the calling thread's."""
    raw = _get_link(rtnl, name)
    if raw is None:
        return None
    (index,) = struct.unpack_from("=i", raw, HEADER.size + 4)
    attrs = attributes(raw, HEADER.size + _IFINFOMSG_SIZE)
    info = attrs.get(IFLA_LINKINFO)
    kind = attributes(info, 0).get(IFLA_INFO_KIND, b"") if info else b""
    return int(index), _text(kind), _text(attrs.get(IFLA_IFALIAS, b""))


def ports_of(rtnl: Rtnl, master: int) -> list[str]:
    """Names of the links whose master is link ``master`` (a bridge's ports)."""
    req = bytearray(HEADER.pack(HEADER.size + _IFINFOMSG_SIZE + 8, 0, 0, 0, 0)
                    + struct.pack("=BxHiII", 0, 0, 0, 0, 0) + struct.pack("=HHi", 8, IFLA_MASTER, master))
    answer = rtnl.ask([msg.Request(req, msg.RTM_GETLINK, msg.NLM_F_REQUEST | _NLM_F_DUMP, "listing the ports of link {}",
                                   master)])[0]
    if answer.error is not None:
        raise answer.error
    out = []
    for raw in answer.replies:
        attrs = attributes(raw, HEADER.size + _IFINFOMSG_SIZE)
        if attrs.get(IFLA_MASTER) == struct.pack("=i", master):  # (older kernels do not filter the dump)
            out.append(_text(attrs.get(IFLA_IFNAME, b"")))
    return sorted(out)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def index_of(rtnl: Rtnl, name: str) -> int:
    """The ifindex of ``name``, which was just made (ENODEV if it vanished)."""
    index = link_index(rtnl, name)
    if index is None:
        raise NetworkError(errno.ENODEV, f"interface {name} vanished while it was being set up")
    return index


def link_name(rtnl: Rtnl, index: int) -> str:
    """The name of link ``index`` (for messages: ``#index`` if it is gone)."""
    answer = rtnl.ask([msg.get_link_by_index(index)])[0]
    for raw in answer.replies:
        name = attributes(raw, HEADER.size + _IFINFOMSG_SIZE).get(IFLA_IFNAME)
        if name:
            return name.split(b"\0", 1)[0].decode(errors="replace")
    return f"#{index}"


def existing(rtnl: Rtnl, indexes: Sequence[int]) -> set[int]:
    """Which of ``indexes`` still name a link (batches of RTM_GETLINK, small
    enough that the answers fit the socket's receive buffer)."""
    out: set[int] = set()
    for i in range(0, len(indexes), _SAMPLE):
        batch = indexes[i : i + _SAMPLE]
        answers = rtnl.ask([msg.get_link_by_index(index) for index in batch])
        out.update(index for index, a in zip(batch, answers, strict=True) if a.replies)
    return out


def wait_gone(rtnl: Rtnl, indexes: Iterable[int], timeout: float) -> None:
    """Wait until the links ``indexes`` are gone, for as long as the kernel
    makes progress: give up once none has gone for ``timeout`` seconds.

    One round trip per check, whatever their number: a sample of the ones
    left is asked about (the kernel deletes links of freed namespaces in
    batches), the next sample at once when that one is gone.  Asking about
    every one each time was 300 round trips a poll for 10,000 pods, and a
    fixed deadline gave up while the kernel was still busy: the links left
    were then deleted one by one, each waiting for an RCU grace period."""
    pending = list(dict.fromkeys(i for i in indexes if i))  # (a repeated index is no progress)
    progress = time.monotonic()
    delay = 0.0005
    while pending:
        sample = pending[-_SAMPLE:]
        alive = existing(rtnl, sample)
        if len(alive) < len(sample):
            pending = pending[: -len(sample)] + [i for i in sample if i in alive]
            progress = time.monotonic()
            delay = 0.0005
            continue
        if time.monotonic() - progress >= timeout:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


_SAMPLE = 32  # links asked about per round trip (their answers fit the receive buffer)


# ---- a host address must be free ----------------------------------------------------

# Held from the check below until the address is on the new link, so two
# threads cannot both find the same subnet free.  Striped by subnet: pods in
# different subnets rarely wait for each other.
_SUBNET_LOCKS = [threading.Lock() for _ in range(64)]


def subnet_lock(iface: Interface) -> threading.Lock:
    return _SUBNET_LOCKS[hash(iface.network) % len(_SUBNET_LOCKS)]


def check_unused(rtnl: Rtnl, host_address: Interface, address: Interface) -> None:
    """Refuse (EADDRINUSE) to put ``host_address`` on a new host link when
    it is already a local address, or when ``address`` (the pod's) is
    already routed through a prefix at least as long as the new link's: the
    pod would be unreachable (the first route wins).

    Two fib lookups in one round trip, whatever the number of links or
    pods (a dump of every address would make each pod O(pods))."""
    answers = rtnl.ask([msg.fib_match(host_address.ip), msg.fib_match(address.ip)])
    for asked, answer in zip((host_address, address), answers, strict=True):
        if answer.error is not None:
            if answer.error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESRCH):
                continue  # no route at all: free
            raise answer.error
        for raw in answer.replies:
            _family, dst_len, _src, _tos, _table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(raw, HEADER.size)
            if rtype == RTN_LOCAL:
                raise NetworkError(errno.EADDRINUSE, f"address {asked.ip} is already on {_route_link(rtnl, raw)}: "
                                   "pick another subnet, or stop the pod (or remove the address) that has it")
            if rtype == RTN_UNICAST and dst_len >= host_address.network.prefixlen:
                raise NetworkError(errno.EADDRINUSE, f"subnet {host_address.network} is already routed via "
                                   f"{_route_link(rtnl, raw)}: pick another subnet, or stop the pod that has it")


def _route_link(rtnl: Rtnl, raw: bytes) -> str:
    """The name of the link a route reply goes out of (a lookup: only for messages)."""
    oif = attributes(raw, HEADER.size + _RTMSG.size).get(RTA_OIF)
    return link_name(rtnl, struct.unpack("=i", oif)[0]) if oif else "another route"


# ---- a pod's veth pair ---------------------------------------------------------------


def create_pair(host: Rtnl, pod_netns_fd: int, ifname: str, host_ifname: Optional[str], *,
                mtu: Optional[int] = None, mac: Optional[str] = None, host_mac: Optional[str] = None,
                master: Optional[int] = None, host_address: Optional[Interface] = None,
                peer_index: int = 0, ipv6: bool = False, new_netns: bool = False) -> tuple[str, int, int]:
    """Create the veth pair — the pod end born inside the pod (with ifindex
    ``peer_index`` if given), the host end up, in ``master``, with
    ``host_address`` — in one round trip: the host end gets an ifindex
    chosen here, so its address can go in the same batch.

    ``new_netns``: the pod's namespace has no link to ``host``'s yet (its
    first network), so it gets an id there first (see :func:`_next_netns_id`).

    Returns ``(host name, host ifindex, pod end ifindex or 0)``; on failure
    nothing is left behind."""
    tries = 1 if host_ifname else NAME_TRIES
    # A host end that needs no IPv6 of its own (an IPv4-only link, or a
    # bridge port: the bridge has the addresses) gets IPv6 disabled before
    # it goes up: else the kernel gives every host end an ff00::/8 route,
    # inserted past all the others, and walks all of them at each link's
    # up (issue 13: 3 of the 4 largest kernel terms at 10,000 pods).
    quiet = (not ipv6 or master is not None) and _in_its_namespace(host)
    for _ in range(tries):
        name = host_ifname or random_host_name()
        index = _random_index()
        reqs = [msg.veth(name, ifname, pod_netns_fd, mtu=mtu, mac=host_mac, peer_mac=mac, master=master,
                         index=index, peer_index=peer_index)]
        up = [msg.link_set(index, name, up=True)] if quiet else msg.link_up(index, name, no_ipv6_ll=not ipv6)
        if not quiet:
            reqs += up
        if host_address is not None:
            reqs.append(msg.addr_add(index, name, host_address))
        if new_netns:  # (its answer ignored: else the kernel gives an id itself)
            reqs.insert(0, msg.netns_id(pod_netns_fd, _next_netns_id()))
        errors = host.run(reqs)[1 if new_netns else 0:]
        new_netns = False  # (once: a retry's namespace has its id)
        err = errors[0]
        if err is None:
            try:
                failed = next((e for e in errors[1:] if e is not None), None)
                if failed is None and quiet:
                    if not _disable_ipv6(name):  # (a read-only /proc/sys: the old way, addrgenmode none)
                        up = msg.link_up(index, name, no_ipv6_ll=not ipv6)
                    failed = next((e for e in host.run(up) if e is not None), None)
                if failed is not None:
                    raise failed
            except BaseException:
                host.run([msg.link_del(name, index)])  # (takes the pod end along)
                raise
            return name, index, peer_index
        if err.errno == errno.EBUSY and peer_index:
            peer_index = 0  # something took that ifindex in the pod: let the kernel choose
            continue
        if err.errno not in (errno.EEXIST, errno.EBUSY):
            raise err
        if host_ifname and err.errno == errno.EEXIST:
            raise NetworkError(errno.EEXIST, f"host interface name {host_ifname!r} is taken; pick another or leave host_ifname unset")
    raise NetworkError(errno.EEXIST, f"no free host interface name after {tries} random tries")


# Namespace ids.  Every notification about a host end names the namespace
# of its peer by its id in the host's namespace, and the kernel finds that
# id by walking the host's ids in ascending order (peernet2id: idr_for_each)
# until it meets the pod's.  The kernel gives each new namespace the lowest
# free id, so the newest pod's is the highest: three walks over every pod
# per veth (its creation, its up, its carrier), the largest term that grew
# in the creator itself at 10,000 pods (issue 13).  nsbox gives each pod's
# namespace an id itself instead, counting *down*, so the newest pod's id
# comes first in the walk and only the namespaces named by someone else
# (small ids) come before it.  (Giving the id walks all of them once, to see
# that the namespace has none yet: one walk per pod instead of three.)  An
# id that is taken (another process counting down the same ids) is simply
# not given: the kernel then picks one itself, as it always did.
_NSID_LOW, _NSID_SPAN = 1 << 30, (1 << 31) - 1 - (1 << 30)
_nsid_start, _nsids = 0, itertools.count()


def _next_netns_id() -> int:
    """The next id to give a pod's namespace: counting down through
    [2^30, 2^31 - 1), from a random start per process in its upper half, so
    that a process wraps (and the order turns) only after 2^29 pods.
    (itertools.count's next() is atomic under the GIL: no lock; without a
    GIL two threads may get one id, and the second is refused: harmless.)"""
    return _NSID_LOW + (_nsid_start - next(_nsids)) % _NSID_SPAN


def _reseed_netns_ids() -> None:
    global _nsid_start, _nsids
    _nsid_start = _NSID_SPAN // 2 + int.from_bytes(os.urandom(4), "big") % (_NSID_SPAN - _NSID_SPAN // 2)
    _nsids = itertools.count()


_reseed_netns_ids()
os.register_at_fork(after_in_child=_reseed_netns_ids)  # (a child would count down the parent's ids)


def _in_its_namespace(host: Rtnl) -> bool:
    """True if the calling thread is in ``host``'s network namespace (the
    process's own, or another one a thread made pods from, e.g. a "router"
    pod's): /proc/sys/net shows the calling thread's namespace."""
    here = os.stat("/proc/thread-self/ns/net").st_ino
    if host.is_shared:
        return here == HOME_INO
    return host.netns_fd >= 0 and os.fstat(host.netns_fd).st_ino == here


def _disable_ipv6(name: str) -> bool:
    """net.ipv6.conf.NAME.disable_ipv6 = 1 (not settable over rtnetlink);
    True if done or nothing to do (a kernel without IPv6: ipv6.disable=1),
    False if it cannot be done (a read-only /proc/sys, as in most
    containers): best effort."""
    try:
        fd = os.open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return not os.path.isdir("/proc/sys/net/ipv6")
    except OSError:
        return False
    try:
        os.write(fd, b"1")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _random_index() -> int:
    """An ifindex for a new host-side link: random in the upper half of the
    range, where the kernel's own (counting up from 1) won't be for years."""
    return 0x40000000 + int.from_bytes(os.urandom(4), "big") % 0x3FFFFFFF


def configure_pod_side(pod_netns_fd: int, ifname: str, address: Interface, *, gateway: Any,
                       routes: Iterable[Any] = (), via: Any = None, index: int = 0, lo_up: bool = False) -> None:
    """Address, up, default route and extra routes on the pod end, and with
    ``lo_up`` the pod's loopback up: one batch (``index``: the pod end's
    ifindex when known, else it is looked up)."""
    with Rtnl(socket_in_netns(pod_netns_fd)) as pod:
        if not index:
            index = index_of(pod, ifname)
        reqs = [msg.link_set(LOOPBACK_INDEX, "lo", up=True)] if lo_up else []
        reqs += [*msg.link_up(index, ifname, no_ipv6_ll=address.version == 4), msg.addr_add(index, ifname, address)]
        if gateway is not None:
            reqs.append(msg.route_add(gateway, oif=index))
        for net in routes:
            reqs.append(msg.route_add(via, dst=net, oif=index))
        pod.check(reqs)
