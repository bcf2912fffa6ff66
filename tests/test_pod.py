"""Pod lifecycle: holder, namespaces, members, stop and signals."""
import os
import signal
import subprocess
import sys

import pytest

import nsbox
from helpers import pids_in_ns, proc_state, wait_until


def test_holder_is_pid_1_with_its_own_namespaces(pod):
    with open(f"/proc/{pod.pid}/status") as f:
        nspid = [line for line in f if line.startswith("NSpid:")][0].split()
    assert nspid[1:] == [str(pod.pid), "1"]
    for kind in pod.kinds:
        assert pod.inode(kind) != os.stat(f"/proc/self/ns/{kind}").st_ino, kind
        assert pod.inode(kind) == os.stat(f"/proc/{pod.pid}/ns/{kind}").st_ino


def test_holder_hygiene(pod):
    assert os.readlink(f"/proc/{pod.pid}/cwd") == "/"
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pod.pid}/fd"))
    # stdin/stdout on /dev/null, stderr inherited, the creator pidfd, the
    # lifeline's two ends (closed by its exit: how the creator notices at
    # once; the read end for the creator to take a copy of), the signalfd.
    assert fds[:3] == [0, 1, 2] and len(fds) <= 7, fds
    assert os.readlink(f"/proc/{pod.pid}/fd/0") == "/dev/null"
    with open(f"/proc/{pod.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    assert int(fields[3]) == pod.pid  # session id: it leads its own session


def test_members_share_every_namespace_with_the_holder(pod):
    r = pod.run(
        ["sh", "-c", "for k in net ipc uts pid; do stat -L -c %i /proc/self/ns/$k; done"],
        capture_output=True, text=True, check=True,
    )
    assert [int(x) for x in r.stdout.split()] == [pod.inode(k) for k in ("net", "ipc", "uts", "pid")]


def test_member_sees_itself_in_the_pod_pid_namespace(pod):
    p = pod.spawn(["sleep", "30"])
    with open(f"/proc/{p.pid}/status") as f:
        nspid = [line for line in f if line.startswith("NSpid:")][0].split()
    assert len(nspid) == 3 and int(nspid[2]) > 1
    assert os.stat(f"/proc/{p.pid}/ns/pid").st_ino == pod.inode("pid")


def test_hostname(pod):
    r = pod.run(["hostname"], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "nsbox-test"
    assert os.uname().nodename != "nsbox-test"


def test_loopback_is_up(pod):
    from pyroute2 import IPRoute

    with pod.joined("net"):
        with IPRoute() as ipr:
            (lo,) = ipr.get_links(ifname="lo")
            links = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    assert lo["flags"] & 1  # IFF_UP
    assert links == ["lo"]


def test_pod_without_net_has_host_network():
    with nsbox.Pod(kinds=("uts", "pid"), hostname="x") as pod:
        assert os.stat(f"/proc/{pod.pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino


def test_stop_terminates_members_and_is_idempotent(pod):
    p = pod.spawn(["sleep", "30"])
    assert pod.alive
    assert pod.stop() == 0
    assert p.wait(timeout=5) == -signal.SIGTERM
    assert not pod.alive
    assert pod.stop() == 0
    assert pod.wait() == 0


def test_stop_kills_setsid_descendants_after_timeout():
    pod = nsbox.Pod().start()
    # A member that ignores SIGTERM and leaves a setsid'd grandchild that does too.
    p = pod.spawn(["sh", "-c", "trap '' TERM; setsid sh -c \"trap '' TERM; sleep 60\" & sleep 60"])
    inode = pod.inode("pid")
    assert wait_until(lambda: len(pids_in_ns("pid", inode)) >= 4)
    assert pod.stop(timeout=0.3) == 0
    assert p.returncode == -signal.SIGKILL
    assert pids_in_ns("pid", inode) == []


def test_stop_returns_after_everything_is_reaped():
    pod = nsbox.Pod().start()
    inode = pod.inode("pid")
    pod.run(["sh", "-c", "sleep 60 & sleep 60 & setsid sleep 60 &"])
    assert len(pids_in_ns("pid", inode)) == 4
    pod.stop()
    assert pids_in_ns("pid", inode) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_end_the_pod_and_kill_members(sig):
    pod = nsbox.Pod().start()
    p = pod.spawn(["sleep", "60"])
    os.kill(pod.pid, sig)
    assert pod.wait(timeout=5) == 0
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert pod.stop() == 0


def test_kill_1_from_inside_ends_the_pod():
    pod = nsbox.Pod().start()
    pod.run(["kill", "-TERM", "1"])
    assert pod.wait(timeout=5) == 0


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2, signal.SIGQUIT, signal.SIGTSTP])
def test_other_signals_leave_the_pod_alive(pod, sig):
    p = pod.spawn(["sleep", "60"])
    os.kill(pod.pid, sig)
    pod.run(["true"])  # a round trip through the pod after the signal
    assert not wait_until(lambda: not pod.alive, timeout=0.2)
    assert proc_state(pod.pid) == "S"
    assert p.poll() is None


def test_holder_killed_with_sigkill():
    pod = nsbox.Pod().start()
    p = pod.spawn(["sleep", "60"])
    os.kill(pod.pid, signal.SIGKILL)
    assert pod.wait(timeout=5) == -signal.SIGKILL
    assert p.wait(timeout=5) == -signal.SIGKILL
    with pytest.raises(nsbox.NotRunningError):
        pod.spawn(["true"])


def test_wait_timeout(pod):
    with pytest.raises(subprocess.TimeoutExpired):
        pod.wait(timeout=0.05)


def test_context_manager_and_repr():
    pod = nsbox.Pod(hostname="r")
    assert "new" in repr(pod)
    with pod as p:
        assert p is pod and "running" in repr(pod) and str(pod.pid) in repr(pod)
    assert "stopped" in repr(pod)


def test_mnt_pod_has_its_own_proc():
    with nsbox.Pod(kinds=("mnt", "pid", "uts", "ipc", "net")) as pod:
        r = pod.run(["ps", "-eo", "pid,comm"], capture_output=True, text=True, check=True)
        lines = [line.split() for line in r.stdout.splitlines()[1:]]
        assert lines[0] == ["1", "nsbox-init"]
        assert len(lines) == 2  # nsbox-init and ps
    # The host's /proc is untouched.
    assert os.path.exists(f"/proc/{os.getpid()}")


def test_cgroup_kind():
    with nsbox.Pod(kinds=("cgroup", "pid")) as pod:
        assert pod.inode("cgroup") != os.stat("/proc/self/ns/cgroup").st_ino
        r = pod.run(["cat", "/proc/self/cgroup"], capture_output=True, text=True, check=True)
        # Every hierarchy (v1 or v2) shows the pod's cgroup as its root.
        assert all(line.endswith(":/") for line in r.stdout.splitlines()), r.stdout


def test_user_kind():
    with nsbox.Pod(kinds=("user", "uts", "pid", "net"), hostname="u") as pod:
        r = pod.run(["sh", "-c", "id -u; cat /proc/self/uid_map; hostname"], capture_output=True, text=True, check=True)
        uid, mapping, host = r.stdout.split("\n", 2)
        assert uid == "0"
        assert mapping.split() == ["0", "0", "65536"]
        assert host.strip() == "u"
        assert pod.inode("user") != os.stat("/proc/self/ns/user").st_ino


def test_user_kind_custom_map():
    with nsbox.Pod(kinds=("user", "pid"), uid_map=[(0, 100000, 1000)], gid_map="0 100000 1000") as pod:
        r = pod.run(["cat", "/proc/self/uid_map", "/proc/self/gid_map"], capture_output=True, text=True, check=True)
        assert [line.split() for line in r.stdout.splitlines()] == [["0", "100000", "1000"]] * 2


def test_pod_without_pid_kind_stops_its_members():
    with nsbox.Pod(kinds=("net", "uts"), hostname="nopid") as pod:
        p = pod.spawn([sys.executable, "-c", "import time; time.sleep(60)"])
        assert os.stat(f"/proc/{p.pid}/ns/net").st_ino == pod.inode("net")
    assert p.returncode == -signal.SIGTERM


def test_pod_without_pid_kind_holder_killed_members_go_too():
    # No PID namespace: the kernel does not kill the members when the holder
    # dies; nsbox's watcher does, at once (a pod that ended takes them along).
    pod = nsbox.Pod(kinds=("net",)).start()
    p = pod.spawn(["sleep", "60"])
    os.kill(pod.pid, signal.SIGKILL)
    assert wait_until(lambda: p.poll() is not None, timeout=2)
    assert p.returncode == -signal.SIGKILL
    assert pod.status().state == "exited"
    assert pod.stop() == -signal.SIGKILL


def test_wait_ends_members_of_a_pod_without_pid_kind():
    pod = nsbox.Pod(kinds=("net",)).start()
    p = pod.spawn(["sleep", "60"])
    os.kill(pod.pid, signal.SIGTERM)
    assert pod.wait(timeout=5) == 0
    assert p.returncode == -signal.SIGKILL


def test_signals_sent_right_after_start_are_not_lost():
    # The holder starts with every signal blocked: one sent before its
    # signalfd exists stays pending, it is neither lost nor fatal.
    for _ in range(10):
        pod = nsbox.Pod().start()
        os.kill(pod.pid, signal.SIGUSR1)  # must not kill it
        os.kill(pod.pid, signal.SIGTERM)  # must not be lost
        assert pod.wait(timeout=5) == 0
