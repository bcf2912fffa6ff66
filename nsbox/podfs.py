"""What a pod sees of files: its volumes, its own ``/etc/hostname``,
``/etc/hosts`` and ``/etc/resolv.conf``, and its namespaced sysctls.

:class:`PodFS` is the part of a :class:`~nsbox.Pod` that does this, in two
steps around the holder:

1. :meth:`PodFS.prepare`, before the holder exists: the host side.  Host
   paths are checked (or made), EmptyDirs made under nsbox's run directory
   (``fs/KEY/volumes/``; a tmpfs for ``medium="memory"``).  Nothing here
   changes the host outside the run directory (but a ``HostPath`` with
   ``create=True``).
2. :meth:`PodFS.setup`, once the holder runs: the pod's files written
   (``fs/KEY/etc/``), its bridge peers registered (:mod:`nsbox.net.names`),
   then one short-lived thread joins the pod's mnt/net/ipc namespaces and
   mounts everything (:mod:`nsbox.mounts`) and writes the sysctls.

Storage outlives a sandbox: restarts keep EmptyDirs and their contents.  It
goes with the pod (:meth:`remove`): at ``stop()`` for a pod of this
process, at ``remove()`` for a persistent pod, or by ``nsbox.gc()`` when the
process that made it died.  ``KEY`` is ``pod-NAME`` for a persistent pod,
``PID.START.N`` (the creating process and a counter) otherwise.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import shutil
import socket
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import _proc, _syscalls
from .errors import ConfigError, NotRunningError, PodStartError, namespace_error
from .mounts import Mounter, MountOp
from .net.rundir import prune, run_dir
from .volumes import EmptyDir, HostPath

if TYPE_CHECKING:
    from .net import PodNetwork
    from .spec import PodSpec

__all__ = ["PodFS", "fs_dir", "needs_fs", "run_inside", "storage_key", "remove_storage", "sweep"]

log = logging.getLogger("nsbox")
_ETC_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
_counter = itertools.count()
_NAME_KEEP = 160  # characters of a quoted mount path kept in an EmptyDir's name


def fs_dir() -> Path:
    return run_dir() / "fs"


def storage_key(name: Optional[str], persistent: bool) -> str:
    """The directory name of a pod's storage under ``fs/``."""
    if persistent:
        assert name is not None
        return f"pod-{name}"
    me = _proc.owner(os.getpid())
    assert me is not None
    return f"{me[0]}.{me[1]}.{next(_counter)}"


def needs_fs(spec: "PodSpec") -> bool:
    """True if a pod of ``spec`` needs a PodFS at all."""
    return "mnt" in spec.kinds or bool(spec.sysctls) or bool(spec.hostname and _bridges(spec))


def _bridges(spec: "PodSpec") -> list[str]:
    from .net.bridge import Bridge

    return [net.ifname for net in spec.networks if isinstance(net, Bridge)]


