#!/usr/bin/env python3
"""nsbox benchmarks: nsbox against the ways pods are built today, measured
side by side, interleaved, in one run (ratios, not absolute numbers, are what
carries from one machine to another).

    python benchmarks/bench.py                  # full run (make bench)
    python benchmarks/bench.py --quick          # tiny sizes (make test runs this)

Plans compared for "pod with veth networking" (net+ipc+uts+pid, holder PID 1,
veth pair, addresses, lo up, default route):
  shell      unshare + one ip/nsenter process per step, as most guides do it
             (pair made on the host, one end moved into the pod and renamed)
  shell-in-place  the same, but the peer is born in the pod (the best shell plan)
  ip-batch   unshare + `ip -batch` on each side
  pyroute2   unshare + pyroute2 IPRoute (host) and IPRoute on a thread in the pod's netns
  floor      nsbox's holder + hand-packed netlink (struct), fewest round trips
  nsbox      nsbox.Pod(network=nsbox.Veth(...)).start()
Teardown: create and stop, each timed, of a pod without network, a veth pod,
a bridge pod and a bridge pod with one published port.
Scale (issue 13): N pods alive (--scale, default 1000; make bench SCALE=10000)
by nsbox and by the floor, veth and on one bridge (the bridge floor: the same
hand-packed netlink, host ends enslaved at creation), one plan per run, runs
alternating ABBA, per-pod cost by blocks, stop_all until the links are gone,
memory per pod and pod.run with N alive; and pods on one bridge until the
kernel's port limit refuses one.  --only scale runs that section alone.
Run as root.  Uses 10.245.0.0/16, 10.247.0.0/16 and 10.249.0.0/24 (full) or
10.246.0.0/16, 10.248.0.0/16 and 10.250.0.0/24 (quick) only; links named nsbb*,
nsbxbench0, nsbxfloor0, nsbxlim0, nsbxlimf0, nsbxtd0.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import nsbox

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ---- addressing -------------------------------------------------------------------

class Subnets:
    """Hands out /30s: (host address, pod address) as IPv4Interface."""

    def __init__(self, base: str):
        self.net = ipaddress.ip_network(base)
        self.i = 0

    def next(self):
        block = self.net.network_address + 4 * (self.i % (self.net.num_addresses // 4))
        self.i += 1
        return ipaddress.ip_interface(f"{block + 1}/30"), ipaddress.ip_interface(f"{block + 2}/30")


def host_name() -> str:
    return "nsbb" + os.urandom(4).hex()


def links() -> set:
    return {n for _, n in socket.if_nameindex()}


def wait_links_gone(names, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    names = set(names)
    while names & links():
        if time.monotonic() > deadline:
            for n in names & links():
                subprocess.run(["ip", "link", "del", n], capture_output=True)
            return
        time.sleep(0.002)


# ---- holders for the baselines --------------------------------------------------------

class UnshareHolder:
    """`unshare` as the holder, as a shell user would do it."""

    def __init__(self, kinds=("--net", "--ipc", "--uts", "--pid")):
        self.proc = subprocess.Popen(["unshare", *kinds, "--fork", "--kill-child", "sleep", "infinity"])
        self.pid = self.proc.pid
        # Ready, like an nsbox holder, once the process that holds the
        # namespaces runs its program: unshare's child has exec'd sleep.
        while not any(_comm(c) == "sleep" for c in _children(self.pid)):
            time.sleep(0.00005)

    def stop(self):
        # --kill-child relies on PR_SET_PDEATHSIG, which races (util-linux
        # #1490): kill the child ourselves first, by PID, then unshare.
        for child in _children(self.pid):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait()


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def sh(*argv):
    subprocess.run(argv, check=True)


# ---- plans: pod with veth networking ---------------------------------------------------------

def plan_shell(sub: Subnets):
    """The recipe of most guides: make the pair on the host, move one end
    into the pod, rename it there (a host end named eth0 would collide)."""
    host, pod = sub.next()
    h = UnshareHolder()
    name = host_name()
    peer = "nsbp" + name[4:]
    ns = ["nsenter", "-t", str(h.pid), "-n"]
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
    sh("ip", "link", "set", peer, "netns", str(h.pid))
    sh("ip", "addr", "add", str(host), "dev", name)
    sh("ip", "link", "set", name, "up")
    sh(*ns, "ip", "link", "set", peer, "name", "eth0")
    sh(*ns, "ip", "addr", "add", str(pod), "dev", "eth0")
    sh(*ns, "ip", "link", "set", "eth0", "up")
    sh(*ns, "ip", "link", "set", "lo", "up")
    sh(*ns, "ip", "route", "add", "default", "via", str(host.ip))
    return lambda: (h.stop(), name)


def plan_shell_in_place(sub: Subnets):
    """The best per-step shell plan: the peer is born in the pod."""
    host, pod = sub.next()
    h = UnshareHolder()
    name = host_name()
    ns = ["nsenter", "-t", str(h.pid), "-n"]
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", str(h.pid))
    sh("ip", "addr", "add", str(host), "dev", name)
    sh("ip", "link", "set", name, "up")
    sh(*ns, "ip", "addr", "add", str(pod), "dev", "eth0")
    sh(*ns, "ip", "link", "set", "eth0", "up")
    sh(*ns, "ip", "link", "set", "lo", "up")
    sh(*ns, "ip", "route", "add", "default", "via", str(host.ip))
    return lambda: (h.stop(), name)


def plan_ip_batch(sub: Subnets):
    host, pod = sub.next()
    h = UnshareHolder()
    name = host_name()
    subprocess.run(["ip", "-batch", "-"], check=True, text=True, input=(
        f"link add {name} type veth peer name eth0 netns {h.pid}\n"
        f"addr add {host} dev {name}\nlink set {name} up\n"))
    subprocess.run(["nsenter", "-t", str(h.pid), "-n", "ip", "-batch", "-"], check=True, text=True, input=(
        f"addr add {pod} dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {host.ip}\n"))
    return lambda: (h.stop(), name)


_ipr = None


def plan_pyroute2(sub: Subnets):
    global _ipr
    from pyroute2 import IPRoute

    if _ipr is None:
        _ipr = IPRoute(groups=0)  # reused: opening one costs ~1 ms
    host, pod = sub.next()
    h = UnshareHolder()
    name = host_name()
    fd = os.open(f"/proc/{h.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _ipr.link("add", ifname=name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
    finally:
        os.close(fd)
    idx = socket.if_nametoindex(name)
    _ipr.addr("add", index=idx, address=str(host.ip), prefixlen=30)
    _ipr.link("set", index=idx, state="up")

    def inside():
        # pyroute2 0.9 opens its socket lazily in the namespace of the thread
        # that uses it: open *and use* it on a thread inside the pod.
        nsbox.join(h.pid, "net")
        with IPRoute(groups=0) as ipr:
            i = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=i, address=str(pod.ip), prefixlen=30)
            ipr.link("set", index=i, state="up")
            ipr.link("set", index=1, state="up")
            ipr.route("add", gateway=str(host.ip))

    t = threading.Thread(target=inside)
    t.start()
    t.join()
    return lambda: (h.stop(), name)


# hand-packed rtnetlink: the floor for the same plan in one process
_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")


def _attr(atype, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + b"\0" * ((4 - n % 4) % 4)


def _msg(mtype, flags, seq, body: bytes) -> bytes:
    return _NLMSG.pack(16 + len(body), mtype, flags, seq, 0) + body


def _nl_run(sock, msgs) -> list:
    sock.send(b"".join(msgs))
    want, replies = len(msgs), []
    while len(replies) < want:
        data = sock.recv(65536)
        off = 0
        while off < len(data):
            length, mtype, _, _, _ = _NLMSG.unpack_from(data, off)
            if mtype == 2:
                replies.append(struct.unpack_from("=i", data, off + 16)[0])
            off += (length + 3) & ~3
    if any(replies):
        raise OSError(-min(replies), os.strerror(-min(replies)))
    return replies


def _nl_socket(fd=None):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) if fd is None else socket.socket(fileno=fd)
    s.bind((0, 0))
    return s


_floor_sock = None
F_REQ_ACK, F_CREATE_EXCL = 0x1 | 0x4, 0x400 | 0x200
_floor_index = 0x40000000 + int.from_bytes(os.urandom(3), "big") * 16


def floor_index() -> int:
    """The ifindex of the next host end (chosen: no lookup).  Counted, not
    random: 10,000 random picks from 2**24 collide (EEXIST) almost surely."""
    global _floor_index
    _floor_index += 1
    return _floor_index


def no_ipv6_ll(index: int, seq: int) -> bytes:
    """addrgenmode none, in a request of its own before the one that sets the
    link up, as nsbox does for IPv4-only links (see docs/performance.md: a
    link-local address means DAD, MLD reports, a route per link)."""
    spec = _attr(26, _attr(10, _attr(8, b"\1")))
    return _msg(16, F_REQ_ACK, seq, _IFINFO.pack(0, 0, index, 0, 0) + spec)


def plan_floor(sub: Subnets):
    p, name = floor_pod(sub)
    return lambda: (p.stop(), name)


def floor_pod(sub: Subnets):
    global _floor_sock
    from nsbox import _syscalls

    if _floor_sock is None:
        _floor_sock = _nl_socket()
    host, pod = sub.next()
    p = nsbox.Pod().start()  # C clone + exec of the holder, lo up
    name = host_name().encode()
    host_index = floor_index()
    nsfd = os.open(f"/proc/{p.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer = _IFINFO.pack(0, 0, 2, 0, 0) + _attr(3, b"eth0\0") + _attr(28, struct.pack("=I", nsfd))
        linkinfo = _attr(18, _attr(1, b"veth\0") + _attr(2, _attr(1, peer)))
        veth = _IFINFO.pack(0, 0, host_index, 0, 0) + _attr(3, name + b"\0") + linkinfo
        haddr = host.ip.packed
        addr = _IFADDR.pack(2, 30, 0, 0, host_index) + _attr(2, haddr) + _attr(1, haddr)
        _nl_run(_floor_sock, [_msg(16, F_REQ_ACK | F_CREATE_EXCL, 1, veth), no_ipv6_ll(host_index, 2),
                              _msg(16, F_REQ_ACK, 3, _IFINFO.pack(0, 0, host_index, 1, 1)),
                              _msg(20, F_REQ_ACK | F_CREATE_EXCL, 4, addr)])
        inner = _nl_socket(_syscalls.socket_in_netns(nsfd, socket.AF_NETLINK, socket.SOCK_RAW, 0))
    finally:
        os.close(nsfd)
    with inner:
        paddr = pod.ip.packed
        a = _IFADDR.pack(2, 30, 0, 0, 2) + _attr(2, paddr) + _attr(1, paddr)
        up = _IFINFO.pack(0, 0, 2, 1, 1)
        rt = _RTMSG.pack(2, 0, 0, 0, 254, 3, 0, 1, 0) + _attr(5, host.ip.packed)
        _nl_run(inner, [no_ipv6_ll(2, 2), _msg(16, F_REQ_ACK, 3, up), _msg(20, F_REQ_ACK | F_CREATE_EXCL, 4, a),
                        _msg(24, F_REQ_ACK | F_CREATE_EXCL, 5, rt)])
    return p, name.decode()


def plan_nsbox(sub: Subnets):
    host, pod = sub.next()
    p = nsbox.Pod(network=nsbox.Veth(address=pod, host_address=host)).start()
    name = p.host_ifname
    return lambda: (p.stop(), name)


POD_PLANS = {"shell": plan_shell, "shell-in-place": plan_shell_in_place, "ip-batch": plan_ip_batch,
             "pyroute2": plan_pyroute2, "floor": plan_floor, "nsbox": plan_nsbox}


# ---- measuring ----------------------------------------------------------------------------

def interleaved(plans: dict, rounds: int, make_arg=lambda: None, teardown=True, settle=0.0) -> dict:
    """Each round runs every plan once, in a shuffled order (so no plan always
    runs right after the same other one), letting the kernel's background
    work of the previous teardown settle for ``settle`` seconds first."""
    import random

    rng = random.Random(1)
    times = {k: [] for k in plans}
    for r in range(rounds + 1):  # round 0 warms up and is dropped
        order = list(plans.items())
        rng.shuffle(order)
        for name, fn in order:
            if settle:
                time.sleep(settle)
            arg = make_arg()
            t = time.perf_counter()
            undo = fn(arg) if arg is not None else fn()
            dt = time.perf_counter() - t
            if r:
                times[name].append(dt * 1000)
            if teardown and undo:
                result = undo()
                left = [x for x in (result if isinstance(result, tuple) else (result,)) if isinstance(x, str)]
                wait_links_gone(left)
                _settle()  # (nsbox's background teardown is the teardown's time, not the next create's)
    return times


def summary(times: dict, base: str) -> dict:
    out = {}
    med_base = statistics.median(times[base])
    for name, xs in times.items():
        m = statistics.median(xs)
        out[name] = {"median_ms": round(m, 3), "min_ms": round(min(xs), 3), "max_ms": round(max(xs), 3),
                     "n": len(xs), f"ratio_vs_{base}": round(m / med_base, 3)}
    return out


def bench_pods(rounds: int, sub: Subnets) -> dict:
    return summary(interleaved(POD_PLANS, rounds, make_arg=lambda: sub), "nsbox")


def bench_holder(rounds: int) -> dict:
    def unshare_cli():
        h = UnshareHolder()
        return h.stop

    def nsbox_pod():
        return nsbox.Pod(kinds=("net", "ipc", "uts", "pid")).start().stop

    return summary(interleaved({"unshare": unshare_cli, "nsbox": nsbox_pod}, rounds), "nsbox")


def bench_run(rounds: int) -> dict:
    pod = nsbox.Pod().start()
    try:
        plans = {
            "host subprocess.run": lambda: subprocess.run(["true"]) and None,
            "nsenter": lambda: subprocess.run(["nsenter", "-t", str(pod.pid), "-n", "-i", "-u", "-p", "true"]) and None,
            "nsbox pod.run": lambda: pod.run(["true"]) and None,
        }
        return summary(interleaved(plans, rounds * 3), "nsbox pod.run")
    finally:
        pod.stop()


def bench_podfs(rounds: int) -> dict:
    """Create + stop: a pod without mnt, with mnt (its own /etc files), with
    volumes, /etc entries and a sysctl; and the shell route to the same
    mounts (unshare, then mount in a shell) for reference."""
    import tempfile

    src = tempfile.mkdtemp(prefix="nsbox-bench-")
    kinds = ("net", "ipc", "uts", "pid", "mnt")
    files = " ".join(f"mount --bind {src}/f /etc/{n};" for n in ("hostname", "hosts", "resolv.conf"))
    shell = (f"touch {src}/f; mkdir -p {src}/d {src}/m; mount -t tmpfs -o size=64m tmpfs {src}/m; {files} "
             f"mount --bind {src}/d /mnt; mount --bind -o ro {src} /media")

    def plan(**kw):
        return lambda: nsbox.Pod(**kw).start().stop() and None

    plans = {
        "pod, no mnt": plan(),
        "pod + mnt (own /etc files)": plan(kinds=kinds, hostname="b"),
        "pod + mnt + 3 volumes, hosts, dns, sysctl": plan(
            kinds=kinds, hostname="b", hosts={"db.test": "10.201.0.9"}, dns=nsbox.DNS(nameservers=["10.201.0.1"]),
            sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
            volumes={"/nsbench-data": nsbox.EmptyDir(), "/nsbench-m": nsbox.EmptyDir(medium="memory", size_limit="64Mi"),
                     "/nsbench-src": nsbox.HostPath(src, read_only=True)}),
        "unshare + mount in sh (3 files, tmpfs, 2 binds)": lambda: subprocess.run(
            ["unshare", "--mount", "--net", "--ipc", "--uts", "--pid", "--fork", "--propagation", "private",
             "sh", "-c", shell], check=True) and None,
    }
    try:
        return summary(interleaved(plans, rounds), "pod + mnt + 3 volumes, hosts, dns, sysctl")
    finally:
        shutil.rmtree(src, ignore_errors=True)


def free_port() -> int:
    """A host TCP port nothing listens on (asked from the kernel)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _settle() -> None:
    """Wait until what earlier stops handed to the background is done (so one
    plan's teardown is not paid by the next one's create); a no-op for an
    nsbox without background teardown."""
    settle = getattr(nsbox.net, "settle", None)
    if settle is not None:
        settle()


