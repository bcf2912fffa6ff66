"""nsbox.join()/joined() and Pod.joined(): per-thread, restoring, clear errors."""
import os
import subprocess

import pytest

import nsbox
from nsbox import Namespace
from helpers import another_thread, run_in_thread


def thread_ns(kind):
    with Namespace.current(kind) as ns:
        return ns.inode


def test_pod_joined_restores_the_thread(pod):
    before = {k: thread_ns(k) for k in ("net", "uts", "ipc")}
    before_pid_children = Namespace.current("pid", for_children=True).inode
    with pod.joined():
        assert {k: thread_ns(k) for k in ("net", "uts", "ipc")} == {k: pod.inode(k) for k in ("net", "uts", "ipc")}
        assert os.uname().nodename == "nsbox-test"
        assert Namespace.current("pid", for_children=True).inode == pod.inode("pid")
    assert {k: thread_ns(k) for k in ("net", "uts", "ipc")} == before
    assert Namespace.current("pid", for_children=True).inode == before_pid_children
    assert os.uname().nodename != "nsbox-test"


def test_joined_moves_only_the_calling_thread(pod):
    main_net = thread_ns("net")

    def inside():
        with nsbox.joined(pod, ["net", "uts"]):
            return thread_ns("net"), thread_ns("net") == main_net, os.uname().nodename

    net, same, host = run_in_thread(inside)
    assert net == pod.inode("net") and not same and host == "nsbox-test"
    assert thread_ns("net") == main_net


def test_join_is_per_thread_and_threads_started_inside_inherit(pod):
    def inside():
        nsbox.join(pod.pid, "net")  # this helper thread stays in the pod until it ends
        child = run_in_thread(lambda: thread_ns("net"))
        return thread_ns("net"), child

    net, child_net = run_in_thread(inside)
    assert net == child_net == pod.inode("net")
    assert thread_ns("net") != pod.inode("net")


def test_join_mnt_from_a_threaded_process():
    # setns(mnt) fails with EINVAL while the thread shares its fs with others;
    # join() unshares CLONE_FS first.
    with nsbox.Pod(kinds=("mnt", "pid")) as pod, another_thread():
        def inside():
            with pod.joined("mnt"):
                with open("/proc/1/comm") as f:
                    return f.read().strip()

        assert run_in_thread(inside) == "nsbox-init"
        with open("/proc/1/comm") as f:
            assert f.read().strip() != "nsbox-init"


def test_join_exited_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(nsbox.NotRunningError, match=f"PID {p.pid}"):
        nsbox.join(p.pid, "net")


def test_join_stopped_pod_is_safe_against_pid_reuse():
    pod = nsbox.Pod().start()
    pod.stop()
    # Even if the holder's PID now named another process, a Pod (a pidfd) can't be fooled.
    with pytest.raises(nsbox.NotRunningError):
        nsbox.join(pod, "net")
    with pytest.raises(nsbox.NotRunningError):
        with pod.joined("net"):
            pass


def test_join_bad_arguments(pod):
    with pytest.raises(nsbox.KindError, match="valid kinds are"):
        nsbox.join(pod, ["net", "nett"])
    with pytest.raises(nsbox.ConfigError):
        nsbox.join(-1, "net")
    with pytest.raises(nsbox.ConfigError):
        nsbox.join("123", "net")
    with pytest.raises(nsbox.ConfigError, match="user"):
        with nsbox.joined(pod, "user"):
            pass
    with pytest.raises(nsbox.ConfigError, match="no 'mnt' namespace"):
        with pod.joined("mnt"):
            pass


def test_join_user_needs_a_single_threaded_process():
    with nsbox.Pod(kinds=("user", "pid")) as pod, another_thread():
        with pytest.raises(nsbox.ThreadingError, match="single-threaded"):
            nsbox.join(pod, "user")


def test_namespace_handle(pod):
    with pod.namespace("net") as a, Namespace.from_pid(pod.pid, "net") as b, Namespace.current("net") as host:
        assert a == b and a != host and hash(a) == hash(b)
        assert a.inode == pod.inode("net") and a.fileno() >= 0
        assert "net:[" in repr(a)
    assert a.closed
    with pytest.raises(ValueError):
        a.fileno()
    with pytest.raises(nsbox.NotRunningError):
        Namespace.from_path("/nonexistent/ns/net", "net")
