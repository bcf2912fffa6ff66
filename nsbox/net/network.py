"""What a pod's network is: the :class:`Network` protocol that
:class:`~nsbox.net.Veth` and :class:`~nsbox.net.Bridge` implement, and
rebuilding one from its configuration."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError
from .attachment import Attachment
from .bridge import Bridge
from .veth import Veth

__all__ = ["Network", "network_from_dict"]


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


_KINDS: dict[str, Any] = {"veth": Veth, "bridge": Bridge}


def network_from_dict(d: dict[str, Any]) -> Network:
    """The network ``d`` (from ``to_dict()``) describes: equal to the original."""
    kind = d.get("type") if isinstance(d, dict) else None
    if kind not in _KINDS:
        raise ConfigError(f"not a network configuration (its 'type' must be one of {', '.join(_KINDS)}): {d!r}")
    net: Network = _KINDS[kind].from_dict(d)
    return net
