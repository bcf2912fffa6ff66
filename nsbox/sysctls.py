"""Per-pod sysctls: only those the kernel keeps per namespace.

A pod may set the sysctls of its own network namespace (``net.*``, except
the few that stay global) and of its own IPC namespace (``kernel.shm*``,
``kernel.msg*``, ``kernel.sem``, ``fs.mqueue.*``).  Anything else would
change the host, and is refused by :func:`check_sysctls` before anything is
made.  :func:`write_sysctls` writes checked sysctls through ``/proc/sys``,
which shows the namespaces of the *thread* that opens a file there: it is
called by a thread that has joined the pod's namespaces.

Names are written as sysctl(8) writes them: dotted (``net.ipv4.ip_forward``)
or slashed (``net/ipv4/ip_forward``); in the slashed form ``.`` and ``/``
swap roles, so a device whose name has a dot is ``net.ipv4.conf.eth0/100.rp_filter``
dotted and ``net/ipv4/conf/eth0.100/rp_filter`` slashed.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from .errors import ConfigError, PodStartError, PrivilegeError

__all__ = ["check_sysctls", "kinds_for", "write_sysctls"]

_PROC_SYS = "/proc/sys"

# net.* sysctls that are NOT per network namespace.  Derived on Linux
# 6.18.44-fc-v1252 (x86_64, everything built in, nf_conntrack and bridge
# among it), as root, by comparing
#     find /proc/sys/net -type f -printf '%m %p\n'              (the initial netns)
#     unshare -n find /proc/sys/net -type f -printf '%m %p\n'   (a fresh netns)
# These are the names found only in the initial netns (leaving out the
# conf/<dev>/ and neigh/<dev>/ directories of the host's own devices), and
# the names writable there but read-only (0444) in the fresh netns, where
# they only show the global value (net.core.rmem_max and the like).
# The table is what makes the answer the same whether the caller runs in the
# initial netns (where these exist and look writable) or in another one
# (where they are missing or read-only).  Sysctls of modules that were not in
# that kernel are not covered: a global one the caller sees is accepted here
# and fails when written in the pod (ConfigError, "not in this namespace").
_NET_GLOBAL = frozenset({
    "net.core.bpf_jit_enable", "net.core.bpf_jit_harden", "net.core.bpf_jit_kallsyms",
    "net.core.bpf_jit_limit", "net.core.busy_poll", "net.core.busy_read", "net.core.default_qdisc",
    "net.core.dev_weight", "net.core.dev_weight_rx_bias", "net.core.dev_weight_tx_bias",
    "net.core.devconf_inherit_init_net", "net.core.fb_tunnels_only_for_init_net",
    "net.core.gro_normal_batch", "net.core.high_order_alloc_disable", "net.core.max_skb_frags",
    "net.core.mem_pcpu_rsv", "net.core.message_burst", "net.core.message_cost", "net.core.netdev_budget",
    "net.core.netdev_budget_usecs", "net.core.netdev_max_backlog", "net.core.netdev_rss_key",
    "net.core.netdev_tstamp_prequeue", "net.core.netdev_unregister_timeout_secs",
    "net.core.rps_sock_flow_entries", "net.core.skb_defer_max", "net.core.warnings",
    "net.ipv4.cipso_cache_bucket_size", "net.ipv4.cipso_cache_enable", "net.ipv4.cipso_rbm_optfmt",
    "net.ipv4.cipso_rbm_strictvalid", "net.ipv4.fib_sync_mem", "net.ipv4.inet_peer_maxttl",
    "net.ipv4.inet_peer_minttl", "net.ipv4.inet_peer_threshold", "net.ipv4.ipfrag_secret_interval",
    "net.ipv4.route.error_burst", "net.ipv4.route.error_cost", "net.ipv4.route.gc_elasticity",
    "net.ipv4.route.gc_interval", "net.ipv4.route.gc_min_interval", "net.ipv4.route.gc_min_interval_ms",
    "net.ipv4.route.gc_thresh", "net.ipv4.route.gc_timeout", "net.ipv4.route.max_size",
    "net.ipv4.route.redirect_load", "net.ipv4.route.redirect_number", "net.ipv4.route.redirect_silence",
    "net.ipv4.tcp_available_ulp", "net.ipv4.tcp_low_latency", "net.ipv4.tcp_max_orphans",
    "net.ipv4.tcp_mem", "net.ipv4.udp_mem",
    "net.ipv6.calipso_cache_bucket_size", "net.ipv6.calipso_cache_enable",
    "net.ipv6.ip6frag_secret_interval", "net.ipv6.mld_max_msf", "net.ipv6.mld_qrv",
    "net.netfilter.nf_log_all_netns", "net.nf_conntrack_max",
    # present in a fresh netns, but read-only there (the global value):
    "net.core.rmem_default", "net.core.rmem_max", "net.core.wmem_default", "net.core.wmem_max",
    "net.ipv4.tcp_allowed_congestion_control",
    "net.netfilter.nf_conntrack_buckets", "net.netfilter.nf_conntrack_expect_max",
    "net.netfilter.nf_conntrack_max",
})
# Whole directories found only in the initial netns: the neighbour-table
# defaults (gc_thresh1..3, gc_interval and the defaults new devices copy).
_NET_GLOBAL_PREFIXES = ("net.ipv4.neigh.default.", "net.ipv6.neigh.default.")

# Per IPC namespace (ipc/ipc_sysctl.c, ipc/mq_sysctl.c); fs.mqueue.* too.
_IPC = frozenset({
    "kernel.shmmax", "kernel.shmall", "kernel.shmmni", "kernel.shm_rmid_forced",
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
    "kernel.msg_next_id", "kernel.sem_next_id", "kernel.shm_next_id",
})
_IPC_PREFIX = "fs.mqueue."
# Shown read-only (0444) by stat, yet writable by a process with
# CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN over the IPC namespace: the kernel
# decides at open time (ipc_permissions() in ipc/ipc_sysctl.c).
_WRITABLE_WHEN_CAPABLE = frozenset({"kernel.msg_next_id", "kernel.sem_next_id", "kernel.shm_next_id"})

# Namespaced, but not by a kind nsbox sets sysctls for: why, and what to do.
_NAMESPACED_ELSEWHERE = {
    "kernel.hostname": "it is the pod's UTS hostname: pass hostname= to the Pod instead",
    "kernel.domainname": "it is the pod's UTS NIS domain name, which nsbox does not set (hostname= sets the "
                         "hostname); with the 'uts' kind, write /proc/sys/kernel/domainname from inside the pod",
    "kernel.ns_last_pid": "it belongs to the pod's PID namespace and is meant for checkpoint/restore tools, "
                          "not for configuration",
}

_COMPONENT = re.compile(r"[A-Za-z0-9_-]+\Z")
_SWAP = str.maketrans("./", "/.")
_IFNAMSIZ = 16  # with the NUL: device names have at most 15 bytes
_VALUE_MAX = 4095  # a sysctl write is one page at most, with its NUL
_SYSCTL_HINT = ("only net.* (the pod's network namespace) and kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* "
                "(its IPC namespace) can be set per pod")


@dataclass(frozen=True)
class _Name:
    """A syntactically valid sysctl name."""

    name: str  # dotted, as returned (a '.' in a device name written as '/')
    shown: str  # as the caller wrote it, for messages
    parts: tuple[str, ...]
    device: Optional[str]  # net.ipvX.{conf,neigh}.<device>.<key>: the device, with its dots

    @property
    def path(self) -> str:
        return _PROC_SYS + "/" + self.name.translate(_SWAP)

    def template(self) -> str:
        """The file that shows whether this sysctl exists, and whether it is
        writable, wherever the caller runs: for a device's sysctl, the same
        key of a device every network namespace has."""
        if self.device is None:
            return self.path
        family, table, _, key = self.parts[1:]
        # conf/default exists in every netns; neigh/default only in the initial
        # one (and has table-wide keys besides): lo has the per-device ones.
        return f"{_PROC_SYS}/net/{family}/{table}/{'default' if table == 'conf' else 'lo'}/{key}"

    def describe(self) -> str:
        return repr(self.shown) if self.shown == self.name else f"{self.shown!r} ({self.name})"


# ---- checking ---------------------------------------------------------------------


def check_sysctls(sysctls: Any, kinds: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Validate and normalise the ``sysctls=`` of a pod with ``kinds``.

    ``sysctls`` is a mapping ``{name: value}`` (or a sequence of
    ``(name, value)`` pairs, as a serialised spec stores them; ``None`` is no
    sysctl).  Names are dotted or slashed (normalised to dots as sysctl(8)
    does); values are str or int (not bool), returned as str.  Returns the
    pairs sorted by name.  A sysctl that is malformed, not namespaced,
    unknown on this kernel, read-only, given twice, or that needs a kind the
    pod lacks raises :class:`ConfigError` naming it.  Reads /proc/sys, changes
    nothing.
    """
    seen: dict[str, str] = {}
    out: dict[str, str] = {}
    for key, value in _pairs(sysctls):
        n = _parse(key)
        if n.name in seen:
            raise ConfigError(
                f"sysctl {n.name!r} is given twice (as {seen[n.name]!r} and {n.shown!r}); give it once"
            )
        seen[n.name] = n.shown
        text = _check_value(n, value)
        kind = _check_name(n)
        if kind not in kinds:
            raise ConfigError(
                f"sysctl {n.describe()} is set in the pod's {_KIND_WORDS[kind]} namespace, but the pod has no "
                f"{kind!r} kind (its kinds are {', '.join(kinds) or 'none'}): add {kind!r} to kinds="
            )
        out[n.name] = text
    return tuple(sorted(out.items()))


