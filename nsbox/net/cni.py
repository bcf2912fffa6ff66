"""CNI: wire a pod with the real CNI plugins (the CNI spec 1.0.0).

``nsbox.CNI(conflist)`` is a network like :class:`~nsbox.Veth` and
:class:`~nsbox.Bridge`, but what it makes is made by the plugins a CNI
network configuration list names (``bridge`` + ``host-local``, ``ptp``,
``portmap``, ...), executed as a container runtime executes them: ``ADD``
of each plugin in order when the pod starts (each given the previous one's
result), ``DEL`` in reverse when it stops, ``CHECK`` on request
(:meth:`nsbox.Pod.cni_check`), ``VERSION`` before the first use of a plugin.

Every attachment has a state directory, ``$NSBOX_RUN_DIR/cni/<container
id>/``, made before anything else and removed after its ``DEL``:

- ``netns``: a bind mount of the pod's network namespace (the pin).  It is
  what ``CNI_NETNS`` names, never ``/proc/PID/ns/net``: a PID can be reused
  by another process, the pin cannot.  The pin keeps the namespace (and the
  interfaces the plugins made in it) alive after the holder has died, so
  ``DEL`` always finds what ``ADD`` made.
- ``state.json``: the exact configuration, arguments and result ``ADD``
  used, with the holder's identity ``(pid, start time)``; enough for any
  process to replay ``DEL`` (:func:`sweep`, run by :func:`nsbox.gc`).
- the directory itself is ``flock``-ed by whoever runs ``ADD`` or ``DEL``:
  ``ADD`` and ``DEL`` of one attachment never overlap, and a second ``DEL``
  finds nothing left to do.

The ``cni`` directory is a shared mount point of its own while a pin is in
it (as ``/run/nsbox/pods``), so pins appear in the mount namespaces that
copied it.
"""
from __future__ import annotations

import copy
import errno
import fcntl
import ipaddress
import json
import logging
import os
import re
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from .. import _proc, _syscalls
from ..errors import ConfigError, NetworkError
from . import rtnl as rt
from . import teardown
from .attachment import Attachment
from .network import NetworkConfig
from .ports import parse_ports
from .rundir import locked, prune, run_dir, share, unshare
from .shaping import Shaping
from .validate import check_ifname

__all__ = ["CNI", "CNIAttachment", "CNIError", "sweep", "DEFAULT_PATH", "SUPPORTED_VERSIONS"]

log = logging.getLogger("nsbox")

# The spec versions nsbox executes (the commands and result format are the same
# for these; CHECK needs 0.4.0 or later).
SUPPORTED_VERSIONS = ("1.0.0", "0.4.0", "0.3.1", "0.3.0")
# Where plugins are looked for without path= or $CNI_PATH (Debian: /usr/lib/cni).
DEFAULT_PATH = ("/opt/cni/bin", "/usr/lib/cni", "/usr/libexec/cni")
# How long one plugin may run.
PLUGIN_TIMEOUT = 60.0
RECORD_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class CNIError(NetworkError):
    """A CNI plugin failed.  ``plugin`` (its type), ``command`` (ADD, DEL,
    CHECK, VERSION), and the error it reported: ``code`` (the spec's error
    code; None if it printed no error object), ``msg`` and ``details``."""

    __module__ = "nsbox"
    plugin: str = ""
    command: str = ""
    code: Optional[int] = None
    msg: str = ""
    details: str = ""


def _plugin_error(plugin: str, command: str, code: Optional[int], msg: str, details: str = "",
                  err: int = errno.EIO) -> CNIError:
    text = f"CNI plugin {plugin!r} failed {command}: {msg}"
    if code is not None:
        text += f" (code {code})"
    if details:
        text += f": {details}"
    e = CNIError(err, text)
    e.plugin, e.command, e.code, e.msg, e.details = plugin, command, code, msg, details
    return e


# ---- the configuration ------------------------------------------------------------------


