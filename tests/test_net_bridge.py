"""Bridge mode with IPAM: shared bridge, unique addresses, leases, removal."""
import errno
import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

import nsbox
from helpers import holder_pids, run_python

ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 7000)); s.listen(); print("ready", flush=True)
    c, peer = s.accept(); c.sendall(b"hello " + peer[0].encode()); c.close()
    """
)
CLIENT = "import socket, sys; print(socket.create_connection((sys.argv[1], 7000), timeout=5).recv(100).decode())"


def test_pods_on_a_bridge_reach_each_other_and_the_host(bridge):
    with nsbox.Pod(network=bridge) as a, nsbox.Pod(network=bridge) as b:
        assert a.address.network == b.address.network == bridge.subnet
        assert a.address != b.address
        assert bridge.exists and sorted(bridge.ports()) == sorted([a.host_ifname, b.host_ifname])
        assert b.run(["ping", "-c", "1", "-W", "2", str(a.address.ip)], capture_output=True).returncode == 0
        assert subprocess.run(["ping", "-c", "1", "-W", "2", str(b.address.ip)], capture_output=True).returncode == 0
        server = a.spawn([sys.executable, "-c", ECHO_SERVER, str(a.address.ip)], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline() == "ready\n"
        r = b.run([sys.executable, "-c", CLIENT, str(a.address.ip)], capture_output=True, text=True, timeout=10)
        assert r.stdout.strip() == f"hello {b.address.ip}"
        server.wait(timeout=5)
        server.stdout.close()
        routes = a.run(["ip", "route"], capture_output=True, text=True).stdout
        assert f"default via {bridge.gateway.ip} dev eth0" in routes


def test_teardown_keeps_the_bridge_and_releases_leases(bridge):
    with nsbox.Pod(network=bridge) as a:
        with nsbox.Pod(network=bridge):
            assert len(bridge.leases()) == 2
            with pytest.raises(nsbox.NetworkError, match="still used") as e:
                bridge.remove()
            assert e.value.errno == errno.EBUSY
        nsbox.net.settle()  # (the host side goes in the background)
        assert bridge.exists and bridge.ports() == [a.host_ifname]
        assert list(bridge.leases()) == [a.address.ip]
    nsbox.net.settle()  # (the host side goes in the background)
    assert bridge.exists and bridge.ports() == [] and bridge.leases() == {}


def test_fifty_pods_from_eight_threads_get_unique_addresses(bridge):
    def make(_):
        return nsbox.Pod(network=bridge).start()

    with ThreadPoolExecutor(8) as ex:
        pods = list(ex.map(make, range(50)))
    try:
        addrs = [p.address.ip for p in pods]
        assert len(set(addrs)) == 50
        assert all(a in bridge.subnet and a != bridge.gateway.ip for a in addrs)
        # every pod really has its address and reaches the gateway
        r = pods[-1].run(["ping", "-c", "1", "-W", "2", str(pods[0].address.ip)], capture_output=True)
        assert r.returncode == 0
    finally:
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda p: p.stop(), pods))
    nsbox.net.settle()  # (the host side goes in the background)
    assert bridge.leases() == {}


MAKER = textwrap.dedent(
    """
    import json, sys, nsbox
    br = nsbox.Bridge(sys.argv[1], subnet=sys.argv[2])
    pods = [nsbox.Pod(network=br).start() for _ in range(int(sys.argv[3]))]
    print(json.dumps([str(p.address.ip) for p in pods]), flush=True)
    sys.stdin.readline()
    for p in pods:
        p.stop()
    """
)


def test_two_processes_at_once_get_unique_addresses(bridge):
    procs = [
        subprocess.Popen([sys.executable, "-c", MAKER, bridge.name, str(bridge.subnet), "12"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        for _ in range(2)
    ]
    try:
        lists = [json.loads(p.stdout.readline()) for p in procs]
        addrs = lists[0] + lists[1]
        assert len(addrs) == 24 and len(set(addrs)) == 24
        assert len(bridge.leases()) == 24
    finally:
        for p in procs:
            p.communicate("\n", timeout=30)
    assert bridge.leases() == {}


def test_lease_of_a_dead_holder_is_reclaimed(bridge):
    # A pod whose creator was SIGKILLed never released its lease.
    script = textwrap.dedent(
        """
        import os, signal, sys, nsbox
        pod = nsbox.Pod(network=nsbox.Bridge(sys.argv[1], subnet=sys.argv[2])).start()
        print(pod.address.ip, pod.host_ifname, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    r = run_python(script, bridge.name, str(bridge.subnet))
    stale_ip, stale_link = r.stdout.split()
    stale = ipaddress.ip_address(stale_ip)
    assert bridge._ipam.recorded(stale) is not None  # left behind by the killed creator
    import time

    deadline = time.monotonic() + 5
    while stale_link in {n for _, n in socket.if_nameindex()} and time.monotonic() < deadline:
        time.sleep(0.02)  # the kernel removes the veth once the netns is gone
    with nsbox.Pod(network=bridge) as pod:
        assert str(pod.address.ip) == stale_ip  # reclaimed: its holder is dead
    nsbox.net.settle()  # (the host side goes in the background)
    assert bridge._ipam.recorded(stale) is None


def test_requested_address(bridge):
    want = bridge.subnet.network_address + 77
    net = nsbox.Bridge(bridge.name, subnet=str(bridge.subnet), address=str(want))
    with nsbox.Pod(network=net) as pod:
        assert pod.address.ip == want
        before = holder_pids()
        links = {n for _, n in socket.if_nameindex()}
        with pytest.raises(nsbox.NetworkError, match="in use") as e:
            nsbox.Pod(network=net).start()
        assert e.value.errno == errno.EADDRINUSE
        assert holder_pids() == before and {n for _, n in socket.if_nameindex()} == links


def test_pool_exhaustion_rolls_back():
    br = nsbox.Bridge("nsbtsmall", subnet="10.221.0.0/30")  # gateway + one pod
    try:
        with nsbox.Pod(network=br) as pod:
            assert pod.address.ip == ipaddress.ip_address("10.221.0.2")
            before = holder_pids()
            with pytest.raises(nsbox.NetworkError, match="no free address") as e:
                nsbox.Pod(network=br).start()
            assert e.value.errno == errno.EADDRNOTAVAIL
            assert holder_pids() == before and br.ports() == [pod.host_ifname]
    finally:
        br.remove()


def test_name_of_a_non_bridge_link():
    with nsbox.Pod(network=nsbox.Veth(address="10.222.0.2/24", host_address="10.222.0.1/24")) as pod:
        br = nsbox.Bridge(pod.host_ifname, subnet="10.222.1.0/24")
        with pytest.raises(nsbox.NetworkError, match="not a bridge"):
            nsbox.Pod(network=br).start()
    br.remove()  # nothing to remove: a no-op


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("nsbtx", "10.223.0.0/33"), {}, "not a network"),
        (("nsbtx", "10.223.0.1/24"), {}, "not a network"),  # host bits set
        (("nsbtx", "10.223.0.0/31"), {}, "too small"),
        (("nsbtx", "10.223.0.0/24"), {"gateway": "10.224.0.1"}, "outside the bridge subnet"),
        (("nsbtx", "10.223.0.0/24"), {"address": "10.224.0.9"}, "outside the bridge subnet"),
        (("nsbtx", "10.223.0.0/24"), {"address": "10.223.0.1"}, "gateway"),
        (("nsbtx", "10.223.0.0/24"), {"address": "10.223.0.255"}, "broadcast"),
        (("a very long bridge name", "10.223.0.0/24"), {}, "1 to 15 bytes"),
        (("br/0", "10.223.0.0/24"), {}, "must not contain"),
        (("nsbtx", "10.223.0.0/24"), {"multicast_snooping": "yes"}, "True or False"),
    ],
)
def test_bad_bridge_arguments(args, kwargs, match):
    with pytest.raises(nsbox.ConfigError, match=match):
        nsbox.Bridge(*args, **kwargs)


