"""A pod's own ``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf``.

This module writes their content into a host-side directory of the pod's
(they are bind-mounted over the pod's ``/etc`` files); the host's own files
are only ever read.  ``/etc/hosts`` is kubelet's managed file plus the
``hosts=`` entries plus the other pods on the pod's bridges
(:mod:`nsbox.net.names` keeps it current: :func:`refresh_hosts` rewrites it
in place, so the bind mount keeps showing it).  ``/etc/resolv.conf`` is the
``dns=`` settings, or the host's without the loopback nameservers a pod
cannot reach.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from .errors import ConfigError

__all__ = [
    "DNS",
    "PodFiles",
    "check_hosts",
    "check_hostname",
    "hostname_text",
    "hosts_text",
    "resolv_text",
    "refresh_hosts",
    "HOST_RESOLV_CONF",
    "SYSTEMD_RESOLV_CONF",
]

# The host files the default resolv.conf is made from (module constants so
# that tests can point them elsewhere).
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
# systemd-resolved's list of the real upstream servers (what kubelet's
# --resolv-conf is advised to point at when /etc/resolv.conf is its stub).
SYSTEMD_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")

MAX_NAMESERVERS = 3  # glibc MAXNS: later ones are ignored
MAX_SEARCH = 32  # Kubernetes' limits for dnsConfig.searches (glibc >= 2.26 has none)
MAX_SEARCH_CHARS = 2048
_NAME_MAX = 253
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_OPTION = re.compile(r"[A-Za-z0-9_.-]+(?::[^\s#;]+)?\Z")
_NUMERIC_OPTIONS = ("ndots", "timeout", "attempts")

_FILE_MODE = 0o644
_FORMAT = 1  # version of hosts.json

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


# ---- validation -----------------------------------------------------------------


def _address(value: Any, what: str, *, scope: bool = False) -> Address:
    """An IP address from a str or an ``ipaddress`` address (an int is refused:
    ``ip_address(1)`` would be 0.0.0.1)."""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr = value
    elif isinstance(value, str):
        try:
            addr = ipaddress.ip_address(value.strip())
        except ValueError:
            raise ConfigError(f"{what}: {value!r} is not an IP address (e.g. '10.0.0.1' or 'fd00::1')") from None
    else:
        raise ConfigError(f"{what}: an IP address must be a str, not {type(value).__name__} ({value!r})")
    if not scope and getattr(addr, "scope_id", None):
        raise ConfigError(f"{what}: {value!r} has a scope (%zone), which /etc/hosts cannot hold")
    return addr


def _interface_address(value: Any, what: str) -> str:
    """The address of ``value`` (``'10.0.0.2'``, ``'10.0.0.2/24'`` or an
    ``ipaddress`` address/interface), canonical."""
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return str(value.ip)
    if isinstance(value, str) and "/" in value:
        try:
            return str(ipaddress.ip_interface(value).ip)
        except ValueError:
            raise ConfigError(f"{what}: {value!r} is not an IP address") from None
    return str(_address(value, what))


def _sort_key(address: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(address)
    return addr.version, int(addr)


def _check_name(value: Any, what: str) -> str:
    """A DNS-style name: dot-separated labels of 1-63 letters, digits, '-'
    and '_' (not starting or ending with '-'), 253 characters at most."""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a str, not {type(value).__name__} ({value!r})")
    if not value or len(value) > _NAME_MAX:
        raise ConfigError(f"{what} must be 1 to {_NAME_MAX} characters long, got {len(value)}: {value!r}")
    if any(c.isspace() or c == "#" for c in value):
        raise ConfigError(f"{what} must not contain whitespace or '#': {value!r}")
    for label in value.split("."):
        if not _LABEL.match(label):
            raise ConfigError(
                f"{what} {value!r} is not a valid name: each dot-separated part must be 1 to 63 letters, "
                "digits, '-' or '_', not starting or ending with '-'"
            )
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return value
    raise ConfigError(f"{what} {value!r} is an address, not a name")


def check_hostname(hostname: Any, what: str = "hostname") -> str:
    """``hostname`` if it can be a name in ``/etc/hosts`` (RFC 1123 labels,
    '_' allowed, at most 253 characters); else :class:`ConfigError`."""
    return _check_name(hostname, what)


def _strings(value: Any, field: str) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"DNS {field} must be a list, not {type(value).__name__} ({value!r}); e.g. {field}=[...]")
    return tuple(value)


@dataclass(frozen=True)
class DNS:
    """A pod's ``/etc/resolv.conf`` (Kubernetes ``dnsConfig`` with
    ``dnsPolicy: None``): at most 3 ``nameservers`` (IPv4/IPv6), ``search``
    domains (at most 32, 2048 characters in all), resolver ``options``
    (``"rotate"``, ``"ndots:2"``).  Lists are accepted and kept as tuples;
    addresses in canonical form, a trailing dot of a search domain dropped."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        servers: list[str] = []
        for value in _strings(self.nameservers, "nameservers"):
            addr = _address(value, "DNS nameservers", scope=True)
            if addr.is_unspecified or addr.is_multicast:
                raise ConfigError(f"DNS nameservers: {value!r} cannot be a nameserver")
            if str(addr) in servers:
                raise ConfigError(f"DNS nameservers: {value!r} is listed twice")
            servers.append(str(addr))
        if len(servers) > MAX_NAMESERVERS:
            raise ConfigError(
                f"DNS nameservers: at most {MAX_NAMESERVERS} (the resolver ignores the rest), got {len(servers)}: {servers}"
            )
        domains: list[str] = []
        for value in _strings(self.search, "search"):
            if isinstance(value, str) and value.endswith(".") and len(value) > 1:
                value = value[:-1]
            domain = _check_name(value, "DNS search domain")
            if domain in domains:
                raise ConfigError(f"DNS search: {domain!r} is listed twice")
            domains.append(domain)
        if len(domains) > MAX_SEARCH:
            raise ConfigError(f"DNS search: at most {MAX_SEARCH} domains, got {len(domains)}")
        if len(" ".join(domains)) > MAX_SEARCH_CHARS:
            raise ConfigError(f"DNS search: at most {MAX_SEARCH_CHARS} characters in all, got {len(' '.join(domains))}")
        options: list[str] = []
        names: set[str] = set()
        for value in _strings(self.options, "options"):
            if not isinstance(value, str) or not _OPTION.match(value):
                raise ConfigError(
                    f"DNS options: {value!r} is not a resolver option: 'name' or 'name:value' "
                    "without whitespace, '#' or ';' (e.g. 'rotate', 'ndots:2')"
                )
            name, _, arg = value.partition(":")
            if name in _NUMERIC_OPTIONS and not arg.isdigit():
                raise ConfigError(f"DNS options: {value!r} needs a number, e.g. '{name}:2'")
            if name in names:
                raise ConfigError(f"DNS options: {name!r} is given twice ({value!r})")
            names.add(name)
            options.append(value)
        object.__setattr__(self, "nameservers", tuple(servers))
        object.__setattr__(self, "search", tuple(domains))
        object.__setattr__(self, "options", tuple(options))

    def to_dict(self) -> dict[str, Any]:
        return {"nameservers": list(self.nameservers), "search": list(self.search), "options": list(self.options)}

    @classmethod
    def from_dict(cls, data: Any) -> "DNS":
        if not isinstance(data, Mapping):
            raise ConfigError(f"DNS settings must be a mapping, not {type(data).__name__} ({data!r})")
        unknown = sorted(set(data) - {"nameservers", "search", "options"})
        if unknown:
            raise ConfigError(f"unknown DNS field(s): {', '.join(map(str, unknown))} (known: nameservers, search, options)")
        return cls(
            nameservers=_strings(data.get("nameservers"), "nameservers"),
            search=_strings(data.get("search"), "search"),
            options=_strings(data.get("options"), "options"),
        )