def _load_conflist(conflist: Any) -> dict[str, Any]:
    """A conflist given as a dict, JSON text or a path, as a fresh dict."""
    if isinstance(conflist, Mapping):
        try:
            data = json.loads(json.dumps(conflist))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"a CNI configuration must be JSON-able: {e}") from None
        return data
    if isinstance(conflist, os.PathLike) or (isinstance(conflist, str) and not conflist.lstrip().startswith("{")):
        path = os.fspath(conflist)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read the CNI configuration {path}: {e.strerror}") from None
        where = path
    elif isinstance(conflist, str):
        text, where = conflist, "the CNI configuration"
    else:
        raise ConfigError(f"a CNI configuration must be a dict, JSON text or a .conflist path, not {conflist!r}")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{where} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, not {type(data).__name__}")
    return data


def _check_conflist(data: dict[str, Any]) -> dict[str, Any]:
    """Validate a network configuration list (a single plugin's
    configuration, as a ``.conf`` file holds, becomes a list of one)."""
    if "plugins" not in data and "type" in data:  # a single-plugin .conf
        plugin = {k: v for k, v in data.items() if k not in ("cniVersion", "name", "disableCheck")}
        data = {k: data[k] for k in ("cniVersion", "name", "disableCheck") if k in data} | {"plugins": [plugin]}
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"a CNI configuration needs a 'name' (letters, digits, '_', '.', '-'), not {name!r}")
    what = f"CNI network {name!r}"
    version = data.get("cniVersion")
    if version is None:
        raise ConfigError(f"{what} has no 'cniVersion'")
    versions = data.get("cniVersions")
    if versions is not None:
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise ConfigError(f"{what}: 'cniVersions' must be a list of version strings, not {versions!r}")
        usable = [v for v in SUPPORTED_VERSIONS if v in versions]
        if usable:
            version = usable[0]
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise ConfigError(f"{what}: unsupported cniVersion {version!r}; nsbox executes "
                          f"{', '.join(SUPPORTED_VERSIONS)}")
    data["cniVersion"] = version
    if not isinstance(data.get("disableCheck", False), bool):
        raise ConfigError(f"{what}: 'disableCheck' must be true or false")
    plugins = data.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise ConfigError(f"{what} has no plugins ('plugins' must be a non-empty list)")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise ConfigError(f"{what}: plugin {i} must be an object, not {plugin!r}")
        kind = plugin.get("type")
        if not isinstance(kind, str) or not kind or "/" in kind or kind in (".", ".."):
            raise ConfigError(f"{what}: plugin {i} needs a 'type' (the plugin's executable name), not {kind!r}")
        caps = plugin.get("capabilities", {})
        if not isinstance(caps, dict):
            raise ConfigError(f"{what}: plugin {i} ({kind}): 'capabilities' must be an object")
    return data


def _check_path(path: Any) -> Optional[list[str]]:
    if path is None:
        return None
    items = path.split(":") if isinstance(path, str) else list(path) if isinstance(path, Iterable) else None
    if items is None or not all(isinstance(p, (str, os.PathLike)) for p in items):
        raise ConfigError(f"path must be a list of directories (or 'dir1:dir2'), not {path!r}")
    out = [os.fspath(p) for p in items if os.fspath(p)]
    if not out:
        raise ConfigError("path must name at least one directory")
    return out


def _check_args(args: Any) -> dict[str, str]:
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"args must be a mapping of CNI_ARGS keys to values, not {args!r}")
    out = {}
    for k, v in args.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or any(c in k + v for c in ";=\0"):
            raise ConfigError(f"CNI args must be strings without ';', '=' or NUL: {k!r}={v!r}")
        out[k] = v
    return out