def test_remove_of_a_missing_bridge_is_a_noop():
    nsbox.Bridge("nsbtnone", subnet="10.225.0.0/24").remove()
    assert not os.path.exists("/run/nsbox/ipam/nsbtnone")


def test_pod_on_two_networks(bridge):
    v = nsbox.Veth(address="10.227.0.2/24", host_address="10.227.0.1/24", ifname="eth1")
    with nsbox.Pod(network=[bridge, v]) as pod:
        assert pod.address.network == bridge.subnet  # the first network is primary
        assert pod.addresses == {"eth0": pod.address, "eth1": ipaddress.ip_interface("10.227.0.2/24")}
        routes = pod.run(["ip", "route"], capture_output=True, text=True).stdout
        assert routes.count("default") == 1 and f"default via {bridge.gateway.ip} dev eth0" in routes
        assert subprocess.run(["ping", "-c", "1", "-W", "2", "10.227.0.2"], capture_output=True).returncode == 0
        pod.shape(rate="3mbit", ifname="eth1")
        assert "3Mbit" in pod.run(["tc", "qdisc", "show", "dev", "eth1"], capture_output=True, text=True).stdout
        with pytest.raises(nsbox.ConfigError, match="no interface"):
            pod.shape(rate="1mbit", ifname="eth7")


