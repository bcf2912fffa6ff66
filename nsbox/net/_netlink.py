"""The old name of the rtnetlink client, for one release: it is now
:mod:`nsbox.net.rtnl` (transport) and :mod:`nsbox.net.messages` (builders).
Remove once tests/conftest.py imports ``nsbox.net.rtnl``."""
from .rtnl import Request, Rtnl, shared, socket_in_netns

__all__ = ["Rtnl", "Request", "shared", "socket_in_netns"]
