"""Link shaping: rate (tbf) everywhere; delay/jitter/loss (netem) where the
kernel has sch_netem."""
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import nsbox


def netem_available() -> bool:
    try:
        with open("/proc/net/psched"):
            pass
        import gzip

        with gzip.open("/proc/config.gz", "rt") as f:
            return "CONFIG_NET_SCH_NETEM=y" in f.read() or "CONFIG_NET_SCH_NETEM=m" in f.read()
    except OSError:
        return True  # no config to read: try, and let the test tell


NETEM = netem_available()
needs_netem = pytest.mark.skipif(not NETEM, reason="kernel without sch_netem (CONFIG_NET_SCH_NETEM is not set)")


def qdisc(pod, dev, inside):
    argv = ["tc", "qdisc", "show", "dev", dev]
    if inside:
        return pod.run(argv, capture_output=True, text=True).stdout
    return subprocess.run(argv, capture_output=True, text=True).stdout


def test_rate_is_set_on_both_ends_and_changes_live():
    with nsbox.Pod(network=nsbox.Veth(address="10.230.1.2/24", host_address="10.230.1.1/24", rate="10mbit")) as pod:
        assert "tbf" in qdisc(pod, pod.host_ifname, False) and "rate 10Mbit" in qdisc(pod, pod.host_ifname, False)
        assert "rate 10Mbit" in qdisc(pod, "eth0", True)
        pod.shape(rate="2mbit")
        assert "rate 2Mbit" in qdisc(pod, "eth0", True) and "rate 2Mbit" in qdisc(pod, pod.host_ifname, False)
        pod.shape()
        assert "tbf" not in qdisc(pod, "eth0", True) and "tbf" not in qdisc(pod, pod.host_ifname, False)


SINK = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 7100)); s.listen(); print("ready", flush=True)
    c, _ = s.accept(); n = 0
    while (b := c.recv(65536)):
        n += len(b)
    print(n, flush=True)
    """
)


def test_rate_limits_throughput():
    # 8 Mbit/s = 1 MB/s: 512 KiB can't cross in much less than half a second.
    # (A lower bound only: a slow machine makes it slower, never faster.)
    with nsbox.Pod(network=nsbox.Veth(address="10.230.2.2/24", host_address="10.230.2.1/24", rate="8mbit")) as pod:
        sink = pod.spawn([sys.executable, "-c", SINK, "10.230.2.2"], stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline() == "ready\n"
        t = time.monotonic()
        with socket.create_connection(("10.230.2.2", 7100), timeout=30) as c:
            c.sendall(b"x" * 512 * 1024)
        assert int(sink.stdout.readline()) == 512 * 1024
        elapsed = time.monotonic() - t
        sink.wait(timeout=10)
        sink.stdout.close()
    assert elapsed > 0.3, elapsed


def test_bridge_ports_are_shaped(bridge):
    net = nsbox.Bridge(bridge.name, subnet=str(bridge.subnet), rate="5mbit")
    with nsbox.Pod(network=net) as pod:
        assert "rate 5Mbit" in qdisc(pod, "eth0", True)
        assert "rate 5Mbit" in qdisc(pod, pod.host_ifname, False)


@needs_netem
def test_delay_is_visible_in_rtt():
    def rtt(pod):
        out = subprocess.run(["ping", "-c", "3", "-i", "0.2", "-W", "3", str(pod.address.ip)],
                             capture_output=True, text=True).stdout
        return float(out.rsplit("=", 1)[1].split("/")[0])  # min RTT, ms

    with nsbox.Pod(network=nsbox.Veth(address="10.230.3.2/24", host_address="10.230.3.1/24", delay="25ms")) as pod:
        assert rtt(pod) >= 45  # 25 ms each way
        pod.shape(delay="60ms", jitter="1ms", loss=0.0)
        assert rtt(pod) >= 110
        pod.shape()
        assert rtt(pod) < 40


@pytest.mark.skipif(NETEM, reason="the kernel has sch_netem")
def test_without_netem_the_error_says_so_and_nothing_changes():
    with nsbox.Pod(network=nsbox.Veth(address="10.230.4.2/24", host_address="10.230.4.1/24", rate="3mbit")) as pod:
        with pytest.raises(nsbox.NetworkError, match="no netem") as e:
            pod.shape(delay="50ms")
        assert e.value.errno == 95
        assert "rate 3Mbit" in qdisc(pod, "eth0", True)  # the previous shaping is back
    with pytest.raises(nsbox.NetworkError, match="CONFIG_NET_SCH_NETEM"):
        nsbox.Pod(network=nsbox.Veth(address="10.230.5.2/24", host_address="10.230.5.1/24", loss=1.0)).start()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(delay="fast"), "duration"),
        (dict(delay="5 parsecs"), "duration"),
        (dict(delay=-1), "out of range"),
        (dict(jitter="5ms"), "needs a delay"),
        (dict(delay="5ms", jitter="10ms"), "must not exceed"),
        (dict(loss=101), "percentage"),
        (dict(loss="1%"), "percentage"),
        (dict(rate="fast"), "rate"),
        (dict(rate="100tbit"), "rate"),
        (dict(rate=0), "out of range"),
        (dict(rate="500bit"), "out of range"),
    ],
)
def test_bad_shaping_arguments(kwargs, match):
    with pytest.raises(nsbox.ConfigError, match=match):
        nsbox.Veth(address="10.230.9.2/24", host_address="10.230.9.1/24", **kwargs)


def test_shape_without_network(pod):
    with pytest.raises(nsbox.ConfigError, match="no network"):
        pod.shape(rate="1mbit")
