"""A pod's life after start(): holder deaths noticed at once by the watcher,
done callbacks, status, restart (by hand and by itself)."""
import os
import signal
import subprocess
import threading
import time

import pytest

import nsbox
from helpers import pids_in_ns, proc_state, wait_until


def _watchers() -> int:
    return sum(t.name == "nsbox-watcher" for t in threading.enumerate())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_holder_killed_from_outside_is_reaped_at_once(sig):
    pod = nsbox.Pod().start()
    member = pod.spawn(["sleep", "60"])  # our child: it blocks the holder's exit until reaped
    seen = []
    pod.add_done_callback(lambda p: seen.append(p.status()))
    pid, pid_ns = pod.pid, pod.inode("pid")
    os.kill(pid, sig)
    # init_check-style: the pod's PID namespace is empty, the holder no zombie.
    assert wait_until(lambda: not pids_in_ns("pid", pid_ns) and proc_state(pid) is None, timeout=1.0)
    assert wait_until(lambda: seen, timeout=1.0)
    status = pod.status()
    assert status.state == "exited" and not status.running
    assert status.returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    assert status.exited_at is not None and seen[0].state == "exited"
    assert member.poll() == -signal.SIGKILL  # killed with the namespace, reaped
    assert pod.stop() == status.returncode  # idempotent; returns the exit status
    assert len(seen) == 1
    assert _watchers() == 1


def test_status_of_a_running_and_a_stopped_pod():
    pod = nsbox.Pod(kinds=("net", "uts"), hostname="st")
    assert pod.status().state == "new" and pod.status().pid is None
    with pod:
        s = pod.status()
        assert s.state == "running" and s.pid == pod.pid and s.restarts == 0
        assert s.start_time and s.inodes == {"net": pod.inode("net"), "uts": pod.inode("uts")}
    s = pod.status()
    assert s.state == "stopped" and s.returncode == 0 and s.exited_at is not None


def test_done_callbacks_run_once_per_exit_and_never_break_the_pod(caplog):
    calls = []
    pod = nsbox.Pod().start()

    def bad(p):
        raise RuntimeError("callback failed")

    pod.add_done_callback(calls.append)
    pod.add_done_callback(bad)
    assert pod.remove_done_callback(bad) == 1
    pod.add_done_callback(bad)
    pod.stop()
    assert calls == [pod]
    assert "callback failed" in caplog.text
    later = []
    pod.add_done_callback(later.append)  # stopped already: called at once
    assert later == [pod]
    with pytest.raises(nsbox.ConfigError):
        pod.add_done_callback("not callable")  # type: ignore[arg-type]


def test_restart_makes_a_new_sandbox_from_the_same_spec():
    net = nsbox.Veth("10.243.1.2/24", "10.243.1.1/24")
    pod = nsbox.Pod(hostname="again", network=net).start()
    member = pod.spawn(["sleep", "60"])
    old_pid, old_net = pod.pid, pod.inode("net")
    os.kill(old_pid, signal.SIGKILL)
    # (status() says "exited" from the moment the holder starts to exit; the
    # watcher then tears the pod down)
    assert wait_until(lambda: pod.status().state == "exited" and pod.address is None, timeout=2.0)
    pod.restart()
    try:
        assert pod.alive and pod.pid != old_pid and pod.inode("net") != old_net
        assert pod.status().restarts == 1 and pod.status().state == "running"
        assert str(pod.address) == "10.243.1.2/24"
        assert pod.run(["hostname"], capture_output=True, text=True).stdout == "again\n"
        assert member.returncode == -signal.SIGKILL  # members do not survive
        pod.restart()  # a running pod: stopped, then made again
        assert pod.status().restarts == 2 and pod.alive
    finally:
        pod.stop()


def test_restart_true_makes_the_watcher_restart_the_pod():
    pod = nsbox.Pod(restart=True, hostname="phoenix").start()
    assert pod.spec.restart
    seen = []
    pod.add_done_callback(lambda p: seen.append((p.status().state, p.pid)))
    try:
        first = pod.pid
        returned = []
        waiter = threading.Thread(target=lambda: returned.append(pod.wait(timeout=5)))
        waiter.start()
        time.sleep(0.05)
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: seen, timeout=1.0)
        state, pid = seen[0]
        assert state == "running" and pid != first  # the callback sees the new sandbox
        waiter.join(timeout=5)
        assert returned == [-signal.SIGKILL]  # wait() returns the exit of the sandbox it waited for
        assert pod.status().restarts == 1 and pod.status().returncode == -signal.SIGKILL
        assert pod.run(["hostname"], capture_output=True, text=True).stdout == "phoenix\n"
    finally:
        pod.stop()
    assert pod.status().state == "stopped"


