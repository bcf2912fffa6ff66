"""Where a veth pod's start time goes, by step, early and late in a run of
N pods (issue 13's profiling aid; not part of `make bench`).

    .venv/bin/python benchmarks/steps.py 10000          # as root
    .venv/bin/python benchmarks/steps.py 1000 --bridge  # pods on one bridge

Wraps a few nsbox internals with timers (the holder's clone and exec wait,
each netlink round trip, the host-address check, the /proc write that
disables IPv6 on the host end, the bridge's IPAM lease) and prints their
cost per pod over the first and the last `--block` pods; what is left is
Python.  Uses 10.245.0.0/16 (veth) or 10.247.0.0/20 (bridge) and the
bridge name nsbxsteps0; stops every pod it made.  Run it alone (in a
private network namespace, ideally: see benchmarks/bench.py) -- it is a
profile, not a benchmark.
"""
from __future__ import annotations

import argparse
import collections
import ipaddress
import os
import resource
import sys
import time

import nsbox
from nsbox import holder
from nsbox.net import ipam, link, rtnl

_acc: dict[str, float] = collections.defaultdict(float)
_count: dict[str, int] = collections.defaultdict(int)
_on = [False]


def _timed(obj: object, name: str, label: str) -> None:
    f = getattr(obj, name)

    def timed(*a, **k):
        if not _on[0]:
            return f(*a, **k)
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            _acc[label] += time.perf_counter() - t
            _count[label] += 1

    setattr(obj, name, timed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pods", type=int)
    ap.add_argument("--block", type=int, default=500)
    ap.add_argument("--bridge", action="store_true", help="pods on one nsbox.Bridge instead of veth pairs")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("steps.py needs root", file=sys.stderr)
        return 2
    if args.block * 2 > args.pods:
        print("--block must be at most half of the pods", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # (one fd per pod)
    _timed(holder.Holder, "begin", "clone (Holder.begin)")
    _timed(holder.Holder, "finish", "wait for exec (Holder.finish)")
    _timed(rtnl.Rtnl, "ask", "netlink round trips (Rtnl.ask)")
    _timed(link, "check_unused", "  of which: host-address check")
    _timed(link, "_disable_ipv6", "disable_ipv6 (/proc write)")
    _timed(ipam.Ipam, "lease", "IPAM lease")
    net = ipaddress.ip_network("10.245.0.0/16")
    br = nsbox.Bridge("nsbxsteps0", subnet="10.247.0.0/20") if args.bridge else None
    pods: list[nsbox.Pod] = []

    def make() -> None:
        if br is not None:
            pods.append(nsbox.Pod(network=br).start())
        else:
            b = net.network_address + 4 * len(pods)
            pods.append(nsbox.Pod(network=nsbox.Veth(address=f"{b + 2}/30", host_address=f"{b + 1}/30")).start())

    def block(title: str) -> None:
        _acc.clear()
        _count.clear()
        _on[0] = True
        t = time.perf_counter()
        for _ in range(args.block):
            make()
        total = time.perf_counter() - t
        _on[0] = False
        n = args.block
        print(f"== {title}: {total / n * 1000:.3f} ms per pod")
        for label in sorted(_acc, key=lambda k: -_acc[k]):
            print(f"   {_acc[label] / n * 1000:7.3f} ms  {label}  (x{_count[label] / n:.1f} per pod)")

    try:
        make()  # (first-use costs: not counted)
        block(f"pods 2-{args.block + 1}")
        while len(pods) < args.pods - args.block:
            make()
        block(f"the last {args.block} of {args.pods}")
    finally:
        nsbox.stop_all(pods)
        if br is not None:
            br.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