def test_two_networks_need_distinct_ifnames(bridge):
    with pytest.raises(nsbox.ConfigError, match="its own ifname"):
        nsbox.Pod(network=[bridge, nsbox.Veth(address="10.227.1.2/24", host_address="10.227.1.1/24")])


def test_a_bridge_nsbox_did_not_make_is_neither_adopted_nor_removed():
    subprocess.run(["ip", "link", "add", "nsbtforeign", "type", "bridge"], check=True)
    try:
        br = nsbox.Bridge("nsbtforeign", subnet="10.228.0.0/24")
        before = holder_pids()
        with pytest.raises(nsbox.NetworkError, match="not made by nsbox"):
            nsbox.Pod(network=br).start()
        assert holder_pids() == before
        with pytest.raises(nsbox.NetworkError, match="neither adopts nor removes"):
            br.remove()
        addrs = subprocess.run(["ip", "-o", "addr", "show", "nsbtforeign"], capture_output=True, text=True).stdout
        assert "10.228.0.1" not in addrs  # no gateway address was added to it
    finally:
        subprocess.run(["ip", "link", "del", "nsbtforeign"], check=True)


def test_same_bridge_name_for_another_subnet_is_refused(bridge):
    with nsbox.Pod(network=bridge):
        other = nsbox.Bridge(bridge.name, subnet="10.229.0.0/24")
        with pytest.raises(nsbox.NetworkError, match=f"made by nsbox for {bridge.subnet}"):
            nsbox.Pod(network=other).start()


def test_stop_all_tears_everything_down(bridge):
    pods = [nsbox.Pod(network=bridge, ports={18099: 80} if i == 0 else None) for i in range(10)]
    for p in pods[:9]:
        p.start()  # the last one is never started
    members = [p.spawn(["sleep", "60"]) for p in pods[:3]]
    pods[1].stop()  # one already stopped
    names = {p.host_ifname for p in pods[2:9]} | {pods[0].host_ifname}
    codes = nsbox.stop_all(pods)
    assert codes == [0] * 9 + [None]
    assert all(m.returncode is not None for m in members)
    assert not names & {n for _, n in socket.if_nameindex()}
    nsbox.net.settle()  # (pods[1], stopped alone, went in the background)
    assert bridge.leases() == {} and bridge.ports() == []
    r = subprocess.run(["nft", "list", "ruleset", "ip"], capture_output=True, text=True)
    assert "nsbox:" not in r.stdout
    assert nsbox.stop_all(pods) == codes  # idempotent


