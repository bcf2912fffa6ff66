"""``Pod``: a holder plus the processes that join it, with one lifecycle.

``Pod.start()`` → holder (new namespaces, hostname, ``lo`` up) → network.
``Pod.spawn()`` → native child joins the holder's namespaces → exec.
``Pod.stop()`` → SIGTERM to every member, SIGKILL after ``timeout``, holder
ends, everything reaped.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

from . import _syscalls
from .errors import ConfigError, NotRunningError, PodStartError, PrivilegeError, UnsupportedError, namespace_error, os_error
from .holder import begin_holder
from .kinds import DEFAULT_KINDS, KINDS, KindsArg, flags_of, parse_kinds
from .namespaces import Namespace, joined as _joined
from .spawn import PodProcess, pid_is_alive, wait_any

__all__ = ["Pod", "stop_all"]

IdMap = Union[str, Sequence[tuple[int, int, int]]]

_HOSTNAME_MAX = 64
# How long stop() waits for the holder after it was told to exit, before SIGKILL.
_HOLDER_GRACE = 5.0


class Pod:
    """A set of namespaces held open by a tiny init process (the holder).

    ::

        with nsbox.Pod(hostname="web-0") as pod:
            pod.run(["hostname"])          # web-0, in the pod's net/ipc/uts/pid
            server = pod.spawn(["my-server"])

    Arguments (all validated before anything is created):

    kinds
        Namespaces the pod creates: any of ``user mnt pid net ipc uts cgroup``.
        Default ``("net", "ipc", "uts", "pid")``, like a Kubernetes pod with
        ``shareProcessNamespace``.
    hostname
        Host name inside the pod (needs ``"uts"``).
    mount_proc
        Mount a fresh ``/proc`` so ``ps`` in the pod sees only the pod.  Needs
        ``"mnt"``; default: on when both ``"mnt"`` and ``"pid"`` are present.
    ports
        ``{host_port: pod_port}`` (keys may be ``"5353/udp"``): publish pod
        ports on the host's addresses (127.0.0.1 included) via nftables.
        Needs ``network``.
    network
        How the pod is wired: :class:`nsbox.Veth` (a point-to-point link to the
        host) or :class:`nsbox.Bridge` (a shared bridge with IPAM), or a list
        of them (each with its own ``ifname``; the first one is primary).  Without it the pod has only ``lo`` (always up).
    uid_map, gid_map
        With ``"user"``: the id mappings, as ``/proc/PID/uid_map`` text or a
        list of ``(inside, outside, count)``.  Default maps 0..65535 inside to
        the same ids outside for root, or root inside to your own id.
    """

    def __init__(
        self,
        kinds: KindsArg = DEFAULT_KINDS,
        *,
        hostname: Optional[str] = None,
        mount_proc: Optional[bool] = None,
        uid_map: Optional[IdMap] = None,
        gid_map: Optional[IdMap] = None,
        network: Optional[Any] = None,
        ports: Optional[Any] = None,
    ):
        self.kinds: tuple[str, ...] = parse_kinds(kinds)
        if "time" in self.kinds:
            raise UnsupportedError(
                "the 'time' kind is not supported for pods: a new time namespace applies only to "
                "the children of the process that creates it and must be configured before any "
                "of them starts, so the holder cannot hold one for its members"
            )
        self.hostname = _check_hostname(hostname, self.kinds)
        if mount_proc is None:
            mount_proc = "mnt" in self.kinds and "pid" in self.kinds
        elif mount_proc and "mnt" not in self.kinds:
            raise ConfigError("mount_proc=True needs the 'mnt' kind (a private mount namespace)")
        self.mount_proc = bool(mount_proc)
        if (uid_map is not None or gid_map is not None) and "user" not in self.kinds:
            raise ConfigError("uid_map/gid_map need the 'user' kind")
        self._uid_map = self._gid_map = None
        if "user" in self.kinds:
            self._uid_map = _format_id_map("uid_map", uid_map, os.geteuid())
            self._gid_map = _format_id_map("gid_map", gid_map, os.getegid())
        self.networks: list = _check_networks(network, self.kinds)
        self.network = self.networks[0] if self.networks else None
        self.ports: list = []
        if ports:
            from .net.ports import parse_ports

            if network is None:
                raise ConfigError("ports= needs a network (network=nsbox.Bridge(...) or nsbox.Veth(...))")
            self.ports = parse_ports(ports)
            for net in self.networks[:1]:
                if getattr(net, "address", None) is not None and net.address.version != 4 or \
                        getattr(net, "subnet", None) is not None and net.subnet.version != 4:
                    raise ConfigError("ports= supports IPv4 networks only (for now)")
                if hasattr(net, "host_address") and net.host_address is None:
                    raise ConfigError("ports= with a Veth needs host_address (the host must route to the pod)")
        self._nets: list = []  # what each network made for this pod (Attachment)
        self._lock = threading.RLock()
        self._state = "new"  # new -> running -> stopped
        self._pid: Optional[int] = None
        self._pidfd = -1
        self._returncode: Optional[int] = None
        self._members: list[PodProcess] = []
        self._inodes: dict[str, int] = {}

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> "Pod":
        """Create the namespaces and the holder; return when the pod is ready.

        On failure nothing is left behind and the error says which step failed.
        """
        with self._lock:
            if self._state != "new":
                raise ConfigError(f"pod was already started ({self._state}); create a new Pod")
            try:
                pending = begin_holder(
                    self.kinds,
                    hostname=self.hostname,
                    mount_proc=self.mount_proc,
                    uid_map=self._uid_map,
                    gid_map=self._gid_map,
                )
            except _syscalls.SpawnFailed as f:
                raise _start_error(f, self.kinds) from None
            # The namespaces exist from clone on: wire them while the holder
            # sets itself up and execs on the other CPU, then wait for it.
            try:
                self._pid = pending.pid
                self._state = "running"
                self._after_start()
            except BaseException:
                self._finish_holder(pending)
                self._rollback()
                raise
            self._finish_holder(pending)
            return self

    def _finish_holder(self, pending: _syscalls.PendingSpawn) -> None:
        """Wait until the holder has exec'd.  If a step before its exec
        failed, that is the error to report: roll back and raise it."""
        try:
            self._pid, self._pidfd = pending.finish()
        except _syscalls.SpawnFailed as f:
            self._rollback()  # the native side has reaped the holder already
            self._pid = None  # reaped: the number may already be another process's
            raise _start_error(f, self.kinds) from None

    def _after_start(self) -> None:
        """Steps that need a running holder; any exception rolls the pod back."""
        # (The holder is our unreaped child: its PID cannot be reused here.)
        proc = f"/proc/{self._pid}/ns/"
        netns = os.open(proc + "net", os.O_RDONLY | os.O_CLOEXEC) if self.networks else -1
        try:
            for k in self.kinds:
                self._inodes[k] = os.fstat(netns).st_ino if k == "net" and netns >= 0 else os.stat(proc + k).st_ino
            for i, net in enumerate(self.networks):
                # Only the first network may give the pod its default route.
                self._nets.append(net._attach(netns, self._pid, primary=i == 0))
        finally:
            if netns >= 0:
                os.close(netns)
        if self.ports:  # (ports= needs a network: checked in __init__)
            from .net.ipam import owner_of
            from .net.ports import publish

            owner = owner_of(self._pid)  # type: ignore[arg-type]
            if owner is None:
                raise NotRunningError(errno.ESRCH, "the holder exited while the pod was starting")
            published = publish(owner, self._nets[0].address, self._nets[0].route_ifname, self.ports)
            self._nets[0].undo.append(published.remove)

    def _rollback(self) -> None:
        """Undo a half-started pod.  The error that caused it is what the
        caller must see: a teardown problem here is only added as a note."""
        self._kill_holder(signal.SIGKILL)
        self._reap_holder(None)
        try:
            self._finish()
        except Exception as e:  # pragma: no cover - teardown of a failed start
            warnings.warn(f"{self!r}: rolling back a failed start left something behind: {e}", RuntimeWarning)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """Stop the pod; idempotent.  Returns the holder's exit status.

        Every member gets SIGTERM; those still alive after ``timeout`` seconds
        get SIGKILL (with a PID namespace: by the holder's exit, which makes the
        kernel kill the whole namespace).  Returns only when every member and
        the holder are dead and reaped.
        """
        return self._stop(timeout, None)

    def _stop(self, timeout: float, network_out: Optional[list]) -> Optional[int]:
        _check_timeout(timeout)
        with self._lock:
            if self._begin_stop(time.monotonic() + timeout):
                self._end_stop(network_out)
            return self._returncode

    def _begin_stop(self, deadline: float) -> bool:
        """Members get SIGTERM (SIGKILL at ``deadline``), then the holder is
        told to exit.  False if there is nothing to stop.  (Lock held.)"""
        if self._state == "new":
            self._state = "stopped"
            return False
        if self._state == "stopped":
            return False
        # Members first, even if the holder is already gone (without a PID
        # namespace its death does not take them along).
        self._terminate_members(deadline)
        if self.alive:
            self._kill_holder(signal.SIGTERM)
        return True

    def _end_stop(self, network_out: Optional[list]) -> None:
        """Reap the holder (SIGKILL if it lingers) and finish.  (Lock held.)"""
        if not self._reap_holder(time.monotonic() + _HOLDER_GRACE):
            self._kill_holder(signal.SIGKILL)
        self._reap_holder(None)
        self._finish(network_out)

    def _terminate_members(self, deadline: float) -> None:
        members = self._open_members()
        try:
            for fd in members:
                _signal_quietly(fd, signal.SIGTERM)
            pending = list(members)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                done = wait_any(pending, min(left, 0.05))
                self._reap_members()
                pending = [fd for fd in pending if fd not in done]
            if "pid" not in self.kinds:
                # No PID namespace: the holder's exit kills nobody; we must.
                for fd in pending:
                    _signal_quietly(fd, signal.SIGKILL)
        finally:
            for fd in members:
                os.close(fd)

    def _open_members(self) -> list[int]:
        """pidfds of every process of the pod we can find, holder excluded:
        the holder's descendants, the spawned processes and their descendants,
        and (without a PID namespace) every process in the pod's namespace."""
        kind = "pid" if "pid" in self.kinds else self.kinds[0]
        inode = self._inodes.get(kind)
        spawned = {p.pid: p for p in self._members if p.returncode is None}
        candidates: dict[int, int] = {}  # pid -> the parent it was found under
        stack = [(self._pid, 0)] + [(pid, 0) for pid in spawned]
        while stack:
            pid, parent = stack.pop()
            if pid in candidates:
                continue
            candidates[pid] = parent
            stack.extend((child, pid) for child in _children(pid))
        if "pid" not in self.kinds and inode is not None:
            for pid in _pids_in_namespace(kind, inode):
                candidates.setdefault(pid, 0)
        fds: list[int] = []
        for pid, parent in candidates.items():
            if pid == self._pid:
                continue
            if pid in spawned:
                if spawned[pid].pidfd >= 0:  # ours and unreaped: no reuse possible
                    fds.append(fcntl.fcntl(spawned[pid].pidfd, fcntl.F_DUPFD_CLOEXEC, 3))
                continue
            try:
                fd = _syscalls.pidfd_open(pid)
            except OSError:
                continue
            # The PID could have been reused before pidfd_open pinned it: keep
            # it if it is in the pod, or still the child of where we found it.
            if _in_namespace(pid, kind, inode) or (parent and _ppid(pid) == parent):
                fds.append(fd)
            else:
                os.close(fd)
        return fds

    def _reap_members(self) -> None:
        for p in self._members:
            if p.returncode is None:
                p.poll()
        self._members = [p for p in self._members if p.returncode is None]

    def _kill_holder(self, sig: int) -> None:
        if self._pidfd >= 0:
            _signal_quietly(self._pidfd, sig)

    def _reap_holder(self, deadline: Optional[float]) -> bool:
        """Wait for the holder to exit and reap it, reaping members meanwhile
        (a PID namespace's init cannot finish exiting while members that are
        our children are unreaped zombies).  False if ``deadline`` passed."""
        if self._returncode is not None or self._pidfd < 0:
            return True
        while True:
            self._reap_members()
            fds = [self._pidfd] + [p.pidfd for p in self._members if p.pidfd >= 0]
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            wait_any(fds, 0.05 if left is None else min(left, 0.05))
            if not pid_is_alive(self._pidfd):
                break
            if _is_exiting(self._pid):  # type: ignore[arg-type]
                self._reap_stray_zombies()
        try:
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED)
        except ChildProcessError:
            self._returncode = -1  # reaped by someone else (waitpid(-1) elsewhere)
            return True
        assert info is not None
        if info.si_code == os.CLD_EXITED:
            self._returncode = info.si_status
        else:
            self._returncode = -info.si_status
        return True

    def _reap_stray_zombies(self) -> None:
        """The holder is exiting but the kernel waits until every process of
        its PID namespace is reaped: zombies that are *our* children and not
        pod members (started with plain subprocess inside ``joined("pid")``)
        would block it forever.  Reap those."""
        known = {p.pid for p in self._members}
        for pid in _children(os.getpid()):
            if pid in known or pid == self._pid:
                continue
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
            except OSError:
                continue
            nspid = [line for line in status.splitlines() if line.startswith("NSpid:")]
            if "State:\tZ" in status and nspid and len(nspid[0].split()) > 2:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def _finish(self, network_out: Optional[list] = None) -> None:
        # With a PID namespace every member is dead once the holder is reaped;
        # without one, members outlive the holder: a pod that ended takes them along.
        for p in self._members:
            if p.returncode is None:
                p.kill()
                p.wait()
        self._members = []
        nets, self._nets = self._nets, []
        if self._pidfd >= 0:
            fd, self._pidfd = self._pidfd, -1
            _syscalls.close_parked(fd)
        self._state = "stopped"
        # Host-side objects go by recorded name, whatever became of the netns.
        if network_out is not None:
            network_out.extend(reversed(nets))  # stop_all() tears them down in one go
            return
        errors = []
        for att in reversed(nets):
            try:
                att.detach()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the holder to exit (it does on SIGTERM/SIGINT, or when
        stopped); return its exit status.  Raises subprocess.TimeoutExpired.

        Other threads may use the pod (and stop it) meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._state == "new":
                raise NotRunningError(errno.ESRCH, "pod was never started")
            fd = self._dup_pidfd() if self._state == "running" else -1
        try:
            while True:
                with self._lock:
                    if self._state == "stopped":
                        assert self._returncode is not None
                        return self._returncode
                    if not pid_is_alive(self._pidfd):
                        self._reap_holder(None)
                        self._finish()
                        continue
                    self._reap_members()  # the holder cannot end while they are zombies
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(["nsbox-init"], timeout or 0)
                wait_any([fd], 0.05 if left is None else min(left, 0.05))
        finally:
            if fd >= 0:
                os.close(fd)

    def _dup_pidfd(self) -> int:
        """A private duplicate of the holder's pidfd (call with the lock held):
        it stays valid, and names the holder, even if stop() closes ours."""
        self._require_running()
        return fcntl.fcntl(self._pidfd, fcntl.F_DUPFD_CLOEXEC, 3)

    @property
    def alive(self) -> bool:
        """True while the holder runs."""
        with self._lock:
            return self._state == "running" and pid_is_alive(self._pidfd)

    @property
    def pid(self) -> Optional[int]:
        """The holder's PID as the host sees it (None before start)."""
        return self._pid

    @property
    def pidfd(self) -> int:
        """A pidfd on the holder, or -1 when not running.  Owned by the pod."""
        return self._pidfd

    def shape(self, *, delay: Any = None, jitter: Any = None, loss: Optional[float] = None, rate: Any = None,
              ifname: Optional[str] = None) -> None:
        """Set the shaping of the pod's link on a running pod (both ends, each
        direction): ``delay``/``jitter`` like ``"50ms"``, ``loss`` in percent,
        ``rate`` like ``"10mbit"``.  Keywords left out mean "none";
        ``pod.shape()`` removes all shaping.  ``ifname`` picks the link of a
        pod with several networks (default: the first)."""
        from .net.shaping import Shaping, shape_link

        shaping = Shaping.parse(delay, jitter, loss, rate)
        with self._lock:
            self._require_running()
            att = self._attachment(ifname)
            with self._namespace("net") as ns:
                try:
                    shape_link(att.host_ifname, att.ifname, ns.fileno(), shaping)
                except BaseException:
                    try:  # put the previous shaping back, so a failure changes nothing
                        shape_link(att.host_ifname, att.ifname, ns.fileno(), att.shaping)
                    except Exception:
                        pass
                    raise
            att.shaping = shaping

    def _attachment(self, ifname: Optional[str]) -> Any:
        if not self._nets:
            raise ConfigError("the pod has no network to shape; create it with network=nsbox.Veth(...) or nsbox.Bridge(...)")
        if ifname is None:
            return self._nets[0]
        for att in self._nets:
            if att.ifname == ifname:
                return att
        raise ConfigError(f"the pod has no interface {ifname!r}; it has {', '.join(a.ifname for a in self._nets)}")

    @property
    def address(self) -> Optional[Any]:
        """The pod's primary address (``ipaddress.IPv4Interface`` or
        ``IPv6Interface``): the first network's; None without a network."""
        return self._nets[0].address if self._nets else None

    @property
    def addresses(self) -> dict:
        """``{pod interface name: address}`` for every network of the pod."""
        return {att.ifname: att.address for att in self._nets}

    @property
    def host_ifname(self) -> Optional[str]:
        """The name of the pod's (first) link on the host side, or None."""
        return self._nets[0].host_ifname if self._nets else None

    @property
    def returncode(self) -> Optional[int]:
        """The holder's exit status once reaped (negative: killed by that signal)."""
        return self._returncode

    def namespace(self, kind: str) -> Namespace:
        """A new handle on one of the pod's namespaces (close it when done)."""
        with self._lock:
            return self._namespace(kind)

    def _namespace(self, kind: str) -> Namespace:
        self._require_running()
        if kind not in self.kinds:
            parse_kinds(kind)
            raise ConfigError(f"the pod has no {kind!r} namespace; its kinds are {', '.join(self.kinds)}")
        ns = Namespace.from_pid(self._pid, kind)  # type: ignore[arg-type]
        if not pid_is_alive(self._pidfd):
            ns.close()
            raise NotRunningError(errno.ESRCH, f"{self!r}: the holder has exited")
        return ns

    def inode(self, kind: str) -> int:
        """The inode number of the pod's ``kind`` namespace (as in ``/proc/PID/ns``)."""
        try:
            return self._inodes[kind]
        except KeyError:
            parse_kinds(kind)
            raise ConfigError(f"the pod has no {kind!r} namespace; its kinds are {', '.join(self.kinds)}") from None

    # ---- members -----------------------------------------------------------

    def spawn(self, args: Any, *, kinds: Optional[KindsArg] = None, **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``args`` inside the pod; returns a :class:`subprocess.Popen`.

        Takes the keywords of ``subprocess.Popen`` (except ``preexec_fn`` and
        ``close_fds=False``) plus ``kinds``: the pod namespaces to join
        (default: all of them).  The process inherits no fd but 0, 1, 2 and
        ``pass_fds``, starts with default signal handling and an empty signal
        mask, and is stopped with the pod.
        """
        join = self._join_kinds(kinds)
        with self._lock:
            self._require_running()
            self._reap_members()
            proc = PodProcess(
                args, _join_pidfd=self._pidfd, _join_flags=flags_of(join), _desc=repr(self), **popen_kwargs
            )
            self._members.append(proc)
            return proc

    def run(
        self,
        args: Any,
        *,
        input: Any = None,
        capture_output: bool = False,
        timeout: Optional[float] = None,
        check: bool = False,
        kinds: Optional[KindsArg] = None,
        **popen_kwargs: Any,
    ) -> subprocess.CompletedProcess:
        """Run ``args`` inside the pod and wait, like :func:`subprocess.run`."""
        if input is not None:
            if popen_kwargs.get("stdin") is not None:
                raise ValueError("stdin and input arguments may not both be used.")
            popen_kwargs["stdin"] = subprocess.PIPE
        if capture_output:
            if popen_kwargs.get("stdout") is not None or popen_kwargs.get("stderr") is not None:
                raise ValueError("stdout and stderr arguments may not be used with capture_output.")
            popen_kwargs["stdout"] = subprocess.PIPE
            popen_kwargs["stderr"] = subprocess.PIPE
        with self.spawn(args, kinds=kinds, **popen_kwargs) as process:
            try:
                stdout, stderr = process.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                process.kill()
                exc.stdout, exc.stderr = process.communicate()
                raise
            except BaseException:
                process.kill()
                raise
            retcode = process.poll()
            assert retcode is not None
            if check and retcode:
                raise subprocess.CalledProcessError(retcode, process.args, output=stdout, stderr=stderr)
        return subprocess.CompletedProcess(process.args, retcode, stdout, stderr)

    @contextmanager
    def joined(self, *kinds: str) -> Iterator["Pod"]:
        """Run the ``with`` body on the calling thread inside the pod's
        namespaces (default: all but ``user``), then go back.

        See :func:`nsbox.joined` for the per-thread rules.
        """
        join = self._join_kinds(kinds or None, for_thread=True)
        self._require_running()
        with _joined(self, join):
            yield self

    def _join_kinds(self, kinds: Optional[KindsArg], for_thread: bool = False) -> tuple[str, ...]:
        if kinds is None:
            return tuple(k for k in self.kinds if not (for_thread and k == "user"))
        join = parse_kinds(kinds)
        extra = [k for k in join if k not in self.kinds]
        if extra:
            raise ConfigError(
                f"the pod has no {', '.join(map(repr, extra))} namespace; its kinds are {', '.join(self.kinds)}"
            )
        return join

    def _require_running(self) -> None:
        if self._state != "running":
            what = "was never started (call start() or use 'with')" if self._state == "new" else "is stopped"
            raise NotRunningError(errno.ESRCH, f"{self!r} {what}")

    # ---- protocol ----------------------------------------------------------

    def __enter__(self) -> "Pod":
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        host = f" hostname={self.hostname!r}" if self.hostname else ""
        pid = f" pid={self._pid}" if self._pid is not None else ""
        return f"<nsbox.Pod {self._state}{pid} kinds={','.join(self.kinds)}{host}>"

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "running":
            warnings.warn(f"{self!r} was never stopped; stopping it now", ResourceWarning, source=self)
            try:
                self.stop(timeout=0)
            except Exception:
                pass


def stop_all(pods: Iterable["Pod"], timeout: float = 10.0) -> list[Optional[int]]:
    """Stop many pods; returns their exit statuses.  Much faster than calling
    ``stop()`` on each when they have networks: their host-side links are
    removed by the kernel in one batch, and waited for once."""
    from .net.veth import detach_all

    _check_timeout(timeout)
    pods = list(pods)
    deadline = time.monotonic() + timeout
    pending: list = []
    started = []
    try:
        for pod in pods:  # every holder is told to exit before any is waited for
            pod._lock.acquire()
            started.append(pod)
            if not pod._begin_stop(deadline):
                pod._lock.release()
                started.pop()
        for pod in started:
            pod._end_stop(pending)
    finally:
        for pod in started:
            pod._lock.release()
    detach_all(pending)
    return [pod._returncode for pod in pods]


def _check_timeout(timeout: Any) -> None:
    if timeout is None or timeout < 0:
        raise ConfigError(f"timeout must be a number of seconds >= 0, not {timeout!r}")


# ---- helpers -----------------------------------------------------------------


def _check_networks(network: Any, kinds: tuple[str, ...]) -> list:
    if network is None:
        return []
    nets = list(network) if isinstance(network, (list, tuple)) else [network]
    for net in nets:
        if not hasattr(net, "_attach"):
            raise ConfigError(f"network must be an nsbox.Veth or nsbox.Bridge (or a list of them), not {net!r}")
    if nets and "net" not in kinds:
        raise ConfigError("network= needs the 'net' kind (a network namespace of the pod's own)")
    names = [net.ifname for net in nets]
    if len(set(names)) != len(names):
        raise ConfigError(f"each network of a pod needs its own ifname; got {names} (use ifname='eth1', ...)")
    return nets


def _check_hostname(hostname: Optional[str], kinds: tuple[str, ...]) -> Optional[str]:
    if hostname is None:
        return None
    if not isinstance(hostname, str):
        raise ConfigError(f"hostname must be a str, not {type(hostname).__name__}")
    if "uts" not in kinds:
        raise ConfigError("hostname needs the 'uts' kind (a UTS namespace of the pod's own)")
    raw = hostname.encode("utf-8", "surrogateescape")
    if not raw or len(raw) > _HOSTNAME_MAX:
        raise ConfigError(f"hostname must be 1 to {_HOSTNAME_MAX} bytes long, got {len(raw)}: {hostname!r}")
    if any(c.isspace() or not c.isprintable() for c in hostname):
        raise ConfigError(f"hostname must not contain whitespace or control characters: {hostname!r}")
    return hostname


def _format_id_map(name: str, value: Optional[IdMap], own_id: int) -> str:
    if value is None:
        value = [(0, 0, 65536)] if own_id == 0 else [(0, own_id, 1)]
    if isinstance(value, str):
        lines = [line.split() for line in value.strip().splitlines()]
    else:
        try:
            lines = [list(t) for t in value]
        except TypeError:
            raise ConfigError(f"{name} must be a string or a list of (inside, outside, count)") from None
    if not lines:
        raise ConfigError(f"{name} is empty")
    out = []
    for entry in lines:
        try:
            inside, outside, count = (int(x) for x in entry)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: each entry must be 'inside outside count' integers, got {entry!r}") from None
        if min(inside, outside) < 0 or count <= 0 or max(inside, outside) + count > 2**32:
            raise ConfigError(f"{name}: entry {entry!r} is out of range")
        out.append(f"{inside} {outside} {count}")
    return "\n".join(out) + "\n"


def _privilege_error(kinds: tuple[str, ...]) -> Optional[PrivilegeError]:
    """Why clone() was refused, if it is a missing CAP_SYS_ADMIN (checked
    only after a failure: the check costs more than the clone's own)."""
    try:
        import prctl
    except ImportError:  # pragma: no cover - python-prctl is a dependency
        return None
    if "user" in kinds or prctl.cap_effective.sys_admin:
        return None
    return PrivilegeError(
        errno.EPERM,
        f"creating the {', '.join(kinds)} namespaces needs CAP_SYS_ADMIN, which this process "
        "lacks: run as root, or add the 'user' kind for an unprivileged pod",
    )


def _start_error(f: _syscalls.SpawnFailed, kinds: tuple[str, ...]) -> BaseException:
    if f.errno in (errno.EMFILE, errno.ENFILE):
        return PodStartError(
            f.errno,
            f"starting the pod failed at '{f.stage}': {os.strerror(f.errno)}; every running pod keeps "
            "one file descriptor (its holder's pidfd): stop unused pods, or raise the limit "
            "(resource.setrlimit(resource.RLIMIT_NOFILE, ...), ulimit -n)",
        )
    if f.stage == "clone":
        if f.errno == errno.EPERM:
            e = _privilege_error(kinds)
            if e is not None:
                return e
        return namespace_error(f.errno, f"creating the {', '.join(kinds)} namespaces")
    if f.stage in ("write uid_map", "write gid_map") and f.errno == errno.EPERM:
        which = f.stage.split()[1]
        return os_error(
            PrivilegeError,
            f.errno,
            f"the kernel refused this {which}: without CAP_SETUID/CAP_SETGID a process may only map "
            f"its own id, once (e.g. {which}='0 {os.geteuid() if which == 'uid_map' else os.getegid()} 1'); "
            "pass such a map, or run as root",
        )
    if f.stage == "exec":
        return PodStartError(
            f.errno,
            f"the holder program could not start ({f.stage}: {os.strerror(f.errno)}); "
            "reinstall nsbox so that nsbox/_native/nsbox-init is built",
        )
    return PodStartError(f.errno, f"starting the pod failed at '{f.stage}': {os.strerror(f.errno)}")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def _in_namespace(pid: int, kind: str, inode: Optional[int]) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino == inode
    except OSError:
        return False


def _pids_in_namespace(kind: str, inode: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _in_namespace(int(name), kind, inode):
            out.append(int(name))
    return out


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _is_exiting(pid: int) -> bool:
    """True once ``pid`` is inside exit() (PF_EXITING in /proc/PID/stat flags)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return bool(int(f.read().rsplit(b")", 1)[1].split()[6]) & 0x4)
    except (OSError, ValueError, IndexError):
        return False


def _signal_quietly(pidfd: int, sig: int) -> None:
    try:
        _syscalls.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        pass