_KIND_WORDS = {"net": "network", "ipc": "IPC"}


def kinds_for(name: str) -> tuple[str, ...]:
    """The namespace kind(s) a sysctl is set in: ``('net',)`` or ``('ipc',)``.

    Decided from the name alone (dotted or slashed); a name that is not a
    sysctl nsbox sets per pod raises :class:`ConfigError`.
    """
    return (_kind_of(_parse(name)),)


def _pairs(sysctls: Any) -> list[tuple[Any, Any]]:
    if sysctls is None:
        return []
    if isinstance(sysctls, Mapping):
        return list(sysctls.items())
    if isinstance(sysctls, (list, tuple)):
        pairs = []
        for item in sysctls:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ConfigError(f"sysctls must be a mapping {{name: value}} (or (name, value) pairs), got item {item!r}")
            pairs.append((item[0], item[1]))
        return pairs
    raise ConfigError(
        f"sysctls must be a mapping {{name: value}}, e.g. {{'net.ipv4.ip_unprivileged_port_start': '0'}}, "
        f"not {type(sysctls).__name__}"
    )


def _parse(name: Any) -> _Name:
    """Check the syntax of a sysctl name; no /proc/sys lookup."""
    if not isinstance(name, str):
        raise ConfigError(f"sysctl names must be str, not {type(name).__name__}: {name!r}")
    shown = name
    seps = [i for i in (name.find("."), name.find("/")) if i >= 0]
    slashed = bool(seps) and name[min(seps)] == "/"
    if slashed:  # '/' separates, '.' is part of a name (sysctl(8))
        name = name.translate(_SWAP)
    parts = tuple(name.split("."))
    if len(parts) < 2:
        raise ConfigError(f"sysctl {shown!r} is not a sysctl name (e.g. 'net.ipv4.ip_forward' or 'net/ipv4/ip_forward')")
    if "" in parts:
        raise ConfigError(f"sysctl {shown!r} has an empty component (a leading, trailing or doubled '.' or '/')")
    per_device = len(parts) >= 5 and parts[0] == "net" and parts[1] in ("ipv4", "ipv6") and parts[2] in ("conf", "neigh")
    if per_device and len(parts) > 5:
        raise ConfigError(
            f"sysctl {shown!r} has too many components for net.{parts[1]}.{parts[2]}.<device>.<key>; a device "
            f"name with a '.' is written with '/' when dotted, as sysctl(8) does: "
            f"'net.{parts[1]}.{parts[2]}.{parts[3]}/{parts[4]}.{parts[5]}'"
        )
    device = None
    for i, part in enumerate(parts):
        if per_device and i == 3:
            device = part.replace("/", ".")
            _check_device(shown, device)
        elif not _COMPONENT.match(part):
            as_given = part.translate(_SWAP) if slashed else part
            raise ConfigError(
                f"sysctl {shown!r}: {as_given!r} is not a valid component of a sysctl name (letters, digits, '_' and '-'; "
                "a '/' in a dotted name only within a device name)"
            )
    return _Name(name=name, shown=shown, parts=parts, device=device)


