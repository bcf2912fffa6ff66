"""Shared fixtures.  Tests run as root against the real kernel: no mocks.

Leak checks:
- after every test: no new nsbox-init process survives (they are found by
  their executable and killed one by one, by PID, after the test is failed);
- at the end of the session: no child process of the test runner and no
  file descriptor opened during the session is left.
"""
from __future__ import annotations

import gc
import itertools
import os
import signal
import subprocess

import pytest

import nsbox
import nsbox.net.rtnl
from helpers import children_of_self, holder_pids, proc_state, wait_until

if os.geteuid() != 0:
    pytest.skip("nsbox tests need root (real namespaces)", allow_module_level=True)


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture(scope="session", autouse=True)
def session_leak_check():
    # Per-process resources kept open on purpose: the creator pidfd and the
    # shared rtnetlink socket.  Open them before measuring.
    nsbox.holder.creator_pidfd()
    nsbox.net.rtnl.shared()
    if nsbox.net.nft.available():
        nsbox.net.nft.context()  # this process's nftables socket (port publishing)
    with nsbox.Pod():
        pass  # the watcher's epoll, kept once the process made a pod
    fds_before = _open_fds()
    links_before = host_links()
    state_before = run_state()
    yield
    gc.collect()
    problems = []
    try:
        nsbox.net.settle()  # stopped pods' networks torn down in the background
    except Exception as e:
        problems.append(f"background network teardown: {e}")
    kids = children_of_self()
    for pid in kids:
        problems.append(f"child process {pid} ({proc_state(pid)}) left running or unreaped")
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
    leaked = _open_fds() - fds_before
    # The fd that listed /proc/self/fd is gone again by now; anything else leaked.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    if leaked:
        problems.append(
            "file descriptors leaked: "
            + ", ".join(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}" for fd in sorted(leaked))
        )
    links = host_links() - links_before
    if links:
        problems.append(f"links left in the host namespace: {sorted(links)}")
    rules = nsbox_nft_rules()
    if rules:
        problems.append(f"nft rules of nsbox pods left: {rules}")
    state = run_state() - state_before
    if state:
        problems.append(f"state left under /run/nsbox: {sorted(state)}")
    if problems:
        pytest.fail("session leak check failed:\n" + "\n".join(problems), pytrace=False)


def host_links() -> set[str]:
    import socket

    return {name for _, name in socket.if_nameindex()}


@pytest.fixture(autouse=True)
def no_leftover_links():
    """Every link a test creates in the host namespace is gone when it ends."""
    before = host_links()
    yield
    nsbox.net.settle()  # stopped pods' links are deleted in the background
    left = host_links() - before
    if left:
        for name in left:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        pytest.fail(f"test left links in the host namespace: {sorted(left)}", pytrace=False)


def nsbox_nft_rules() -> list[str]:
    """Rules tagged by nsbox in any ip-family table (the shared ``nsbox``, each process's kernel-owned ``nsbox-PID``)."""
    import shutil

    if shutil.which("nft") is None:
        return []
    r = subprocess.run(["nft", "list", "ruleset", "ip"], capture_output=True, text=True)
    return [line.strip() for line in r.stdout.splitlines() if "nsbox:" in line]


def run_state() -> set[str]:
    """Files under nsbox's run directory, and mounts (pins) there."""
    from nsbox.net.rundir import run_dir

    root = run_dir()
    files = {str(p) for p in root.rglob("*")} if root.exists() else set()
    with open("/proc/self/mountinfo") as f:
        mounts = {f"mount {line.split()[4]}" for line in f if line.split()[4].startswith(str(root) + "/")}
    return files | mounts


@pytest.fixture(autouse=True)
def no_leftover_state():
    """No IPAM lease (or other state under /run/nsbox) outlives its test."""
    before = run_state()
    yield
    nsbox.net.settle()  # leases and port reservations are released in the background
    left = run_state() - before
    if left:
        pytest.fail(f"test left state under /run/nsbox: {sorted(left)}", pytrace=False)


@pytest.fixture(autouse=True)
def no_leftover_holders():
    before = holder_pids()
    yield
    gc.collect()
    # A holder whose pod was stopped is gone at once; give a killed creator's a moment.
    left: set[int] = set()

    def settled() -> bool:
        nonlocal left
        left = holder_pids() - before
        return not left

    if not wait_until(settled, timeout=3.0):
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"test left nsbox holders running: {sorted(left)}", pytrace=False)


_bridge_numbers = itertools.count()


@pytest.fixture
def bridge():
    """A bridge of the test's own (subnet 10.220.N.0/24), removed afterwards."""
    n = next(_bridge_numbers) % 250
    br = nsbox.Bridge(f"nsbt{os.getpid() % 100000}x{n}", subnet=f"10.220.{n}.0/24")
    yield br
    br.remove()


@pytest.fixture
def pod():
    with nsbox.Pod(hostname="nsbox-test") as p:
        yield p


@pytest.fixture(scope="module")
def _node_pod():
    with nsbox.Pod(kinds=("net",)) as node:
        yield node


@pytest.fixture
def cni_node(_node_pod):
    """The test's thread in a private "node" network namespace (a pod of its
    own standing in for the host), for tests that run real CNI plugins: the
    bridges, routes and iptables rules they make never touch the real host's
    network, also when the suite runs on the host (CI).  Threads and
    processes the test starts inherit it; /sys/class/net does not follow
    (use helpers.link_exists / helpers.bridge_ports)."""
    with _node_pod.joined("net"):
        yield _node_pod
