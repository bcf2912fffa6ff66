"""Mounting into a pod's mount namespace, from a thread that has joined it.

The pod shares the host's filesystems, so a mount path that does not exist
in the pod cannot simply be made with mkdir: that would change the host.
Instead the deepest existing directory above it is *shadowed* in the pod
only, as bubblewrap builds its roots: a tmpfs with the same owner and mode
replaces it, holding a bind mount of each of its entries (symlinks copied),
and the missing path is made in the tmpfs.  The host sees nothing of it.
Shadowing ``/`` makes the tmpfs the namespace's root (``pivot_root``), so
processes that join the pod later see it too.

What is shadowed is a snapshot: entries the host adds to that directory
later do not appear in the pod, and what the pod writes at that level goes
to the tmpfs.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from . import _syscalls
from ._native._nsbox import lib

__all__ = ["MountOp", "Mounter"]

# statvfs() flags that must be kept by a remount (their values equal MS_*).
_KEEP = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME | os.ST_RELATIME
_OLD_ROOT = ".nsbox-old-root"


@dataclass
class MountOp:
    """Attach ``tree_fd`` (a detached mount made with open_tree on the host)
    at ``target`` in the pod.  ``owned``: the pod's own storage (an
    EmptyDir), in which missing paths below it may simply be made."""

    target: str
    tree_fd: int
    is_dir: bool
    read_only: bool = False
    owned: bool = False
    what: str = ""  # for errors: "volume /data", "/etc/hosts"


class Mounter:
    """Mounts made in order by one thread inside the pod's mount namespace.
    ``staging``: an empty directory, visible in the pod, to build shadows on."""

    def __init__(self, staging: str):
        self.staging = staging
        self.devices: set[int] = set()  # filesystems nsbox made for the pod (shadows)
        self.mounted: list[tuple[str, bool]] = []  # (mount point, the pod's own storage?), in order

    def run(self, ops: Sequence[MountOp]) -> None:
        for op in ops:
            target = self.ensure(op.target, op.is_dir)
            _syscalls.move_mount(op.tree_fd, target)
            # The copy of a shared host mount is a peer of it: what is mounted
            # below it in the pod (by nsbox or a member) would appear on the
            # host.  Private, as Kubernetes' default mountPropagation: None.
            _syscalls.mount(None, target, None, lib.MS_REC | lib.MS_PRIVATE)
            if op.read_only:
                flags = os.statvfs(target).f_flag & _KEEP
                _syscalls.mount(None, target, None, lib.MS_BIND | lib.MS_REMOUNT | lib.MS_RDONLY | flags)
            self.mounted.append((target, op.owned))

    def ensure(self, path: str, is_dir: bool) -> str:
        """``path`` in the pod, made if missing (never on the host's
        filesystem); returns it with symlinks resolved."""
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode) != is_dir:
                kind = "a directory" if is_dir else "a file"
                raise OSError(errno.ENOTDIR if is_dir else errno.EISDIR,
                              f"{real} exists in the pod and is not {kind}", real)
            return real
        anc = os.path.dirname(real)
        while not os.path.lexists(anc):
            anc = os.path.dirname(anc)
        if not os.path.isdir(anc):
            raise OSError(errno.ENOTDIR, f"{anc} is not a directory", anc)
        if not self._ours(anc):
            self._shadow(anc)
        parent = real if is_dir else os.path.dirname(real)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if not is_dir:
            os.close(os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        return real

    def _ours(self, path: str) -> bool:
        if os.stat(path).st_dev in self.devices:
            return True
        # The deepest volume ``path`` is in decides: below a HostPath mounted
        # inside an EmptyDir is the host's filesystem again.
        deepest: Optional[tuple[str, bool]] = None
        for target, owned in self.mounted:
            if path == target or path.startswith(target.rstrip("/") + "/"):
                if deepest is None or len(target) >= len(deepest[0]):
                    deepest = (target, owned)
        return deepest is not None and deepest[1]

    def _shadow(self, directory: str) -> None:
        """Replace ``directory`` (in the pod only) by a tmpfs holding a bind
        mount of each of its entries."""
        st = os.stat(directory)
        tree = _syscalls.open_tree(directory)
        try:
            entries = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=tree)
            try:
                names = os.listdir(entries)
                stage = self.staging
                os.makedirs(stage, mode=0o700, exist_ok=True)  # (in nsbox's run directory)
                _syscalls.mount("tmpfs", stage, "tmpfs", lib.MS_NOSUID | lib.MS_NODEV,
                                f"mode={stat.S_IMODE(st.st_mode):o},uid={st.st_uid},gid={st.st_gid}")
                try:
                    for name in names:
                        self._copy_entry(tree, entries, name, os.path.join(stage, name))
                    self._install(stage, directory)
                except BaseException:
                    _syscalls.umount(stage)
                    raise
            finally:
                os.close(entries)
        finally:
            os.close(tree)
        self.devices.add(os.stat(directory).st_dev)

    @staticmethod
    def _copy_entry(tree: int, entries: int, name: str, dest: str) -> None:
        try:
            st = os.stat(name, dir_fd=entries, follow_symlinks=False)
        except FileNotFoundError:
            return  # gone meanwhile
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=entries), dest)
            os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
            return
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(dest, stat.S_IMODE(st.st_mode))
        else:
            os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        sub = _syscalls.open_tree(name, dir_fd=tree)
        try:
            _syscalls.move_mount(sub, dest)  # (from here on dest *is* the host's entry: leave it alone)
        finally:
            os.close(sub)

    @staticmethod
    def _install(stage: str, directory: str) -> None:
        if directory != "/":
            _syscalls.mount(stage, directory, None, lib.MS_MOVE)
            return
        # The namespace's root itself: the tmpfs becomes the root (a mount
        # stacked on "/" would not be seen by processes joining later).
        old = os.path.join(stage, _OLD_ROOT)
        os.mkdir(old, 0o700)
        _syscalls.pivot_root(stage, old)
        os.chdir("/")
        _syscalls.umount("/" + _OLD_ROOT)
        os.rmdir("/" + _OLD_ROOT)