def _check_device(shown: str, device: str) -> None:
    raw = device.encode("utf-8", "surrogateescape")
    if (not raw or len(raw) >= _IFNAMSIZ or device in (".", "..")
            or any(c in ":/" or c.isspace() or not c.isprintable() for c in device)):
        raise ConfigError(
            f"sysctl {shown!r}: {device!r} is not a valid device name (1 to {_IFNAMSIZ - 1} bytes, "
            "no '/', ':' or whitespace, not '.' or '..')"
        )


def _check_value(n: _Name, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(
            f"sysctl {n.describe()}: the value must be a str or an int, not {type(value).__name__} ({value!r})"
        )
    text = value if isinstance(value, str) else str(int(value))
    if not text.strip():
        raise ConfigError(f"sysctl {n.describe()}: the value is empty")
    bad = next((c for c in text if c != "\t" and not c.isprintable()), None)
    if bad is not None:
        raise ConfigError(
            f"sysctl {n.describe()}: the value {text!r} contains {bad!r}; a value is one line "
            "(no NUL, newline or other control characters; tabs and spaces separate fields)"
        )
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigError(f"sysctl {n.describe()}: the value {text!r} is not valid text") from None
    if size > _VALUE_MAX:
        raise ConfigError(f"sysctl {n.describe()}: the value is {size} bytes long; the kernel takes at most {_VALUE_MAX}")
    return text


def _is_net_global(n: _Name) -> bool:
    return n.name in _NET_GLOBAL or (n.name + ".").startswith(_NET_GLOBAL_PREFIXES)


def _check_name(n: _Name) -> str:
    """The kind ``n`` is set in, after checking it exists and is writable."""
    st = None
    if not _is_net_global(n):  # (those may be missing here, yet are "not namespaced")
        try:
            st = os.stat(n.template())
        except OSError:
            raise ConfigError(_unknown(n)) from None
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"sysctl {n.describe()} is a directory (a group of sysctls), not a sysctl: name one of them")
    kind = _kind_of(n)
    if st is not None and not st.st_mode & 0o222 and n.name not in _WRITABLE_WHEN_CAPABLE:
        raise ConfigError(f"sysctl {n.describe()} is read-only: the kernel only reports it")
    return kind


