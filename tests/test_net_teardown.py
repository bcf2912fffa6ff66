"""Background teardown (nsbox.net.teardown): stop() does not wait for the
kernel to delete a pod's link, yet no link outlives its teardown once
settled, and no address or host port still in use is handed out."""
import errno
import os
import socket
import textwrap

import pytest

import nsbox
from nsbox.net import teardown
from helpers import run_python

# 10.221.x.0/24 for these tests.


def links() -> set[str]:
    return {n for _, n in socket.if_nameindex()}


def veth(n: int) -> nsbox.Veth:
    return nsbox.Veth(address=f"10.221.{n}.2/24", host_address=f"10.221.{n}.1/24")


def kept_netns(pod: nsbox.Pod) -> int:
    """An fd on the pod's network namespace: while it is open, the kernel
    does not delete the pod's veth after the pod stops."""
    return os.open(f"/proc/{pod.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def test_stop_leaves_the_link_to_the_kernel_and_settle_waits_for_it():
    pod = nsbox.Pod(network=veth(1)).start()
    name = pod.host_ifname
    pod.stop()
    nsbox.net.settle()
    assert name not in links()
    assert teardown.pending() == 0


def test_a_link_kept_alive_by_its_namespace_is_deleted_at_the_deadline(monkeypatch):
    # Something else holds the pod's netns (here: an fd), so the kernel
    # never deletes the veth: the reaper deletes it after KERNEL_CLEANUP.
    monkeypatch.setattr(teardown, "KERNEL_CLEANUP", 0.2)
    pod = nsbox.Pod(network=veth(2)).start()
    name = pod.host_ifname
    fd = kept_netns(pod)
    try:
        pod.stop()
        assert name in links()  # stop() did not wait for it
        nsbox.net.settle()
        assert name not in links()
    finally:
        os.close(fd)


def test_lease_stays_taken_while_the_old_link_exists(bridge):
    # The lease was the holder's, dead once stopped: another process would
    # reclaim it.  While the link is still there it is this process's.
    me = nsbox._proc.owner(os.getpid())
    pod = nsbox.Pod(network=bridge).start()
    addr, name = pod.address.ip, pod.host_ifname
    fd = kept_netns(pod)
    try:
        pod.stop()
        assert name in links()
        assert bridge.leases() == {addr: me}
        script = textwrap.dedent(
            """
            import sys, ipaddress
            from nsbox.net.ipam import Ipam
            ipam = Ipam(sys.argv[1], ipaddress.ip_network(sys.argv[2]), set())
            with ipam.locked():
                try:
                    ipam.allocate((1, 1), ipaddress.ip_address(sys.argv[3]))
                    print("handed out")
                except Exception as e:
                    print(type(e).__name__, e.errno)
            """
        )
        r = run_python(script, bridge.name, str(bridge.subnet), str(addr))
        assert r.stdout.split() == ["NetworkError", str(errno.EADDRINUSE)], r.stderr
        # In this process, a pod asking for that address waits for the old link.
        with nsbox.Pod(network=nsbox.Bridge(bridge.name, subnet=str(bridge.subnet), address=addr)) as again:
            assert again.address.ip == addr
            assert name not in links()
    finally:
        os.close(fd)
    nsbox.net.settle()
    assert bridge.leases() == {}


def test_fixed_veth_addresses_can_be_reused_at_once():
    # The old host end (with the host address) may still exist right after
    # stop(): the new pod waits for it instead of failing with EADDRINUSE.
    for _ in range(5):
        with nsbox.Pod(network=veth(3)) as pod:
            assert pod.run(["ping", "-c", "1", "-W", "2", "10.221.3.1"], capture_output=True).returncode == 0


def test_fixed_host_ifname_can_be_reused_at_once():
    for _ in range(3):
        with nsbox.Pod(network=nsbox.Veth(address="10.221.4.2/24", host_address="10.221.4.1/24",
                                          host_ifname="nsbxtdfixed")) as pod:
            assert pod.host_ifname == "nsbxtdfixed"


def test_restart_keeps_a_fixed_address(bridge):
    net = nsbox.Bridge(bridge.name, subnet=str(bridge.subnet), address=str(bridge.subnet[9]))
    with nsbox.Pod(network=net) as pod:
        pod.restart()
        assert pod.address.ip == bridge.subnet[9]


def test_port_reservation_stays_until_the_link_is_gone(bridge):
    me = nsbox._proc.owner(os.getpid())
    pod = nsbox.Pod(network=bridge, ports={18111: 80}).start()
    fd = kept_netns(pod)
    try:
        pod.stop()
        from nsbox.net import ports

        assert ports._read_owner(ports._reservation("tcp", 18111)) == me
        # The same port in this process waits for the old pod's teardown.
        with nsbox.Pod(network=bridge, ports={18111: 80}) as again:
            assert again.address is not None
    finally:
        os.close(fd)


def test_bridge_remove_waits_for_background_teardowns(bridge):
    nsbox.Pod(network=bridge).start().stop()
    bridge.remove()  # no EBUSY: the stopped pod's port goes first
    assert not bridge.exists


def test_settle_reports_a_failed_teardown(monkeypatch):
    pod = nsbox.Pod(network=veth(5)).start()
    att = pod._net.primary
    real = type(att).detach

    def boom(self, *a, **k):
        real(self, *a, **k)
        raise nsbox.NetworkError(errno.EIO, "injected")

    monkeypatch.setattr(type(att), "detach", boom)
    pod.stop()
    with pytest.raises(nsbox.NetworkError, match="injected"):
        nsbox.net.settle()
    nsbox.net.settle()  # reported once


def test_exit_settles(bridge):
    # A process that stops a pod and exits at once leaves nothing behind.
    script = textwrap.dedent(
        """
        import sys, nsbox
        nsbox.Pod(network=nsbox.Bridge(sys.argv[1], subnet=sys.argv[2]), ports={18112: 80}).start().stop()
        print(nsbox.net.teardown.pending())
        """
    )
    nsbox.Pod(network=bridge).start().stop()  # (makes the bridge)
    nsbox.net.settle()
    before = links()
    r = run_python(script, bridge.name, str(bridge.subnet))
    assert r.returncode == 0, r.stderr
    assert links() == before
    assert bridge.leases() == {} and bridge.ports() == []


def test_stop_all_takes_veth_host_addresses_first_and_leaves_the_bridge_alone(bridge):
    # Issue 13: stop_all deletes the veth host ends' addresses before their
    # namespaces go (a link that routes go through makes the kernel flush
    # all of the host's route tables as it goes).  Not the bridge's address:
    # that is every bridge pod's gateway.
    import subprocess

    keep = nsbox.Pod(network=bridge).start()
    pods = [nsbox.Pod(network=veth(30 + i)).start() for i in range(3)] + [nsbox.Pod(network=bridge).start()]
    names = [p.host_ifname for p in pods]
    fd = kept_netns(pods[0])  # its link outlives the stop: the address must be gone anyway
    try:
        nsbox.stop_all(pods)
        shown = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", names[0]], capture_output=True, text=True)
        assert shown.stdout == ""
        gw = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", bridge.name], capture_output=True, text=True)
        assert str(bridge.gateway) in gw.stdout
        assert keep.run(["ping", "-c", "1", "-W", "2", str(bridge.gateway.ip)], capture_output=True).returncode == 0
    finally:
        os.close(fd)
        keep.stop()
    nsbox.net.settle()
    assert not set(names) & links()
