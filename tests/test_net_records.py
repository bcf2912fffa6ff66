"""Networks as data: the Network protocol, configurations rebuilt from
to_dict(), and an Attachment rebuilt from its record in another process
and torn down from there."""
import errno
import ipaddress
import json
import os
import socket
import subprocess

import pytest

import nsbox
from nsbox.net import Attachment, Bridge, Network, Veth, network_from_dict
from nsbox.net.ipam import owner_of
from nsbox.net.ports import parse_ports
from nsbox.net.rundir import run_dir
from helpers import run_python

# Subnets owned by these tests: 10.246.x.0/24.

NETWORKS = [
    Veth("10.246.1.2/24", "10.246.1.1/24"),
    Veth("10.246.1.2/24", "10.246.1.1/24", ifname="net1", host_ifname="nsbxrec1", mtu=1400,
         mac="02:00:0a:f6:01:02", host_mac="02:00:0a:f6:01:01", routes=["10.247.0.0/16"],
         default_route=False, delay="1.5ms", jitter="500us", loss=0.5, rate="10mbit"),
    Veth("fd00:246::2/64"),
    Bridge("nsbrrec0", subnet="10.246.2.0/24"),
    Bridge("nsbrrec0", subnet="10.246.2.0/24", gateway="10.246.2.254", address="10.246.2.9",
           ifname="net2", host_ifname="nsbxrec2", mtu=1300, mac="02:00:0a:f6:02:09", rate="1gbit"),
]


@pytest.mark.parametrize("net", NETWORKS, ids=repr)
def test_a_network_is_rebuilt_equal_from_its_dict(net):
    assert isinstance(net, Network)
    d = json.loads(json.dumps(net.to_dict()))  # JSON-able
    again = network_from_dict(d)
    assert again == net and type(again) is type(net) and hash(again) == hash(net)
    assert again.to_dict() == net.to_dict()


def test_networks_differing_in_any_setting_are_not_equal():
    a = Veth("10.246.1.2/24", "10.246.1.1/24")
    assert a != Veth("10.246.1.2/24", "10.246.1.1/24", rate="10mbit")
    assert a != Veth("10.246.1.2/24", "10.246.1.1/24", mtu=1400)
    assert Bridge("nsbrrec0", subnet="10.246.2.0/24") != Bridge("nsbrrec1", subnet="10.246.2.0/24")
    assert a != Bridge("nsbrrec0", subnet="10.246.2.0/24")


@pytest.mark.parametrize("d", [{}, {"type": "macvlan"}, "veth", {"type": "veth", "address": "x"}])
def test_a_bad_network_dict_is_a_config_error(d):
    with pytest.raises(nsbox.ConfigError):
        network_from_dict(d)


@pytest.mark.parametrize(
    "net, match",
    [
        (Veth("fd00:246::2/64", "fd00:246::1/64"), "IPv4 networks only"),
        (Veth("10.246.1.2/24"), "needs host_address"),
        (Bridge("nsbrrec0", subnet="fd00:246:1::/64"), "IPv4 networks only"),
    ],
)
def test_check_publishable_refuses_what_ports_cannot_use(net, match):
    with pytest.raises(nsbox.ConfigError, match=match):
        net.check_publishable()


def test_check_publishable_accepts_ipv4():
    Veth("10.246.1.2/24", "10.246.1.1/24").check_publishable()
    Bridge("nsbrrec0", subnet="10.246.2.0/24").check_publishable()


DETACH = """
import json, sys
from nsbox.net import Attachment
att = Attachment.from_record(json.loads(sys.argv[1]))
att.detach()
att.detach()  # idempotent
print(json.dumps(att.to_record()))
"""


def _attach(bridge, pod):
    """``bridge`` attached to ``pod`` by hand (the Attachment is the test's)."""
    fd = os.open(f"/proc/{pod.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return bridge.attach(fd, pod.pid)
    finally:
        os.close(fd)


def test_an_attachment_is_torn_down_from_its_record_in_another_process():
    bridge = Bridge("nsbrrec0", subnet="10.246.3.0/24", rate="10mbit")
    try:
        with nsbox.Pod(kinds=("net",)) as pod:
            att = _attach(bridge, pod)
            try:
                # (the shared table: a kernel-owned one only this process may change)
                att.publish(owner_of(pod.pid), parse_ports({18246: 80}), kernel_owned=False)
                record = json.loads(json.dumps(att.to_record()))
                assert record["address"] == "10.246.3.2/24" and record["lease"] and record["published"]
                assert Attachment.from_record(record).to_record() == record
                assert att.host_ifname in bridge.ports() and list(bridge.leases()) == [ipaddress.ip_address("10.246.3.2")]
                assert "nsbox:" in subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout

                r = run_python(DETACH, json.dumps(record))
                assert r.returncode == 0, r.stderr
                assert json.loads(r.stdout)["detached"] is True
                assert att.host_ifname not in {n for _, n in socket.if_nameindex()}
                assert bridge.ports() == [] and bridge.leases() == {}
                assert "nsbox:" not in subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
            finally:
                att.detach()  # already done elsewhere: nothing left to do, no error
    finally:
        bridge.remove()


def test_kernel_owned_rules_are_not_released_from_another_process():
    # Rules in this process's kernel-owned table can't be removed by another
    # process: its detach says so, and the host port stays reserved.
    bridge = Bridge("nsbrrec1", subnet="10.246.4.0/24")
    try:
        with nsbox.Pod(kinds=("net",)) as pod:
            att = _attach(bridge, pod)
            try:
                att.publish(owner_of(pod.pid), parse_ports({18247: 80}))
                r = run_python(DETACH, json.dumps(att.to_record()))
                assert r.returncode != 0 and "kernel-owned" in r.stderr
                assert (run_dir() / "ports" / "tcp-18247").exists()
                assert "dport 18247" in subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
            finally:
                att.detach()
    finally:
        nsbox.net.settle()
        bridge.remove()


def test_a_record_of_another_version_is_refused():
    with pytest.raises(nsbox.ConfigError, match="version"):
        Attachment.from_record({"version": 99})


def test_a_host_side_in_an_unreachable_namespace_is_a_clear_error():
    att = Attachment(ifname="eth0", host_ifname="nsbxgone", host_index=0x7FFFFFF0, host_netns_id=(1, 1))
    with pytest.raises(nsbox.NetworkError, match="is not this process's") as e:
        att.detach()
    assert e.value.errno == errno.ENOENT
    att.detach()  # detached: nothing more to try
