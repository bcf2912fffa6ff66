"""Pod networking over rtnetlink (pyroute2 message classes, nsbox's sockets)."""
from .bridge import Bridge
from .veth import Veth

__all__ = ["Veth", "Bridge"]
