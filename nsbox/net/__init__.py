"""Pod networking over rtnetlink (pyroute2 message classes, nsbox's sockets)."""
from .veth import Veth

__all__ = ["Veth"]
