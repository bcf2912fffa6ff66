"""``Pod``: a holder plus the processes that join it, with one lifecycle.

A pod is a small state machine, ``new -> running -> stopped``, that composes
a :class:`~nsbox.spec.PodSpec` (what it is), a :class:`~nsbox.holder.Holder`
(its namespaces), its networks' attachments (:mod:`nsbox.net`) and its
:class:`~nsbox.members.Members`, and owns rollback:

- ``start()``: holder cloned -> network wired while it execs -> holder ready.
- ``spawn()``: the native child joins the holder's namespaces -> exec.
- ``stop()``: SIGTERM to every member, SIGKILL after ``timeout``, the holder
  ends, everything reaped, then the network is detached.
"""
from __future__ import annotations

import copy
import errno
import itertools
import logging
import os
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, TypeVar

from . import _proc, _syscalls, lifecycle
from .errors import ConfigError, NotRunningError
from .holder import Holder
from .kinds import DEFAULT_KINDS, KindsArg, flags_of, parse_kinds
from .members import Members, terminate_all
from .namespaces import Namespace
from .namespaces import joined as _joined
from .net import Attachment, Network, PodNetwork, detach_all, rtnl, unaddress_all
from .net.shaping import Shaping
from .spawn import PodProcess, run_process
from .lifecycle import Backoff, DoneCallbacks, PodStatus
from .persist import Persistence
from .podfs import PodFS, needs_fs, storage_key
from .records import Record, check_name
from .spec import IdMap, PodSpec

__all__ = ["Pod", "stop_all"]

log = logging.getLogger("nsbox")
T = TypeVar("T")
_HOME_NS = -2  # Pod._net_ns: the process's own network namespace (rtnl.home_netns_fd())

# How long stop() waits for the holder after it was told to exit, before SIGKILL.
_HOLDER_GRACE = 5.0
# Pods are locked in this order when several are (stop_all): no lock cycles.
_lock_order = itertools.count()


