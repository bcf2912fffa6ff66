"""An integration test written with nsbox's pytest fixtures: a server pod and
a client pod on a bridge of the test's own, the client behind a shaped link.

Run it as root (nsbox installed: the fixtures come with it)::

    pytest examples/test_client_server.py            # add -n 4 with pytest-xdist

Every test gets its own bridge and subnet (leased machine-wide), so this file
runs in parallel with itself, under xdist or in two sessions at once.  The
pods, the bridge and the subnet are gone when each test ends, even when it
fails.  Without root the tests are skipped, with the reason.

Shaping: ``rate=`` (a ``tbf`` qdisc) works on any kernel; ``delay=``,
``jitter=`` and ``loss=`` need ``sch_netem`` (CONFIG_NET_SCH_NETEM).  On a
kernel without it the pod cannot start and the fixture skips the test
(``test_delay`` below shows it).
"""
from __future__ import annotations

import subprocess
import sys

import nsbox
import pytest

SIZE = 500_000  # bytes the server sends per connection

SERVER = r"""
import socket, sys
size = int(sys.argv[1])
srv = socket.create_server(("0.0.0.0", 8080))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.recv(16)
        conn.sendall(b"x" * size)
"""

CLIENT = r"""
import socket, sys, time
start = time.monotonic()
with socket.create_connection((sys.argv[1], 8080), timeout=30) as conn:
    conn.sendall(b"GET")
    got = 0
    while chunk := conn.recv(65536):
        got += len(chunk)
print(got, time.monotonic() - start)
"""


@pytest.fixture
def server(nsbox_network, nsbox_pod_factory):
    """A pod on the test's bridge running the server (ready when returned)."""
    pod = nsbox_pod_factory(network=nsbox_network, hostname="server")
    proc = pod.spawn([sys.executable, "-c", SERVER, str(SIZE)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield pod
    proc.terminate()
    proc.wait()
    proc.stdout.close()  # the pod itself is stopped by the factory


def download(client: nsbox.Pod, server: nsbox.Pod) -> tuple[int, float]:
    r = client.run([sys.executable, "-c", CLIENT, str(server.address.ip)], capture_output=True, text=True,
                   timeout=60, check=True)
    got, seconds = r.stdout.split()
    return int(got), float(seconds)


def test_download(server, nsbox_network, nsbox_pod_factory):
    client = nsbox_pod_factory(network=nsbox_network, hostname="client")
    got, seconds = download(client, server)
    assert got == SIZE
    assert seconds < 1.0


def test_download_behind_a_slow_link(server, nsbox_network, nsbox_pod_factory):
    # Same bridge, same subnet; this pod's port is shaped (each direction).
    slow = nsbox.Bridge(nsbox_network.name, subnet=nsbox_network.subnet, rate="4mbit")
    client = nsbox_pod_factory(network=slow, hostname="client")
    got, seconds = download(client, server)
    assert got == SIZE
    expected = SIZE * 8 / 4_000_000  # 1.0 s at 4 Mbit/s
    assert expected * 0.7 < seconds < expected * 3


def test_delay(server, nsbox_network, nsbox_pod_factory):
    # Needs sch_netem: skipped (with the kernel's reason) where it is missing.
    laggy = nsbox.Bridge(nsbox_network.name, subnet=nsbox_network.subnet, delay="50ms")
    client = nsbox_pod_factory(network=laggy, hostname="client")
    r = client.run(["ping", "-c1", "-W2", str(server.address.ip)], capture_output=True, text=True, check=True)
    assert "time=1" in r.stdout  # ~100 ms: 50 ms each way