def bench_teardown(rounds: int, sub: Subnets, subnet: str) -> dict:
    """Create and stop, each timed, for four kinds of pod, interleaved round
    by round in a shuffled order.  ``stop`` is what ``pod.stop()`` costs the
    caller; ``settled`` adds the wait until everything the stop handed to the
    background (link deletion, lease, rules) is done."""
    import random

    bridge = nsbox.Bridge("nsbxtd0", subnet=subnet)
    port = free_port()
    kinds = {
        "no network": lambda: nsbox.Pod(),
        "veth": lambda: nsbox.Pod(network=nsbox.Veth(*reversed(sub.next()))),
        "bridge": lambda: nsbox.Pod(network=bridge),
        "bridge + 1 port": lambda: nsbox.Pod(network=bridge, ports={port: 80}),
    }
    times: dict = {k: {"create": [], "stop": [], "settled": []} for k in kinds}
    rng = random.Random(2)
    try:
        for r in range(rounds + 1):  # round 0 warms up (and makes the bridge) and is dropped
            order = list(kinds.items())
            rng.shuffle(order)
            for name, make in order:
                pod = make()
                t0 = time.perf_counter()
                pod.start()
                t1 = time.perf_counter()
                pod.stop()
                t2 = time.perf_counter()
                _settle()
                t3 = time.perf_counter()
                if r:
                    times[name]["create"].append((t1 - t0) * 1000)
                    times[name]["stop"].append((t2 - t1) * 1000)
                    times[name]["settled"].append((t3 - t1) * 1000)
    finally:
        _settle()
        bridge.remove()
    out = {}
    for name, t in times.items():
        create, stop = statistics.median(t["create"]), statistics.median(t["stop"])
        out[name] = {"create_ms": round(create, 3), "stop_ms": round(stop, 3),
                     "stop_over_create": round(stop / create, 3),
                     "stop_settled_ms": round(statistics.median(t["settled"]), 3), "n": len(t["create"])}
    return out


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def tree_pss(pid: int) -> int:
    total = pss_kb(pid)
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            for child in f.read().split():
                total += tree_pss(int(child))
    return total