def _unknown(n: _Name) -> str:
    if n.device is not None:
        where = "neigh/lo" if n.parts[2] == "neigh" else "conf/default"
        return (f"sysctl {n.describe()} is unknown: this kernel has no per-device {n.parts[1]} {n.parts[2]} "
                f"setting {n.parts[4]!r} (see /proc/sys/net/{n.parts[1]}/{where}/)")
    return f"sysctl {n.describe()} is unknown: there is no {n.path} on this kernel"


def _kind_of(n: _Name) -> str:
    """The kind a sysctl is set in, from its name alone; ConfigError if none."""
    if n.parts[0] == "net":
        if _is_net_global(n):
            raise ConfigError(
                f"sysctl {n.describe()} is not namespaced: the kernel keeps one value for the whole host "
                f"(it exists only in the initial network namespace, or is read-only in others); {_SYSCTL_HINT}"
            )
        if n.device == "all" and n.parts[2] == "neigh":
            raise ConfigError(f"sysctl {n.describe()}: neighbour settings have no 'all' entry; name a device of the pod")
        return "net"
    if n.name in _IPC or n.name.startswith(_IPC_PREFIX):
        return "ipc"
    if n.name in _NAMESPACED_ELSEWHERE:
        raise ConfigError(f"sysctl {n.describe()} cannot be set with sysctls=: {_NAMESPACED_ELSEWHERE[n.name]}")
    if n.parts[0] == "user":
        raise ConfigError(
            f"sysctl {n.describe()} is a limit of a user namespace, set by its parent: nsbox does not set it per pod; "
            f"{_SYSCTL_HINT}"
        )
    raise ConfigError(f"sysctl {n.describe()} is not namespaced: setting it would change the whole host; {_SYSCTL_HINT}")


