"""Veth networking: host <-> pod traffic, teardown by name, bad input."""
import errno
import ipaddress
import os
import socket
import subprocess
import sys
import textwrap

import pytest

import nsbox
from helpers import holder_pids, run_in_thread, run_python

# Subnets owned by these tests: 10.210.x.0/24.
ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 7000)); s.listen(); print("ready", flush=True)
    c, peer = s.accept(); c.sendall(c.recv(100) + b" from " + peer[0].encode()); c.close()
    """
)


def veth(n, **kw):
    return nsbox.Veth(address=f"10.210.{n}.2/24", host_address=f"10.210.{n}.1/24", **kw)


def ping(argv_prefix, target):
    return subprocess.run([*argv_prefix, "ping", "-c", "1", "-W", "2", target], capture_output=True, text=True)


def test_host_and_pod_reach_each_other():
    with nsbox.Pod(network=veth(1)) as pod:
        assert pod.address == ipaddress.ip_interface("10.210.1.2/24")
        assert ping([], "10.210.1.2").returncode == 0
        assert pod.run(["ping", "-c", "1", "-W", "2", "10.210.1.1"], capture_output=True).returncode == 0
        # TCP, host -> pod
        server = pod.spawn([sys.executable, "-c", ECHO_SERVER, "10.210.1.2"], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline() == "ready\n"
        with socket.create_connection(("10.210.1.2", 7000), timeout=5) as c:
            c.sendall(b"hi")
            assert c.recv(100) == b"hi from 10.210.1.1"
        server.wait(timeout=5)
        server.stdout.close()


def test_pod_side_config():
    with nsbox.Pod(network=veth(2, ifname="net0", mtu=1400, mac="02:00:0a:d2:02:02", routes=["10.211.0.0/16"])) as pod:
        r = pod.run(["ip", "-o", "link", "show", "net0"], capture_output=True, text=True, check=True)
        assert "mtu 1400" in r.stdout and "02:00:0a:d2:02:02" in r.stdout and "UP" in r.stdout
        routes = pod.run(["ip", "route"], capture_output=True, text=True).stdout
        assert "default via 10.210.2.1 dev net0" in routes
        assert "10.211.0.0/16 via 10.210.2.1 dev net0" in routes
        host = subprocess.run(["ip", "-o", "addr", "show", pod.host_ifname], capture_output=True, text=True).stdout
        assert "10.210.2.1/24" in host
        assert pod.host_ifname.startswith("nsbx") and len(pod.host_ifname) <= 15


def test_pod_end_is_never_in_the_host_namespace():
    # eth0 is born in the pod: the host's own eth0 (if any) is untouched.
    before = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    with nsbox.Pod(network=veth(3)):
        during = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert "10.210.3.2/" not in during
    nsbox.net.settle()  # (the host side goes in the background)
    assert before == subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout


def test_ipv6():
    with nsbox.Pod(network=nsbox.Veth(address="fd00:210:4::2/64", host_address="fd00:210:4::1/64")) as pod:
        assert pod.run(["ping", "-6", "-c", "1", "-W", "2", "fd00:210:4::1"], capture_output=True).returncode == 0


def test_teardown_removes_the_host_link():
    pod = nsbox.Pod(network=veth(5)).start()
    name = pod.host_ifname
    assert name in {n for _, n in socket.if_nameindex()}
    pod.stop()
    nsbox.net.settle()  # (the host side goes in the background)
    assert name not in {n for _, n in socket.if_nameindex()}
    assert pod.address is None
    pod.stop()  # idempotent


def test_holder_sigkilled_then_stop_cleans_host_side():
    import os
    import signal

    pod = nsbox.Pod(network=veth(6)).start()
    name = pod.host_ifname
    os.kill(pod.pid, signal.SIGKILL)
    pod.stop()
    nsbox.net.settle()  # (the host side goes in the background)
    assert name not in {n for _, n in socket.if_nameindex()}


def test_taken_host_name_fails_cleanly():
    with nsbox.Pod(network=veth(7)) as first:
        taken = first.host_ifname
        before = holder_pids()
        with pytest.raises(nsbox.NetworkError, match="is taken") as e:
            nsbox.Pod(network=veth(8, host_ifname=taken)).start()
        assert e.value.errno == errno.EEXIST
        assert holder_pids() == before
        assert ping([], "10.210.7.2").returncode == 0  # the existing link is untouched


def test_failure_on_the_pod_side_rolls_back(monkeypatch):
    from nsbox.net import link

    def boom(*a, **k):
        raise nsbox.NetworkError(errno.EIO, "injected")

    monkeypatch.setattr(link, "configure_pod_side", boom)
    links = {n for _, n in socket.if_nameindex()}
    before = holder_pids()
    with pytest.raises(nsbox.NetworkError, match="injected"):
        nsbox.Pod(network=veth(9)).start()
    nsbox.net.settle()  # (the host side goes in the background)
    assert {n for _, n in socket.if_nameindex()} == links
    assert holder_pids() == before


def test_kernel_error_names_the_step():
    # An IPv6 address on a link with an MTU below 1280 is refused by the kernel.
    with pytest.raises(nsbox.NetworkError, match=r"adding address fd00:210:a::1/64 to nsbx\w+: Invalid argument"):
        nsbox.Pod(network=nsbox.Veth(address="fd00:210:a::2/64", host_address="fd00:210:a::1/64", mtu=1000)).start()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(address="10.210.20.2"), "prefix length"),
        (dict(address="10.210.20.300/24"), "not a valid CIDR"),
        (dict(address="10.210.20.2/24", host_address="10.210.21.1/24"), "different subnets"),
        (dict(address="10.210.20.2/24", host_address="10.210.20.2/24"), "both"),
        (dict(address="10.210.20.0/24", host_address="10.210.20.1/24"), "network or broadcast"),
        (dict(address="10.210.20.2/32"), "no room"),
        (dict(address="10.210.20.2/24", host_address="fd00::1/64"), "IP versions"),
        (dict(address="10.210.20.2/24", host_ifname="x" * 16), "1 to 15 bytes"),
        (dict(address="10.210.20.2/24", host_ifname="a/b"), "must not contain"),
        (dict(address="10.210.20.2/24", ifname="my eth"), "must not contain"),
        (dict(address="10.210.20.2/24", ifname="lo"), "reserved"),
        (dict(address="10.210.20.2/24", mtu=10), "mtu"),
        (dict(address="10.210.20.2/24", mac="zz"), "mac"),
        (dict(address="10.210.20.2/24", mac="01:00:00:00:00:01"), "multicast"),
        (dict(address="10.210.20.2/24", routes=["nope"]), "route"),
        (dict(address="10.210.20.2/24", host_address="10.210.20.1/24", routes=["0.0.0.0/0"]), "default_route"),
    ],
)
def test_bad_veth_arguments(kwargs, match):
    with pytest.raises(nsbox.ConfigError, match=match):
        nsbox.Veth(**kwargs)


def test_network_needs_net_kind():
    with pytest.raises(nsbox.ConfigError, match="'net' kind"):
        nsbox.Pod(kinds=("uts",), network=veth(30))
    with pytest.raises(nsbox.ConfigError, match="network must be"):
        nsbox.Pod(network="10.210.30.2/24")


def test_holder_failing_while_its_network_is_wired_reports_the_holder_error(monkeypatch):
    # The host side is wired while the holder is still setting itself up:
    # when the holder then fails (here: its program is missing), that is the
    # error the caller sees, and the network made meanwhile is removed.
    import nsbox.holder

    monkeypatch.setattr(nsbox.holder, "INIT_PATH", nsbox.holder.INIT_PATH.with_name("missing-init"))
    nsbox.net.settle()  # (an earlier test's host side, still going, is not this one's to compare)
    before_links = {n for _, n in socket.if_nameindex()}
    before = holder_pids()
    with pytest.raises(nsbox.PodStartError, match="exec") as e:
        nsbox.Pod(network=veth(40)).start()
    assert e.value.errno == errno.ENOENT
    nsbox.net.settle()  # (the host side goes in the background)
    assert {n for _, n in socket.if_nameindex()} == before_links
    assert holder_pids() == before


def test_network_failing_while_the_holder_starts_leaves_no_holder():
    with nsbox.Pod(network=veth(41)) as first:
        before = holder_pids()
        with pytest.raises(nsbox.NetworkError, match="taken"):
            nsbox.Pod(network=veth(42, host_ifname=first.host_ifname)).start()
        assert holder_pids() == before


def test_a_kernel_that_does_not_answer_is_a_clear_error(monkeypatch):
    # Answers are read without waiting (the kernel queues them inside
    # send()); if one is missing, nsbox waits _TIMEOUT, then says so.
    from nsbox.net import messages, rtnl

    monkeypatch.setattr(rtnl, "_TIMEOUT", 0.05)
    with rtnl.Rtnl() as r:
        with pytest.raises(nsbox.NetworkError, match="setting up link lo: no answer") as e:
            r._recv(lambda: messages.link_set(1, "lo").what)
    assert e.value.errno == errno.ETIMEDOUT


def test_idle_ipv4_pods_send_nothing():
    # addrgenmode none must be in place *before* a link goes up: in one
    # request the kernel makes a link-local address anyway, and every pod
    # then sends MLD reports to the host (~4 in the first second), where each
    # is routed past one ff00::/8 route per pod link: O(pods) per packet.
    import time

    with nsbox.Pod(network=veth(43)) as a, nsbox.Pod(network=veth(44)) as b:
        time.sleep(1.5)  # MLD's unsolicited report interval is 1 s
        for pod in (a, b):
            with open(f"/sys/class/net/{pod.host_ifname}/statistics/rx_packets") as f:
                assert f.read() == "0\n", pod.host_ifname


def _disable_ipv6(ifname):
    with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6") as f:
        return f.read().strip()


def test_host_ends_without_ipv6_of_their_own_have_it_disabled(bridge):
    # Issue 13: an ff00::/8 route per host end (inserted past all the others,
    # all walked at each link's up) was 3 of the 4 largest kernel terms at
    # 10,000 pods.  IPv4-only host ends and bridge ports get no IPv6 at all;
    # a host end with an IPv6 address keeps it.
    v6 = nsbox.Veth(address="fd00:210:47::2/64", host_address="fd00:210:47::1/64")
    with nsbox.Pod(network=veth(46)) as a, nsbox.Pod(network=v6) as b, nsbox.Pod(network=bridge) as c:
        assert _disable_ipv6(a.host_ifname) == "1" and _disable_ipv6(c.host_ifname) == "1"
        assert _disable_ipv6(b.host_ifname) == "0"
        for pod in (a, c):
            shown = subprocess.run(["ip", "-6", "route", "show", "table", "all", "dev", pod.host_ifname],
                                   capture_output=True, text=True)
            assert shown.stdout == "", shown.stdout
        assert a.run(["ping", "-c", "1", "-W", "2", "10.210.46.1"], capture_output=True).returncode == 0
        assert c.run(["ping", "-c", "1", "-W", "2", str(bridge.gateway.ip)], capture_output=True).returncode == 0
        assert b.run(["ping", "-6", "-c", "1", "-W", "2", "fd00:210:47::1"], capture_output=True).returncode == 0


def test_lo_is_up_whoever_sets_it_up(bridge):
    # A pod's loopback is set up by the holder before exec, or (a Veth or
    # Bridge as its first network) in the network's own batch of pod-side
    # requests: up either way, with its addresses.
    for network in (None, veth(43), bridge, [bridge, veth(44, ifname="eth1")]):
        with nsbox.Pod(network=network) as pod:
            out = pod.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
            assert "127.0.0.1/8" in out, (network, out)
            flags = pod.run(["ip", "-o", "link", "show", "dev", "lo"], capture_output=True, text=True).stdout
            assert ",UP," in flags or ",UP>" in flags, (network, flags)


def _fds_on(ino):
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == f"net:[{ino}]":
                out.append(int(fd))
        except OSError:
            pass
    return out


def _behind(router, **kwargs):
    """``nsbox.Pod(**kwargs)`` started from a thread inside ``router``'s
    network namespace: its host ends are the router's."""

    def make():
        with router.joined("net"):
            return nsbox.Pod(**kwargs).start()

    return run_in_thread(make)


