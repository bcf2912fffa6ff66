"""Regressions found by the review of the IPAM slot file and the state
lock (issue 13, second part): each failed before its fix."""
import ipaddress
import os
import subprocess
import threading
import time

import pytest

import nsbox
from nsbox.net import ipam as ipam_mod
from nsbox.net import rundir
from nsbox.net.ipam import SLOT, Ipam, owner_of


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NSBOX_RUN_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


def _me():
    return owner_of(os.getpid())


def _dead():
    me = _me()
    return me[0], me[1] + 1  # this PID with another start time: a process that is gone


def test_migration_never_overwrites_a_live_slot(run_dir):
    # A file of the older form naming a dead owner for an address whose slot
    # a live pod holds: the slot stays the live pod's, the file goes.
    net = ipaddress.ip_network("10.228.4.0/29")
    ipam = Ipam("unit", net, set())
    addr = net.network_address + 1
    with ipam.locked():
        ipam._put(addr, _me())
        (ipam.dir / str(addr)).write_text("%d %d\n" % _dead())
        assert ipam.allocate(_me()) != addr  # not handed out again
        assert ipam.recorded(addr) == _me()
        assert not (ipam.dir / str(addr)).exists()
    for a in (addr, net.network_address + 2):
        ipam.release(a, _me())
    assert not (run_dir / "ipam").exists()


def test_releases_in_any_order_cut_the_slot_file_and_remove_it(run_dir):
    net = ipaddress.ip_network("10.228.5.0/24")
    ipam = Ipam("unit", net, set())
    slots = ipam.dir / f"slots-{net.network_address}_24"
    with ipam.locked():
        got = [ipam.allocate(_me()) for _ in range(6)]
    assert slots.stat().st_size == 6 * SLOT
    ipam.release(got[2], _me())
    assert slots.stat().st_size == 6 * SLOT  # a later slot is still used
    ipam.release(got[5], _me())
    ipam.release(got[4], _me())
    assert slots.stat().st_size == 4 * SLOT
    ipam.release(got[3], _me())
    assert slots.stat().st_size == 2 * SLOT  # (slot 2 was free already)
    for a in got[:2]:
        ipam.release(a, _me())
    assert not (run_dir / "ipam").exists()


def test_a_failed_allocation_leaves_no_slot_file(run_dir, monkeypatch):
    ipam = Ipam("unit", ipaddress.ip_network("10.228.6.0/29"), set())

    def broken(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ipam_mod.os, "pwrite", broken)
    with ipam.locked(), pytest.raises(OSError):
        ipam.allocate(_me())
    assert not (run_dir / "ipam").exists()


def test_sweep_clears_debris_and_corrupt_slots(run_dir):
    net = ipaddress.ip_network("10.228.7.0/29")
    ipam = Ipam("unit", net, set())
    with ipam.locked():
        ipam._put(net.network_address + 1, _me())
        with open(ipam._slots, "r+b") as f:
            f.seek(3 * SLOT)
            f.write(b"garbage".ljust(SLOT, b" "))  # not a lease
        (ipam.dir / ".10.228.7.5.tmp").write_text("1 2\n")  # a write cut short
        (ipam.dir / "10.228.7.6").write_text("nonsense\n")
    assert ipam_mod.sweep() == []
    assert sorted(os.listdir(ipam.dir)) == [f"slots-{net.network_address}_29"]
    ipam.release(net.network_address + 1, _me())
    assert not (run_dir / "ipam").exists()


def test_leases_are_the_subnets_own(run_dir):
    # A file of a single lease of another subnet (a bridge name reused) is
    # not one of this subnet's leases.
    old = Ipam("unit", ipaddress.ip_network("fd00:228::/64"), set())
    new = Ipam("unit", ipaddress.ip_network("10.228.8.0/29"), set())
    far = old.network.network_address + (1 << 21)
    with old.locked():
        old.allocate(_me(), far)
        assert new.live_leases() == {}
        assert old.live_leases() == {far: _me()}
    old.release(far, _me())
    assert not (run_dir / "ipam").exists()


def test_remove_refuses_while_live_pods_hold_leases_of_a_vanished_bridge(bridge):
    with nsbox.Pod(network=bridge) as pod:
        subprocess.run(["ip", "link", "del", bridge.name], check=True)  # behind nsbox's back
        with pytest.raises(nsbox.NetworkError, match="still used") as e:
            bridge.remove()
        assert e.value.errno == 16  # EBUSY
        assert bridge.leases() == {pod.address.ip: owner_of(pod.pid)}  # not wiped
    nsbox.net.settle()


def test_a_child_forked_while_another_thread_holds_the_state_lock_does_not_keep_it(run_dir):
    held, release = threading.Event(), threading.Event()

    def holder():
        with rundir.locked():
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        time.sleep(60)
        os._exit(0)
    try:
        release.set()
        t.join(10)
        done = threading.Event()

        def taker():
            with rundir.locked():
                done.set()

        threading.Thread(target=taker, daemon=True).start()
        assert done.wait(10), "the forked child kept the state lock"
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # (the child still lives: it did not keep the lock)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_release_that_clears_nothing_cuts_nothing(run_dir):
    # A stale lease released (its holder died, the slot reclaimed since by
    # a live pod) must not cut or remove the slot file under the live lease.
    net = ipaddress.ip_network("10.228.9.0/29")
    ipam = Ipam("unit", net, set())
    a = net.network_address + 1
    with ipam.locked():
        ipam._put(a, _me())
    ipam.release(a, _dead())
    assert ipam.recorded(a) == _me()
    with ipam.locked():
        assert ipam.allocate(_me()) != a
    for x in (a, net.network_address + 2):
        ipam.release(x, _me())
    assert not (run_dir / "ipam").exists()


def test_destroy_removes_its_subnets_debris(run_dir):
    net = ipaddress.ip_network("10.228.10.0/29")
    ipam = Ipam("unit", net, set())
    with ipam.locked():
        ipam._put(net.network_address + 1, _dead())
        (ipam.dir / ".10.228.10.5.tmp").write_text("1 2\n")
        (ipam.dir / "10.228.10.6").write_text("nonsense\n")
        ipam.destroy()
    assert not (run_dir / "ipam").exists()
