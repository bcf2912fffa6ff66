"""nsbox's pytest plugin (registered through the ``pytest11`` entry point:
installing nsbox is enough).  Guide: docs/pytest.md.

Fixtures (all function-scoped; nothing is autouse):

``nsbox_pod``
    A started ``nsbox.Pod()`` (net, ipc, uts, pid; loopback only), stopped
    after the test.
``nsbox_pod_factory``
    A :class:`PodFactory`: ``nsbox_pod_factory(**pod_options)`` makes and
    starts any number of pods, all stopped (persistent ones removed) after
    the test, even when it fails; ``.network()``, ``.veth()``, ``.subnet()``
    and ``.name()`` hand out bridges, veth configurations, subnets and pod
    names that no other test, xdist worker or pytest session uses.
``nsbox_network``
    An ``nsbox.Bridge`` of the test's own, on a subnet of its own, removed
    after the test (once its pods are stopped).

Names and subnets cannot collide: every subnet is leased, machine-wide,
from a pool (``--nsbox-subnet-pool``, default 10.240.0.0/12, one
``--nsbox-subnet-prefix`` (/24) block per network) under nsbox's state lock;
a lease is a file under ``$NSBOX_RUN_DIR/pytest/subnets`` naming its owner
(pid, start time), and the block of an owner that died is reclaimed (with
the bridge it left, if no pod uses it).  A bridge is named after its
block's address (``nsbp`` + 8 hex digits: 12 bytes), so two live leases
never give one name.  Blocks that overlap a route of the host, or whose
name is taken by a link, are skipped.

Leak check: ``@pytest.mark.nsbox_leakcheck`` on a test (or
``--nsbox-leak-check`` / ini ``nsbox_leak_check = true`` for every test)
fails it (an error at teardown) if, once its function-scoped fixtures are
torn down, it left a pod, a process, a link, a mount or a port rule, and
names each.

Without root, or when the kernel refuses namespaces, the fixtures skip the
test with the reason.
"""
from __future__ import annotations

import errno
import gc
import ipaddress
import itertools
import json
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pytest

# nsbox's modules are imported where they are used.  (Importing this module
# imports the nsbox package, its parent, anyway; the plugin's code itself
# needs nothing of nsbox until a fixture or the leak check runs.)
if TYPE_CHECKING:
    import nsbox

__all__ = ["PodFactory", "SubnetLease", "DEFAULT_POOL", "DEFAULT_PREFIX", "BRIDGE_PREFIX"]

DEFAULT_POOL = "10.240.0.0/12"
DEFAULT_PREFIX = 24
BRIDGE_PREFIX = "nsbp"  # + 8 hex digits of the block's network address: 12 bytes (IFNAMSIZ - 1 = 15)
_LEAK_FIXTURE = "_nsbox_leak_check"
_state_key = pytest.StashKey["_Session"]()