def check_hosts(hosts: Any) -> tuple[tuple[str, str], ...]:
    """``hosts=``: ``{hostname: address}`` (Kubernetes ``hostAliases`` as a
    mapping; an address a str or an ``ipaddress`` address), as a sorted
    tuple of ``(name, canonical address)``.  ``None`` is no entries."""
    if hosts is None:
        return ()
    if not isinstance(hosts, Mapping):
        raise ConfigError(
            f"hosts must be a mapping {{hostname: address}}, not {type(hosts).__name__} ({hosts!r}); "
            "e.g. hosts={'db.test': '10.201.0.9'}"
        )
    out = []
    for name, address in hosts.items():
        if isinstance(address, (list, tuple, set)):
            raise ConfigError(
                f"hosts: {name!r} maps to {address!r}; hosts= maps each name to one address "
                "({hostname: address}), list several names as several keys"
            )
        out.append((_check_name(name, "hosts name"), str(_address(address, f"hosts[{name!r}]"))))
    return tuple(sorted(out))


# ---- the files' content -------------------------------------------------------------


def hostname_text(hostname: str) -> str:
    """``/etc/hostname``: the name and a newline."""
    if not isinstance(hostname, str) or not hostname or any(c.isspace() or not c.isprintable() for c in hostname):
        raise ConfigError(f"hostname must be a non-empty str without whitespace: {hostname!r}")
    return hostname + "\n"