class CNI(NetworkConfig):
    """A network made by CNI plugins, from a network configuration list.

    ::

        net = nsbox.CNI({
            "cniVersion": "1.0.0", "name": "podnet",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]})
        with nsbox.Pod(network=net, ports={8080: 80}) as pod:
            pod.address          # from the result: IPv4Interface('10.88.0.2/16')
            pod.cni_result       # the result of the last plugin's ADD

    ``conflist`` is a dict, JSON text or the path of a ``.conflist`` (a
    single plugin's ``.conf`` works too).  ``ifname`` is ``CNI_IFNAME``
    (default ``eth0``; ``"lo"`` for a network of the ``loopback`` plugin).  ``path`` lists the directories plugins are looked
    for in (and is ``CNI_PATH``); default ``$CNI_PATH`` if set, else
    /opt/cni/bin, /usr/lib/cni, /usr/libexec/cni.  ``args`` are extra
    ``CNI_ARGS`` (``K8S_POD_NAME`` is set for a named pod).

    The pod's ``ports=`` go to the plugins that declare the ``portMappings``
    capability (``runtimeConfig.portMappings``), e.g. ``portmap``.  Link
    shaping is the ``bandwidth`` plugin's job here, not ``pod.shape()``.
    """

    KIND = "cni"

    def __init__(self, conflist: Any, *, ifname: str = "eth0", path: Any = None, args: Any = None):
        self.conflist = _check_conflist(_load_conflist(conflist))
        # ("lo" is CNI_IFNAME for the loopback plugin's network)
        self.ifname = ifname if ifname == "lo" else check_ifname(ifname, "ifname")
        self.path = _check_path(path)
        self.args = _check_args(args)

    @property
    def name(self) -> str:
        """The network's name (the conflist's)."""
        return str(self.conflist["name"])

    def __repr__(self) -> str:
        types = "+".join(p["type"] for p in self.conflist["plugins"])
        return f"CNI({self.name!r}, plugins={types!r}, ifname={self.ifname!r})"

    def to_dict(self) -> dict[str, Any]:
        """The configuration, JSON-able: ``network_from_dict()`` makes an equal CNI."""
        return {"type": self.KIND, "conflist": copy.deepcopy(self.conflist), "ifname": self.ifname,
                "path": None if self.path is None else list(self.path), "args": dict(self.args)}

    def check_publishable(self) -> None:
        """Ports go to the plugins declaring the ``portMappings`` capability."""
        if not any(p.get("capabilities", {}).get("portMappings") is True for p in self.conflist["plugins"]):
            raise ConfigError(f"ports= with CNI network {self.name!r} needs a plugin with the portMappings "
                              'capability in its conflist, e.g. {"type": "portmap", "capabilities": '
                              '{"portMappings": true}}')

    def search_path(self) -> list[str]:
        """The directories plugins are looked for in."""
        if self.path is not None:
            return list(self.path)
        env = os.environ.get("CNI_PATH")
        if env:
            return [p for p in env.split(":") if p]
        return list(DEFAULT_PATH)

    def attach(self, pod_netns_fd: int, holder_pid: int, *, primary: bool = True,
               ports: Sequence[tuple[str, int, int]] = (), pod_name: Optional[str] = None) -> "CNIAttachment":
        """Run ``ADD`` of every plugin for the pod whose network namespace
        is ``pod_netns_fd`` (pinned first); on failure, ``DEL`` of every
        plugin in reverse, and nothing is left behind.  ``ports``: the pod's
        ``ports=`` (for ``runtimeConfig.portMappings``); ``pod_name``: for
        ``CNI_ARGS``.  (``primary`` changes nothing: the plugins decide the
        routes.)"""
        owner = _proc.owner(holder_pid)
        if owner is None:
            raise NetworkError(errno.ESRCH, "the pod's holder exited while its network was being set up")
        path = self.search_path()
        binaries = [_find_plugin(p["type"], path) for p in self.conflist["plugins"]]
        for plugin, binary in zip(self.conflist["plugins"], binaries, strict=True):
            _check_version(plugin["type"], binary, self.conflist["cniVersion"], path)
        containerid = f"nsbox-{holder_pid}-{secrets.token_hex(4)}"
        cni_args = dict(self.args)
        if pod_name is not None:
            cni_args = {"K8S_POD_NAMESPACE": "nsbox", "K8S_POD_NAME": pod_name,
                        "K8S_POD_INFRA_CONTAINER_ID": containerid, **cni_args}
        args = ";".join(["IgnoreUnknown=1", *(f"{k}={v}" for k, v in cni_args.items())]) if cni_args else ""
        runtime: dict[str, Any] = {}
        if ports:
            runtime["portMappings"] = [{"hostPort": h, "containerPort": c, "protocol": proto}
                                       for proto, h, c in parse_ports({f"{h}/{proto}": c for proto, h, c in ports})]
        host_id = _thread_netns_id()
        home = host_id[1] == rt.HOME_INO
        att = CNIAttachment(
            ifname=self.ifname, host_ifname="", containerid=containerid, network=self.name,
            conflist=copy.deepcopy(self.conflist), path=path, cni_args=args, runtime=runtime,
            ports=[(str(p[0]), int(p[1]), int(p[2])) for p in ports], holder=owner, creator=_proc.owner(os.getpid()),
            host_netns_id=host_id,
        )
        att.state_dir = str(_cni_dir() / containerid)
        att.netns = str(Path(att.state_dir) / "netns")
        if home:
            att.host_netns = rt.shared().netns_fd
        else:  # a nested pod: our own fd on this thread's namespace, closed at detach
            att.host_netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            att.owns_host_netns = True
        try:
            att._add(pod_netns_fd)
        except BaseException:
            if att.owns_host_netns:
                os.close(att.host_netns)
                att.host_netns, att.owns_host_netns = -1, False
            raise
        return att