# ---- writing ----------------------------------------------------------------------


def write_sysctls(items: Sequence[tuple[str, str]]) -> None:
    """Write ``items`` (from :func:`check_sysctls`) through /proc/sys, in
    order, in the namespaces of the **calling thread** (it must have joined
    the pod's net and ipc namespaces).

    A refusal names the sysctl, its value and the kernel's reason:
    :class:`ConfigError` when the kernel refused the value (EINVAL, ERANGE, or
    ENOENT from the write) or the sysctl does not exist in this namespace
    (ENOENT from the open: e.g. a device the pod does not have);
    :class:`PrivilegeError` for EACCES/EPERM; :class:`PodStartError` with the
    errno otherwise.  Sysctls before the failed one stay written.
    """
    for name, value in items:
        n = _parse(name)  # the path is built only from a checked name
        if not isinstance(value, str):
            raise ConfigError(f"sysctl {n.describe()}: the value must be a str (from check_sysctls), not {value!r}")
        data = value.encode("utf-8")
        try:
            fd = os.open(n.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise _write_error(n, value, e.errno or errno.EIO, opening=True) from None
        try:
            try:
                written = os.write(fd, data)
            except OSError as e:
                raise _write_error(n, value, e.errno or errno.EIO, opening=False) from None
            if written != len(data):
                raise PodStartError(
                    errno.EIO,
                    f"setting sysctl {n.name}={value!r} failed: the kernel took {written} of {len(data)} bytes",
                )
        finally:
            os.close(fd)


def _write_error(n: _Name, value: str, err: int, *, opening: bool) -> Exception:
    what = f"setting sysctl {n.name}={value!r} failed"
    code = f"{errno.errorcode.get(err, err)}: {os.strerror(err)}"
    if err == errno.ENOENT and opening:
        if n.device is not None:
            return ConfigError(
                f"{what}: it does not exist in this namespace ({code}): the pod has no device {n.device!r} "
                "(name one of the pod's links, e.g. 'lo' or the ifname of its network)"
            )
        return ConfigError(f"{what}: it does not exist in this namespace ({code}); it is not namespaced on this kernel")
    if err == errno.ENOENT:
        return ConfigError(f"{what}: the kernel refused the value: it names something that does not exist ({code})")
    if err == errno.EINVAL:
        return ConfigError(f"{what}: the kernel refused the value ({code}); see the sysctl's documentation for its format")
    if err == errno.ERANGE:
        return ConfigError(f"{what}: the value is out of the range the kernel accepts ({code})")
    if err in (errno.EACCES, errno.EPERM):
        return PrivilegeError(
            err,
            f"{what}: the kernel refused the write ({code}): the sysctl is read-only in this namespace, or "
            "writing it needs a capability (CAP_NET_ADMIN, CAP_SYS_ADMIN) in the namespace's user namespace",
        )
    return PodStartError(err, f"{what}: {code}")
