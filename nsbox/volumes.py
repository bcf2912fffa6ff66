"""Pod volumes: what a pod's ``volumes={mount path: volume}`` can hold.

- :class:`EmptyDir` -- a directory that lives and dies with the pod
  (Kubernetes ``emptyDir``); ``medium="memory"`` makes it a tmpfs with a
  size limit (``emptyDir.medium: Memory`` and ``sizeLimit``).
- :class:`HostPath` -- a host directory or file, bind-mounted (``hostPath``),
  optionally read-only.

These are configuration only (frozen, validated, JSON round trip);
:mod:`nsbox.podfs` makes them on the host and mounts them into the pod.
"""
from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

from .errors import ConfigError

__all__ = ["EmptyDir", "HostPath", "Volume", "check_volumes", "volume_from_dict", "parse_size"]

_MEDIA = ("", "memory")
# Kubernetes quantities: decimal (k, M, G, T, P) and binary (Ki, Mi, Gi, Ti, Pi) suffixes.
_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_SIZE = re.compile(r"([0-9]+)(|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)")


def parse_size(value: Union[str, int], what: str = "size_limit") -> int:
    """Bytes from an int or a Kubernetes quantity: ``"64M"`` is 64,000,000
    bytes, ``"64Mi"`` 64 MiB (as in a pod's ``sizeLimit``)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{what} must be a number of bytes or a string like '64Mi', not {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.fullmatch(value.strip())
        if m is None:
            raise ConfigError(
                f"{what} {value!r} is not a size: write bytes, or a number with k, M, G, T "
                "(powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024), e.g. '64Mi'"
            )
        n = int(m.group(1)) * _SUFFIX[m.group(2)]
    if n <= 0:
        raise ConfigError(f"{what} must be positive, not {value!r}")
    return n


@dataclass(frozen=True)
class EmptyDir:
    """A directory made empty when the pod starts and removed with its
    contents when the pod ends for good (it survives restarts).  On disk
    under nsbox's run directory, or ``medium="memory"``: a tmpfs, whose
    ``size_limit`` (bytes, or a quantity like ``"64Mi"``) the kernel
    enforces: a write past it fails with ENOSPC."""

    medium: str = ""
    size_limit: Optional[Union[int, str]] = None

    def __post_init__(self) -> None:
        if self.medium not in _MEDIA:
            raise ConfigError(f"EmptyDir medium must be '' (disk) or 'memory', not {self.medium!r}")
        limit = self.size_limit
        if limit is not None:
            limit = parse_size(limit)
            if self.medium != "memory":
                raise ConfigError(
                    "EmptyDir size_limit needs medium='memory' (a tmpfs enforces it; a directory on "
                    "disk has no limit nsbox could enforce)"
                )
        object.__setattr__(self, "size_limit", limit)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "emptyDir", "medium": self.medium, "size_limit": self.size_limit}


@dataclass(frozen=True)
class HostPath:
    """The host's directory (or file) ``path``, bind-mounted into the pod
    with what is mounted below it.  ``read_only``: writes fail with EROFS.
    ``create``: a missing ``path`` is made as a directory (mode 0755) when the
    pod starts (Kubernetes' ``DirectoryOrCreate``); otherwise it is an error."""

    path: str
    read_only: bool = False
    create: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)):
            raise ConfigError(f"HostPath path must be a str, not {type(self.path).__name__}")
        path = os.fspath(self.path)
        if not isinstance(path, str):
            raise ConfigError(f"HostPath path must be a str, not {type(path).__name__}")
        object.__setattr__(self, "path", _check_abs(path, "HostPath path", allow_root=True))
        for name in ("read_only", "create"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"HostPath {name} must be True or False, not {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "hostPath", "path": self.path, "read_only": self.read_only, "create": self.create}


Volume = Union[EmptyDir, HostPath]


def volume_from_dict(data: Any) -> Volume:
    if not isinstance(data, dict):
        raise ConfigError(f"a volume must be a mapping, not {data!r}")
    data = dict(data)
    kind = data.pop("type", None)
    cls: Any = {"emptyDir": EmptyDir, "hostPath": HostPath}.get(kind)
    if cls is None:
        raise ConfigError(f"unknown volume type {kind!r} (emptyDir or hostPath)")
    try:
        return cls(**data)
    except TypeError as e:
        raise ConfigError(f"bad {kind} volume {data!r}: {e}") from None


def check_volumes(volumes: Any, kinds: tuple[str, ...]) -> tuple[tuple[str, Volume], ...]:
    """``{mount path: volume}`` (or pairs) as ``((path, volume), ...)``,
    paths normalised and sorted (a parent before what is mounted below it)."""
    if not volumes:
        return ()
    items = list(volumes.items()) if isinstance(volumes, Mapping) else list(volumes)
    out: dict[str, Volume] = {}
    for item in items:
        try:
            path, vol = item
        except (TypeError, ValueError):
            raise ConfigError(f"volumes must map mount paths to volumes, not {volumes!r}") from None
        if not isinstance(vol, (EmptyDir, HostPath)):
            raise ConfigError(f"volume for {path!r} must be an nsbox.EmptyDir or nsbox.HostPath, not {vol!r}")
        if not isinstance(path, str):
            raise ConfigError(f"a volume's mount path must be a str, not {path!r}")
        norm = _check_abs(path, "volume mount path", allow_root=False)
        top = norm.split("/")[1]
        if top in ("proc", "sys"):
            raise ConfigError(
                f"volume mount path {norm!r} is in /{top}, a kernel file system whose entries depend on "
                "who reads them: mount volumes elsewhere"
            )
        if norm in out:
            raise ConfigError(f"two volumes are mounted at {norm!r}; give each its own mount path")
        out[norm] = vol
    if out and "mnt" not in kinds:
        raise ConfigError("volumes need the 'mnt' kind (a mount namespace of the pod's own); add 'mnt' to kinds")
    return tuple(sorted(out.items(), key=lambda kv: (kv[0].count("/"), kv[0])))


def _check_abs(path: str, what: str, *, allow_root: bool) -> str:
    if "\0" in path:
        raise ConfigError(f"{what} {path!r} contains a NUL byte")
    if not path.startswith("/"):
        raise ConfigError(f"{what} must be absolute, not {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"{what} must not contain '..': {path!r}")
    norm = posixpath.join("/", *parts)
    if norm == "/" and not allow_root:
        raise ConfigError(f"{what} cannot be '/' (the pod's root)")
    return norm
