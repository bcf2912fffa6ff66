"""nsbox: Pod-like Linux namespace sandboxes — the Kubernetes pause container
as a Python library.

    >>> import nsbox
    >>> with nsbox.Pod(hostname="web-0") as pod:
    ...     pod.run(["hostname"], capture_output=True, text=True).stdout
    'web-0\\n'
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

# The exceptions are light: loaded at once.  Everything else on first use,
# so that `import nsbox` (and pytest, which loads the nsbox plugin in every
# run once nsbox is installed) does not pay for pyroute2 and the native
# module until a pod is made: 2 ms instead of ~140 ms.
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

if TYPE_CHECKING:
    from .cleanup import gc
    from .kinds import DEFAULT_KINDS, KINDS
    from .lifecycle import PodStatus
    from .namespaces import Namespace, join, joined
    from .net import CNI, Bridge, CNIError, Veth
    from .persist import pods
    from .pod import Pod, stop_all
    from .podfiles import DNS
    from .spawn import PodProcess
    from .spec import PodSpec
    from .volumes import EmptyDir, HostPath

    from . import cleanup, cli, errors, kinds, net, oci, podfiles, spec, sysctls, volumes  # noqa: F401  (_SUBMODULES)

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "Pod": ".pod", "stop_all": ".pod", "PodSpec": ".spec", "PodStatus": ".lifecycle", "pods": ".persist",
    "gc": ".cleanup", "PodProcess": ".spawn", "Veth": ".net", "Bridge": ".net", "CNI": ".net", "CNIError": ".net",
    "EmptyDir": ".volumes", "HostPath": ".volumes", "DNS": ".podfiles", "Namespace": ".namespaces",
    "join": ".namespaces", "joined": ".namespaces", "KINDS": ".kinds", "DEFAULT_KINDS": ".kinds",
}
# subpackages and modules reached as attributes (nsbox.net.settle(), nsbox.oci.bundle_config())
_SUBMODULES = {"net", "oci", "errors", "kinds", "spec", "volumes", "podfiles", "sysctls", "cli", "cleanup"}


# (Only at run time: to a type checker the names are the imports above, so
# that a misspelt nsbox.X is an error rather than Any.)
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module, __name__), name)
        elif name in _SUBMODULES or (not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None):
            # (any submodule: before it was lazy, `import nsbox` imported them
            # all, and code reached them as nsbox.holder, nsbox.persist, ...)
            value = importlib.import_module("." + name, __name__)
        else:
            raise AttributeError(f"module 'nsbox' has no attribute {name!r}")
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)


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
