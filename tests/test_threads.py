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


def test_a_fork_in_another_thread_does_not_stall_spawns():
    # A thread that fork()s (multiprocessing's fork start method does) while
    # a spawn's status pipe is open hands the pipe's write end to a process
    # that may never exec or exit: EOF never comes.  nsbox then notices the
    # exec itself (the child no longer shares its memory).  Without that,
    # this script hangs until its forked processes exit (600 s).
    import textwrap

    from helpers import run_python

    r = run_python(textwrap.dedent(
        """
        import os, signal, threading, time, nsbox
        forked, stop = [], threading.Event()
        def forker():
            while not stop.is_set():
                pid = os.fork()
                if pid == 0:
                    time.sleep(600)
                    os._exit(0)
                forked.append(pid)
                time.sleep(0.001)
        t = threading.Thread(target=forker)
        t.start()
        try:
            with nsbox.Pod() as pod:
                for _ in range(40):
                    assert pod.run(["true"]).returncode == 0
            for _ in range(8):
                nsbox.Pod().start().stop()
        finally:
            stop.set()
            t.join()
            for pid in forked:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        print(len(forked), "forks")
        """
    ), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "forks" in r.stdout