# What kubelet writes above a pod's own entries (pkg/kubelet managedHostsFileContent).
_LOCALHOST = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)
_NO_ADDRESS = "127.0.1.1"  # a host name without an address, as Debian's installer writes it
_EXTRA_HEADER = "\n# Entries added by hosts=.\n"
_PEERS_HEADER = "\n# Other pods on the same bridge(s).\n"


def _grouped(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``(name, address)`` pairs as ``(address, line)``, one line per
    address (its names sorted), in address order."""
    names: dict[str, set[str]] = {}
    for name, address in pairs:
        names.setdefault(address, set()).add(name)
    return [(a, f"{a}\t" + "\t".join(sorted(names[a])) + "\n") for a in sorted(names, key=_sort_key)]


class _PeerBlock:
    """The peers section, rendered once per set of peers; each pod's file
    then cuts its own addresses' lines out (a slice, not a re-render, so a
    refresh of N files costs N copies of the text, not N renders)."""

    def __init__(self, peers: Iterable[tuple[str, str]]):
        self.spans: dict[str, tuple[int, int]] = {}
        parts = []
        pos = 0
        for address, line in _grouped(peers):
            self.spans[address] = (pos, pos + len(line))
            parts.append(line)
            pos += len(line)
        self.text = "".join(parts)

    def without(self, addresses: Iterable[str]) -> str:
        cuts = sorted(self.spans[a] for a in set(addresses) if a in self.spans)
        if not cuts:
            return self.text
        out, pos = [], 0
        for start, end in cuts:
            out.append(self.text[pos:start])
            pos = end
        out.append(self.text[pos:])
        return "".join(out)


def _head(hostname: str, addresses: Sequence[str], extra: Sequence[tuple[str, str]]) -> str:
    """Everything of ``/etc/hosts`` but the peers section (arguments validated)."""
    name = _check_name(hostname, "hostname (for /etc/hosts)")
    own = [_interface_address(a, "pod address") for a in addresses]
    return _render_head(name, own, _pairs(extra, "hosts"))


def _pairs(pairs: Iterable[tuple[str, str]], what: str) -> list[tuple[str, str]]:
    """Validated, canonical ``(name, address)`` pairs."""
    try:
        return [(_check_name(n, f"{what} name"), str(_address(a, f"{what}[{n!r}]"))) for n, a in pairs]
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{what} must be (name, address) pairs, not {pairs!r}") from None


def _render_head(hostname: str, addresses: Sequence[str], extra: Sequence[tuple[str, str]]) -> str:
    """:func:`_head` of arguments known to be valid and canonical."""
    text = (f"# /etc/hosts of pod {hostname}, generated by nsbox; it is rewritten as pods on its bridges "
            "start and stop, changes made here are lost.\n") + _LOCALHOST
    text += "".join(f"{a}\t{hostname}\n" for a in dict.fromkeys(addresses or [_NO_ADDRESS]))
    if extra:
        text += _EXTRA_HEADER + "".join(line for _, line in _grouped(extra))
    return text


def _with_peers(head: str, peers_text: str) -> str:
    return head + _PEERS_HEADER + peers_text if peers_text else head


def hosts_text(hostname: str, addresses: Sequence[str], extra: Sequence[tuple[str, str]],
               peers: Sequence[tuple[str, str]]) -> str:
    """``/etc/hosts`` of a pod: kubelet's localhost lines; ``hostname`` at
    each of the pod's ``addresses`` (none: 127.0.1.1); the ``extra``
    (``hosts=``) entries, one line per address; the ``peers``
    (``(hostname, address)`` of the other pods on its bridges), without the
    pod's own addresses.  Addresses may carry a prefix (``10.0.0.2/24``)."""
    own = [_interface_address(a, "pod address") for a in addresses]
    return _with_peers(_head(hostname, addresses, extra), _PeerBlock(_pairs(peers, "peers")).without(own))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _nameserver(line: str) -> Optional[str]:
    fields = line.split()
    return fields[1] if len(fields) >= 2 and fields[0] == "nameserver" else None


