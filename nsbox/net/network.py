"""What a pod's network is: the :class:`Network` protocol that
:class:`~nsbox.net.Veth` and :class:`~nsbox.net.Bridge` implement, and
rebuilding one from its configuration."""
from __future__ import annotations

import json
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..errors import ConfigError
from .attachment import Attachment

__all__ = ["Network", "NetworkConfig", "network_from_dict"]


@runtime_checkable
class Network(Protocol):
    """A kind of network a pod can be attached to."""

    ifname: str  # the pod end's interface name

    def attach(self, pod_netns_fd: int, holder_pid: int, *, primary: bool = True) -> Attachment:
        """Make the pod's link (in the namespace ``pod_netns_fd``, for the
        holder ``holder_pid``); only the ``primary`` network gives the pod a
        default route.  On failure nothing is left behind."""
        ...

    def check_publishable(self) -> None:
        """Raise ConfigError unless ``ports=`` can be published through it."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The configuration, JSON-able (see :func:`network_from_dict`)."""
        ...


class NetworkConfig:
    """What the network classes share: their configuration is ``to_dict()``
    (whose ``"type"`` is ``KIND``), which makes them equal, hashable and
    rebuildable (``from_dict()``)."""

    KIND: ClassVar[str]
    # True: attached as a pod's primary network, it also sets the pod's
    # loopback up (in its batch of pod-side requests), so the holder need
    # not: its rtnl lock is then not one more the holder waits for before
    # exec (issue 13).
    LO_UP: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        kw = dict(d)
        if kw.pop("type", cls.KIND) != cls.KIND:
            raise ConfigError(f"not a {cls.KIND} network: {d!r}")
        try:
            return cls(**kw)
        except TypeError as e:  # an unknown or missing key
            raise ConfigError(f"not a {cls.KIND} network configuration: {e}") from None

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))


def network_from_dict(d: dict[str, Any]) -> Network:
    """The network ``d`` (from ``to_dict()``) describes: equal to the original."""
    from .bridge import Bridge
    from .cni import CNI
    from .veth import Veth

    kinds: dict[str, Any] = {Veth.KIND: Veth, Bridge.KIND: Bridge, CNI.KIND: CNI}
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in kinds:
        raise ConfigError(f"not a network configuration (its 'type' must be one of {', '.join(kinds)}): {d!r}")
    net: Network = kinds[kind].from_dict(d)
    return net