# ---- options -----------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nsbox", "nsbox pods (fixtures nsbox_pod, nsbox_pod_factory, nsbox_network)")
    group.addoption("--nsbox-subnet-pool", dest="nsbox_subnet_pool", default=None, metavar="CIDR",
                    help=f"IPv4 pool the fixtures lease test subnets from (default: ini nsbox_subnet_pool, else {DEFAULT_POOL})")
    group.addoption("--nsbox-subnet-prefix", dest="nsbox_subnet_prefix", default=None, type=int, metavar="N",
                    help=f"prefix length of each leased subnet (default: ini nsbox_subnet_prefix, else {DEFAULT_PREFIX})")
    group.addoption("--nsbox-leak-check", dest="nsbox_leak_check", action="store_true", default=None,
                    help="fail every test that leaves a pod, process, link, mount or nsbox port rule behind "
                         "(default: ini nsbox_leak_check; per test: @pytest.mark.nsbox_leakcheck)")
    parser.addini("nsbox_subnet_pool", f"IPv4 pool for the nsbox fixtures' subnets (default {DEFAULT_POOL})", default=None)
    parser.addini("nsbox_subnet_prefix", f"prefix length of each leased subnet (default {DEFAULT_PREFIX})", default=None)
    parser.addini("nsbox_leak_check", "leak-check every test (see --nsbox-leak-check)", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "nsbox_leakcheck(enabled=True): fail the test if it leaves an nsbox pod, a process, a link, "
        "a mount or an nsbox port rule behind (enabled=False opts out of --nsbox-leak-check)",
    )
    pool_text = config.getoption("nsbox_subnet_pool") or config.getini("nsbox_subnet_pool") or DEFAULT_POOL
    prefix_value = config.getoption("nsbox_subnet_prefix")
    if prefix_value is None:
        prefix_value = config.getini("nsbox_subnet_prefix") or DEFAULT_PREFIX
    try:
        pool = ipaddress.ip_network(str(pool_text).strip())
    except ValueError as e:
        raise pytest.UsageError(f"nsbox: subnet pool {pool_text!r} is not a network like {DEFAULT_POOL!r}: {e}") from None
    if not isinstance(pool, ipaddress.IPv4Network):
        raise pytest.UsageError(f"nsbox: subnet pool {pool} must be IPv4 (like {DEFAULT_POOL})")
    try:
        prefix = int(prefix_value)
    except ValueError:
        raise pytest.UsageError(f"nsbox: subnet prefix {prefix_value!r} is not a number") from None
    if not pool.prefixlen <= prefix <= 29:
        raise pytest.UsageError(f"nsbox: subnet prefix /{prefix} must be between the pool's /{pool.prefixlen} and /29")
    leak = config.getoption("nsbox_leak_check")
    if leak is None:
        leak = bool(config.getini("nsbox_leak_check"))
    worker = getattr(config, "workerinput", {}).get("workerid", "main")
    config.stash[_state_key] = _Session(pool, prefix, bool(leak), worker)


# ---- availability: skip, never error ------------------------------------------

_probe_result: Optional[tuple[int, Optional[str]]] = None  # (pid, reason or None)


def _unavailable() -> Optional[str]:
    """Why this process cannot make pods (None: it can).  Tried once per
    process by starting and stopping one pod: whatever refuses (no root,
    no CAP_SYS_ADMIN, a kernel without the namespaces, a namespace limit of
    0) says why in its own words."""
    global _probe_result
    if _probe_result is not None and _probe_result[0] == os.getpid():
        return _probe_result[1]
    import nsbox
    from nsbox.errors import NamespaceError, PrivilegeError, UnsupportedError

    reason: Optional[str] = None
    try:
        pod = nsbox.Pod()
        pod.start()
    except (PrivilegeError, UnsupportedError, NamespaceError) as e:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        reason = f"nsbox cannot make pods here (running as {who}): {e}"
    else:
        pod.stop()
    _probe_result = (os.getpid(), reason)
    return reason


def _require_pods() -> None:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)


_SKIP_ERRNOS = {errno.EPERM, errno.EACCES, errno.EOPNOTSUPP}


def _start(pod: nsbox.Pod) -> None:
    """Start ``pod``; a refusal of the environment (privileges, an
    unsupported feature such as netem) skips the test instead of failing it."""
    from nsbox.errors import NetworkError, PrivilegeError, UnsupportedError

    try:
        pod.start()
    except (PrivilegeError, UnsupportedError) as e:
        pytest.skip(f"nsbox cannot start this pod here: {e}")
    except NetworkError as e:
        if e.errno in _SKIP_ERRNOS:
            pytest.skip(f"nsbox cannot start this pod here: {e}")
        raise


# ---- subnets: leased machine-wide -------------------------------------------


def _leases_dir() -> Path:
    from nsbox.net.rundir import run_dir

    return run_dir() / "pytest" / "subnets"


def bridge_name(subnet: ipaddress.IPv4Network) -> str:
    """The bridge name of a leased block: unique while the lease is."""
    return f"{BRIDGE_PREFIX}{int(subnet.network_address):08x}"


@dataclass
class SubnetLease:
    """One subnet leased to this process (a file under ``$NSBOX_RUN_DIR/pytest/subnets``)."""

    subnet: ipaddress.IPv4Network
    path: Path
    owner: tuple[int, int]
    released: bool = False

    @property
    def bridge_name(self) -> str:
        return bridge_name(self.subnet)

    def release(self) -> None:
        from nsbox.net.rundir import locked, prune

        if self.released:
            return
        with locked():
            if _read_lease(self.path)[0] == self.owner:
                self.path.unlink(missing_ok=True)
            prune(self.path.parent)
        self.released = True