class PodFS:
    def __init__(self, spec: "PodSpec", key: Optional[str]):
        self.spec = spec
        self._key = key  # None until the first start (see rekey)
        self._created: list[Path] = []  # host paths made for HostPath(create=True) by this start
        self._names: list[tuple[str, str, tuple[int, int]]] = []  # (bridge, address, owner) registered

    # ---- the host side ---------------------------------------------------------------

    @property
    def dir(self) -> Path:
        """The pod's storage directory (once it has a key)."""
        if self._key is None:
            raise NotRunningError(errno.ESRCH, "the pod was never started: its volumes do not exist yet")
        return fs_dir() / self._key

    @property
    def has_storage(self) -> bool:
        return "mnt" in self.spec.kinds

    def volume_path(self, path: str) -> Path:
        """The host path behind the pod's mount path ``path``."""
        norm = os.path.normpath(path) if isinstance(path, str) and path.startswith("/") else None
        for mount_path, vol in self.spec.volumes:
            if mount_path == norm:
                if isinstance(vol, HostPath):
                    return Path(vol.path)
                return self._empty_dir(mount_path)
        known = ", ".join(p for p, _ in self.spec.volumes) or "none"
        raise ConfigError(f"the pod has no volume mounted at {path!r} (its volumes: {known})")

    def _empty_dir(self, mount_path: str) -> Path:
        name = urllib.parse.quote(mount_path.strip("/"), safe="")
        if len(name) > _NAME_KEEP:
            # A file name has at most 255 bytes: a long one is cut, and made
            # unique by a digest ("+" never appears in a quoted name).
            name = name[:_NAME_KEEP] + "+" + hashlib.sha256(mount_path.encode()).hexdigest()[:32]
        return self.dir / "volumes" / name

    def prepare(self) -> None:
        """The host side, before the holder: check/make host paths, make
        EmptyDirs (kept if they exist: a restart).  All or nothing."""
        if not self.has_storage:
            return
        for mount_path, vol in self.spec.volumes:
            if isinstance(vol, HostPath) and not os.path.exists(vol.path) and not vol.create:
                raise ConfigError(
                    f"volume {mount_path}: host path {vol.path} does not exist; make it, or use "
                    "HostPath(..., create=True)"
                )
        try:
            subs = ("volumes", "etc") if any(isinstance(v, EmptyDir) for _, v in self.spec.volumes) else ("etc",)
            for sub in subs:  # (and "stage" when a mount path must be made: see Mounter)
                _mkdirs(self.dir / sub)
            for mount_path, vol in self.spec.volumes:
                if isinstance(vol, HostPath):
                    self._make_host_path(vol)
                else:
                    self._make_empty_dir(mount_path, vol)
        except BaseException as e:
            self.undo_prepare()
            if isinstance(e, OSError):
                raise PodStartError(e.errno, f"preparing the pod's volumes under {self.dir}: {e.strerror or e}") from None
            raise

    def _make_host_path(self, vol: HostPath) -> None:
        missing: list[Path] = []
        p = Path(vol.path)
        while not os.path.lexists(p):
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir(mode=0o755)
            self._created.append(d)

    def _make_empty_dir(self, mount_path: str, vol: EmptyDir) -> None:
        d = self._empty_dir(mount_path)
        try:
            d.mkdir(mode=0o777)
        except FileExistsError:
            return  # a restart: what the pod wrote stays
        os.chmod(d, 0o777)  # (as Kubernetes makes them: any user of the pod may write)
        if vol.medium == "memory":
            opts = "mode=777" + (f",size={vol.size_limit}" if vol.size_limit else "")
            from ._native._nsbox import lib

            _syscalls.mount("tmpfs", str(d), "tmpfs", lib.MS_NOSUID | lib.MS_NODEV, opts)

    def rekey(self, key: str) -> None:
        """Storage under ``fs/key`` (before the first :meth:`prepare`): a
        pod's storage belongs to the process that starts it, not to the one
        that made the Pod object (gc removes it when that one is gone)."""
        self._key = key

    def committed(self) -> None:
        """The start succeeded: host paths it made are the host's now (as
        Kubernetes' DirectoryOrCreate), never removed by nsbox."""
        self._created.clear()

    def undo_prepare(self) -> None:
        """Undo what :meth:`prepare` made for a start that failed."""
        for d in reversed(self._created):
            try:
                d.rmdir()  # (only if still empty)
            except OSError:
                pass
        self._created.clear()

    def remove(self) -> None:
        """Remove the pod's storage (EmptyDirs with their contents, files); idempotent."""
        self.undo_prepare()
        if self._key is not None:
            remove_storage(self.dir)

    # ---- inside the pod --------------------------------------------------------------

    def setup(self, holder: Any, net: "PodNetwork") -> None:
        """After the holder has exec'd: files, bridge names, mounts, sysctls."""
        spec = self.spec
        owner = _proc.owner(holder.pid)
        if owner is None:
            raise namespace_error(errno.ESRCH, "the holder exited while the pod was starting")
        addresses = [str(a.address.ip) for a in net.attachments if a.address is not None]
        bridged = [(a.route_ifname, str(a.address.ip)) for a in net.attachments
                   if a.address is not None and a.ifname in self._bridge_ifnames()]
        files = None
        if self.has_storage:
            from .podfiles import PodFiles

            files = PodFiles.write(
                self.dir / "etc", hostname=spec.hostname or _host_name(), addresses=addresses,
                bridges=[b for b, _ in bridged], extra=list(spec.hosts), dns=spec.dns,
            )
        if spec.hostname and bridged:
            from .net import names

            for bridge, address in bridged:
                # (noted first: a join that fails has registered the entry, and leave() undoes it)
                self._names.append((bridge, address, owner))
                names.join(bridge, address, spec.hostname, owner, files.dir if files is not None else None)
        ops: list[MountOp] = []
        try:
            if self.has_storage:
                ops = self._mount_ops(files.paths if files is not None else {})
            kinds = tuple(k for k in ("mnt", "net", "ipc") if k in spec.kinds)
            if ops or spec.sysctls:
                run_inside(holder, kinds, lambda: self._inside(ops))
        finally:
            for op in ops:
                os.close(op.tree_fd)

    def _bridge_ifnames(self) -> set[str]:
        from .net.bridge import Bridge

        return {net.ifname for net in self.spec.networks if isinstance(net, Bridge)}

    def _mount_ops(self, files: dict[str, Path]) -> list[MountOp]:
        ops: list[MountOp] = []
        try:
            for mount_path, vol in self.spec.volumes:
                src = vol.path if isinstance(vol, HostPath) else str(self._empty_dir(mount_path))
                is_dir = os.path.isdir(src)
                ops.append(MountOp(mount_path, self._tree(src, f"volume {mount_path}"), is_dir,
                                   read_only=isinstance(vol, HostPath) and vol.read_only,
                                   owned=isinstance(vol, EmptyDir), what=f"volume {mount_path}"))
            taken = {p for p, _ in self.spec.volumes}
            for target, path in files.items():
                if target not in taken:  # (a volume mounted at that path wins)
                    ops.append(MountOp(target, self._tree(str(path), target, recursive=False), False, what=target))
        except BaseException:
            for op in ops:
                os.close(op.tree_fd)
            raise
        return ops

    @staticmethod
    def _tree(src: str, what: str, recursive: bool = True) -> int:
        try:
            return _syscalls.open_tree(src, recursive=recursive)
        except OSError as e:
            raise PodStartError(e.errno, f"{what}: cannot take a copy of {src}'s mount: {e.strerror}") from None

    def _inside(self, ops: Sequence[MountOp]) -> None:
        """(On the helper thread, inside the pod's namespaces.)"""
        mounter = Mounter(str(self.dir / "stage"))
        for op in ops:
            try:
                mounter.run([op])
            except OSError as e:
                raise PodStartError(e.errno, f"{op.what}: mounting it at {op.target} in the pod failed: "
                                 f"{e.strerror or e}") from None
        if self.spec.sysctls:
            from .sysctls import write_sysctls

            write_sysctls(self.spec.sysctls)

    def sandbox_ended(self) -> None:
        """The sandbox is gone: its names leave the bridges' registries."""
        if not self._names:
            return
        from .net import names

        for bridge, address, owner in self._names:
            names.leave(bridge, address, owner)
        self._names.clear()

    def adopt_names(self, holder: tuple[int, int], attachments: Sequence[Any]) -> None:
        """For a pod attached to (another process's sandbox): what it registered."""
        if self.spec.hostname:
            bridges = self._bridge_ifnames()
            self._names = [(a.route_ifname, str(a.address.ip), holder) for a in attachments
                           if a.address is not None and a.ifname in bridges]


