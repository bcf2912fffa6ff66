"""nsbox: Pod-like Linux namespace sandboxes — the Kubernetes pause container
as a Python library.

    >>> import nsbox
    >>> with nsbox.Pod(hostname="web-0") as pod:
    ...     pod.run(["hostname"], capture_output=True, text=True).stdout
    'web-0\\n'
"""
from .errors import (
    ConfigError,
    KindError,
    NamespaceError,
    NetworkError,
    NotRunningError,
    NsboxError,
    PodStartError,
    PrivilegeError,
    ThreadingError,
    UnsupportedError,
)
from .kinds import DEFAULT_KINDS, KINDS
from .namespaces import Namespace, join, joined
from .net import CNI, Bridge, CNIError, Veth
from .gc import gc
from .lifecycle import PodStatus
from .persist import pods
from .pod import Pod, stop_all
from .podfiles import DNS
from .spawn import PodProcess
from .spec import PodSpec
from .volumes import EmptyDir, HostPath

__version__ = "0.1.0"

__all__ = [
    "Pod",
    "PodSpec",
    "PodStatus",
    "pods",
    "gc",
    "stop_all",
    "PodProcess",
    "Veth",
    "Bridge",
    "CNI",
    "EmptyDir",
    "HostPath",
    "DNS",
    "Namespace",
    "join",
    "joined",
    "KINDS",
    "DEFAULT_KINDS",
    "NsboxError",
    "KindError",
    "ConfigError",
    "NotRunningError",
    "NamespaceError",
    "PrivilegeError",
    "PodStartError",
    "ThreadingError",
    "UnsupportedError",
    "NetworkError",
    "CNIError",
    "__version__",
]
