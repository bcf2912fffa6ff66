"""Many pods, their host ends spread over "router" namespaces.

A veth pod's host end normally lives in the host's own network namespace.
The kernel then does work per pod that grows with the number of pods in
that one namespace: each IPv4 address added makes a worker walk all of the
namespace's addresses (docs/performance.md, issue 13).  At 10,000 pods that
makes the last thousand pods 2-3.6x slower to start than the first thousand.

Pods made from a thread inside another pod's network namespace get their
host ends *there*.  With the host ends spread over a few router pods, each
namespace holds a tenth of them: 10,000 pods in ~18 s here instead of ~20 s,
the last thousand 1.5-2.3x the first thousand.

The trade-off is the topology: a pod is reached through its router, not
directly from the host.  Here each router is a pod of its own, linked to the
host by a veth (10.207.R.0/30), forwarding (ip_forward=1), and the host
routes each router's pod block (10.208.R.0/24) through it (pods behind two
routers reach each other only if the host forwards too: not set here).  As
for any pod, ``stop()`` leaves the host side to the background teardown
(in the router's namespace), and ``nsbox.stop_all()`` of many lets the
kernel delete their links in batches.  Stop the pods before their routers.

Run it as root: `.venv/bin/python examples/routers.py [PODS [ROUTERS]]`
(after `make test` or `make demo` built the virtualenv).
"""
import argparse
import subprocess
import sys
import time

import nsbox


def main(pods_wanted: int = 6, routers_wanted: int = 2) -> None:
    if not 1 <= routers_wanted <= 250 or not 1 <= pods_wanted <= 64 * routers_wanted:
        sys.exit("1-250 routers, at most 64 pods per router (each router's pods share one /24)")
    routers, pods, routes = [], [], []
    try:
        for r in range(routers_wanted):
            routers.append(nsbox.Pod(
                network=nsbox.Veth(address=f"10.207.{r}.2/30", host_address=f"10.207.{r}.1/30"),
                sysctls={"net.ipv4.ip_forward": 1},
            ).start())
            block = f"10.208.{r}.0/24"
            subprocess.run(["ip", "route", "add", block, "via", f"10.207.{r}.2"], check=True)
            routes.append(block)
        t = time.perf_counter()
        for i in range(pods_wanted):
            r, n = i % routers_wanted, i // routers_wanted
            # Inside the router's network namespace (this thread only, put
            # back on exit): the new pod's host end is the router's.
            with routers[r].joined("net"):
                pods.append(nsbox.Pod(network=nsbox.Veth(
                    address=f"10.208.{r}.{4 * n + 2}/30", host_address=f"10.208.{r}.{4 * n + 1}/30",
                )).start())
        took = time.perf_counter() - t
        print(f"{len(pods)} pods behind {len(routers)} routers in {took * 1000:.0f} ms")
        first, last = pods[0], pods[-1]
        ping = ["ping", "-c", "1", "-W", "2"]
        host_to_pod = subprocess.run([*ping, str(last.address.ip)], capture_output=True).returncode == 0
        print(f"host -> {last.address.ip} (through its router): {'ok' if host_to_pod else 'FAILED'}")
        pod_to_pod = True
        if len(pods) > routers_wanted:  # (pods[0] and pods[routers_wanted] are behind router 0)
            neighbour = pods[routers_wanted]
            pod_to_pod = first.run([*ping, str(neighbour.address.ip)], capture_output=True).returncode == 0
            print(f"{first.address.ip} -> {neighbour.address.ip} (same router): {'ok' if pod_to_pod else 'FAILED'}")
        if not (host_to_pod and pod_to_pod):
            sys.exit(1)
    finally:
        try:
            nsbox.stop_all(pods)
        finally:
            for block in routes:
                subprocess.run(["ip", "route", "del", block], capture_output=True)
            nsbox.stop_all(routers)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Pods behind router pods (see the module's docstring).")
    ap.add_argument("pods", type=int, nargs="?", default=6, help="pods to start (at most 64 per router; default 6)")
    ap.add_argument("routers", type=int, nargs="?", default=2, help="router pods, 1-250 (default 2)")
    args = ap.parse_args()
    main(args.pods, args.routers)
