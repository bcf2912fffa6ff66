"""A pod's network: what one network made for one pod, as data.

An :class:`Attachment` owns every host-side thing made for the pod — its
host link (by ifindex, and the namespace it was made in), its address
lease, its port rules — and undoes them by what it recorded, even when the
pod's namespace is already gone.  It can be written down as a JSON-able
record (:meth:`Attachment.to_record`) and rebuilt from it in another
process (:meth:`Attachment.from_record`), which can then tear it down.

:func:`attach` is the one path that makes a pod's link, for every network
mode: create the pair, configure the pod end, shape, and on any failure
undo all of it.
"""
from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from .. import _proc
from ..errors import ConfigError, NetworkError
from . import link, teardown
from . import messages as msg
from . import rtnl as rt
from .validate import Interface
from .ipam import Lease, Owner
from .ports import Published
from .ports import publish as publish_ports
from .shaping import Shaping, apply

__all__ = ["Attachment", "attach", "detach_all", "unaddress_all"]

RECORD_VERSION = 1
# How long teardown waits for the kernel to delete a pod's veth with its
# namespace before deleting it explicitly.
KERNEL_CLEANUP = teardown.KERNEL_CLEANUP


@dataclass(eq=False)
class Attachment:
    """What a network made for one pod.

    ``address``/``ifname`` are the pod end's; ``host_address`` the host
    side's (the pod's gateway); ``route_ifname`` the host interface the pod
    is routed through (the host end, or the bridge); ``shaping`` what the
    link is shaped to.  The rest says what to undo: the host link
    (``host_index`` in the namespace ``host_netns_id``), the IPAM ``lease``
    and the ``published`` port rules."""

    # False for attachments whose host side is not one veth of nsbox's
    # (CNI: the plugins' own), which detach_all() does not wait for.
    HAS_LINK: ClassVar[bool] = True

    ifname: str
    host_ifname: str
    host_index: int = 0
    peer_index: int = 0  # the pod end's ifindex when nsbox chose it, else 0
    address: Optional[Interface] = None
    host_address: Optional[Interface] = None
    route_ifname: str = ""
    shaping: Shaping = field(default_factory=Shaping)
    lease: Optional[Lease] = None
    published: Optional[Published] = None
    host_netns_id: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the host side's namespace
    detached: bool = False
    # An open fd on the host side's namespace: the shared socket's (never
    # closed here), or a hold on that namespace's fd (``owns_host_netns``,
    # :func:`nsbox.net.rtnl.hold_netns`) for a pod made from a thread in
    # another namespace.  -1 when rebuilt from a record.
    host_netns: int = -1
    owns_host_netns: bool = False

    # ---- teardown --------------------------------------------------------

    def detach(self, wait: float = 0.0, link_gone: bool = False) -> None:
        """Remove the host side; idempotent (a missing link is fine).

        Deletes the link (by ifindex, which the kernel does not reuse soon,
        in the namespace the link was made in), then the port rules and the
        lease.  With ``wait``, first waits that long for the kernel to delete
        it with the pod's namespace (see :func:`detach_all`); ``link_gone``:
        known to be gone already."""
        if self.detached:
            return
        errors: list[Exception] = []
        if not link_gone:
            try:
                with self._host() as host:
                    link.wait_gone(host, [self.host_index], wait)
                    err = host.run([msg.link_del(self.host_ifname, self.host_index)])[0]
                if err is not None and err.errno not in (errno.ENODEV, errno.ENOENT):
                    errors.append(err)
            except OSError as e:
                errors.append(e)
        for step in (self.published.remove if self.published else None, self.lease.release if self.lease else None):
            if step is not None:
                try:
                    step()
                except Exception as e:  # keep going: remove as much as possible
                    errors.append(e)
        self.detached = True
        if self.owns_host_netns:
            rt.release_netns(self.host_netns)
            self.host_netns, self.owns_host_netns = -1, False
        if errors:
            first = errors[0]
            raise NetworkError(getattr(first, "errno", None) or errno.EIO, f"tearing down {self.host_ifname}: {first}")

    def detach_later(self) -> None:
        """Tear down in the background (:mod:`nsbox.net.teardown`): for a pod
        whose network namespace is gone or going, so the kernel deletes the
        link by itself.  The lease and host-port reservations become this
        process's until the link is gone, so nothing still in use is handed
        out.  Synchronous (:meth:`detach`) for a host side rebuilt from a
        record (no fd on its namespace)."""
        if self.detached:
            return
        if not self.host_index or (rt.shared_in(self.host_netns) is None and not self.owns_host_netns):
            self.detach()
            return
        me = _proc.owner(os.getpid())
        try:
            if me is not None:
                if self.lease is not None:
                    self.lease = self.lease.transfer(me)
                if self.published is not None:
                    self.published.transfer_reservations(me)
        except Exception:
            self.detach()  # (the handover failed: the old way, now)
            return
        teardown.defer(self)

    def _detach_quietly(self) -> None:
        try:
            self.detach()
        except Exception:
            pass

    def _host(self) -> rt.Rtnl:
        """An rtnetlink socket in the namespace the host side was made in."""
        if self.host_netns >= 0:
            return rt.in_netns(self.host_netns)
        # Rebuilt from a record: that namespace, if this thread or process is in it.
        for path in ("/proc/thread-self/ns/net", "/proc/self/ns/net"):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == self.host_netns_id:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    r = rt.Rtnl(rt.socket_in_netns(fd))
                finally:
                    os.close(fd)
                return r
        raise NetworkError(errno.ENOENT, f"the network namespace {self.host_ifname} was made in "
                           f"(net:[{self.host_netns_id[1]}]) is not this process's")

    # ---- changes on a running pod ---------------------------------------------

    def shape(self, shaping: Shaping, pod_netns_fd: int) -> None:
        """Shape both ends of the link (``pod_netns_fd``: the pod's network
        namespace), each in its own namespace, whichever namespace the
        calling thread is in.  On failure the previous shaping is put back."""
        try:
            self.apply_shaping(shaping, pod_netns_fd)
        except BaseException:
            try:
                self.apply_shaping(self.shaping, pod_netns_fd)
            except Exception:
                pass
            raise
        self.shaping = shaping

    def apply_shaping(self, shaping: Shaping, pod_netns_fd: int) -> None:
        """Shape both ends, without putting anything back on failure."""
        with self._host() as host:
            apply(host, self.host_ifname, shaping)
        with rt.Rtnl(rt.socket_in_netns(pod_netns_fd)) as pod:
            apply(pod, self.ifname, shaping)

    def publish(self, owner: Owner, ports: list[tuple[str, int, int]], *, kernel_owned: bool = True) -> None:
        """Publish ``ports`` (from :func:`nsbox.net.ports.parse_ports`) of
        the pod ``owner`` (its holder); the rules are then this attachment's,
        removed by :meth:`detach`.  ``kernel_owned``: see
        :func:`nsbox.net.ports.publish` (False for a pod that outlives this
        process)."""
        if self.published is not None:
            raise ConfigError(f"ports of {self.ifname} are already published")
        if self.address is None:
            raise ConfigError(f"{self.ifname} has no address to publish ports to")
        address = self.address
        # A stopped pod of this process may still hold a host port (torn down
        # in the background): retry_settled.
        self.published = teardown.retry_settled(lambda: publish_ports(owner, address, self.route_ifname, ports,
                                                                               kernel_owned=kernel_owned))

    # ---- records --------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """A JSON-able description of everything this attachment owns."""
        return {
            "version": RECORD_VERSION,
            "ifname": self.ifname,
            "host_ifname": self.host_ifname,
            "host_index": self.host_index,
            "peer_index": self.peer_index,
            "address": None if self.address is None else str(self.address),
            "host_address": None if self.host_address is None else str(self.host_address),
            "route_ifname": self.route_ifname,
            "shaping": self.shaping.to_record(),
            "lease": None if self.lease is None else self.lease.to_record(),
            "published": None if self.published is None else self.published.to_record(),
            "host_netns": list(self.host_netns_id),
            "detached": self.detached,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Attachment":
        """The attachment ``record`` (from :meth:`to_record`) describes, able
        to :meth:`detach` from this process when its host side lives in this
        process's (or the calling thread's) network namespace."""
        if record.get("kind") == "cni":
            from .cni import CNIAttachment

            return CNIAttachment.from_record(record)
        if record.get("version") != RECORD_VERSION:
            raise ConfigError(f"unknown attachment record version {record.get('version')!r}")
        dev, ino = record["host_netns"]
        return cls(
            ifname=record["ifname"],
            host_ifname=record["host_ifname"],
            host_index=int(record["host_index"]),
            peer_index=int(record["peer_index"]),
            address=None if record["address"] is None else ipaddress.ip_interface(record["address"]),
            host_address=None if record["host_address"] is None else ipaddress.ip_interface(record["host_address"]),
            route_ifname=record["route_ifname"],
            shaping=Shaping.from_record(record["shaping"]),
            lease=None if record["lease"] is None else Lease.from_record(record["lease"]),
            published=None if record["published"] is None else Published.from_record(record["published"]),
            host_netns_id=(int(dev), int(ino)),
            detached=bool(record["detached"]),
        )


# ---- making one ----------------------------------------------------------------------

_UNSHAPED = Shaping()



def attach(host: rt.Rtnl, pod_netns_fd: int, *, ifname: str, address: Interface,
           host_ifname: Optional[str] = None, host_address: Optional[Interface] = None,
           address_on_host_link: bool = False, gateway: Any = None, routes: Iterable[Any] = (),
           master: Optional[int] = None, route_ifname: Optional[str] = None,
           mtu: Optional[int] = None, mac: Optional[str] = None, host_mac: Optional[str] = None,
           primary: bool = True, shaping: Shaping = _UNSHAPED, lease: Optional[Lease] = None,
           lo_up: bool = False) -> Attachment:
    """Make a pod's link and return what was made; on failure undo all of it.

    Create the veth pair through ``host`` (the host end in ``master``, and
    with ``host_address`` when ``address_on_host_link``), configure the pod
    end (``address``, a default route via ``gateway``, ``routes`` via the
    host address), shape both ends.  A ``lease`` becomes the attachment's
    (released on failure too); ``route_ifname`` defaults to the host end."""
    try:
        on_link = host_address if address_on_host_link else None
        peer_index = link.PEER_INDEX if primary else 0
        ipv6 = address.version == 6
        if on_link is not None:
            with link.subnet_lock(on_link):  # from the check until the address is on the link
                link.check_unused(host, on_link, address)
                name, index, peer_index = link.create_pair(
                    host, pod_netns_fd, ifname, host_ifname, mtu=mtu, mac=mac, host_mac=host_mac,
                    master=master, host_address=on_link, peer_index=peer_index, ipv6=ipv6,
                    new_netns=primary)
        else:
            name, index, peer_index = link.create_pair(
                host, pod_netns_fd, ifname, host_ifname, mtu=mtu, mac=mac, host_mac=host_mac,
                master=master, peer_index=peer_index, ipv6=ipv6, new_netns=primary)
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    att = Attachment(ifname=ifname, host_ifname=name, host_index=index, peer_index=peer_index,
                     address=address, host_address=host_address, route_ifname=route_ifname or name,
                     lease=lease, host_netns_id=_netns_id(host.netns_fd))
    try:
        if host.is_shared:
            att.host_netns = host.netns_fd
        elif host.netns_fd >= 0:  # a nested pod: a hold on that namespace's one fd, dropped at detach
            # (should this fail, detach finds the namespace as this thread's)
            att.host_netns, att.owns_host_netns = rt.hold_netns(host.netns_fd), True
        link.configure_pod_side(pod_netns_fd, ifname, address, gateway=gateway, routes=routes,
                                via=host_address.ip if host_address is not None else None, index=peer_index,
                                lo_up=lo_up)
        if shaping:
            att.apply_shaping(shaping, pod_netns_fd)
            att.shaping = shaping
    except BaseException:
        att._detach_quietly()
        raise
    return att


def _netns_id(netns_fd: int) -> tuple[int, int]:
    st = os.fstat(netns_fd) if netns_fd >= 0 else os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


# ---- many at once -------------------------------------------------------------------


def _by_host_netns(attachments: Iterable[Attachment]) -> list[list[Attachment]]:
    """The attachments with a veth of nsbox's still to tear down, grouped by
    the namespace their host side lives in."""
    groups: dict[tuple[int, int], list[Attachment]] = {}
    for att in attachments:
        if not att.detached and att.HAS_LINK:
            groups.setdefault(att.host_netns_id, []).append(att)
    return list(groups.values())


def unaddress_all(attachments: Sequence[Attachment]) -> None:
    """Before many pods' namespaces go: delete their veth host ends'
    addresses, in batches (best effort: what fails here goes with the link).

    When the kernel deletes a link that routes still go through, it flushes
    every route table of the link's namespace (``fib_flush``): with 10,000
    pods, 10,000 walks of a 20,000-route table, a quarter of all CPU time and
    most of ``stop_all``'s 14 s.  An address deleted first takes its own
    routes along, and the link then goes without a flush."""
    for group in _by_host_netns(a for a in attachments if a.host_index and a.host_address is not None
                                and a.route_ifname == a.host_ifname):  # (a bridge's address is not the pod's)
        try:
            with group[0]._host() as host:
                for i in range(0, len(group), 256):
                    host.run([msg.addr_del(a.host_index, a.host_ifname, a.host_address) for a in group[i : i + 256]])
        except OSError:
            pass


def detach_all(attachments: Sequence[Attachment], wait: float = KERNEL_CLEANUP) -> None:
    """Tear down many pods' host sides at once.

    An RTM_DELLINK waits for an RCU grace period; once the pods' namespaces
    are freed, the kernel deletes their veth pairs itself, in one batch.  So:
    wait up to ``wait`` seconds for that, then delete whatever is left
    (something else may keep a namespace alive) and release leases and
    rules."""
    gone: set[int] = set()
    for group in _by_host_netns(attachments):
        try:
            with group[0]._host() as host:
                indexes = [a.host_index for a in group if a.host_index]
                link.wait_gone(host, indexes, wait)
                still = link.existing(host, indexes)
            gone.update(id(a) for a in group if a.host_index and a.host_index not in still)
        except OSError:
            pass  # unknown: each one is checked and deleted below
    errors = []
    for att in attachments:
        try:
            att.detach(link_gone=id(att) in gone)
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]