# ---- what was made: the attachment -----------------------------------------------------


@dataclass(eq=False)
class CNIAttachment(Attachment):
    """What CNI plugins made for one pod: replayable (``DEL``) from its
    record in any process of the namespace the plugins ran in.

    ``result`` is the final result of ``ADD``; ``address`` (the pod's
    primary address), ``host_address`` (its gateway), ``host_ifname`` and
    ``route_ifname`` (the host-side interfaces the result lists) are read
    from it."""

    HAS_LINK = False

    containerid: str = ""
    network: str = ""
    conflist: dict[str, Any] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)
    cni_args: str = ""
    runtime: dict[str, Any] = field(default_factory=dict)
    ports: list[tuple[str, int, int]] = field(default_factory=list)
    holder: tuple[int, int] = (0, 0)
    creator: Optional[tuple[int, int]] = None
    result: Optional[dict[str, Any]] = None
    state_dir: str = ""
    netns: str = ""  # the pin: CNI_NETNS

    # ---- ADD ------------------------------------------------------------------

    def _add(self, pod_netns_fd: int) -> None:
        """Pin, write the state, ADD every plugin; on failure DEL them all
        (in reverse) and remove the state.  (The state directory is locked
        throughout.)"""
        sdir = Path(self.state_dir)
        with locked():
            _share_cni_dir()
            sdir.mkdir(mode=0o700)
            fd = os.open(sdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)  # (new: nobody else has it; gc skips it from now on)
        try:
            try:
                Path(self.netns).touch(mode=0o444)
                _syscalls.bind_mount(f"/proc/self/fd/{pod_netns_fd}", self.netns)
                self._save()
            except OSError as e:
                self._remove_state()
                raise NetworkError(e.errno or errno.EIO,
                                   f"pinning the pod's network namespace at {self.netns}: {e.strerror}") from None
            prev: Optional[dict[str, Any]] = None
            try:
                for plugin in self.conflist["plugins"]:
                    out = self._exec("ADD", plugin, prev)
                    if out is None:
                        raise _plugin_error(plugin["type"], "ADD", None, "it printed no result")
                    prev = out
                self.result = prev
                self._read_result()
                self._save()
            except BaseException as e:
                try:
                    self._del_plugins()
                    self._remove_state()
                except Exception as d:  # kept for gc (the pin and the state stay)
                    e.add_note(f"and DEL after the failed ADD failed too (left for nsbox.gc()): {d}")
                raise
        finally:
            os.close(fd)

    def _read_result(self) -> None:
        """address, host_address, host_ifname, route_ifname from the result."""
        res = self.result or {}
        ifaces = res.get("interfaces") or []
        host = [i.get("name", "") for i in ifaces if isinstance(i, dict) and not i.get("sandbox")]
        if host:
            self.route_ifname, self.host_ifname = host[0], host[-1]
        best = None
        for ip in res.get("ips") or []:
            if not isinstance(ip, dict) or "address" not in ip:
                continue
            try:
                addr = ipaddress.ip_interface(ip["address"])
            except ValueError:
                continue
            idx = ip.get("interface")
            on_ours = (isinstance(idx, int) and 0 <= idx < len(ifaces) and isinstance(ifaces[idx], dict)
                       and ifaces[idx].get("name") == self.ifname and bool(ifaces[idx].get("sandbox")))
            if addr.ip.is_loopback:
                continue  # (the loopback plugin's: not the pod's address)
            rank = 0 if on_ours else 1
            if best is None or rank < best[0]:
                best = (rank, addr, ip.get("gateway"))
        if best is not None:
            self.address = best[1]
            gw = best[2]
            if gw:
                try:
                    self.host_address = ipaddress.ip_interface(f"{gw}/{best[1].network.prefixlen}")
                except ValueError:
                    pass

    # ---- CHECK -------------------------------------------------------------------

    def check(self) -> None:
        """``CHECK`` of every plugin, in order, with the result of ``ADD``:
        raises :class:`CNIError` if a plugin finds the attachment is not as
        it made it (e.g. an address was removed).  Nothing is done when the
        conflist says ``disableCheck``.  Needs cniVersion 0.4.0 or later."""
        if self.detached:
            raise NetworkError(errno.ENOENT, f"the CNI attachment {self.containerid} was torn down")
        if self.conflist.get("disableCheck"):
            return
        if self.conflist["cniVersion"] in ("0.3.0", "0.3.1"):
            raise ConfigError(f"CHECK needs cniVersion 0.4.0 or later; network {self.network!r} is "
                              f"{self.conflist['cniVersion']}")
        for plugin in self.conflist["plugins"]:
            try:
                self._exec("CHECK", plugin, self.result)
            except CNIError as e:
                if not self._portmap_819(plugin, e):
                    raise

    def _portmap_819(self, plugin: dict[str, Any], e: CNIError) -> bool:
        """portmap <= 1.1.1 fails CHECK of an IPv4-only pod whenever
        ip6tables is usable: it looks for its IPv6 chain, which ADD never
        made (containernetworking/plugins#819).  True (ignore the error)
        only for exactly that: portmap, no IPv6 address in the result, and
        the error naming the missing chain of ip6tables."""
        if plugin.get("type") != "portmap":
            return False
        ips = [ip.get("address", "") for ip in (self.result or {}).get("ips") or [] if isinstance(ip, dict)]
        if any(":" in a for a in ips):
            return False
        text = f"{e.msg} {e.details}".lower()
        if "ipv6" in text or "ip6tables" in text:  # (portmap: "could not check ipv6 dnat: ...")
            log.debug("ignoring portmap's CHECK failure on an IPv4-only pod (plugins#819): %s", e)
            return True
        return False

    # ---- DEL -----------------------------------------------------------------

    def _del_plugins(self) -> None:
        """``DEL`` of every plugin, in reverse, with the result of ``ADD``
        (none after a failed ADD); stops at the first error, as the spec
        says.  A netns no longer pinned is given as "" (the plugins then
        release what lives outside it)."""
        netns = self.netns if _is_pinned(self.netns) else ""
        for plugin in reversed(self.conflist["plugins"]):
            self._exec("DEL", plugin, self.result, netns=netns)

    def detach(self, wait: float = 0.0, link_gone: bool = False) -> None:
        """``DEL`` of every plugin (in reverse), then remove the pin and the
        state; idempotent, and a no-op if another process did it."""
        if self.detached:
            return
        _teardown(self.state_dir, lambda state: self._del_plugins())
        self.detached = True
        if self.owns_host_netns:
            os.close(self.host_netns)
            self.host_netns, self.owns_host_netns = -1, False

    def detach_later(self) -> None:
        """``DEL`` in nsbox's background teardown thread (the pin keeps the
        namespace for it); synchronous for plugins that ran in another
        namespace than the process's own."""
        if self.detached:
            return
        if rt.shared_in(self.host_netns) is None:
            self.detach()
        else:
            teardown.defer(self)

    # ---- running a plugin ------------------------------------------------------

    def _exec(self, command: str, plugin: dict[str, Any], prev: Optional[dict[str, Any]],
              netns: Optional[str] = None) -> Optional[dict[str, Any]]:
        conf = {k: v for k, v in plugin.items() if k not in ("capabilities", "runtimeConfig")}
        conf["cniVersion"] = self.conflist["cniVersion"]
        conf["name"] = self.conflist["name"]
        caps = plugin.get("capabilities") or {}
        runtime = dict(plugin.get("runtimeConfig") or {})
        runtime.update({k: v for k, v in self.runtime.items() if caps.get(k) is True})
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env.update(CNI_COMMAND=command, CNI_CONTAINERID=self.containerid,
                   CNI_NETNS=self.netns if netns is None else netns, CNI_IFNAME=self.ifname,
                   CNI_ARGS=self.cni_args, CNI_PATH=":".join(self.path))
        binary = _find_plugin(plugin["type"], self.path)
        fd = self._other_netns()
        if fd is None:
            return _run_plugin(plugin["type"], binary, command, conf, env)
        return _in_netns(fd, lambda: _run_plugin(plugin["type"], binary, command, conf, env))

    def _other_netns(self) -> Optional[int]:
        """Plugins run in the namespace ADD ran in: None if the calling
        thread is in it, else an fd on it (for a helper thread to enter:
        never code between fork and exec, which is unsafe with threads)."""
        if _thread_netns_id() == self.host_netns_id:
            return None
        if self.host_netns < 0:
            raise NetworkError(errno.ENOENT, f"the network namespace the CNI plugins of {self.containerid} ran in "
                               f"(net:[{self.host_netns_id[1]}]) is not this process's")
        return self.host_netns

    def _save(self) -> None:
        tmp = Path(self.state_dir) / ".state.json.tmp"
        tmp.write_text(json.dumps(self.to_record(), sort_keys=True))
        os.replace(tmp, Path(self.state_dir) / "state.json")

    def _remove_state(self) -> None:
        _remove_state_dir(self.state_dir)

    # ---- not for CNI networks ----------------------------------------------------

    def shape(self, shaping: Shaping, pod_netns_fd: int) -> None:
        raise ConfigError(f"the link of CNI network {self.network!r} is the plugins': shape it with the "
                          "bandwidth plugin in the conflist, not pod.shape()")

    def apply_shaping(self, shaping: Shaping, pod_netns_fd: int) -> None:
        self.shape(shaping, pod_netns_fd)

    def publish(self, owner: Any, ports: list[tuple[str, int, int]], *, kernel_owned: bool = True) -> None:
        """Ports of a CNI network were given to its plugins at ``ADD``
        (``runtimeConfig.portMappings``): only checks they are these."""
        if sorted(tuple(p) for p in ports) != sorted(self.ports):
            raise ConfigError(f"the ports of CNI network {self.network!r} are given to its plugins at ADD "
                              "(the pod's ports=); they cannot be published afterwards")

    # ---- records ---------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "kind": "cni",
            "ifname": self.ifname,
            "containerid": self.containerid,
            "network": self.network,
            "conflist": self.conflist,
            "path": self.path,
            "args": self.cni_args,
            "runtime": self.runtime,
            "ports": [list(p) for p in self.ports],
            "holder": list(self.holder),
            "creator": None if self.creator is None else list(self.creator),
            "result": self.result,
            "state_dir": self.state_dir,
            "netns": self.netns,
            "host_netns": list(self.host_netns_id),
            "detached": self.detached,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "CNIAttachment":
        if record.get("version") != RECORD_VERSION or record.get("kind") != "cni":
            raise ConfigError(f"unknown CNI attachment record (version {record.get('version')!r})")
        dev, ino = record["host_netns"]
        att = cls(
            ifname=record["ifname"], host_ifname="", containerid=record["containerid"], network=record["network"],
            conflist=record["conflist"], path=list(record["path"]), cni_args=record["args"],
            runtime=record["runtime"], ports=[(p[0], int(p[1]), int(p[2])) for p in record["ports"]],
            holder=(int(record["holder"][0]), int(record["holder"][1])),
            creator=None if record["creator"] is None else (int(record["creator"][0]), int(record["creator"][1])),
            result=record["result"], state_dir=record["state_dir"], netns=record["netns"],
            host_netns_id=(int(dev), int(ino)), detached=bool(record["detached"]),
        )
        att._read_result()
        return att