def test_ipam_hands_out_the_lowest_free_address(tmp_path, monkeypatch):
    # Allocation skips this process's own leases without reading them (and
    # starts its scan past the ones it knows are taken), but the lowest free
    # address is still the one handed out, holes first.
    from nsbox.net.ipam import Ipam, owner_of

    monkeypatch.setenv("NSBOX_RUN_DIR", str(tmp_path / "run"))
    net = ipaddress.ip_network("10.228.0.0/29")  # hosts .1-.6; .1 reserved (gateway)
    ipam = Ipam("unit", net, {net.network_address + 1})
    me = owner_of(os.getpid())
    with ipam.locked():
        got = [str(ipam.allocate(me)) for _ in range(4)]
    assert got == ["10.228.0.2", "10.228.0.3", "10.228.0.4", "10.228.0.5"]
    ipam.release(ipaddress.ip_address("10.228.0.3"), me)
    with ipam.locked():
        assert str(ipam.allocate(me)) == "10.228.0.3"
    for last in ("10.228.0.2", "10.228.0.4"):
        ipam.release(ipaddress.ip_address(last), me)
    with ipam.locked():
        assert [str(ipam.allocate(me)) for _ in range(3)] == ["10.228.0.2", "10.228.0.4", "10.228.0.6"]
        with pytest.raises(nsbox.NetworkError, match="no free address"):
            ipam.allocate(me)
    for a in ("10.228.0.2", "10.228.0.3", "10.228.0.4", "10.228.0.5", "10.228.0.6"):
        ipam.release(ipaddress.ip_address(a), me)
    assert not (tmp_path / "run" / "ipam").exists()


def test_a_bridge_made_from_a_thread_in_another_network_namespace():
    # exists/ports()/remove() ask rtnetlink in the calling thread's namespace;
    # /sys/class/net shows the one sysfs was mounted in (they used it, and
    # refused the thread's own bridge as "exists and is not a bridge").
    from helpers import link_exists

    with nsbox.Pod(kinds=("net",)) as node:
        with node.joined("net"):
            br = nsbox.Bridge("nsbtnode0", subnet="10.233.0.0/24")
            with nsbox.Pod(network=br) as pod:
                assert br.exists and br.ports() == [pod.host_ifname]
                again = nsbox.Bridge("nsbtnode0", subnet="10.233.0.0/24")
                with nsbox.Pod(network=again) as other:  # (the existing bridge is recognised as nsbox's)
                    assert len(br.ports()) == 2 and other.address != pod.address
            nsbox.net.settle()
            br.remove()
            assert not br.exists and not link_exists("nsbtnode0")
    assert not link_exists("nsbtnode0")  # (never in the host's namespace)


def test_a_full_bridge_says_so_and_what_to_do(bridge, tmp_path):
    # Issue 13: the kernel numbers a bridge's ports in 10 bits (port 0
    # reserved): the 1,024th is refused with a bare EXFULL.  Fill the bridge
    # with bare veth ports instead of 1,023 pods (this kernel has no dummy).
    first = nsbox.Pod(network=bridge).start()
    names = [f"nsbf{os.getpid() % 10000}x{i}" for i in range(nsbox.net.bridge.MAX_PORTS - 1)]
    group = str(100000 + os.getpid())  # a link group of this test's own: deleted in one go (one RCU grace period)
    (tmp_path / "add").write_text("".join(f"link add {n} group {group} type veth peer name {n}p\n"
                                          f"link set {n} master {bridge.name}\n" for n in names))
    subprocess.run(["ip", "-batch", str(tmp_path / "add")], check=True)
    try:
        with pytest.raises(nsbox.NetworkError) as e:
            nsbox.Pod(network=bridge).start()
        assert e.value.errno == errno.EXFULL
        assert f"bridge {bridge.name} is full" in str(e.value) and "another nsbox.Bridge" in str(e.value)
        subprocess.run(["ip", "link", "del", names[-1]], check=True)
        with nsbox.Pod(network=bridge) as second:  # the failed one left no lease or link behind
            assert second.address.ip == first.address.ip + 1
    finally:
        subprocess.run(["ip", "link", "del", "group", group], capture_output=True)
        first.stop()