def _read_lease(path: Path) -> tuple[Optional[tuple[int, int]], dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
        pid, start = data["owner"]
        return (int(pid), int(start)), data
    except (OSError, ValueError, KeyError, TypeError):
        return None, {}


def _lease_file(subnet: ipaddress.IPv4Network) -> str:
    return f"{subnet.network_address}_{subnet.prefixlen}"


def _host_routes() -> list[ipaddress.IPv4Network]:
    """IPv4 routes of the main table (no default route): blocks that overlap
    one are in use on this host (a bridge of another tool, a LAN)."""
    out: list[ipaddress.IPv4Network] = []
    try:
        with open("/proc/net/route") as f:
            next(f)
            for line in f:
                fields = line.split()
                dest, mask = (socket.inet_ntoa(int(x, 16).to_bytes(4, "little")) for x in (fields[1], fields[7]))
                net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
                if net.prefixlen:
                    out.append(net)
    except (OSError, ValueError, StopIteration, IndexError):
        pass
    return out


def _host_links() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


def lease_subnet(pool: ipaddress.IPv4Network, prefix: int, *, note: Optional[dict[str, Any]] = None) -> SubnetLease:
    """Lease the lowest free ``/prefix`` block of ``pool`` to this process.

    Under nsbox's state lock: a block is free when no live lease (of any
    pool, any process) overlaps it, no host route overlaps it and no link
    has its bridge name.  Leases whose owner died are reclaimed, with the
    bridge they left when no pod uses it."""
    from nsbox import _proc
    from nsbox.errors import NetworkError
    from nsbox.net import rtnl
    from nsbox.net.rundir import locked, prune

    me = _proc.owner(os.getpid())
    assert me is not None
    with rtnl.Rtnl() as host, locked():
        d = _leases_dir()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        taken: list[ipaddress.IPv4Network] = []
        for path in d.iterdir():
            if path.name.startswith("."):
                continue
            owner, data = _read_lease(path)
            try:
                net = ipaddress.ip_network(data.get("subnet", ""))
            except ValueError:
                net = None
            if not isinstance(net, ipaddress.IPv4Network):
                path.unlink(missing_ok=True)  # not a lease (half-written by hand?)
                continue
            if owner is not None and _proc.owner(owner[0]) == owner:
                taken.append(net)
            elif not _reclaim(host, net):
                taken.append(net)  # its bridge is still used (a persistent pod on it)
            else:
                path.unlink(missing_ok=True)
        routes = _host_routes()
        links = _host_links()
        for block in pool.subnets(new_prefix=prefix):
            if any(block.overlaps(t) for t in taken) or any(block.overlaps(r) for r in routes):
                continue
            if bridge_name(block) in links:
                continue
            path = d / _lease_file(block)
            tmp = d / f".{path.name}.tmp"
            tmp.write_text(json.dumps({"subnet": str(block), "owner": list(me), "bridge": bridge_name(block), **(note or {})}))
            os.replace(tmp, path)
            return SubnetLease(block, path, me)
        prune(d)
    raise NetworkError(
        errno.EADDRNOTAVAIL,
        f"no free /{prefix} left in the nsbox test pool {pool} ({len(taken)} leased by live pytest sessions, "
        f"{len(routes)} host routes): use a larger pool (--nsbox-subnet-pool) or a longer prefix (--nsbox-subnet-prefix)",
    )


def _reclaim(host: Any, subnet: ipaddress.IPv4Network) -> bool:
    """The lease of ``subnet`` belonged to a process that died: delete the
    bridge it left (named after the block, made by nsbox for this subnet,
    no port, no live address lease).  False if it is still in use.  (State
    lock held.)"""
    import nsbox
    from nsbox.errors import NetworkError
    from nsbox.net import messages as msg

    from nsbox.net.link import link_info

    name = bridge_name(subnet)
    info = link_info(host, name)  # (rtnetlink: the calling thread's namespace, unlike /sys/class/net)
    if info is None:
        state = _bridge_state(name, subnet)
        if state.live_leases():
            return False  # its bridge is gone, but live pods still hold addresses of the block
        state.destroy()
        return True
    bridge = nsbox.Bridge(name, subnet=subnet)
    try:
        bridge._check_ours(info)
    except NetworkError:
        return False  # someone else's link with that name: leave it, skip the block
    if bridge.ports() or bridge._ipam.live_leases():
        return False
    err = host.run([msg.link_del(name)])[0]
    if err is not None and err.errno not in (errno.ENODEV, errno.ENOENT):
        return False
    bridge._ipam.destroy()
    return True


def _bridge_state(name: str, subnet: ipaddress.IPv4Network) -> Any:
    import nsbox

    return nsbox.Bridge(name, subnet=subnet)._ipam


# ---- the session, the test ----------------------------------------------------


@dataclass
class _Session:
    pool: ipaddress.IPv4Network
    prefix: int
    leak_check: bool
    worker: str
    token: str = field(default_factory=lambda: f"{os.getpid():x}{os.urandom(2).hex()}")
    names: Iterator[int] = field(default_factory=itertools.count)


class _TestResources:
    """What the fixtures made for one test, torn down in order: pods, then
    bridges, then subnet leases."""

    def __init__(self, session: _Session, nodeid: str):
        self.session = session
        self.nodeid = nodeid
        self.pods: list[nsbox.Pod] = []
        self.bridges: list[tuple[nsbox.Bridge, SubnetLease]] = []
        self.leases: list[SubnetLease] = []

    def lease(self) -> SubnetLease:
        lease = lease_subnet(self.session.pool, self.session.prefix,
                             note={"worker": self.session.worker, "test": self.nodeid})
        self.leases.append(lease)
        return lease

    def teardown(self) -> list[str]:
        import nsbox

        problems: list[str] = []
        pods, self.pods = self.pods, []
        try:
            nsbox.stop_all([p for p in pods if p.status().state == "running"])
        except Exception as e:
            problems.append(f"stopping the test's pods: {e}")
        for pod in pods:
            if pod.persist:
                try:
                    pod.remove(force=True)
                except Exception as e:
                    problems.append(f"removing persistent pod {pod.name!r}: {e}")
        try:
            nsbox.net.settle()  # pods stopped by the test itself: their links go in the background
        except Exception as e:
            problems.append(f"background network teardown: {e}")
        kept: set[int] = set()
        for bridge, lease in self.bridges:
            try:
                bridge.remove()
            except Exception as e:
                # The lease is kept (it dies with this process): the next
                # session reclaims the block once no pod uses the bridge.
                problems.append(f"bridge {bridge.name} ({bridge.subnet}) not removed: {e}")
                kept.add(id(lease))
        self.bridges = []
        for lease in self.leases:
            if id(lease) not in kept:
                try:
                    lease.release()
                except Exception as e:
                    problems.append(f"releasing subnet {lease.subnet}: {e}")
        self.leases = []
        return problems


@pytest.fixture
def _nsbox_resources(request: pytest.FixtureRequest) -> Iterator[_TestResources]:
    _require_pods()
    res = _TestResources(request.config.stash[_state_key], request.node.nodeid)
    yield res
    problems = res.teardown()
    if problems:
        pytest.fail("nsbox fixtures' teardown: " + "; ".join(problems), pytrace=False)


class PodFactory:
    """``nsbox_pod_factory``: makes pods (and networks) that are torn down
    after the test.

    ::

        def test_two(nsbox_pod_factory):
            net = nsbox_pod_factory.network()
            a = nsbox_pod_factory(network=net, hostname="a")
            b = nsbox_pod_factory(network=net, hostname="b")
            b.run(["ping", "-c1", str(a.address.ip)], check=True)
    """

    def __init__(self, resources: _TestResources):
        self._res = resources

    def __call__(self, *args: Any, start: bool = True, **options: Any) -> nsbox.Pod:
        """``nsbox.Pod(*args, **options)`` (or ``Pod.from_spec(spec, name=, persist=)``
        when given a ``PodSpec``), started unless ``start=False``; stopped
        after the test whatever happens (a persistent one removed too)."""
        import nsbox

        if args and isinstance(args[0], nsbox.PodSpec):
            pod = nsbox.Pod.from_spec(*args, **options)
        else:
            pod = nsbox.Pod(*args, **options)
        self._res.pods.append(pod)
        if start:
            _start(pod)
        return pod

    @property
    def pods(self) -> list[nsbox.Pod]:
        """The pods made so far, in order."""
        return list(self._res.pods)

    def subnet(self) -> ipaddress.IPv4Network:
        """A subnet (``--nsbox-subnet-prefix``, /24 by default) no other test,
        worker or session uses until this test ends."""
        return self._res.lease().subnet

    def network(self, **options: Any) -> nsbox.Bridge:
        """``nsbox.Bridge`` on a subnet of its own, with a name of its own
        (``options``: the Bridge keywords but name and subnet, e.g.
        ``rate="10mbit"``); removed after the test, once its pods are stopped."""
        for key in ("name", "subnet"):
            if key in options:
                raise TypeError(f"network() chooses the bridge's {key} itself (they must not collide)")
        import nsbox

        lease = self._res.lease()
        bridge = nsbox.Bridge(lease.bridge_name, subnet=lease.subnet, **options)
        self._res.bridges.append((bridge, lease))
        return bridge

    def veth(self, **options: Any) -> nsbox.Veth:
        """``nsbox.Veth`` on a subnet of its own: the pod gets ``.2``, the host
        end ``.1`` (``options``: the Veth keywords but the addresses, e.g.
        ``rate="10mbit"``)."""
        for key in ("address", "host_address"):
            if key in options:
                raise TypeError(f"veth() chooses {key} itself (they must not collide); use nsbox.Veth for your own")
        import nsbox

        net = self.subnet()
        return nsbox.Veth(address=f"{net[2]}/{net.prefixlen}", host_address=f"{net[1]}/{net.prefixlen}", **options)

    def name(self, base: str = "pod") -> str:
        """A pod name (``Pod(name=..., persist=True)``) no other test,
        worker or session uses: ``BASE-<pid+random>-<n>``."""
        s = self._res.session
        return f"{base}-{s.token}-{next(s.names)}"


@pytest.fixture
def nsbox_pod_factory(_nsbox_resources: _TestResources) -> PodFactory:
    """Make any number of pods, with any ``nsbox.Pod`` options, torn down after the test (see PodFactory)."""
    return PodFactory(_nsbox_resources)


@pytest.fixture
def nsbox_pod(nsbox_pod_factory: PodFactory) -> nsbox.Pod:
    """A fresh, started ``nsbox.Pod()`` (net, ipc, uts, pid; loopback only), stopped after the test."""
    return nsbox_pod_factory()


@pytest.fixture
def nsbox_network(nsbox_pod_factory: PodFactory) -> nsbox.Bridge:
    """An ``nsbox.Bridge`` with its own name and subnet, removed after the test."""
    return nsbox_pod_factory.network()


# ---- leak check ---------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash.get(_state_key, None)
    if state is None:
        return
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        marker = item.get_closest_marker("nsbox_leakcheck")
        on = state.leak_check
        if marker is not None:
            on = bool(marker.kwargs.get("enabled", marker.args[0] if marker.args else True))
        if not on or _LEAK_FIXTURE in item.fixturenames:
            continue
        # First of the function-scoped fixtures: set up after the wider-scoped
        # ones (what they make is not the test's), torn down after every
        # fixture of the test.
        names = item.fixturenames
        defs = item._fixtureinfo.name2fixturedefs
        at = next((i for i, n in enumerate(names) if n in defs and defs[n][-1].scope == "function"), len(names))
        names.insert(at, _LEAK_FIXTURE)


_NEVER_STOPPED = "was never stopped; stopping it now"  # Pod.__del__'s ResourceWarning


@pytest.fixture
def _nsbox_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    before = _Snapshot.take()
    # A pod dropped without stop() is stopped by its __del__, with a
    # ResourceWarning (ignored by default): it is a leak too.  Those are
    # noted as they are shown; every warning still goes, at once and once,
    # to whatever shows them (pytest's capture), after the filters the test
    # runs under decided about it (re-emitting it later would not give the
    # module-specific filters the module they match).
    never_stopped: list[str] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=".*" + _NEVER_STOPPED, category=ResourceWarning)
        shown = warnings.showwarning

        def showwarning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            text = str(message)
            if issubclass(category, ResourceWarning) and text.endswith(_NEVER_STOPPED):
                never_stopped.append(text)
            shown(message, category, *args, **kwargs)

        warnings.showwarning = showwarning
        yield
    leaks = [_Leak("pod", f"{text[:-len(_NEVER_STOPPED)].strip()} was never stopped (its __del__ stopped it)")
             for text in never_stopped]
    leaks += _leaks_after(before)
    if leaks:
        cleaned = _clean(leaks)
        text = "\n  ".join(str(leak) for leak in leaks)
        note = f"\n(cleaned up: {', '.join(cleaned)})" if cleaned else ""
        pytest.fail(f"nsbox leak check: {request.node.nodeid} left behind:\n  {text}{note}", pytrace=False)