def test_a_callback_may_use_the_pod():
    pod = nsbox.Pod().start()
    done = threading.Event()

    def again(p):
        if p.status().restarts == 0 and p.status().state == "exited":
            p.restart()  # from the watcher thread, inside a callback
            done.set()

    pod.add_done_callback(again)
    try:
        os.kill(pod.pid, signal.SIGKILL)
        assert done.wait(timeout=2)
        assert pod.alive and pod.status().restarts == 1
    finally:
        pod.remove_done_callback(again)
        pod.stop()


def test_many_pods_one_watcher():
    pods = [nsbox.Pod(kinds=("uts",)).start() for _ in range(20)]
    try:
        for p in pods[::2]:
            os.kill(p.pid, signal.SIGKILL)
        assert wait_until(lambda: all(p.status().state == "exited" for p in pods[::2]), timeout=2)
        assert all(p.alive for p in pods[1::2])
        assert _watchers() == 1
    finally:
        nsbox.stop_all(pods)


def test_a_thousand_cycles_with_injected_failures_leak_nothing(monkeypatch):
    import random

    from nsbox.pod import Pod

    rng = random.Random(9)
    real_wire = Pod._wire

    def flaky_wire(self, pid):
        if rng.random() < 0.3:
            raise RuntimeError("injected")
        real_wire(self, pid)
        if rng.random() < 0.2:
            raise RuntimeError("injected after the network")

    with nsbox.Pod(network=nsbox.Veth("10.248.250.2/24", "10.248.250.1/24")):
        pass  # what a process keeps once it made a pod: the shared netlink socket, the watcher's epoll
    nsbox.net.settle()
    monkeypatch.setattr(Pod, "_wire", flaky_wire)
    import socket

    from helpers import children_of_self

    links = socket.if_nameindex()
    fds = sorted(os.listdir("/proc/self/fd"))
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    failed = 0
    for i in range(1000):
        persist = i % 10 == 0
        pod = nsbox.Pod(kinds=("net", "uts", "pid"), network=nsbox.Veth(f"10.248.{i % 200}.2/24", f"10.248.{i % 200}.1/24"),
                        name=f"nsbt-cyc{i}" if persist else None, persist=persist)
        try:
            pod.start()
        except RuntimeError:
            failed += 1
            continue
        if i % 3 == 0:
            os.kill(pod.pid, signal.SIGKILL)
            wait_until(lambda pod=pod: pod.status().state == "exited", timeout=2)
        pod.stop()
        if persist:
            pod.remove()
    assert 250 < failed < 600
    nsbox.net.settle()
    assert sorted(os.listdir("/proc/self/fd")) == fds
    assert socket.if_nameindex() == links
    assert [p for p in children_of_self() if proc_state(p) is not None] == []
    with open("/proc/self/mountinfo") as f:
        assert f.read() == mounts
    assert nsbox.pods() == []


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_pod_without_members_keeps_one_fd_and_takes_its_lifeline_at_the_first_member():
    # Issue 13: 10,000 pods in one process must fit a 20,000 fd limit.  The
    # lifeline (a pipe only the holder writes to) is made by the holder's
    # native child before exec; we take a copy of its read end only when
    # children of ours join the pod's PID namespace.
    pods = [nsbox.Pod().start() for _ in range(2)]
    try:
        before = _fds()
        more = [nsbox.Pod().start() for _ in range(20)]
        assert _fds() - before <= 20  # one pidfd each (and a shared fd or two)
        pods += more
        holder = pods[0].pid
        w, r = (os.readlink(f"/proc/{holder}/fd/{fd}") for fd in (4, 5))
        assert w == r and w.startswith("pipe:")  # both ends of one pipe, in the holder only
        before = _fds()
        assert pods[0].run(["true"]).returncode == 0
        assert _fds() == before + 1  # its lifeline, once
        assert pods[0].run(["true"], kinds=("net",)).returncode == 0 and _fds() == before + 1
        assert pods[1].run(["true"], kinds=("net", "uts")).returncode == 0
        assert _fds() == before + 1  # not in its PID namespace: no lifeline needed
    finally:
        nsbox.stop_all(pods)


def test_a_stray_child_in_a_pod_killed_from_outside_is_noticed_at_once():
    # A plain subprocess started inside pod.joined("pid") is our child: once
    # the holder is killed, the kernel waits for us to reap it, so only the
    # lifeline (taken at joined()) tells the watcher at once.
    pod = nsbox.Pod().start()
    seen = []
    pod.add_done_callback(lambda p: seen.append(p.status().state))
    box = {}

    def inside():
        with pod.joined("pid"):
            box["p"] = subprocess.Popen(["sleep", "60"])

    t = threading.Thread(target=inside)
    t.start()
    t.join()
    os.kill(pod.pid, signal.SIGKILL)
    try:
        assert wait_until(lambda: seen, timeout=2.0)
        assert seen == ["exited"] and proc_state(box["p"].pid) is None  # the stray was reaped
    finally:
        pod.stop()