@pytest.mark.parametrize("replace", ["deleted", "replaced by a plain bridge", "replaced by a veth"])
def test_a_bridge_gone_behind_our_back_is_made_again(bridge, replace):
    # Issue 13: a process checks its bridge once, not for every pod; a port
    # made on a bridge that went away since then fails, and nsbox looks again.
    with nsbox.Pod(network=bridge) as a:
        pass
    subprocess.run(["ip", "link", "del", bridge.name], check=True)
    if replace == "replaced by a plain bridge":
        subprocess.run(["ip", "link", "add", bridge.name, "type", "bridge"], check=True)
    elif replace == "replaced by a veth":
        subprocess.run(["ip", "link", "add", bridge.name, "type", "veth", "peer", "name", bridge.name + "p"], check=True)
    try:
        if replace == "deleted":
            with nsbox.Pod(network=bridge) as b:
                assert b.run(["ping", "-c", "1", "-W", "2", str(bridge.gateway.ip)], capture_output=True).returncode == 0
                assert bridge.ports() == [b.host_ifname]
        else:
            with pytest.raises(nsbox.NetworkError, match="pick another name"):
                nsbox.Pod(network=bridge).start()
    finally:
        if replace != "deleted":
            subprocess.run(["ip", "link", "del", bridge.name], check=True)
    assert a.returncode == 0


def test_ipam_slots_far_addresses_and_sweep(tmp_path, monkeypatch):
    # Leases live in one file of fixed slots per bridge and subnet (no file
    # made per pod); an address past the slots (far into an IPv6 subnet)
    # gets a file of its own; dead owners are swept from both; nothing is
    # left once the last lease goes.
    from nsbox.net import ipam as ipam_mod
    from nsbox.net.ipam import SLOT, SLOTS, Ipam, owner_of

    monkeypatch.setenv("NSBOX_RUN_DIR", str(tmp_path / "run"))
    me = owner_of(os.getpid())
    dead = (me[0], me[1] + 1)  # this PID, another start time: a process that is gone
    net = ipaddress.ip_network("fd00:228::/64")
    ipam = Ipam("unit6", net, set())
    far = net.network_address + 1 + SLOTS + 5
    with ipam.locked():
        near = ipam.allocate(me)
        assert near == net.network_address + 1
        assert ipam.allocate(me, far) == far
        ipam._put(net.network_address + 3, dead)
        ipam._put(far + 1, dead)
        assert sorted(os.listdir(ipam.dir)) == sorted([f"slots-{net.network_address}_64", str(far), str(far + 1)])
        assert ipam.live_leases() == {near: me, far: me}
        with pytest.raises(nsbox.NetworkError, match="in use"):
            ipam.allocate(me, far)
        assert ipam.allocate(dead, net.network_address + 2)  # a candidate not ours, free
    assert sorted(ipam_mod.sweep()) == sorted(
        [f"lease {net.network_address + 3} of bridge unit6 (holder {me[0]} is gone)",
         f"lease {far + 1} of bridge unit6 (holder {me[0]} is gone)",
         f"lease {net.network_address + 2} of bridge unit6 (holder {me[0]} is gone)"])
    slots = ipam.dir / f"slots-{net.network_address}_64"
    assert slots.stat().st_size == SLOT  # cut after the last lease: only `near` is left
    for addr in (far, near):
        ipam.release(addr, me)
    assert not (tmp_path / "run" / "ipam").exists()


def test_ipam_of_a_bridge_name_reused_for_another_subnet(tmp_path, monkeypatch):
    from nsbox.net.ipam import Ipam, owner_of

    monkeypatch.setenv("NSBOX_RUN_DIR", str(tmp_path / "run"))
    me = owner_of(os.getpid())
    old = Ipam("unit", ipaddress.ip_network("10.228.1.0/24"), set())
    new = Ipam("unit", ipaddress.ip_network("10.228.2.0/24"), set())
    with old.locked():
        a = old.allocate(me)
        assert new.live_leases() == {}  # the other subnet's slots are not read as this one's
        b = new.allocate(me)
        assert str(b) == "10.228.2.1" and old.live_leases() == {a: me}
    old.release(a, me)
    new.release(b, me)
    assert not (tmp_path / "run" / "ipam").exists()