# ---- plugins -------------------------------------------------------------------------------


def _find_plugin(kind: str, path: Sequence[str]) -> str:
    for d in path:
        candidate = os.path.join(d, kind)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise NetworkError(errno.ENOENT, f"CNI plugin {kind!r} not found in {':'.join(path)} "
                       "(install containernetworking-plugins, or give CNI(..., path=[...]) or $CNI_PATH)")


_versions: dict[tuple[str, int], list[str]] = {}


def _check_version(kind: str, binary: str, version: str, path: Sequence[str]) -> None:
    """``VERSION`` of the plugin (once per binary and process): it must
    support the conflist's cniVersion."""
    try:
        key = (binary, os.stat(binary).st_mtime_ns)
    except OSError:
        key = (binary, 0)
    supported = _versions.get(key)
    if supported is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND="VERSION", CNI_PATH=":".join(path))
        out = _run_plugin(kind, binary, "VERSION", {"cniVersion": version}, env) or {}
        supported = out.get("supportedVersions")
        if not isinstance(supported, list):
            raise _plugin_error(kind, "VERSION", None, f"it printed no supportedVersions: {out!r}")
        _versions[key] = supported
    if version not in supported:
        raise _plugin_error(kind, "VERSION", 1, f"it does not support cniVersion {version} "
                            f"(it supports {', '.join(map(str, supported))})")


