"""The OCI door: what an OCI runtime (runc, crun) needs to start a container
that joins a pod, as containerd and CRI-O do with the pause container.

:func:`namespaces` gives the ``linux.namespaces`` entries of a bundle's
``config.json``: one per namespace the pod owns, with a path that stays
valid while the pod runs (a persistent pod's pin; else the holder's
``/proc/PID/ns/KIND``: the holder is the pod's life, so the PID cannot be
reused meanwhile).  :func:`bundle_config` edits a ``runc spec`` config to
run in the pod.
"""
from __future__ import annotations

import copy
import errno
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional

from .errors import ConfigError

if TYPE_CHECKING:
    from .pod import Pod

__all__ = ["OCI_TYPES", "namespaces", "bundle_config"]

# nsbox kind -> the OCI runtime spec's namespace type.
OCI_TYPES = {"net": "network", "ipc": "ipc", "uts": "uts", "pid": "pid", "mnt": "mount",
             "cgroup": "cgroup", "user": "user"}


def namespaces(pod: "Pod", *, exclude: Iterable[str] = ()) -> list[dict[str, str]]:
    """``[{"type": "network", "path": ...}, ...]`` for the pod's namespaces
    (nsbox kinds in ``exclude`` left out)."""
    skip = set(exclude)
    unknown = skip - set(OCI_TYPES)
    if unknown:
        raise ConfigError(f"exclude: unknown kind(s) {', '.join(sorted(unknown))}; use nsbox kind names "
                          f"({', '.join(OCI_TYPES)})")
    status = pod.status()
    if status.state != "running" or status.pid is None:
        from .errors import NotRunningError

        raise NotRunningError(errno.ESRCH, f"{pod!r} is not running: start it before asking for its namespaces")
    out = []
    for kind in pod.kinds:
        if kind in skip or kind not in OCI_TYPES:
            continue
        path = status.pins.get(kind) or f"/proc/{status.pid}/ns/{kind}"
        out.append({"type": OCI_TYPES[kind], "path": path})
    return out


def bundle_config(pod: "Pod", config: dict[str, Any], *, volumes: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """A copy of ``config`` (a ``runc spec`` config.json) made to join
    ``pod``: ``linux.namespaces`` from :func:`namespaces` (the container
    keeps a mount namespace of its own for its root filesystem; a pod's
    user namespace is joined, and uidMappings/gidMappings are set to its maps:
    runc 1.1 needs them, neither runtime writes them again),
    ``hostname`` dropped (with uts joined the runtime would overwrite the
    pod's), and ``volumes`` (``{pod mount path: container path}``) bound
    in from :meth:`Pod.volume_path`."""
    cfg = copy.deepcopy(config)
    if not isinstance(cfg.get("linux"), dict):
        raise ConfigError("config has no 'linux' section: pass the config.json of an OCI bundle for Linux")
    joined = namespaces(pod, exclude=("mnt",))
    own = [ns for ns in cfg["linux"].get("namespaces", [])
           if ns.get("type") not in {j["type"] for j in joined} and ns.get("type") != "user"]
    if not any(ns.get("type") == "mount" for ns in own):
        own.append({"type": "mount"})
    cfg["linux"]["namespaces"] = joined + own
    if any(j["type"] == "user" for j in joined):
        # The pod's own maps: a joined user namespace keeps its maps (the
        # runtime writes none), but runc 1.1 refuses a user namespace without
        # them ("no uid mappings found") and uses them for the host root id.
        cfg["linux"]["uidMappings"] = _id_mappings(pod, "uid_map")
        cfg["linux"]["gidMappings"] = _id_mappings(pod, "gid_map")
    cfg.pop("hostname", None)
    if volumes:
        mounts = cfg.setdefault("mounts", [])
        for pod_path, dest in volumes.items():
            mounts.append({"destination": dest, "type": "bind", "source": str(pod.volume_path(pod_path)),
                           "options": ["rbind", "rw"]})
    return cfg


def _id_mappings(pod: "Pod", which: str) -> list[dict[str, int]]:
    """The holder's ``/proc/PID/uid_map`` (or ``gid_map``) as OCI id mappings."""
    pid = pod.pid
    try:
        with open(f"/proc/{pid}/{which}") as f:
            lines = [line.split() for line in f.read().splitlines() if line.strip()]
    except OSError as e:
        from .errors import NotRunningError

        raise NotRunningError(e.errno or errno.ESRCH, f"{pod!r}: reading its {which}: {e.strerror}") from None
    return [{"containerID": int(a), "hostID": int(b), "size": int(c)} for a, b, c in lines]