def test_ipam_takes_over_leases_of_the_older_form(tmp_path, monkeypatch):
    # An older nsbox wrote a file per lease; its pods may outlive an upgrade.
    # Their leases are moved into slots before the first allocation, so no
    # address is handed out twice; a dead owner's is free again.
    from nsbox.net.ipam import Ipam, owner_of

    monkeypatch.setenv("NSBOX_RUN_DIR", str(tmp_path / "run"))
    me = owner_of(os.getpid())
    net = ipaddress.ip_network("10.228.3.0/29")
    ipam = Ipam("unit", net, {net.network_address + 1})
    ipam.dir.mkdir(parents=True)
    (ipam.dir / "10.228.3.2").write_text(f"{me[0]} {me[1]}\n")  # live
    (ipam.dir / "10.228.3.3").write_text(f"{me[0]} {me[1] + 1}\n")  # its holder is gone
    with ipam.locked():
        assert str(ipam.allocate(me)) == "10.228.3.3"
        assert sorted(os.listdir(ipam.dir)) == ["slots-10.228.3.0_29"]
        assert ipam.live_leases() == {net.network_address + 2: me, net.network_address + 3: me}
    for a in ("10.228.3.2", "10.228.3.3"):
        ipam.release(ipaddress.ip_address(a), me)
    assert not (tmp_path / "run" / "ipam").exists()


def _sys(bridge_name, attr):
    path = f"/sys/class/net/{bridge_name}/{attr}"
    if attr == "bridge/multicast_snooping" and not os.path.exists(path):
        pytest.skip("kernel without bridge multicast snooping (CONFIG_BRIDGE_IGMP_SNOOPING)")
    with open(path) as f:
        return f.read().strip()


def test_a_bridge_nsbox_makes_keeps_its_own_mac_and_floods_multicast(bridge):
    # Issue 13: without a MAC of its own the bridge takes its ports' lowest
    # and recomputes it at every port added (and the pods' gateway changes
    # MAC under their ARP caches as pods come and go); with snooping on,
    # every port's up re-arms multicast snooping on every other port.
    with nsbox.Pod(network=bridge) as a:
        mac = _sys(bridge.name, "address")
        assert _sys(bridge.name, "addr_assign_type") == "3"  # NET_ADDR_SET
        assert int(mac.split(":")[0], 16) & 0x03 == 0x02  # unicast, locally administered
        assert _sys(bridge.name, "bridge/multicast_snooping") == "0"
        with nsbox.Pod(network=bridge) as b, nsbox.Pod(network=bridge):
            assert _sys(bridge.name, "address") == mac
            assert a.run(["ping", "-c", "1", "-W", "2", str(b.address.ip)], capture_output=True).returncode == 0
        assert _sys(bridge.name, "address") == mac


def test_multicast_snooping_when_asked_and_in_the_configuration():
    name = f"nsbtmc{os.getpid() % 100000}"
    br = nsbox.Bridge(name, subnet="10.232.0.0/24", multicast_snooping=True)
    try:
        with nsbox.Pod(network=br):
            assert _sys(name, "bridge/multicast_snooping") == "1"
    finally:
        br.remove()
    assert nsbox.net.network_from_dict(br.to_dict()) == br
    default = nsbox.Bridge(name, subnet="10.232.0.0/24")
    # (the key only when on: a record an older nsbox can still read)
    assert "multicast_snooping" not in default.to_dict()
    assert nsbox.net.network_from_dict(default.to_dict()).multicast_snooping is False


def test_ipv6_pods_on_a_bridge_find_each_other():
    # Neighbour discovery is multicast, flooded to every port.
    br = nsbox.Bridge(f"nsbt6x{os.getpid() % 100000}", subnet="fd00:232::/64")
    try:
        with nsbox.Pod(network=br) as a, nsbox.Pod(network=br) as b:
            r = a.run(["ping", "-6", "-c", "1", "-W", "3", str(b.address.ip)], capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
    finally:
        br.remove()