def _in_netns(fd: int, fn: Callable[[], T]) -> T:
    """``fn()`` in a helper thread that entered the network namespace ``fd``
    (setns acts on the calling thread only; the caller's stays where it is)."""
    out: list[Any] = []

    def run() -> None:
        try:
            _syscalls.setns(fd, _CLONE_NEWNET)
            out.append((True, fn()))
        except BaseException as e:  # (handed to the caller)
            out.append((False, e))

    t = threading.Thread(target=run, name="nsbox-cni-plugin", daemon=True)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def _run_plugin(kind: str, binary: str, command: str, conf: dict[str, Any],
                env: dict[str, str]) -> Optional[dict[str, Any]]:
    """Execute one plugin; its JSON output (None if it printed nothing), or
    :class:`CNIError` with the error object it printed."""
    try:
        proc = subprocess.run([binary], input=json.dumps(conf).encode(), env=env, capture_output=True,
                              timeout=PLUGIN_TIMEOUT, cwd="/")
    except subprocess.TimeoutExpired:
        raise _plugin_error(kind, command, None, f"it did not finish within {PLUGIN_TIMEOUT:g} s",
                            err=errno.ETIMEDOUT) from None
    except OSError as e:
        raise _plugin_error(kind, command, None, f"it could not be run ({binary}): {e.strerror}",
                            err=e.errno or errno.EIO) from None
    out = proc.stdout.strip()
    data: Any = None
    if out:
        try:
            data = json.loads(out)
        except ValueError:
            data = None
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        if isinstance(data, dict) and ("msg" in data or "code" in data):
            code = data.get("code")
            raise _plugin_error(kind, command, code if isinstance(code, int) else None, str(data.get("msg", "")),
                                str(data.get("details", "") or stderr[-500:]))
        raise _plugin_error(kind, command, None, f"exit status {proc.returncode}",
                            (stderr or out.decode(errors="replace"))[-500:])
    if out and not isinstance(data, dict):
        raise _plugin_error(kind, command, None, "its output is not a JSON object", out.decode(errors="replace")[:500])
    return data