class Pod:
    """A set of namespaces held open by a tiny init process (the holder).

    ::

        with nsbox.Pod(hostname="web-0") as pod:
            pod.run(["hostname"])          # web-0, in the pod's net/ipc/uts/pid
            server = pod.spawn(["my-server"])

    Arguments (all validated before anything is created; they make the pod's
    :attr:`spec`, and :meth:`from_spec` makes a pod from one):

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
        host), :class:`nsbox.Bridge` (a shared bridge with IPAM) or
        :class:`nsbox.CNI` (real CNI plugins, see docs/runtime.md), or a list
        of them (each with its own ``ifname``; the first one is primary).
        Without it the pod has only ``lo`` (always up).
    uid_map, gid_map
        With ``"user"``: the id mappings, as ``/proc/PID/uid_map`` text or a
        list of ``(inside, outside, count)``.  Default maps 0..65535 inside to
        the same ids outside for root, or root inside to your own id.
    restart
        When the holder dies without ``stop()`` (killed from outside), make a
        new sandbox from the same spec at once, as the kubelet does after
        ``SandboxChanged``; members do not survive.  See :meth:`restart`.
    volumes
        ``{mount path: volume}``: :class:`nsbox.EmptyDir` (a directory, or a
        tmpfs, that lives as long as the pod) or :class:`nsbox.HostPath` (a
        host directory, bind-mounted).  Needs ``"mnt"``.  See
        :meth:`volume_path` and docs/volumes.md.
    hosts
        ``{name: address}``: extra lines of the pod's ``/etc/hosts``
        (Kubernetes' ``hostAliases``).  A pod with ``"mnt"`` always gets its own
        ``/etc/hostname``, ``/etc/hosts`` (with the pods on its bridges) and
        ``/etc/resolv.conf``; the host's files are never changed.
    dns
        :class:`nsbox.DNS`: the pod's ``/etc/resolv.conf``.  Default: the
        host's, without loopback name servers.  Needs ``"mnt"``.
    sysctls
        ``{name: value}``: namespaced sysctls (``net.*`` of the pod's network
        namespace, ``kernel.shm*``/``msg*``/``sem`` of its IPC namespace), set
        before :meth:`start` returns.
    """

    # The state of the current sandbox (see _new_sandbox).
    _holder: Optional[Holder]
    _pid: Optional[int]
    _start_time: Optional[int]
    _inodes: dict[str, int]
    _members: Optional[Members]
    _net: PodNetwork
    _stop_requested: bool

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
        restart: bool = False,
        volumes: Optional[Any] = None,
        hosts: Optional[Any] = None,
        dns: Optional[Any] = None,
        sysctls: Optional[Any] = None,
        name: Optional[str] = None,
        persist: bool = False,
    ):
        self._init(PodSpec.from_args(kinds, hostname=hostname, mount_proc=mount_proc, uid_map=uid_map,
                                     gid_map=gid_map, network=network, ports=ports, restart=restart,
                                     volumes=volumes, hosts=hosts, dns=dns, sysctls=sysctls), name, persist)

    @classmethod
    def from_spec(cls, spec: PodSpec, *, name: Optional[str] = None, persist: bool = False) -> "Pod":
        """A new (not started) pod with this configuration."""
        if not isinstance(spec, PodSpec):
            raise ConfigError(f"spec must be an nsbox.PodSpec, not {type(spec).__name__}")
        pod = cls.__new__(cls)
        pod._init(spec, name, persist)
        return pod

    @classmethod
    def attach(cls, name: str) -> "Pod":
        """The persistent pod ``name``, started by any process: same spec,
        same holder (or, if its holder has exited, a stopped pod that
        :meth:`restart` makes again).  NotRunningError if there is none."""
        record = Persistence.load(check_name(name))
        pod = cls.__new__(cls)
        pod._init(PodSpec.from_dict(record.spec), name, True)
        assert pod._persist is not None
        pod._persist.record = record
        pod._restarts = record.restarts
        with pod._lock:
            adopted = False
            if record.state in ("running", "stopping") and record.holder_alive():
                try:
                    pod._adopt(record)
                    adopted = True
                except NotRunningError:
                    pass  # it exited just now: a stopped pod, as below
            if not adopted:
                pod._state = "stopped"
                pod._stop_requested = record.state == "stopped"
                pod._last_returncode, pod._exited_at = record.returncode, record.exited_at
        return pod

    def _adopt(self, record: Record) -> None:
        """Take over the running sandbox ``record`` names.  (Lock held.)"""
        assert record.holder is not None
        holder = Holder.adopt(record.holder[0], record.holder[1], self.spec.kinds)
        self._holder, self._pid, self._state = holder, holder.pid, "running"
        self._start_time = record.holder[1]
        self._inodes = dict(record.inodes)
        self._members = Members(holder.pid, self.spec.kinds, self._inodes, holder.reaped_elsewhere)
        self._net = PodNetwork.from_record(record.network)
        if self._fs is not None:
            self._fs.adopt_names(record.holder, self._net.attachments)
        lifecycle.watch(self, [holder.pidfd])

    def _init(self, spec: PodSpec, name: Optional[str] = None, persist: bool = False) -> None:
        if name is not None:
            check_name(name)
        if persist and name is None:
            raise ConfigError("persist=True needs a name (Pod(name='web', persist=True))")
        self.spec = spec
        self.name = name
        self._persist = Persistence(name) if persist and name is not None else None
        self._lock = threading.RLock()
        self._order = next(_lock_order)
        self._state = "new"  # new -> running -> stopped (-> running again: restart)
        self._done = DoneCallbacks()
        self._restarts = 0
        self._last_returncode: Optional[int] = None
        self._exited_at: Optional[float] = None  # the last sandbox's exit
        self._restart_timer: Optional[threading.Timer] = None
        self._backoff = Backoff()  # restart=True
        self._error: Optional[str] = None
        self._restarting = False  # restart(): storage survives the stop
        # The network namespace the pod's host sides are made in: the calling
        # thread's at its start (a "router" pod's, for a pod made inside one),
        # and the same again at every restart, whichever thread restarts it
        # (the watcher's timer, restart() from anywhere).  _HOME_NS for the
        # process's own namespace, else a hold (rtnl.hold_netns, an fd),
        # dropped when the pod is stopped; -1: not known yet.
        self._net_ns = -1
        self._net_ns_held = False
        # Volumes, /etc files, sysctls: made at the first start, kept across restarts.
        # (A pod of this process gets its key at its first start: see _make_sandbox.)
        self._fs = (PodFS(spec, storage_key(name, True) if self._persist is not None else None)
                    if needs_fs(spec) else None)
        self._new_sandbox()

    def _new_sandbox(self) -> None:
        """The state of one sandbox (one holder), from start to stop."""
        self._holder = None
        self._pid = None
        self._start_time = None
        self._inodes = {}
        self._members = None
        self._net = PodNetwork()  # what the networks made for this pod
        self._stop_requested = False
        self._started_at: Optional[float] = None

    # ---- configuration (the spec's) ------------------------------------------

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.spec.kinds

    @property
    def hostname(self) -> Optional[str]:
        return self.spec.hostname

    @property
    def mount_proc(self) -> bool:
        return bool(self.spec.mount_proc)

    @property
    def networks(self) -> list[Network]:
        return list(self.spec.networks)

    @property
    def network(self) -> Optional[Network]:
        return self.spec.network

    @property
    def ports(self) -> list[tuple[str, int, int]]:
        return list(self.spec.ports)

    @property
    def persist(self) -> bool:
        """True for a pod that outlives its creator (``persist=True``)."""
        return self._persist is not None

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> "Pod":
        """Create the namespaces and the holder; return when the pod is ready.

        On failure nothing is left behind and the error says which step failed.
        """
        with self._lock:
            if self._state != "new":
                raise ConfigError(f"pod was already started ({self._state}); use restart(), or create a new Pod")
            self._start_sandbox(first=True)
            return self

    def _start_sandbox(self, first: bool = False) -> None:
        """Holder -> network -> ready, or roll back.  (Lock held.)"""
        if self._persist is None:
            self._make_sandbox(first)
        else:
            if first:
                from .cleanup import gc

                gc()  # what dead pods left (a crashed creator's leases, rules, half-made pods)
            with self._persist.exclusive():  # one process (re)starts it at a time
                other = self._persist.starting(self.spec.to_dict(), first)
                if other is not None:
                    self._new_sandbox()
                    self._adopt(other)  # another process restarted it meanwhile: that sandbox it is
                    self._restarts = other.restarts
                    return
                try:
                    self._make_sandbox(first)
                except BaseException:
                    self._persist.failed(first)
                    raise
        if not first:
            self._restarts += 1

    def _make_sandbox(self, first: bool) -> None:
        self._new_sandbox()
        try:
            if self._fs is not None:
                if first and self._persist is None:
                    self._fs.rekey(storage_key(self.name, False))  # (this process's, which the pod is tied to)
                self._fs.prepare()  # (host paths checked, EmptyDirs made: before any namespace)
            self._make_holder(first)
        except BaseException:
            if self._fs is not None:
                self._fs.undo_prepare()  # (host paths made for this start)
                if self._persist is None and (first or not self._keep_storage()):
                    self._fs.remove()  # (a persistent pod's go with its record)
            raise
        if self._fs is not None:
            self._fs.committed()

    def _make_holder(self, first: bool) -> None:
        spec = self.spec
        holder = Holder.begin(spec.kinds, hostname=spec.hostname, mount_proc=spec.mount_proc,
                              uid_map=spec.uid_map, gid_map=spec.gid_map, tied=self._persist is None,
                              # (a Veth or Bridge as the first network sets lo up with its own requests)
                              loopback_up=not (spec.networks and getattr(spec.networks[0], "LO_UP", False)))
        self._holder, self._pid, self._state = holder, holder.pid, "running"
        # The namespaces exist from clone on: wire them while the holder
        # sets itself up and execs on the other CPU, then wait for it.
        try:
            if self._persist is not None:
                self._persist.holder_cloned(holder.pid)  # before anything is made for it
            self._wire(holder.pid)
        except BaseException:
            try:
                holder.finish()  # a failure before its exec is the error to report
            finally:
                self._rollback(first)
            raise
        try:
            holder.finish()
            if self._fs is not None:
                self._fs.setup(holder, self._net)  # (after the holder's exec: its mounts are made)
            if self._persist is not None:
                self._persist.running(holder.pid, spec.kinds, self._inodes, self._net.to_record(),
                                      self._restarts + (not first))
                holder.outlive_creator()  # (until now a crash of this process took it along)
        except BaseException:
            self._rollback(first)
            raise
        self._started_at = time.time()
        lifecycle.watch(self, [holder.pidfd] + ([holder.lifeline] if holder.lifeline >= 0 else []))

    def restart(self, timeout: float = 10.0) -> "Pod":
        """A new sandbox from the same spec, as the kubelet makes after
        ``SandboxChanged``: a running pod is stopped first (``timeout`` as for
        :meth:`stop`); members do not survive.  Returns the pod."""
        _check_timeout(timeout)
        stopped = False
        try:
            with self._lock:
                first = self._state == "new"
                self._restarting = True
                try:
                    stopped = self._state == "running" and self._stop_locked(timeout)
                finally:
                    self._restarting = False
                self._restart_timer = None  # (a scheduled restart: this is it)
                self._backoff.reset()  # (a restart by hand starts the back-off afresh)
                self._start_sandbox(first=first)
        finally:
            if stopped:
                self._run_callbacks()  # (they see the new sandbox, or its failure)
        return self

    def _wire(self, pid: int) -> None:
        """What needs the holder's namespaces: their inodes, the networks,
        published ports.  (The holder is our unreaped child: its PID cannot
        be reused meanwhile.)"""
        spec = self.spec
        assert self._holder is not None
        self._members = Members(pid, spec.kinds, self._inodes, self._holder.reaped_elsewhere)
        proc = f"/proc/{pid}/ns/"
        netns = os.open(proc + "net", os.O_RDONLY | os.O_CLOEXEC) if spec.networks else -1
        try:
            for k in spec.kinds:
                self._inodes[k] = os.fstat(netns).st_ino if k == "net" and netns >= 0 else os.stat(proc + k).st_ino
            if spec.networks:
                self._net = self._attach_networks(netns, pid)
                if self._persist is not None:  # at once: what a crash from here on leaves, gc finds
                    self._persist.network_made(self._net.to_record())
        finally:
            if netns >= 0:
                os.close(netns)
        if spec.ports:
            owner = _proc.owner(pid)
            if owner is None:
                raise NotRunningError(errno.ESRCH, "the holder exited while the pod was starting")
            # (rules of a pod that outlives this process must not vanish with it;
            # in the namespace of the host side, like the network)
            net = self._net
            self._in_net_ns(lambda: net.publish(owner, list(spec.ports), kernel_owned=self._persist is None))

    def _attach_networks(self, netns: int, pid: int) -> PodNetwork:
        """The pod's networks, their host sides in the namespace of its start
        (see ``_net_ns``): from a helper thread inside it if the calling
        thread is elsewhere.  (Lock held.)"""
        spec = self.spec

        def attach() -> PodNetwork:
            # (a CNI network's plugins publish the ports at ADD, and name the pod in CNI_ARGS)
            return PodNetwork.attach(spec.networks, netns, pid, ports=spec.ports, pod_name=self.name)

        here = os.stat("/proc/thread-self/ns/net").st_ino
        if self._net_ns == -1:  # the first start (or the first since a stop): here
            if here == rtnl.HOME_INO:
                self._net_ns = _HOME_NS
            elif spec.ports and getattr(spec.networks[0], "KIND", None) != "cni":
                # (nsbox's rules would be the process's, in its own namespace,
                # and the host side elsewhere: a port that leads nowhere; a
                # CNI network's plugins publish them where they run)
                raise ConfigError("ports= needs the pod's host side in the process's own network namespace; "
                                  "this thread is in another one (a pod made inside another pod's namespace)")
            else:
                fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self._net_ns, self._net_ns_held = rtnl.hold_netns(fd), True
                finally:
                    os.close(fd)
        return self._in_net_ns(attach, undo=lambda net: net.detach(background=False), here=here)

    def _in_net_ns(self, fn: Callable[[], T], undo: Optional[Callable[[T], Any]] = None, here: int = 0) -> T:
        """``fn()`` in the namespace of ``_net_ns`` (set): here if this
        thread is in it (``here``: its inode, if known), else on a helper
        thread inside it.  (Lock held.)"""
        here = here or os.stat("/proc/thread-self/ns/net").st_ino
        fd = rtnl.home_netns_fd() if self._net_ns == _HOME_NS else self._net_ns
        if (rtnl.HOME_INO if self._net_ns == _HOME_NS else os.fstat(fd).st_ino) == here:
            return fn()
        return rtnl.call_in_netns(fd, fn, undo)

    def _forget_net_ns(self) -> None:
        if self._net_ns_held:
            rtnl.release_netns(self._net_ns)
        self._net_ns, self._net_ns_held = -1, False

    def _rollback(self, first: bool) -> None:
        """Undo a half-started pod.  The error that caused it is what the
        caller must see: a teardown problem here is only added as a note.
        A failed restart keeps the namespace its networks belong in."""
        if first:
            self._forget_net_ns()
        holder = self._holder
        assert holder is not None
        self._stop_requested = True  # (status: stopped, not exited)
        holder.kill_and_reap()
        if holder.pidfd < 0:
            self._pid = None  # reaped by the native side: the number may be another process's now
        try:
            self._finish()
        except Exception as e:  # pragma: no cover - teardown of a failed start
            warnings.warn(f"{self!r}: rolling back a failed start left something behind: {e}", RuntimeWarning, stacklevel=3)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """Stop the pod; idempotent.  Returns the holder's exit status.

        Every member gets SIGTERM; those still alive after ``timeout`` seconds
        get SIGKILL (with a PID namespace: by the holder's exit, which makes the
        kernel kill the whole namespace).  Returns only when every member and
        the holder are dead and reaped.
        """
        _check_timeout(timeout)
        with self._lock:
            stopped = self._stop_locked(timeout)  # (a pod not running: its storage goes in _stoppable)
            returncode = self.returncode
        if stopped:
            self._run_callbacks()
        return returncode

    def _stop_locked(self, timeout: float) -> bool:
        """Stop this sandbox; True if it was running.  (Lock held.)"""
        if self._begin_stop(time.monotonic() + timeout):
            self._end_stop(None)
            return True
        return False

    def _begin_stop(self, deadline: float) -> bool:
        """Members get SIGTERM (SIGKILL at ``deadline``), then the holder is
        told to exit.  False if there is nothing to stop.  (Lock held.)"""
        if not self._stoppable():
            return False
        assert self._holder is not None and self._members is not None
        # Members first, even if the holder is already gone (without a PID
        # namespace its death does not take them along).
        self._members.terminate(deadline)
        self._holder.signal(signal.SIGTERM)
        return True

    def _stoppable(self) -> bool:
        """True if running; a pod never started is stopped now.  (Lock held.)"""
        if not self._restarting:
            # Stopped by request: no restart of this sandbox follows (a
            # restart() from now on starts afresh, where it is called).  The
            # attachments hold the namespace for their own teardown.
            self._forget_net_ns()
        if self._state != "running":
            self._state = "stopped"
            if self._restart_timer is not None:  # a restart was scheduled: not any more
                self._restart_timer.cancel()
                self._restart_timer = None
                self._stop_requested = True
            if self._fs is not None and self._persist is None:
                self._fs.remove()  # (kept for that restart, or a restart that failed)
            return False
        self._stop_requested = True
        if self._persist is not None:
            self._persist.stopping()  # (so no process restarts it meanwhile)
        return True

    def _end_stop(self, network_out: Optional[list]) -> None:
        """Reap the holder (SIGKILL if it lingers) and finish.  (Lock held.)"""
        if not self._reap_holder(time.monotonic() + _HOLDER_GRACE):
            assert self._holder is not None
            self._holder.signal(signal.SIGKILL)
        self._reap_holder(None)
        self._finish(network_out)

    def _note_start_time(self) -> None:
        """The holder's start time (its identity, with the PID), read while
        it is our unreaped child: when asked, or at the latest before it is
        reaped (not at start: it would cost every pod a /proc read).  (Lock held.)"""
        holder = self._holder
        if self._start_time is None and holder is not None and holder.returncode is None and holder.ours:
            st = _proc.stat(holder.pid)
            self._start_time = st.start_time if st is not None else None

    def _reap_holder(self, deadline: Optional[float]) -> bool:
        assert self._holder is not None and self._members is not None
        self._note_start_time()
        return self._holder.reap(deadline, self._members.reap, self._members.reap_strays)

    def _finish(self, network_out: Optional[list] = None) -> None:
        # With a PID namespace every member is dead once the holder is reaped;
        # without one, members outlive the holder: a pod that ended takes them along.
        if self._members is not None:
            self._members.kill_spawned()
        if self._holder is not None:
            lifecycle.unwatch(self)
            self._holder.close()
            self._last_returncode = self._holder.returncode
            self._done.exited()  # this exit's callbacks, run once the lock is released
        self._state = "stopped"
        self._exited_at = time.time()
        # Host-side objects go by what was recorded, whatever became of the netns.
        try:
            if self._fs is not None:
                self._fs.sandbox_ended()
                if self._persist is None and not self._keep_storage():
                    self._fs.remove()
            if network_out is not None:
                network_out.extend(self._net.take())  # stop_all() tears them down in one go
            else:
                self._net.detach()
        finally:
            if self._persist is not None:
                self._persist.ended(self._stop_requested, self._last_returncode, self._exited_at, self._restarts)

    def _keep_storage(self) -> bool:
        """True if the pod's volumes outlive this sandbox: a restart follows.  (Lock held.)"""
        return self._restarting or (self.spec.restart and not self._stop_requested)

    def volume_path(self, path: str) -> Path:
        """Where the volume mounted at ``path`` in the pod lives on the host:
        an EmptyDir's directory under nsbox's run directory (from
        :meth:`start` until the pod ends), a HostPath's host path.  To look
        into it, or to bind-mount it into an OCI container of the pod."""
        if self._fs is None:
            raise ConfigError(f"{self!r} has no volumes")
        return self._fs.volume_path(path)

    def oci_namespaces(self, *, exclude: Iterable[str] = ()) -> list[dict[str, str]]:
        """``[{"type": "network", "path": ...}, ...]``: the ``linux.namespaces``
        of an OCI bundle whose container joins this running pod (as runc and
        crun are told by containerd and CRI-O); paths valid while the pod
        runs.  ``exclude``: nsbox kinds to leave out (e.g. ``("mnt",)``: the
        container needs a mount namespace of its own for its root).  See
        :func:`nsbox.oci.bundle_config`."""
        from . import oci

        return oci.namespaces(self, exclude=exclude)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the holder to exit (it does on SIGTERM/SIGINT, or when
        stopped); return its exit status.  Raises subprocess.TimeoutExpired.

        Other threads may use the pod (and stop it) meanwhile.  With
        ``restart=True`` this is the exit of the sandbox running when
        ``wait()`` was called; the pod goes on with a new one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._state == "new":
                raise NotRunningError(errno.ESRCH, "pod was never started")
            if self._state != "running" or self._holder is None:
                assert self.returncode is not None
                return self.returncode
            holder = self._holder
            fd = holder.dup_pidfd()
        try:
            while True:
                ended = restarting = False
                with self._lock:
                    if self._holder is holder and self._state == "running":
                        if holder.exiting():
                            restarting = self._on_holder_exit()
                            ended = True
                        else:
                            assert self._members is not None
                            self._members.reap()  # the holder cannot end while they are zombies
                    over = self._holder is not holder or self._state != "running"
                if ended and not restarting:
                    self._run_callbacks()
                if over:
                    returncode = holder.returncode
                    assert returncode is not None
                    return returncode
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(["nsbox-init"], timeout or 0)
                _syscalls.wait_any([fd], 0.05 if left is None else min(left, 0.05))
        finally:
            if fd >= 0:
                os.close(fd)

    def _on_holder_exit(self) -> bool:
        """The holder has exited (or is exiting) without stop(): reap it,
        take the members along, tear down, schedule a restart if the spec
        says so (True then: the callbacks run after it).  (Lock held.)"""
        assert self._holder is not None and self._members is not None
        if "pid" not in self.kinds:
            # Its death killed nobody: a pod that ended takes them along -- while
            # the unreaped holder still pins its PID (its children are found under it).
            self._members.kill_all()
        self._reap_holder(None)
        try:
            self._finish()
        except Exception as e:
            self._error = f"tearing down after the holder exited: {e}"
            log.warning("%r: %s", self, self._error)
        return self._schedule_restart()

    def _schedule_restart(self) -> bool:
        """With restart=True: a new sandbox, on a thread of its own (never
        the watcher's), after a back-off when sandboxes keep dying young
        (as the kubelet's CrashLoopBackOff).  True if one is scheduled.
        (Lock held.)"""
        if not self.spec.restart or (self._persist is not None and not self._persist.wants_restart()):
            return False
        timer = threading.Timer(self._backoff.delay((self._exited_at or 0) - (self._started_at or 0)), self._restart_now)
        timer.daemon = True
        self._restart_timer = timer
        timer.start()
        return True

    def _restart_now(self) -> None:
        """The scheduled restart (a timer thread); then the callbacks, which
        see the new sandbox."""
        with self._lock:
            if self._restart_timer is None or self._state != "stopped" or self._stop_requested:
                return  # stopped (or restarted) meanwhile
            self._restart_timer = None
            try:
                self._start_sandbox()
            except Exception as e:
                self._error = f"restarting: {e}"
                log.warning("%r: %s", self, self._error)
        self._run_callbacks()

    def _holder_exited(self) -> bool:
        """For the watcher: the holder's pidfd or lifeline polled readable.
        False if the pod is locked (whoever holds it is stopping or using it:
        look again shortly)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            holder = self._holder
            if self._state != "running" or holder is None or not holder.exiting():
                return True  # stopped meanwhile, or not this pod's event
            restarting = self._on_holder_exit()
        finally:
            self._lock.release()
        if not restarting:
            self._run_callbacks()
        return True

    # ---- events and status -----------------------------------------------------

    def add_done_callback(self, fn: Callable[["Pod"], object]) -> None:
        """Call ``fn(pod)`` each time the pod's holder has exited, for any
        reason (``stop()``, killed from outside, its creator gone), once it is
        reaped and the pod torn down -- with ``restart=True``, once the new
        sandbox runs.  Called at once if the pod is stopped already.  Runs in
        the thread that noticed (the one calling ``stop()``/``wait()``, or
        nsbox's watcher thread); exceptions are logged (logger ``nsbox``)."""
        if not callable(fn):
            raise ConfigError(f"a done callback must be callable, not {fn!r}")
        with self._lock:
            self._done.fns.append(fn)
            done = self._state == "stopped" and self._restart_timer is None
        if done:
            DoneCallbacks.call(self, [fn])

    def remove_done_callback(self, fn: Callable[["Pod"], object]) -> int:
        """Forget ``fn``; returns how many times it was registered."""
        with self._lock:
            return self._done.remove(fn)

    def _run_callbacks(self) -> None:
        """Run the callbacks due for the exits seen so far (no lock held)."""
        with self._lock:
            due = self._done.take_due()
        DoneCallbacks.call(self, due)

    def status(self) -> PodStatus:
        """A snapshot: state (new, running, exited, stopped), the holder's
        PID and start time, the last exit, restarts, namespace inodes."""
        with self._lock:
            holder = self._holder
            state = self._state
            self._note_start_time()
            if state == "running" and holder is not None and holder.exiting(deep=False):
                state = "exited"  # (being noticed right now)
            elif state == "stopped" and not self._stop_requested:
                state = "exited"
            record = self._persist.record if self._persist is not None else None
            return PodStatus(
                state=state, pid=self._pid, start_time=self._start_time, returncode=self._last_returncode,
                exited_at=self._exited_at, restarts=self._restarts, inodes=dict(self._inodes), error=self._error,
                name=self.name, pins=dict(record.pins) if record is not None and state == "running" else {},
            )

    def remove(self, *, force: bool = False) -> None:
        """Drop a persistent pod: its name, pins and record (idempotent).  A
        running pod is refused unless ``force`` (then it is stopped first)."""
        with self._lock:
            stopped = False
            if self._state == "running":
                if not force:
                    raise ConfigError(f"{self!r} is running; stop() it first, or remove(force=True)")
                stopped = self._stop_locked(10.0)
            if self._restart_timer is not None:  # a scheduled restart: not any more
                self._restart_timer.cancel()
                self._restart_timer = None
            if self._persist is not None:
                self._persist.remove()
            elif self._fs is not None and self._state != "running":
                self._fs.remove()
            self._forget_net_ns()
        if stopped:
            self._run_callbacks()

    def _dup_pidfd(self, kinds: tuple[str, ...] = ()) -> int:
        """A private duplicate of the holder's pidfd (call with the lock held),
        for joining ``kinds``: it stays valid, and names the holder, even if
        stop() closes ours.  (The join may make children of ours members.)"""
        self._require_running()
        assert self._holder is not None
        self._need_lifeline(kinds)
        return self._holder.dup_pidfd()

    @property
    def alive(self) -> bool:
        """True while the holder runs."""
        with self._lock:
            return self._state == "running" and self._holder is not None and self._holder.alive

    @property
    def pid(self) -> Optional[int]:
        """The holder's PID as the host sees it (None before start)."""
        return self._pid

    @property
    def pidfd(self) -> int:
        """A pidfd on the holder, or -1 when not running.  Owned by the pod."""
        return self._holder.pidfd if self._holder is not None else -1

    @property
    def returncode(self) -> Optional[int]:
        """The holder's exit status once reaped (negative: killed by that signal)."""
        if self._holder is not None and self._holder.returncode is not None:
            return self._holder.returncode
        return self._last_returncode if self._state != "running" else None

    # ---- network ---------------------------------------------------------------

    def shape(self, *, delay: Any = None, jitter: Any = None, loss: Optional[float] = None, rate: Any = None,
              ifname: Optional[str] = None) -> None:
        """Set the shaping of the pod's link on a running pod (both ends, each
        direction): ``delay``/``jitter`` like ``"50ms"``, ``loss`` in percent,
        ``rate`` like ``"10mbit"``.  Keywords left out mean "none";
        ``pod.shape()`` removes all shaping.  ``ifname`` picks the link of a
        pod with several networks (default: the first).  A failure changes
        nothing."""
        shaping = Shaping.parse(delay, jitter, loss, rate)
        with self._lock:
            self._require_running()
            self._net.find(ifname)  # (a clear error before the namespace is opened)
            with self._namespace("net") as ns:
                self._net.shape(shaping, ns.fileno(), ifname)

    @property
    def address(self) -> Optional[Any]:
        """The pod's primary address (``ipaddress.IPv4Interface`` or
        ``IPv6Interface``): the first network's; None without a network."""
        return self._net.address

    @property
    def addresses(self) -> dict:
        """``{pod interface name: address}`` for every network of the pod."""
        return self._net.addresses

    @property
    def host_ifname(self) -> Optional[str]:
        """The name of the pod's (first) link on the host side, or None."""
        return self._net.host_ifname

    @property
    def cni_result(self) -> Optional[dict]:
        """The result of the pod's (first) CNI network's ADD, as its last
        plugin printed it (``interfaces``, ``ips``, ``routes``, ``dns``);
        None without a CNI network or when not running."""
        from .net.cni import CNIAttachment

        for att in self._net.attachments:
            if isinstance(att, CNIAttachment):
                return copy.deepcopy(att.result)
        return None

    def cni_check(self) -> None:
        """Run CNI ``CHECK`` of the pod's CNI networks (every plugin, with
        the result of ADD): raises :class:`nsbox.CNIError` naming the plugin
        that finds its part changed (e.g. the pod's address removed)."""
        from .net.cni import CNIAttachment

        with self._lock:
            self._require_running()
            atts = [att for att in self._net.attachments if isinstance(att, CNIAttachment)]
            if not atts:
                raise ConfigError(f"{self!r} has no CNI network")
            for att in atts:
                att.check()

    # ---- namespaces --------------------------------------------------------------

    def namespace(self, kind: str) -> Namespace:
        """A new handle on one of the pod's namespaces (close it when done)."""
        with self._lock:
            return self._namespace(kind)

    def _namespace(self, kind: str) -> Namespace:
        self._require_running()
        if kind not in self.kinds:
            parse_kinds(kind)
            raise ConfigError(f"the pod has no {kind!r} namespace; its kinds are {', '.join(self.kinds)}")
        assert self._holder is not None
        ns = Namespace.from_pid(self._holder.pid, kind)
        if not self._holder.alive:
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

    @contextmanager
    def joined(self, *kinds: str) -> Iterator["Pod"]:
        """Run the ``with`` body on the calling thread inside the pod's
        namespaces (default: all but ``user``), then go back.

        See :func:`nsbox.joined` for the per-thread rules.
        """
        join = self._join_kinds(kinds or None, for_thread=True)
        self._require_running()
        with _joined(self, join):  # (the lifeline is taken with the pidfd it joins: _dup_pidfd)
            yield self

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
            assert self._holder is not None and self._members is not None
            self._members.reap()
            self._need_lifeline(join)
            proc = PodProcess(args, _join_pidfd=self._holder.pidfd, _join_flags=flags_of(join), _desc=repr(self),
                              _joins_user="user" in join, **popen_kwargs)
            self._members.add(proc)
            return proc

    def run(self, args: Any, *, kinds: Optional[KindsArg] = None, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``args`` inside the pod and wait, like :func:`subprocess.run`
        (same keywords: ``input``, ``capture_output``, ``timeout``, ``check``,
        and those of :meth:`spawn`)."""
        return run_process(lambda **popen_kwargs: self.spawn(args, kinds=kinds, **popen_kwargs), **kwargs)

    def _need_lifeline(self, join: tuple[str, ...]) -> None:
        """Children of ours are about to join the pod's PID namespace: if the
        holder dies, the kernel keeps it from exiting until we reap them, so
        its pidfd would not say it died.  Have the watcher also watch its
        lifeline, which does (taken from the holder at the first need).
        (Lock held.)"""
        holder = self._holder
        if "pid" in join and holder is not None and holder.lifeline < 0 and holder.ours:
            fd = holder.take_lifeline()
            if fd >= 0:
                lifecycle.watch_also(self, fd)

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
            if self._state == "new":
                what = "was never started (call start() or use 'with')"
            elif self._stop_requested:
                what = "is stopped"
            else:
                what = f"has exited (its holder died{'' if self._error is None else ': ' + self._error}); restart() it"
            raise NotRunningError(errno.ESRCH, f"{self!r} {what}")

    # ---- protocol ----------------------------------------------------------

    def __enter__(self) -> "Pod":
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        host = f" hostname={self.hostname!r}" if self.hostname else ""
        pid = f" pid={self._pid}" if self._pid is not None else ""
        return f"<nsbox.Pod{name} {self._state}{pid} kinds={','.join(self.kinds)}{host}>"

    def __del__(self) -> None:
        if getattr(self, "_net_ns_held", False):
            self._forget_net_ns()  # (a router's namespace: not kept alive by a pod that is gone)
        if getattr(self, "_state", None) != "running":
            return
        # Bounded: at interpreter exit a daemon thread (the watcher, a restart
        # timer) may be frozen holding this lock for good.
        if not self._lock.acquire(timeout=1.0):
            return
        try:
            if self._persist is not None:
                # A persistent pod lives on: only this object's handles on it go.
                if self._holder is not None:
                    lifecycle.unwatch(self)
                    self._holder.close()
                return
            warnings.warn(f"{self!r} was never stopped; stopping it now", ResourceWarning, source=self, stacklevel=2)
            try:
                self.stop(timeout=0)
            except Exception:
                pass
        finally:
            self._lock.release()


def stop_all(pods: Iterable[Pod], timeout: float = 10.0) -> list[Optional[int]]:
    """Stop many pods; returns their exit statuses.  Much faster than calling
    ``stop()`` on each when they have networks: their host-side links are
    removed by the kernel in one batch, and waited for once.

    Safe to call from several threads on overlapping lists: the pods are
    locked in one global order."""
    _check_timeout(timeout)
    pods = list(pods)
    deadline = time.monotonic() + timeout
    detached: list[Attachment] = []
    started: list[Pod] = []
    done = False
    try:
        for pod in sorted({id(p): p for p in pods}.values(), key=lambda p: p._order):
            pod._lock.acquire()
            started.append(pod)
            if not pod._stoppable():
                pod._lock.release()
                started.pop()
        # Every member of every pod gets SIGTERM and the grace period at
        # once; then every holder is told to exit before any is waited for.
        terminate_all([pod._members for pod in started if pod._members is not None], deadline)
        # Host ends lose their addresses before their namespaces go: the
        # kernel then deletes them without flushing the host's route tables
        # once per link (see unaddress_all).
        unaddress_all([a for pod in started for a in pod._net.attachments])
        for pod in started:
            assert pod._holder is not None
            pod._holder.signal(signal.SIGTERM)
        for pod in started:
            pod._end_stop(detached)
        done = True
    finally:
        for pod in started:
            pod._lock.release()
        # Also after an exception (which stays the one raised): what the
        # pods stopped so far made goes.
        try:
            detach_all(detached)
        except Exception:
            if done:
                raise
    for pod in started:  # (no lock held, everything torn down)
        pod._run_callbacks()
    return [pod.returncode for pod in pods]


def _check_timeout(timeout: Any) -> None:
    if timeout is None or timeout < 0:
        raise ConfigError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
