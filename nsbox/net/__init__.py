"""Pod networking over rtnetlink (pyroute2 message classes, nsbox's sockets)."""
from typing import Any, Protocol, runtime_checkable

from .bridge import Bridge
from .veth import Attachment, Veth, detach_all

__all__ = ["Veth", "Bridge", "Network", "Attachment", "detach_all", "network_from_dict"]


@runtime_checkable
class Network(Protocol):  # TEMPORARY shim until the net refactor lands
    ifname: str

    def attach(self, pod_netns_fd: int, holder_pid: int, *, primary: bool = True) -> Attachment: ...

    def check_publishable(self) -> None: ...

    def to_dict(self) -> dict: ...


def network_from_dict(d: Any) -> Network:
    raise NotImplementedError