def _host_name() -> str:
    """The host's name, for a pod that has no hostname of its own; one that
    an /etc/hosts line cannot hold (e.g. ending in '-') becomes 'localhost'."""
    from .podfiles import check_hostname

    name = socket.gethostname()
    try:
        return check_hostname(name)
    except ConfigError:
        log.warning("the host's name %r cannot go into a pod's /etc/hosts; the pod's files say 'localhost'", name)
        return "localhost"


def run_inside(target: Any, kinds: tuple[str, ...], fn: Callable[[], None]) -> None:
    """Run ``fn`` on a new thread that has joined ``target``'s ``kinds``
    namespaces (the caller's threads stay where they are); re-raise its error."""
    from .namespaces import join

    error: list[BaseException] = []

    def body() -> None:
        try:
            if kinds:
                join(target, kinds)
            fn()
        except BaseException as e:  # (handed to the caller)
            error.append(e)

    t = threading.Thread(target=body, name="nsbox-podfs", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]


def _mkdirs(d: Path) -> None:
    """``mkdir -p``, again if another pod's :func:`remove_storage` pruned the
    (then empty) parent meanwhile: it removes empty directories without the
    state lock."""
    for attempt in range(5):
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            return
        except FileNotFoundError:
            if attempt == 4:
                raise


def remove_storage(d: Path) -> None:
    """Unmount the tmpfs volumes in ``d`` and remove it with everything in it."""
    vols = d / "volumes"
    try:
        entries = list(vols.iterdir())
    except FileNotFoundError:
        entries = []
    for v in entries:
        if os.path.ismount(v):
            try:
                _syscalls.umount(str(v))
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
    shutil.rmtree(d, ignore_errors=True)
    prune(d.parent)


def sweep(record_names: set[str]) -> list[str]:
    """For gc (under the state lock): storage of pods that are gone -- a
    persistent pod without a record, or a pod of a process that died."""
    out: list[str] = []
    try:
        entries = list(fs_dir().iterdir())
    except FileNotFoundError:
        return out
    for d in entries:
        name = d.name
        if name.startswith("pod-"):
            if name[4:] in record_names:
                continue
        else:
            try:
                pid, start, _ = (int(x) for x in name.split("."))
            except ValueError:
                continue  # not ours
            if _proc.owner(pid) == (pid, start):
                continue
        remove_storage(d)
        out.append(f"storage {d} (volumes and files of a pod that is gone)")
    return out