@dataclass(frozen=True)
class _Leak:
    kind: str  # pod, persistent pod, process, link, mount, rule, teardown
    what: str
    pid: Optional[int] = None
    start: Optional[int] = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.what}"


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(x.decode(errors="replace") for x in f.read().split(b"\0") if x)[:120]
    except OSError:
        return "?"


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {line.split()[4] for line in f}


@dataclass
class _Snapshot:
    me: tuple[int, int]
    children: dict[int, int]  # pid -> start time
    records: dict[str, tuple[str, Optional[tuple[int, int]]]]  # persistent pods: name -> (state, creator)
    links: set[str]
    mounts: set[str]
    rules: set[str]

    @classmethod
    def take(cls) -> "_Snapshot":
        from nsbox import _proc

        me = _proc.owner(os.getpid())
        assert me is not None
        kids = {}
        for pid in _proc.children(os.getpid()):
            st = _proc.stat(pid)
            if st is not None:
                kids[pid] = st.start_time
        return cls(me, kids, _records(), _host_links(), _mount_points(), _rules())


def _records() -> dict[str, tuple[str, Optional[tuple[int, int]]]]:
    from nsbox.persist import readable_records

    try:
        return {r.name: (r.state, r.creator) for r in readable_records()}
    except Exception:
        return {}


