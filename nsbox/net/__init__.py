"""Pod networking over rtnetlink (pyroute2 message classes, nsbox's sockets).

A :class:`Network` (``Veth``, ``Bridge``, ``CNI``) is configuration; attaching it to
a pod makes an :class:`Attachment`, which owns what was made and undoes it."""
from .attachment import Attachment, detach_all, unaddress_all
from .bridge import Bridge
from .cni import CNI, CNIError
from .network import Network, network_from_dict
from .podnet import PodNetwork
from .teardown import settle
from .veth import Veth

__all__ = ["Veth", "Bridge", "CNI", "CNIError", "Network", "Attachment", "PodNetwork", "detach_all", "unaddress_all",
           "network_from_dict", "settle"]