def test_pods_made_inside_another_namespace_share_one_fd_on_it():
    # Pods whose host ends live in another namespace (made from a thread
    # inside a "router" pod) hold one fd on that namespace between them, not
    # one each (10,000 such pods would not fit the fd limit); the last one
    # stopped closes it.

    with nsbox.Pod(kinds=("net",)) as router:
        ino = os.stat(f"/proc/{router.pid}/ns/net").st_ino
        before = _fds_on(ino)
        pods = []
        try:
            for n in (46, 47, 48):
                pods.append(_behind(router, network=veth(n)))
            assert len(_fds_on(ino)) == len(before) + 1
            r = router.run(["ping", "-c", "1", "-W", "2", str(pods[1].address.ip)], capture_output=True)
            assert r.returncode == 0  # (the host ends are the router's)
            # IPv6 off on an IPv4 link's host end there too (else each adds a
            # route that the next one's insert walks past)
            conf = f"/proc/sys/net/ipv6/conf/{pods[1].host_ifname}/disable_ipv6"
            assert router.run(["cat", conf], capture_output=True, text=True).stdout.strip() == "1"
            pods[0].stop()
            assert len(_fds_on(ino)) == len(before) + 1
        finally:
            nsbox.stop_all(pods)
        nsbox.net.settle()  # (pods[0]'s host side went to the background teardown)
        assert _fds_on(ino) == before
        assert "nsbx" not in router.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_a_pod_behind_a_router_restarts_behind_it():
    # A pod made inside a router pod's namespace has its host end there; its
    # restart (by the watcher's timer, or restart() from any thread) makes
    # the new host end there again, not in the namespace of the thread that
    # restarts it.  The watcher thread itself lives in the process's own
    # namespace even when a thread inside the router started it.
    import signal
    import threading
    import time

    with nsbox.Pod(kinds=("net",)) as router:
        pod = _behind(router, network=veth(49), restart=True)
        try:
            def in_router(name):
                return name in router.run(["ip", "-o", "link"], capture_output=True, text=True).stdout

            first = pod.pid
            assert in_router(pod.host_ifname)
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while (pod.pid in (None, first) or pod.status().state != "running") and time.monotonic() < deadline:
                time.sleep(0.02)
            assert pod.pid != first and pod.status().restarts == 1
            assert in_router(pod.host_ifname)  # (made from the watcher's timer thread, at home)
            assert pod.host_ifname not in {n for _, n in socket.if_nameindex()}
            pod.restart()  # from this thread, at home
            assert in_router(pod.host_ifname) and pod.status().restarts == 2
            r = router.run(["ping", "-c", "1", "-W", "2", str(pod.address.ip)], capture_output=True)
            assert r.returncode == 0
            watcher = [t for t in threading.enumerate() if t.name == "nsbox-watcher"]
            assert watcher and os.stat(f"/proc/self/task/{watcher[0].native_id}/ns/net").st_ino == \
                os.stat("/proc/self/ns/net").st_ino
        finally:
            pod.stop()
        nsbox.net.settle()  # (its host side goes in the background)
        assert not in_router("nsbx")