def _rules() -> set[str]:
    from nsbox.net import nft, ports

    if not nft.available():
        return set()
    return {f"{table} {chain} {tag}" for table, chain, _, tag in ports._rules()}


def _leaks_after(before: _Snapshot) -> list[_Leak]:
    """What appeared since ``before`` and is this process's, once settled
    (waits up to 0.5 s for what is still going away)."""
    import nsbox

    problems: list[_Leak] = []
    try:
        nsbox.net.settle()
    except Exception as e:
        problems.append(_Leak("teardown", f"background network teardown failed: {e}"))
    gc.collect()  # a pod nobody references is stopped by its __del__: not a leak
    deadline = time.monotonic() + 0.5
    while True:
        leaks = _diff(before, _Snapshot.take())
        if not leaks or time.monotonic() > deadline:
            return problems + leaks
        time.sleep(0.02)


def _diff(before: _Snapshot, now: _Snapshot) -> list[_Leak]:
    from nsbox import _proc
    from nsbox.holder import INIT_PATH
    from nsbox.net.rundir import run_dir

    out: list[_Leak] = []
    init = os.path.realpath(INIT_PATH)
    holders: set[int] = set(p for p in now.children if _exe(p) == init) | set(p for p in before.children if _exe(p) == init)
    for pid, start in sorted(now.children.items()):
        if before.children.get(pid) == start:
            continue
        st = _proc.stat(pid)
        state = f", state {st.state}" if st is not None else ""
        if _exe(pid) == init:
            out.append(_Leak("pod", f"{_pod_repr(pid)} (holder PID {pid}) still running: never stopped", pid, start))
        else:
            out.append(_Leak("process", f"PID {pid} ({_cmdline(pid)}{state}) still a child of the test process", pid, start))
    ours = {n for n, (_, creator) in now.records.items() if creator is not None and creator[0] == os.getpid()}
    for name in sorted(ours):
        if name not in before.records:
            out.append(_Leak("persistent pod", f"{name!r} ({now.records[name][0]}), never removed"))
    # Links: veth ends whose peer is in another namespace go with that
    # namespace (a pod: reported above if ours); bridges of other sessions'
    # leases are theirs.
    new_links = sorted(now.links - before.links)
    if new_links:
        theirs = _other_sessions_bridges()
        for name, detail in _describe_links(new_links):
            if name in theirs or detail is None:
                continue
            out.append(_Leak("link", f"{name} ({detail}) in the host network namespace"))
    root = str(run_dir())
    me = f"{now.me[0]}.{now.me[1]}."
    for path in sorted(now.mounts - before.mounts):
        if path.startswith(root + "/"):
            rel = path[len(root) + 1:].split("/")
            if rel == ["pods"]:
                continue  # the shared pods mount: goes with the last persistent pod
            if rel[0] == "pods" and len(rel) > 1 and rel[1] not in ours:
                continue
            if rel[0] == "fs" and len(rel) > 1 and not rel[1].startswith(me) and rel[1][4:] not in ours:
                continue
        out.append(_Leak("mount", path))
    for rule in sorted(now.rules - before.rules):
        table, chain, tag = rule.split(" ", 2)
        parts = tag.split(":")
        holder = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        if table == f"nsbox-{os.getpid()}" or holder in holders:
            out.append(_Leak("rule", f"nft {table} chain {chain}: {tag}"))
    return out


