"""Regression tests for review defects 4, 5 and 6 (issue 8) of the network code.

Each failed on the code before the fix (see the commit that added it)."""
import errno
import socket
import subprocess
import sys
import threading

import pytest

import nsbox
from helpers import holder_pids, run_in_thread

# Subnets owned by these tests: 10.245.x.0/24.


def veth(pod, host, **kw):
    return nsbox.Veth(address=f"10.245.{pod}/24", host_address=f"10.245.{host}/24", **kw)


def links() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


def ping(target):
    return subprocess.run(["ping", "-c", "1", "-W", "2", target], capture_output=True, text=True)


# ---- defect 4: shaping acts in the namespace the host link was made in ----------


def test_shape_from_a_thread_inside_another_network_namespace():
    with nsbox.Pod(network=veth("1.2", "1.1")) as a, nsbox.Pod(kinds=("net",)) as b:

        def shape_from_b():
            with b.joined("net"):
                a.shape(rate="10mbit")

        run_in_thread(shape_from_b)
        host = subprocess.run(["tc", "qdisc", "show", "dev", a.host_ifname], capture_output=True, text=True).stdout
        assert "tbf" in host and "rate 10Mbit" in host
        assert "rate 10Mbit" in a.run(["tc", "qdisc", "show", "dev", "eth0"], capture_output=True, text=True).stdout

        def unshape_from_b():
            with b.joined("net"):
                a.shape()

        run_in_thread(unshape_from_b)
        host = subprocess.run(["tc", "qdisc", "show", "dev", a.host_ifname], capture_output=True, text=True).stdout
        assert "tbf" not in host


# ---- defect 5: a host address or subnet already on another link is refused ------


@pytest.mark.parametrize(
    "second",
    [
        ("2.3", "2.1"),  # the same host address as the first pod's
        ("2.5", "2.4"),  # another host address in the first pod's subnet
    ],
    ids=["same-host-address", "same-subnet"],
)
def test_address_already_on_another_host_link_is_refused(second):
    with nsbox.Pod(network=veth("2.2", "2.1")) as first:
        before_links, before_holders = links(), holder_pids()
        with pytest.raises(nsbox.NetworkError, match=rf"10\.245\.2\.\d.*{first.host_ifname}") as e:
            nsbox.Pod(network=veth(*second)).start()
        assert e.value.errno == errno.EADDRINUSE
        assert links() == before_links  # nothing made, nothing left
        assert holder_pids() == before_holders
        assert ping("10.245.2.2").returncode == 0  # the first pod is untouched


def test_the_same_subnet_from_two_threads_is_given_to_one_pod_only():
    results: list = []
    barrier = threading.Barrier(4)

    def start(i):
        barrier.wait()
        try:
            results.append(nsbox.Pod(network=veth(f"3.{10 + i}", "3.1")).start())
        except nsbox.NetworkError as e:
            results.append(e)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pods = [r for r in results if isinstance(r, nsbox.Pod)]
    try:
        assert len(pods) == 1, results
        assert all(r.errno == errno.EADDRINUSE for r in results if not isinstance(r, nsbox.Pod))
        assert ping(str(pods[0].address.ip)).returncode == 0
    finally:
        for p in pods:
            p.stop()


# ---- defect 6: a request's replies are its own, whatever other threads do -----


def test_concurrent_lookups_on_the_shared_socket_get_their_own_answers():
    from nsbox.net import link, rtnl

    with nsbox.Pod(network=veth("4.2", "4.1")) as pod:
        names = {"lo": socket.if_nametoindex("lo"), pod.host_ifname: socket.if_nametoindex(pod.host_ifname)}
        shared = rtnl.shared()
        wrong: list = []
        stop = threading.Event()

        def hammer(name, want):
            for _ in range(20000):
                if stop.is_set():
                    return
                got = link.link_index(shared, name)
                if got != want:
                    wrong.append((name, got, want))
                    stop.set()

        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible: widen the window
        try:
            threads = [threading.Thread(target=hammer, args=item) for item in list(names.items()) * 8]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(old)
        assert not wrong, f"a lookup got another request's answer: {wrong[:3]}"
