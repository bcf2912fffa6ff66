"""Namespace kinds: their names, clone flags and /proc names."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Union

from ._syscalls import CLONE_NEW
from .errors import KindError

__all__ = ["KINDS", "DEFAULT_KINDS", "KindsArg", "parse_kinds", "flags_of"]

# name -> CLONE_NEW* flag (from the kernel headers).  Order is the canonical order.
KINDS: dict[str, int] = {name: CLONE_NEW[name] for name in ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup", "time")}

DEFAULT_KINDS: tuple[str, ...] = ("net", "ipc", "uts", "pid")

_ALIASES = {"mount": "mnt", "network": "net", "ns": None}

KindsArg = Union[str, Iterable[str]]


def parse_kinds(kinds: KindsArg, *, allow_empty: bool = False) -> tuple[str, ...]:
    """Validate ``kinds`` (a name, or an iterable of names) and return them
    deduplicated in canonical order.

    >>> parse_kinds(("uts", "net", "net"))
    ('net', 'uts')
    """
    if isinstance(kinds, tuple):
        done = _parsed.get(kinds)
        if done is not None:
            return done
    if isinstance(kinds, str):
        names = [kinds]
    else:
        try:
            names = list(kinds)
        except TypeError:
            raise KindError(
                f"kinds must be a string or an iterable of strings, not {type(kinds).__name__}"
            ) from None
    seen = set()
    for name in names:
        if not isinstance(name, str):
            raise KindError(f"namespace kind must be a string, not {type(name).__name__}: {name!r}")
        if name not in KINDS:
            hint = ""
            if _ALIASES.get(name):
                hint = f" (did you mean {_ALIASES[name]!r}?)"
            raise KindError(
                f"unknown namespace kind {name!r}{hint}; valid kinds are: {', '.join(KINDS)}"
            )
        seen.add(name)
    if not seen and not allow_empty:
        raise KindError(f"no namespace kind given; valid kinds are: {', '.join(KINDS)}")
    out = tuple(k for k in KINDS if k in seen)
    if isinstance(kinds, tuple) and out and len(_parsed) < 512:
        _parsed[kinds] = out  # pods are made again and again with the same kinds
    return out


_parsed: dict[tuple, tuple[str, ...]] = {}


def flags_of(kinds: Iterable[str]) -> int:
    """The OR of the CLONE_NEW* flags of already-validated ``kinds``."""
    flags = 0
    for k in kinds:
        flags |= KINDS[k]
    return flags