# ---- state directories and pins --------------------------------------------------------


def _cni_dir() -> Path:
    return run_dir() / "cni"


def _thread_netns_id() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def _is_pinned(path: str) -> bool:
    """True if ``path`` is a bind mount of a namespace (nsfs)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def _share_cni_dir() -> None:
    """The cni directory as a shared mount point of its own (as
    ``ip netns`` does with /run/netns), so pins appear in the mount
    namespaces that copied it.  (Under the state lock.)"""
    d = _cni_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        share(d)
    except OSError as e:
        raise NetworkError(e.errno or errno.EIO, f"making {d} a shared mount point: {e.strerror}") from None


def _unshare_cni_dir() -> None:
    """Once no attachment is left: unmount the cni directory and remove it.
    (Under the state lock.)"""
    unshare(_cni_dir())


def _remove_state_dir(state_dir: str) -> None:
    """Unpin and remove the files of a state directory (its lock held),
    then the directory (under the state lock)."""
    sdir = Path(state_dir)
    pin = sdir / "netns"
    try:
        _syscalls.umount(str(pin))
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    for name in ("netns", "state.json", ".state.json.tmp"):
        (sdir / name).unlink(missing_ok=True)
    with locked():
        prune(sdir)
        _unshare_cni_dir()


def _teardown(state_dir: str, run_del: Any, blocking: bool = True) -> Optional[bool]:
    """With the state directory's lock: if its state is still there,
    ``run_del(state)``, then remove the pin and the state.  False if the
    lock was taken (not ``blocking``); True if done; None if nothing was
    left (another process removed the directory, before or while we waited
    for its lock)."""
    try:
        fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # done already
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        if os.fstat(fd).st_nlink == 0:
            return None  # removed by whoever had the lock before us
        state_file = Path(state_dir) / "state.json"
        try:
            state = json.loads(state_file.read_text())
        except FileNotFoundError:
            state = None
        except (OSError, ValueError) as e:
            raise NetworkError(errno.EIO, f"the CNI state {state_file} is unreadable: {e}") from None
        if state is not None:
            run_del(state)
        _remove_state_dir(state_dir)
        return True
    finally:
        os.close(fd)


def sweep() -> list[str]:
    """``DEL`` the CNI attachments whose holder is dead and that nobody is
    adding or deleting (their state directory is not locked): what a
    creator killed with SIGKILL left.  Returns what was removed, one line
    each.  (For :func:`nsbox.gc`; never under the state lock.)"""
    removed: list[str] = []
    with locked():
        try:
            ids = sorted(os.listdir(_cni_dir()))
        except FileNotFoundError:
            return removed
    here = _thread_netns_id()
    for cid in ids:
        sdir = _cni_dir() / cid
        if not sdir.is_dir():
            continue
        try:
            line = _sweep_one(sdir, here)
        except _Skip:
            continue
        except Exception as e:
            line = f"CNI state {cid}: DEL failed: {e}"
        if line is not None:
            removed.append(line)
    return removed


def _sweep_one(sdir: Path, here: tuple[int, int]) -> Optional[str]:
    """DEL of one state directory if its holder is dead and nobody has it
    locked; what was removed, or None (locked).  _Skip: its pod runs, or
    its plugins ran in another network namespace."""
    info = {"what": f"CNI state {sdir.name}: a start that never got to ADD"}

    def run_del(state: dict[str, Any]) -> None:
        holder = state.get("holder") or [0, 0]
        if _proc.owner(int(holder[0])) == (int(holder[0]), int(holder[1])):
            raise _Skip()  # its pod runs
        att = CNIAttachment.from_record(state)
        if att.host_netns_id != here:
            raise _Skip()  # its plugins ran in another network namespace: not from here
        att._del_plugins()
        info["what"] = (f"CNI network {att.network} of {sdir.name}: DEL of {len(att.conflist['plugins'])} "
                        "plugin(s), the netns pin")

    return info["what"] if _teardown(str(sdir), run_del, blocking=False) else None


class _Skip(Exception):
    pass