def resolv_text(dns: Optional[DNS]) -> str:
    """``/etc/resolv.conf`` of a pod: exactly ``dns`` if given.  Else the
    host's (:data:`HOST_RESOLV_CONF`) without loopback nameservers
    (127.0.0.0/8, ::1: in the pod's network namespace nothing listens
    there); if that leaves none, the nameservers of systemd-resolved's
    :data:`SYSTEMD_RESOLV_CONF`, if it exists.  ``search``, ``domain``,
    ``options`` and ``sortlist`` lines are kept, comments dropped."""
    if dns is not None:
        if not isinstance(dns, DNS):
            raise ConfigError(f"dns must be an nsbox.DNS, not {type(dns).__name__} ({dns!r})")
        lines = [f"nameserver {ns}" for ns in dns.nameservers]
        if dns.search:
            lines.append("search " + " ".join(dns.search))
        if dns.options:
            lines.append("options " + " ".join(dns.options))
        return "# /etc/resolv.conf of an nsbox pod, from its dns= settings.\n" + "".join(f"{line}\n" for line in lines)
    servers: list[str] = []
    rest: list[str] = []
    dropped: list[str] = []
    for line in _read_lines(HOST_RESOLV_CONF):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        ns = _nameserver(line)
        if ns is None:
            if line.split()[0] in ("search", "domain", "options", "sortlist"):
                rest.append(line)
        elif _is_loopback(ns):
            dropped.append(ns)
        else:
            servers.append(ns)
    header = f"# /etc/resolv.conf of an nsbox pod, from the host's {HOST_RESOLV_CONF}"
    if dropped:
        header += f" without loopback nameservers ({', '.join(dropped)})"
    if not servers and SYSTEMD_RESOLV_CONF.exists():
        servers = [ns for ns in map(_nameserver, _read_lines(SYSTEMD_RESOLV_CONF)) if ns and not _is_loopback(ns)]
        if servers:
            header += f", nameservers from {SYSTEMD_RESOLV_CONF}"
    text = header + ".\n"
    if not servers:
        text += "# No nameserver of the host is reachable from a pod: pass dns=nsbox.DNS(nameservers=[...]).\n"
    return text + "".join(f"nameserver {ns}\n" for ns in servers) + "".join(f"{line}\n" for line in rest)


# ---- the files on the host side -------------------------------------------------------