def _pod_repr(holder: int) -> str:
    """The Pod object whose holder is ``holder``, as repr() shows it."""
    import nsbox

    for obj in gc.get_objects():
        if isinstance(obj, nsbox.Pod) and obj.pid == holder:
            return repr(obj)
    return "a pod"


def _other_sessions_bridges() -> set[str]:
    out: set[str] = set()
    try:
        paths = list(_leases_dir().iterdir())
    except OSError:
        return out
    for path in paths:
        owner, data = _read_lease(path)
        if owner is not None and owner[0] != os.getpid() and isinstance(data.get("bridge"), str):
            out.add(data["bridge"])
    return out


def _describe_links(names: list[str]) -> list[tuple[str, Optional[str]]]:
    """``(name, kind)`` of host links; kind None for a veth end whose peer
    lives in another network namespace (it goes with that namespace)."""
    try:
        r = subprocess.run(["ip", "-j", "-d", "link", "show"], capture_output=True, text=True, timeout=10)
        info = {link.get("ifname"): link for link in json.loads(r.stdout or "[]")}
    except (OSError, ValueError, subprocess.SubprocessError):
        info = {}
    out: list[tuple[str, Optional[str]]] = []
    for name in names:
        link = info.get(name)
        if link is None:
            if os.path.exists(f"/sys/class/net/{name}"):
                out.append((name, "link"))
            continue  # gone meanwhile
        kind = (link.get("linkinfo") or {}).get("info_kind") or link.get("link_type") or "link"
        if kind == "veth" and "link_netnsid" in link:
            out.append((name, None))
            continue
        alias = link.get("ifalias")
        out.append((name, f"{kind}, alias {alias}" if alias else kind))
    return out


def _clean(leaks: list[_Leak]) -> list[str]:
    """Kill the leaked holders and processes (children of this process,
    checked by start time through a pidfd), so later tests do not inherit
    them; remove leaked persistent pods.  Links, mounts and rules are left
    as they are (reported)."""
    import nsbox
    from nsbox import _proc, _syscalls

    done = []
    for leak in leaks:
        if leak.kind in ("pod", "process") and leak.pid is not None:
            try:
                fd = _syscalls.pidfd_open(leak.pid)
            except OSError:
                continue
            try:
                if _proc.owner(leak.pid) == (leak.pid, leak.start):
                    _syscalls.signal_quietly(fd, signal.SIGKILL)
                    done.append(f"PID {leak.pid}")
                    if leak.kind == "process":
                        _syscalls.wait_any([fd], 2.0)
                        try:
                            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
                        except ChildProcessError:
                            pass
            finally:
                os.close(fd)
        elif leak.kind == "persistent pod":
            name = leak.what.split("'")[1]
            try:
                nsbox.Pod.attach(name).remove(force=True)
                done.append(f"persistent pod {name!r} (removed)")
            except Exception:
                pass
    return done