def test_a_pod_behind_a_router_that_exited_lets_go_of_the_router_once_stopped():
    import signal
    import time

    with nsbox.Pod(kinds=("net",)) as router:
        ino = os.stat(f"/proc/{router.pid}/ns/net").st_ino
        before = _fds_on(ino)
        pod = _behind(router, network=veth(50))
        os.kill(pod.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pod.status().state != "exited" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pod.status().state == "exited"
        assert len(_fds_on(ino)) == len(before) + 1  # (kept: a restart() would make the pod there again)
        pod.stop()
        nsbox.net.settle()  # (its host side goes in the background)
        assert _fds_on(ino) == before


def test_a_failed_restart_keeps_the_pod_behind_its_router(monkeypatch):

    from nsbox.net import podnet

    with nsbox.Pod(kinds=("net",)) as router:
        pod = _behind(router, network=veth(51))
        try:
            real = podnet.PodNetwork.attach

            def failing(*a, **k):
                raise nsbox.NetworkError(5, "injected")

            monkeypatch.setattr(podnet.PodNetwork, "attach", failing)
            with pytest.raises(nsbox.NetworkError, match="injected"):
                pod.restart()  # (from this thread, at home)
            monkeypatch.setattr(podnet.PodNetwork, "attach", real)
            pod.restart()
            assert pod.host_ifname in router.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        finally:
            pod.stop()


def test_a_watcher_started_inside_another_namespace_moves_home():
    # The process's first pod made from a thread inside a namespace nsbox
    # did not make: the watcher thread it starts lives in the process's own
    # namespace (it kept the other one alive, and restart timers were born there).
    r = run_python(textwrap.dedent("""
        import os, subprocess, threading, nsbox
        from nsbox import _syscalls
        other = subprocess.Popen(["unshare", "--net", "sleep", "60"])
        try:
            import time
            while os.stat(f"/proc/{other.pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
                time.sleep(0.01)
            def make():
                fd = os.open(f"/proc/{other.pid}/ns/net", os.O_RDONLY)
                _syscalls.setns(fd, 0x40000000)
                os.close(fd)
                with nsbox.Pod(kinds=("uts",)):
                    pass
            t = threading.Thread(target=make); t.start(); t.join()
            (w,) = [t for t in threading.enumerate() if t.name == "nsbox-watcher"]
            for _ in range(100):
                if os.stat(f"/proc/self/task/{w.native_id}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
                    break
                time.sleep(0.01)
            print("home" if os.stat(f"/proc/self/task/{w.native_id}/ns/net").st_ino
                  == os.stat("/proc/self/ns/net").st_ino else "away")
        finally:
            other.kill(); other.wait()
    """))
    assert r.stdout.strip() == "home", r.stdout + r.stderr


def test_stop_of_a_pod_behind_a_router_tears_down_in_the_background():
    # As for a pod whose host end is at home: stop() returns without waiting
    # for the link's deletion (an RCU grace period), and the background
    # teardown finishes it in the router's namespace.

    from nsbox.net import teardown

    with nsbox.Pod(kinds=("net",)) as router:
        ino = os.stat(f"/proc/{router.pid}/ns/net").st_ino
        before = _fds_on(ino)
        pod = _behind(router, network=veth(52))
        name = pod.host_ifname
        kept = os.open(f"/proc/{pod.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)  # (its link outlives the stop)
        try:
            pod.stop()
            assert teardown.pending() == 1  # (deferred, not done in stop())
        finally:
            os.close(kept)
        nsbox.net.settle()
        assert name not in router.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert _fds_on(ino) == before


def test_ports_of_a_pod_made_inside_another_namespace_are_refused():
    # Published ports are the process's rules, in its own namespace: a pod
    # whose host side is elsewhere (behind a router) cannot have them.

    with nsbox.Pod(kinds=("net",)) as router:
        with pytest.raises(nsbox.ConfigError, match="own network namespace"):
            _behind(router, network=veth(53), ports={18093: 80})
        assert "nsbx" not in router.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_a_forked_child_does_not_keep_a_routers_namespace_for_queued_teardowns():

    with nsbox.Pod(kinds=("net",)) as router:
        ino = os.stat(f"/proc/{router.pid}/ns/net").st_ino
        before = _fds_on(ino)
        pod = _behind(router, network=veth(54))
        kept = os.open(f"/proc/{pod.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)  # (its teardown stays queued)
        try:
            pod.stop()
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os.write(w, str(len(_fds_on(ino))).encode())
                os._exit(0)
            os.close(w)
            child_fds = int(os.read(r, 100))
            os.close(r)
            os.waitpid(pid, 0)
            assert child_fds == len(before)  # (the parent's queued hold is not the child's to keep)
        finally:
            os.close(kept)
        nsbox.net.settle()
        assert _fds_on(ino) == before


def _netnsid(host_ifname):
    out = subprocess.run(["ip", "-o", "link", "show", "dev", host_ifname], capture_output=True, text=True, check=True).stdout
    return int(out.split("link-netnsid ")[1].split()[0])


def test_pod_namespaces_get_ids_counting_down_from_the_top():
    # The newest pod's namespace id comes first in the kernel's walk (see link._next_netns_id).
    with nsbox.Pod(network=veth(60)) as a, nsbox.Pod(network=veth(61)) as b:
        first, second = _netnsid(a.host_ifname), _netnsid(b.host_ifname)
        assert 1 << 30 <= second and first < (1 << 31) - 1
        assert first - second == 1 or (first, second) == (1 << 30, (1 << 31) - 2)  # (or it wrapped)


def test_a_taken_namespace_id_is_left_to_the_kernel(monkeypatch):
    from nsbox.net import link
    with nsbox.Pod(network=veth(62)) as a:
        taken = _netnsid(a.host_ifname)
        monkeypatch.setattr(link, "_next_netns_id", lambda: taken)
        with nsbox.Pod(network=veth(63)) as b:
            assert _netnsid(b.host_ifname) != taken
            assert ping([], "10.210.63.2").returncode == 0


def test_a_forked_child_counts_down_other_ids():
    from nsbox.net import link
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, str(link._next_netns_id()).encode())
        finally:
            os._exit(0)
    try:
        os.close(w)
        child = int(os.read(r, 20))
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    assert status == 0
    # Without a fresh start the child would have given the parent's next id.
    assert child != link._next_netns_id()


def test_a_batch_without_an_answer_names_the_request_left_unanswered(monkeypatch):
    # The namespace id goes first in the veth's batch (its answer ignored);
    # a timeout names the first request left without an answer that counts.
    from nsbox.net import link, rtnl

    monkeypatch.setattr(rtnl, "_TIMEOUT", 0.05)
    mine, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with other, rtnl.Rtnl(mine) as r, pytest.raises(nsbox.NetworkError, match="creating veth pair .*: no answer"):
        link.create_pair(r, 0, "eth0", "nsbxtest0", new_netns=True)