def bench_memory(count: int) -> dict:
    out = {}
    pods = [nsbox.Pod().start() for _ in range(count)]
    time.sleep(0.05)
    out["nsbox-init"] = round(sum(pss_kb(p.pid) for p in pods) / count, 1)
    for p in pods:
        p.stop()
    holders = [UnshareHolder() for _ in range(count)]
    time.sleep(0.05)
    out["unshare+sleep"] = round(sum(tree_pss(h.pid) for h in holders) / count, 1)
    for h in holders:
        h.stop()
    peers = [("tini+sleep", ["tini", "-s", "--", "sleep", "infinity"]), ("catatonit -P", ["catatonit", "-P"])]
    pause = build_pause()
    if pause:
        peers.insert(0, ("pause (static, built here)", [pause]))
    for label, argv in peers:
        if shutil.which(argv[0]):
            procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
            time.sleep(0.2)
            out[label] = round(sum(tree_pss(p.pid) for p in procs) / count, 1)
            for p in procs:
                p.terminate()  # (SIGKILL would leave tini's sleep behind, orphaned)
            for p in procs:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    if pause:
        shutil.rmtree(os.path.dirname(pause), ignore_errors=True)
    # independent of the creator's memory: a creator holding 200 MB
    ballast = bytearray(200 * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    pods = [nsbox.Pod().start() for _ in range(count)]
    time.sleep(0.05)
    out["nsbox-init, creator +200 MB"] = round(sum(pss_kb(p.pid) for p in pods) / count, 1)
    for p in pods:
        p.stop()
    del ballast
    return out


def build_pause() -> str:
    """benchmarks/peers/pause.c built static, like the Kubernetes pause
    binary; '' if there is no C compiler or no static libc."""
    import tempfile

    out = os.path.join(tempfile.mkdtemp(prefix="nsbox-bench-"), "pause")
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, "-Os", "-static", "-s", "-o", out, str(HERE / "peers" / "pause.c")], capture_output=True)
    return out if r.returncode == 0 else ""