def _write_new(path: Path, data: bytes) -> None:
    """Write ``path`` whole: in place if it exists (it may be bind-mounted
    somewhere: a rename would leave the mount showing the old inode), else
    created by tmp + rename."""
    if path.exists() and _rewrite(path, data):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)  # (not the umask's)
        _write_all(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        pos += os.pwrite(fd, view[pos:], pos)


def _rewrite(path: Union[str, Path], data: bytes) -> bool:
    """Overwrite ``path`` in place (same inode): write it all, then cut it to
    length.  False if it is gone.  A reader at that moment may see the old
    file's tail after the new text, or the new text cut short (glibc reads
    /etc/hosts afresh for each lookup: a lookup racing a refresh, only)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        _write_all(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    return True


@dataclass(frozen=True)
class _HostsInfo:
    """What ``dir/hosts.json`` keeps: enough to render ``dir/hosts`` again
    from another process."""

    hostname: str
    addresses: tuple[str, ...]
    bridges: tuple[str, ...]
    extra: tuple[tuple[str, str], ...]

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, "hostname": self.hostname, "addresses": list(self.addresses),
                           "bridges": list(self.bridges), "extra": [list(e) for e in self.extra]}, sort_keys=True)

    @classmethod
    def load(cls, dir: Union[str, Path]) -> Optional["_HostsInfo"]:
        """The info of the pod whose files are in ``dir``, or None if gone
        (or unreadable: then its hosts file is left as it is)."""
        try:
            with open(os.path.join(dir, "hosts.json"), "rb") as f:
                data = json.loads(f.read())
            return cls(data["hostname"], tuple(data["addresses"]), tuple(data["bridges"]),
                       tuple((n, a) for n, a in data["extra"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class PodFiles:
    """The host side of a pod's ``/etc/hostname``, ``/etc/hosts`` and
    ``/etc/resolv.conf``: files in ``dir`` (plus ``hosts.json``, from which
    :func:`refresh_hosts` renders ``hosts`` again in any process)."""

    dir: Path

    NAMES = {"/etc/hostname": "hostname", "/etc/hosts": "hosts", "/etc/resolv.conf": "resolv.conf"}

    @classmethod
    def write(cls, dir: Path, *, hostname: str, addresses: Sequence[str], bridges: Sequence[str],
              extra: Sequence[tuple[str, str]], dns: Optional[DNS],
              peers: Sequence[tuple[str, str]] = ()) -> "PodFiles":
        """Create ``dir`` (if needed) and ``dir/hostname``, ``dir/hosts``,
        ``dir/resolv.conf`` (mode 0644) and ``dir/hosts.json``.  ``hosts``
        lists ``peers`` (none by default: :func:`nsbox.net.names.join`
        refreshes it with the pod's bridges' peers).  Existing files are
        rewritten in place.  Raises :class:`ConfigError` for a hostname
        ``/etc/hosts`` cannot hold (see :func:`check_hostname`)."""
        dir = Path(dir)
        own = tuple(dict.fromkeys(_interface_address(a, "pod address") for a in addresses))
        extra = check_hosts(dict(extra))
        info = _HostsInfo(check_hostname(hostname), own, tuple(str(b) for b in bridges), extra)
        texts = {
            "hostname": hostname_text(hostname),
            "hosts": hosts_text(hostname, own, extra, peers),
            "resolv.conf": resolv_text(dns),
        }
        dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        for name, text in texts.items():
            _write_new(dir / name, text.encode())
        tmp = dir / ".hosts.json.tmp"
        tmp.write_text(info.to_json())
        os.replace(tmp, dir / "hosts.json")
        return cls(dir)

    @property
    def paths(self) -> dict[str, Path]:
        """``{path in the pod: file on the host}``, for the bind mounts."""
        return {target: self.dir / name for target, name in self.NAMES.items()}

    def refresh(self, peers: Sequence[tuple[str, str]]) -> None:
        refresh_hosts(self.dir, peers)


def _refresh(dir: Union[str, Path], info: _HostsInfo, block: _PeerBlock) -> None:
    """Rewrite ``dir/hosts`` in place (``info`` as :meth:`PodFiles.write` saved it: valid)."""
    text = _with_peers(_render_head(info.hostname, info.addresses, info.extra), block.without(info.addresses))
    _rewrite(os.path.join(dir, "hosts"), text.encode())


def refresh_hosts(dir: Path, peers: Sequence[tuple[str, str]]) -> None:
    """Render ``dir/hosts`` again with ``peers`` (``(hostname, address)``;
    the pod's own addresses are left out), in place: the same inode, which
    is what the pod's bind mount shows.  Nothing happens if the pod's
    directory (or its ``hosts.json``) is gone."""
    dir = Path(dir)
    info = _HostsInfo.load(dir)
    block = _PeerBlock(_pairs(peers, "peers"))
    if info is not None:
        _refresh(dir, info, block)
