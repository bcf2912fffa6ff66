"""Threaded callers: concurrency, and a pod outliving the thread that made it."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import nsbox
from helpers import wait_until


def test_many_threads_create_spawn_stop_concurrently():
    def worker(i):
        results = []
        for j in range(20):
            with nsbox.Pod(hostname=f"t{i}-{j}") as pod:
                r = pod.run(["hostname"], capture_output=True, text=True)
                p = pod.spawn(["sleep", "30"])
                results.append((r.stdout.strip(), pod.stop(), p.wait()))
        return results

    with ThreadPoolExecutor(8) as ex:
        all_results = list(ex.map(worker, range(8)))
    for i, results in enumerate(all_results):
        assert [r[0] for r in results] == [f"t{i}-{j}" for j in range(20)]
        assert all(r[1] == 0 and r[2] == -15 for r in results)


def test_pod_lives_after_its_creating_thread_exits():
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("pod", nsbox.Pod().start()))
    t.start()
    t.join()
    pod = box["pod"]
    try:
        assert not wait_until(lambda: not pod.alive, timeout=0.3)
        assert pod.run(["true"]).returncode == 0
    finally:
        pod.stop()


def test_spawn_from_a_thread_that_exits():
    with nsbox.Pod() as pod:
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("p", pod.spawn(["sleep", "30"])))
        t.start()
        t.join()
        p = box["p"]
        assert not wait_until(lambda: p.poll() is not None, timeout=0.3)
    assert p.returncode == -15


def test_socket_in_a_pod_netns_leaves_the_calling_thread_where_it_was():
    import os
    import socket

    from nsbox import _syscalls

    mine = os.stat("/proc/thread-self/ns/net").st_ino
    with nsbox.Pod() as pod, pod.namespace("net") as ns:
        fd = _syscalls.socket_in_netns(ns.fileno(), socket.AF_INET, socket.SOCK_DGRAM, 0)
        with socket.socket(fileno=fd) as s:
            # Bound in the pod: only lo (127.0.0.1) exists there, nothing else.
            s.bind(("127.0.0.1", 0))
            with pytest.raises(OSError):
                s.connect(("10.250.0.1", 9))  # no route in a pod without network
        assert os.stat("/proc/thread-self/ns/net").st_ino == mine


def test_socket_in_a_pod_netns_without_cap_sys_admin_is_a_clean_error():
    # The calling thread cannot come back, so it does not go: the helper
    # thread's setns fails with EPERM, and the thread is where it was.
    import textwrap

    from helpers import run_python

    r = run_python(textwrap.dedent(
        """
        import errno, os, socket, nsbox, prctl
        from nsbox import _syscalls
        with nsbox.Pod() as pod, pod.namespace("net") as ns:
            mine = os.stat("/proc/thread-self/ns/net").st_ino
            prctl.cap_effective.sys_admin = False
            try:
                _syscalls.socket_in_netns(ns.fileno(), socket.AF_INET, socket.SOCK_DGRAM, 0)
            except PermissionError:
                print("EPERM")
            assert os.stat("/proc/thread-self/ns/net").st_ino == mine
            prctl.cap_effective.sys_admin = True
        """
    ))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "EPERM\n"