def meminfo_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


# Memory in use, by the kernel's own counters: the kernel's objects (slab,
# page tables, per-CPU, vmalloc, stacks in it) and every process's anonymous pages
# (the holders', the creator's heap).  MemAvailable per pod moved between 166
# and 358 kB over runs of one plan in one process (reclaim, and this VM
# handing free pages back to its host), while this sum moved by ~3%.
# (Not KernelStack: with CONFIG_VMAP_STACK a thread's stack is in VmallocUsed too.)
IN_USE = ("Slab", "PageTables", "Percpu", "VmallocUsed", "AnonPages")


def meminfo_in_use_kb() -> int:
    with open("/proc/meminfo") as f:
        return sum(int(line.split()[1]) for line in f if line.split(":")[0] in IN_USE)


class FloorBridge:
    """The floor for bridge pods: a bridge with the gateway address and, per
    pod, nsbox's holder plus a veth pair whose host end is born enslaved to
    the bridge (IFLA_MASTER in the same RTM_NEWLINK) and an address taken
    from a counter (no IPAM, no leases): the kernel work of a bridge pod,
    hand-packed like floor_pod."""

    def __init__(self, name: str, subnet: str):
        global _floor_sock
        if _floor_sock is None:
            _floor_sock = _nl_socket()
        self.name, self.net = name, ipaddress.ip_network(subnet)
        self.gateway = self.net.network_address + 1
        self.i = 2
        self.index = floor_index()
        # nsbox's bridge plan: a MAC of its own, multicast snooping off
        # (IFLA_BR_MCAST_SNOOPING 0); see nsbox.Bridge and docs/performance.md
        mac = bytes([(os.urandom(1)[0] & 0xFE) | 0x02]) + os.urandom(5)
        br = (_IFINFO.pack(0, 0, self.index, 1, 1) + _attr(3, name.encode() + b"\0") + _attr(1, mac)
              + _attr(18, _attr(1, b"bridge\0") + _attr(2, _attr(23, b"\0"))))
        g = self.gateway.packed
        addr = _IFADDR.pack(2, self.net.prefixlen, 0, 0, self.index) + _attr(2, g) + _attr(1, g)
        _nl_run(_floor_sock, [_msg(16, F_REQ_ACK | F_CREATE_EXCL, 1, br), _msg(20, F_REQ_ACK | F_CREATE_EXCL, 2, addr)])

    def pod(self):
        from nsbox import _syscalls

        addr = self.net.network_address + self.i
        self.i += 1
        p = nsbox.Pod().start()
        name = host_name().encode()
        host_index = floor_index()
        nsfd = os.open(f"/proc/{p.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            peer = _IFINFO.pack(0, 0, 2, 0, 0) + _attr(3, b"eth0\0") + _attr(28, struct.pack("=I", nsfd))
            linkinfo = _attr(18, _attr(1, b"veth\0") + _attr(2, _attr(1, peer)))
            veth = (_IFINFO.pack(0, 0, host_index, 0, 0) + _attr(3, name + b"\0")
                    + _attr(10, struct.pack("=I", self.index)) + linkinfo)
            try:
                _nl_run(_floor_sock, [_msg(16, F_REQ_ACK | F_CREATE_EXCL, 1, veth), no_ipv6_ll(host_index, 2),
                                      _msg(16, F_REQ_ACK, 3, _IFINFO.pack(0, 0, host_index, 1, 1))])
            except BaseException:
                p.stop()
                raise
            inner = _nl_socket(_syscalls.socket_in_netns(nsfd, socket.AF_NETLINK, socket.SOCK_RAW, 0))
        finally:
            os.close(nsfd)
        with inner:
            a = _IFADDR.pack(2, self.net.prefixlen, 0, 0, 2) + _attr(2, addr.packed) + _attr(1, addr.packed)
            up = _IFINFO.pack(0, 0, 2, 1, 1)
            rt = _RTMSG.pack(2, 0, 0, 0, 254, 3, 0, 1, 0) + _attr(5, self.gateway.packed)
            _nl_run(inner, [no_ipv6_ll(2, 2), _msg(16, F_REQ_ACK, 3, up), _msg(20, F_REQ_ACK | F_CREATE_EXCL, 4, a),
                            _msg(24, F_REQ_ACK | F_CREATE_EXCL, 5, rt)])
        return p

    def remove(self) -> None:
        _nl_run(_floor_sock, [_msg(17, F_REQ_ACK, 1, _IFINFO.pack(0, 0, self.index, 0, 0))])


# How the scale section is laid out, and why (issue 13).
#
# Each plan gets the machine to itself: one run makes N pods of ONE plan,
# timed pod by pod, and cut into blocks (N/10 pods by default) for the
# per-pod cost of the first and the last block; then stop_all of all of them,
# timed until every host link they made is gone.  The runs of the two plans
# being compared (nsbox and the floor; nsbox bridge and the bridge floor)
# alternate, ABBA over the repeats, and each starts only once the kernel has
# finished destroying the previous run's namespaces (settle_netns_cleanup:
# the CPUs idle again).
#
# Not chosen: both plans' pods alive together, the plans taking turns adding
# a block.  The kernel's per-pod cost grows with the links on the host, so
# that would measure each plan at a different world than "N pods alive"
# (2N links, or N/2 pods each), the goals of issue 13 (10,000 pods in 60 s,
# stop_all in 15 s) are about one plan owning the machine, and nsbox's own
# bookkeeping -- one of the things that may grow -- would be measured at half
# its size.  What interleaving buys against a noisy 2-CPU VM (a slow minute
# hits both plans alike) comes here from the alternation over repeats (the
# medians are reported, and every run's numbers are kept in the JSON), from
# the blocks (a burst of noise spoils one block, not the growth ratio of a
# whole run) and from the settling before each run.

SCALE_BRIDGES = {"nsbxbench0", "nsbxfloor0", "nsbxlim0", "nsbxlimf0"}  # made in the section: not a run's links


def scale_plans(sub: Subnets, bridge_net: str):
    """The four scale plans as (name, setup) -> make(); ``bridge_net`` is
    split in four: nsbox bridge, bridge floor and the two port-limit probes."""
    quarters = list(ipaddress.ip_network(bridge_net).subnets(prefixlen_diff=2))

    def veth_nsbox():
        def make():
            host, pod = sub.next()
            return nsbox.Pod(network=nsbox.Veth(address=pod, host_address=host)).start()
        return make, None

    def veth_floor():
        return (lambda: floor_pod(sub)[0]), None

    def veth_routers(k=ROUTERS):
        # nsbox's veth pods with their host ends in k router pods' namespaces
        # (examples/routers.py): each namespace holds 1/k of them
        routers: list = []
        try:
            for _ in range(k):
                routers.append(nsbox.Pod().start())
        except BaseException:
            nsbox.stop_all(routers)
            raise
        turn = iter(range(1 << 62))

        def make():
            host, pod = sub.next()
            with routers[next(turn) % k].joined("net"):
                return nsbox.Pod(network=nsbox.Veth(address=pod, host_address=host)).start()
        return make, lambda: nsbox.stop_all(routers)

    def bridge_nsbox(name="nsbxbench0", q=0):
        bridge = nsbox.Bridge(name, subnet=str(quarters[q]))
        warm(lambda: nsbox.Pod(network=bridge).start())  # makes the bridge: it is not one of the run's links
        return (lambda: nsbox.Pod(network=bridge).start()), bridge.remove

    def bridge_floor(name="nsbxfloor0", q=1):
        bridge = FloorBridge(name, str(quarters[q]))
        return bridge.pod, bridge.remove

    pairs = [("nsbox", veth_nsbox, "floor", veth_floor),
             ("nsbox bridge", bridge_nsbox, "floor bridge", bridge_floor),
             ("nsbox routers", veth_routers, None, None)]  # (an option: no floor of its own)
    probes = [("nsbox bridge", lambda: bridge_nsbox("nsbxlim0", 2)),
              ("floor bridge", lambda: bridge_floor("nsbxlimf0", 3))]
    return pairs, probes


BRIDGE_SCALE = 1000  # one bridge holds 1,023 ports: the bridge plans stop here
ROUTERS = 10  # router pods of the "nsbox routers" plan


def bench_scale(n: int, sub: Subnets, bridge_net: str, *, block: int = 0, repeat: int = 1,
                settle: float = 60.0, run_rounds: int = 30, limit: int = 1100, plans: set | None = None,
                perf: Optional[Path] = None) -> dict:
    """The scale section: per plan, N pods alive (see the comment above for
    the layout; the bridge plans at most BRIDGE_SCALE), the memory per pod and
    pod.run(["true"]) against the host's subprocess.run with N alive, and the
    bridge port-limit probe.  ``plans`` picks plans by name (default: all)."""
    pairs, probes = scale_plans(sub, bridge_net)
    if plans:
        pairs = [(a, sa, b, sb) for a, sa, b, sb in pairs if a in plans or b in plans]
        probes = [p for p in probes if "bridge limit" in plans]
    runs: dict = {}
    extra: dict = {}
    if any("bridge" not in a for a, *_ in pairs) and n > BRIDGE_SCALE:
        # A first run of N pods, not counted (the floor's plan): the first
        # run of a session at this size paid for what the kernel keeps once
        # it has grown (per-CPU chunks, slabs) and for memory this VM had
        # handed back to its host: 10,000 pods, the first run measured grew
        # 3.3-3.6x, the second 2.2-2.5x, whichever plan came first.
        settle_netns_cleanup(settle)
        t = time.perf_counter()
        before = links()
        warm_pods = []
        try:
            for _ in range(n):
                warm_pods.append(floor_pod(sub)[0])
        finally:
            nsbox.stop_all(warm_pods)
            # (the kernel deletes the floor's links in its own time: the
            # measured runs must not meet them, nor their addresses)
            wait_links_gone(links() - before - SCALE_BRIDGES, timeout=300)
        extra["warm_up"] = {"plan": "floor", "pods": n, "s": round(time.perf_counter() - t, 1)}
        print(f"   warm-up (not counted): the floor's plan, {n} pods in {extra['warm_up']['s']} s", flush=True)
    for rep in range(repeat):
        for a, setup_a, b, setup_b in pairs:
            order = [(a, setup_a), (b, setup_b)] if rep % 2 == 0 else [(b, setup_b), (a, setup_a)]
            for name, setup in order:
                if name is None or (plans and name not in plans):
                    continue
                size = min(n, BRIDGE_SCALE) if "bridge" in name else n
                size_block = block or max(1, size // 10)
                settle_netns_cleanup(settle)
                make, remove = setup()
                try:
                    warm(make)
                    r = scale_run(size, make, size_block, run_rounds if name == "nsbox" and rep == 0 else 0,
                                  perf if name == "nsbox" and rep == 0 else None)
                finally:
                    if remove:
                        _settle()
                        remove()
                if "run" in r:
                    extra["run"] = r.pop("run")
                runs.setdefault(name, []).append(r)
                for line in r.get("perf_top", []):
                    print(f"      perf: {line}", flush=True)
                print(f"   {name}: {size} pods in {r['create_s']} s, growth {r['growth']}, stop {r['stop_s']} s",
                      flush=True)
    out = {"plans": {name: scale_row(rs) for name, rs in runs.items()}, "runs": runs}
    out["memory"] = {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in
                            ("holder_pss_kb", "creator_pss_kb_per_pod", "meminfo_kb_per_pod", "in_use_kb_per_pod")
                            if all(k in r for r in rs)}
                     for name, rs in runs.items()}
    out["run"] = extra.get("run", {})
    out["warm_up"] = extra.get("warm_up")
    out["bridge_limit"] = {}
    for name, setup in probes:
        settle_netns_cleanup(settle)
        make, remove = setup()
        try:
            out["bridge_limit"][name] = bridge_limit(make, limit)
        finally:
            _settle()
            remove()
    return out


def warm(make) -> None:
    """One pod of the plan made and stopped before its run, not counted:
    first-use costs (imports, caches, a bridge's first port) are not growth."""
    before = links()
    nsbox.stop_all([make()])
    wait_links_gone(links() - before - SCALE_BRIDGES)
    _settle()


def scale_row(rs: list) -> dict:
    """One table row from the runs of a plan: medians, and each run's value."""
    def med(k):
        return round(statistics.median(r[k] for r in rs), 3)

    def each(k):
        return " / ".join(str(r[k]) for r in rs)

    return {"pods": rs[0]["pods"], "runs": len(rs), "create_s": med("create_s"), "create_s each": each("create_s"),
            "block": rs[0]["block"], "first_block_ms_per_pod": med("first_block_ms_per_pod"),
            "last_block_ms_per_pod": med("last_block_ms_per_pod"), "growth": med("growth"),
            "growth each": each("growth"), "stop_call_s": med("stop_call_s"), "stop_s": med("stop_s"),
            "stop_s each": each("stop_s")}


def raise_fd_limit(pods: int) -> None:
    """A running pod keeps a pidfd on its holder (and, once it has members,
    its lifeline): raise the soft RLIMIT_NOFILE for N pods, as a program that
    runs that many must (up to the hard limit: raising that takes
    CAP_SYS_RESOURCE, which a container may lack)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * pods + 4096
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def settle_netns_cleanup(timeout: float = 60.0) -> None:
    """Wait while the kernel is still busy destroying namespaces of the
    previous run (its workers compete for the CPUs): until the CPUs are idle."""
    deadline = time.monotonic() + timeout

    def busy() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)

    while time.monotonic() < deadline:
        b0, t0 = busy()
        time.sleep(0.5)
        b1, t1 = busy()
        if t1 > t0 and (b1 - b0) / (t1 - t0) < 0.05:
            return


def scale_run(n: int, make, block: int, run_rounds: int = 0, perf: Optional[Path] = None) -> dict:
    """N pods of one plan alive: per-pod times (in blocks), memory per pod
    with all N alive, optionally pod.run against subprocess.run with N alive,
    then stop_all, timed until every host link the run made is gone.
    ``perf``: record ``perf record -a -g`` there over the last block, and
    over the first block next to it (``<name>-first.data``): both blocks
    then pay the recorder's overhead alike, so the growth ratio is not
    inflated by it (the recorders' start-up is left out of the times)."""
    before = links()
    mem0 = meminfo_available_kb()
    used0 = meminfo_in_use_kb()
    me0 = pss_kb(os.getpid())
    per = []
    pods = []
    out: dict = {"pods": n}
    recorder = None
    t0 = time.perf_counter()
    try:
        for i in range(n):
            if perf is not None and i in (0, block, n - block):
                paused = time.perf_counter()
                if recorder is not None:  # the first block's, done
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait()
                    recorder = None
                if i in (0, n - block):  # (one block only: the last one's file)
                    perf.parent.mkdir(parents=True, exist_ok=True)
                    data = perf if i == n - block else perf.with_name(f"{perf.stem}-first.data")
                    recorder = subprocess.Popen(["perf", "record", "-a", "-g", "-q", "-o", str(data)])
                    time.sleep(1.5)  # (its start-up)
                t0 += time.perf_counter() - paused
            t = time.perf_counter()
            pods.append(make())
            per.append((time.perf_counter() - t) * 1000)
        out["create_s"] = round(time.perf_counter() - t0, 3)
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait()
            recorder = None
        # (before perf's report, which reads every holder's /proc)
        out["meminfo_kb_per_pod"] = round((mem0 - meminfo_available_kb()) / n, 1)
        out["in_use_kb_per_pod"] = round((meminfo_in_use_kb() - used0) / n, 1)
        if perf is not None:
            out["perf_top"] = perf_top(perf)
        out["creator_pss_kb_per_pod"] = round((pss_kb(os.getpid()) - me0) / n, 2)
        out["holder_pss_kb"] = round(sum(pss_kb(p.pid) for p in pods) / n, 1)
        if run_rounds:
            pod = pods[-1]
            plans = {"host subprocess.run": lambda: subprocess.run(["true"]) and None,
                     "nsbox pod.run": lambda: pod.run(["true"]) and None}
            out["run"] = summary(interleaved(plans, run_rounds), "host subprocess.run")
    finally:
        if recorder is not None:  # (an exception in the last block)
            recorder.send_signal(signal.SIGINT)
            recorder.wait()
        t1 = time.perf_counter()
        nsbox.stop_all(pods)
        t2 = time.perf_counter()
        wait_links_gone(links() - before - SCALE_BRIDGES, timeout=300)
        out["stop_call_s"] = round(t2 - t1, 3)
        out["stop_s"] = round(time.perf_counter() - t1, 3)
    blocks = [statistics.mean(per[i:i + block]) for i in range(0, n, block)]
    if len(blocks) > 1 and n % block:
        blocks.pop()  # a short last block is not a block
    out.update(block=block, first_block_ms_per_pod=round(blocks[0], 3), last_block_ms_per_pod=round(blocks[-1], 3),
               growth=round(blocks[-1] / blocks[0], 3), block_ms_per_pod=[round(b, 3) for b in blocks])
    return out


def perf_top(data: Path, n: int = 15) -> list[str]:
    """The ``n`` kernel and user symbols with the most samples in ``data``."""
    r = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym", "--stdio", "-q",
                        "-g", "none"], capture_output=True, text=True)
    return [" ".join(line.split()) for line in r.stdout.splitlines() if "%" in line][:n]


def bridge_limit(make, limit: int) -> dict:
    """Pods on one bridge until one fails (the kernel allows 1,024 port
    numbers, port 0 reserved) or ``limit`` are alive: where it fails and how."""
    before = links()
    pods = []
    error = ""
    try:
        for _ in range(limit):
            try:
                pods.append(make())
            except Exception as e:  # what the user gets is the result here
                error = f"{type(e).__name__}: {e}"
                break
    finally:
        nsbox.stop_all(pods)
        wait_links_gone(links() - before - SCALE_BRIDGES, timeout=300)
    return {"alive": len(pods), "failed_at_pod": len(pods) + 1 if error else None, "error": error or f"none up to {limit}"}


# ---- report ------------------------------------------------------------------------------------

def machine() -> dict:
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "nsbox": nsbox.__version__}


def table(title: str, rows: dict, label: str = "plan") -> str:
    lines = [f"### {title}", ""]
    if not rows:
        return f"### {title}\n\n(not run)\n"
    first = next(iter(rows.values()))
    if isinstance(first, dict):
        cols = list(first.keys())
        lines.append(f"| {label} | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(str(row[c]) for c in cols) + " |")
    else:
        lines.append("| measure | value |")
        lines.append("|---|---|")
        for name, value in rows.items():
            lines.append(f"| {name} | {value} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (make test)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--scale", type=int, default=1000, help="pods alive in the scale section (make bench SCALE=10000)")
    ap.add_argument("--scale-block", type=int, default=0, help="pods per block of the scale runs (default: scale/10)")
    ap.add_argument("--scale-repeat", type=int, default=0,
                    help="runs of each scale plan, alternating ABBA (default: 2)")
    ap.add_argument("--scale-plans", default="",
                    help="comma-separated scale plans to run, of: nsbox, floor, nsbox bridge, floor bridge, "
                         "nsbox routers (host ends in 10 router pods), bridge limit")
    ap.add_argument("--perf", action="store_true",
                    help="perf record -a -g over the first and the last block of the first nsbox scale run (results dir)")
    ap.add_argument("--only", default="", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--write-docs", action="store_true", help="also write docs/performance.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks need root", file=sys.stderr)
        return 2
    only = [x for x in args.only.split(",") if x]
    if set(only) - set(SECTIONS):
        print(f"unknown sections: {', '.join(sorted(set(only) - set(SECTIONS)))}", file=sys.stderr)
        return 2
    if only and args.write_docs:
        print("--write-docs needs every section (no --only)", file=sys.stderr)
        return 2
    rounds, scale, memn = (2, 20, 3) if args.quick else (args.rounds, args.scale, 10)
    raise_fd_limit(scale)
    block = args.scale_block or (4 if args.quick else 0)
    # (2 runs of each plan at every size: at 10,000 one run's growth ranged
    # 2.1-3.3 for the same code, so one run cannot say whether a goal is met)
    repeat = args.scale_repeat or (1 if args.quick else 2)
    sub = Subnets("10.246.0.0/16" if args.quick else "10.245.0.0/16")
    results: dict = {"machine": machine(), "rounds": rounds}

    def scale_section() -> dict:
        r = bench_scale(scale, sub, "10.248.0.0/16" if args.quick else "10.247.0.0/16", block=block, repeat=repeat,
                        settle=2.0 if args.quick else 60.0, run_rounds=3 if args.quick else rounds,
                        limit=3 if args.quick else 1100,
                        plans={x.strip() for x in args.scale_plans.split(",") if x.strip()} or None,
                        perf=args.out / f"perf-scale-{datetime.datetime.now():%Y%m%d-%H%M%S}.data" if args.perf else None)
        results["scale_runs"] = r["runs"]
        results["scale_memory"] = r["memory"]
        results["scale_run"] = r["run"]
        results["bridge_limit"] = r["bridge_limit"]
        results["scale_warm_up"] = r["warm_up"]
        return r["plans"]

    sections = {
        "pods": ("pod with veth networking (create)", lambda: bench_pods(rounds, sub)),
        "holder": ("holder only: net+ipc+uts+pid (create)", lambda: bench_holder(rounds)),
        "run": ("run `true` in a pod", lambda: bench_run(rounds)),
        "podfs": ("volumes and pod files: create + stop", lambda: bench_podfs(rounds)),
        "teardown": ("teardown: create and stop (median ms)",
                     lambda: bench_teardown(rounds, sub, "10.250.0.0/24" if args.quick else "10.249.0.0/24")),
        "pss_kb": (f"holder memory, PSS kB per holder ({memn} alive)", lambda: bench_memory(memn)),
        "scale": (f"{scale} pods alive at once, one plan per run (medians of {repeat} run(s) each, ABBA)", scale_section),
    }
    assert list(sections) == SECTIONS
    text = []
    for key, (title, fn) in sections.items():
        if only and key not in only:
            continue
        print(f"== {title} ...", flush=True)
        results[key] = fn()
        text.append(table(title, results[key]))
        if key == "scale":
            text.append(table(f"memory per pod with {scale} alive (kB; holder, MemAvailable and in use: medians of the runs)",
                              results["scale_memory"]))
            text.append(table(f"run `true` with {scale} veth pods alive", results["scale_run"]))
            text.append(table("one bridge, pods until one fails (the kernel's port limit)", results["bridge_limit"]))
        print("\n".join(text[-4:] if key == "scale" else text[-1:]), flush=True)
    results["targets"] = targets(results)
    if results["targets"]:
        text.insert(0, table("targets (issues #4, #9, #13), this run", results["targets"], "measure"))
        print(text[0], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = args.out / f"bench-{'quick-' if args.quick else ''}{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path}")
    if args.write_docs:
        write_docs(results, "\n".join(text))
    return 0


SECTIONS = ["pods", "holder", "run", "podfs", "teardown", "pss_kb", "scale"]


def targets(r: dict) -> dict:
    """Each target of issues #4, #9 and #13 with this run's value and whether
    it is met (only for the sections that ran)."""
    def med(section: str, plan: str) -> float:
        return r[section][plan]["median_ms"]

    rows = {}

    def check(name: str, value: float, op: str, limit: float, unit: str = "x") -> None:
        ok = value <= limit if op == "<=" else value >= limit
        rows[name] = {"value": f"{value:.3g}{unit}", "target": f"{op} {limit:g}{unit}", "met": "yes" if ok else "NO"}

    if "pods" in r:
        pod = med("pods", "nsbox")
        check("veth pod / floor", pod / med("pods", "floor"), "<=", 1.1)
        check("shell / veth pod", med("pods", "shell") / pod, ">=", 15)
        check("ip-batch / veth pod", med("pods", "ip-batch") / pod, ">=", 3)
        check("pyroute2 / veth pod", med("pods", "pyroute2") / pod, ">=", 3)
    if "holder" in r:
        check("holder / unshare CLI", med("holder", "nsbox") / med("holder", "unshare"), "<=", 0.55)
    if "run" in r:
        run = med("run", "nsbox pod.run")
        check("pod.run(true) / host subprocess.run", run / med("run", "host subprocess.run"), "<=", 1.2)
        check("pod.run(true) / nsenter", run / med("run", "nsenter"), "<=", 0.4)
    if "teardown" in r:
        td = r["teardown"]
        for kind in ("veth", "bridge"):
            check(f"{kind} pod: stop / create", td[kind]["stop_over_create"], "<=", 1.5)
        port_create = td["bridge + 1 port"]["create_ms"] - td["bridge"]["create_ms"]
        port_stop = td["bridge + 1 port"]["stop_ms"] - td["bridge"]["stop_ms"]
        check("one published port: create cost", port_create, "<=", 1.5, " ms")
        check("one published port: stop cost", port_stop, "<=", 1.5, " ms")
    if "pss_kb" in r:
        pss = r["pss_kb"]
        if "pause (static, built here)" in pss:
            check("holder PSS / static pause", pss["nsbox-init"] / pss["pause (static, built here)"], "<=", 1.0)
        check("holder PSS, creator +200 MB / without", pss["nsbox-init, creator +200 MB"] / pss["nsbox-init"], "<=", 1.05)
    if "scale" in r:
        sc = r["scale"]
        ns, fl, nb, fb = (sc.get(k) for k in ("nsbox", "floor", "nsbox bridge", "floor bridge"))
        n = ns["pods"] if ns else 0
        if ns and fl and n >= 1000:  # issue 13's goals (the 10,000 ones only from a 10,000 run)
            check(f"{n} pods: create / floor", ns["create_s"] / fl["create_s"], "<=", 1.1)
            check(f"{n} pods: growth / floor's", ns["growth"] / fl["growth"], "<=", 1.0)
        if nb and fb and nb["pods"] >= 1000:
            check(f"{nb['pods']} bridge pods: create / bridge floor", nb["create_s"] / fb["create_s"], "<=", 1.1)
            check(f"{nb['pods']} bridge pods: growth (last block / first)", nb["growth"], "<=", 1.5)
        if ns and n >= 10000:
            check(f"{n} pods: create", ns["create_s"], "<=", 60, " s")
            check(f"{n} pods: growth (last block / first)", ns["growth"], "<=", 2.5)
            check(f"{n} pods: stop_all until links gone", ns["stop_s"], "<=", 15, " s")
        nr = sc.get("nsbox routers")
        if nr and nr["pods"] >= 10000:  # the option (host ends in 10 router pods)
            check(f"{nr['pods']} pods behind {ROUTERS} routers: create", nr["create_s"], "<=", 60, " s")
            check(f"{nr['pods']} pods behind {ROUTERS} routers: growth (last block / first)", nr["growth"], "<=", 2.5)
        sr = r["scale_run"]
        if sr and n >= 1000:  # (at a tiny size these two say nothing)
            ratio = sr["nsbox pod.run"]["median_ms"] / sr["host subprocess.run"]["median_ms"]
            check(f"pod.run(true) / host subprocess.run, {n} alive", ratio, "<=", 1.2)
        if ns and n == 1000:  # issue 4's
            check("1000 pods: create", ns["create_s"], "<=", 3.5, " s")
            check("1000 pods: stop_all until links gone", ns["stop_s"], "<=", 1.5, " s")
            check("1000 pods: last 100 / first 100", ns["growth"], "<=", 1.3)
        # Memory in use per pod (kernel, holder and creator alike: IN_USE)
        # against the floor's plus one holder's PSS
        mem = r["scale_memory"]
        if ns and fl and n >= 1000:
            key = "in_use_kb_per_pod" if "in_use_kb_per_pod" in mem["nsbox"] else "meminfo_kb_per_pod"
            check(f"memory {'in use' if key == 'in_use_kb_per_pod' else '(MemAvailable)'} per pod / "
                  f"(floor's + holder PSS), {n} alive", mem["nsbox"][key]
                  / (mem["floor"][key] + mem["nsbox"]["holder_pss_kb"]), "<=", 1.0)
    return rows


def write_docs(results: dict, tables: str) -> None:
    doc = ROOT / "docs" / "performance.md"
    m = results["machine"]
    head = doc.read_text().split("<!-- results -->")[0] if doc.exists() else "# Performance\n\n"
    doc.write_text(
        head + "<!-- results -->\n"
        f"Latest `make bench` ({m['date']}; kernel {m['kernel']}, {m['cpus']} CPUs, Python {m['python']}, "
        f"nsbox {m['nsbox']}; medians of {results['rounds']} interleaved rounds, ratios against nsbox):\n\n"
        + tables
    )


if __name__ == "__main__":
    sys.exit(main())
