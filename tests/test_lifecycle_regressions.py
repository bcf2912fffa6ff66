"""Regression tests for defects a review found in the lifecycle change
(watcher, lifeline, callbacks, status, restart); each failed before its fix
(test names say what used to happen).  Scenarios that kill or wedge the
process-wide watcher run in a child interpreter, so one hang cannot take the
session down."""
import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import nsbox
import nsbox.holder
from nsbox.pod import Pod
from helpers import wait_until

PRELUDE = textwrap.dedent("""
    import gc, os, signal, sys, threading, time
    import nsbox, nsbox.holder, nsbox.lifecycle as lc
    def wait_until(pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.01)
        return bool(pred())
""")


def run_child(body: str, timeout: float = 20.0) -> str:
    """Run PRELUDE+body in a fresh interpreter; return its stdout.  The child
    must end with os._exit (a wedged watcher would hang interpreter exit)."""
    p = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(__file__), start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"child hung\nstdout:\n{out}\nstderr:\n{err}")
    assert p.returncode == 0, f"child failed rc={p.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out


# ---- 1. the watcher deadlocks on itself ------------------------------------------


def test_watcher_deadlocks_when_it_drops_the_last_reference_to_a_running_pod():
    # restart=True: after the watcher restarted the pod its locals (pods, pod)
    # still hold it.  The user drops the pod; on the next event the watcher
    # rebinds those locals *under its own lock*, Pod.__del__ runs there ->
    # stop() -> _finish() -> lifecycle.unwatch() -> the same non-reentrant lock.
    out = run_child("""
        a = nsbox.Pod(kinds=("uts",), restart=True).start()
        os.kill(a.pid, signal.SIGKILL)
        assert wait_until(lambda: a.status().restarts == 1, 3)
        del a                     # the watcher's locals keep it alive: no __del__ here
        b = nsbox.Pod(kinds=("uts",)).start()
        os.kill(b.pid, signal.SIGKILL)
        noticed = wait_until(lambda: b.returncode is not None, 3)  # reaped
        free = lc._watcher._lock.acquire(timeout=2)
        print("noticed", noticed, "watcher_lock_free", free, flush=True)
        os._exit(0)
    """)
    assert "noticed True watcher_lock_free True" in out, out


def test_gc_of_a_running_pod_under_the_watcher_lock_self_deadlocks():
    # A running pod in a reference cycle is collected by the cyclic GC, which
    # runs at any allocation: also inside watch()/unwatch() with the watcher
    # lock held.  Its __del__ -> stop() -> unwatch() -> that lock again.
    # (The lock is wrapped only to make "the GC ran here" deterministic.)
    out = run_child("""
        class GcLock:
            def __init__(self, lock): self.lock = lock
            def __enter__(self):
                self.lock.__enter__(); gc.collect()
            def __exit__(self, *e): return self.lock.__exit__(*e)
            def acquire(self, *a, **k): return self.lock.acquire(*a, **k)
            def release(self): return self.lock.release()
        gc.disable()
        a = nsbox.Pod(kinds=("uts",)).start()
        a.me = a                  # a cycle, e.g. a callback bound to an owner of the pod
        del a
        lc._watcher._lock = GcLock(lc._watcher._lock)
        done = []
        t = threading.Thread(target=lambda: done.append(nsbox.Pod(kinds=("uts",)).start()), daemon=True)
        t.start(); t.join(5)
        print("start_returned", bool(done), flush=True)
        os._exit(0)
    """)
    assert "start_returned True" in out, out


# ---- 2. the watcher dies for good ------------------------------------------------


def test_a_callback_raising_systemexit_kills_the_watcher_for_every_pod():
    out = run_child("""
        a = nsbox.Pod(kinds=("uts",)).start()
        a.add_done_callback(lambda p: sys.exit(1))
        os.kill(a.pid, signal.SIGKILL)
        assert wait_until(lambda: a.status().state == "exited", 3)
        time.sleep(0.1)
        b = nsbox.Pod().start()
        m = b.spawn(["sleep", "60"])
        os.kill(b.pid, signal.SIGKILL)
        noticed = wait_until(lambda: b.returncode is not None, 2)  # reaped (status() says "exited" from the lifeline alone)
        watchers = sum(t.name == "nsbox-watcher" for t in threading.enumerate())
        print("noticed", noticed, "watchers", watchers, flush=True)
        os._exit(0)
    """)
    assert "noticed True watchers 1" in out, out


# ---- 3. exiting() trusts only the lifeline ---------------------------------------


FORK_IN_BEGIN = """
    # The lifeline made by this process (the way taken where pidfd_getfd is
    # refused): its write end passes through here at each holder's start.
    nsbox.holder._getfd_refused = True
    kept = []
    orig = os.pipe2
    def pipe2(flags):
        # A copy of the lifeline's write end kept elsewhere (what a process
        # forked behind nsbox's back, e.g. by C code calling fork(), keeps).
        r, w = orig(flags)
        kept.append(os.dup(w))
        return r, w
    nsbox.holder.os.pipe2 = pipe2
    pod = nsbox.Pod(kinds=KINDS).start()
    nsbox.holder.os.pipe2 = orig
    os.kill(pod.pid, signal.SIGKILL)
    time.sleep(0.3)
    cpu0 = time.process_time(); time.sleep(1.0); cpu = time.process_time() - cpu0
    st = pod.status().state
    try:
        rc = pod.wait(timeout=1)
    except Exception as e:
        rc = type(e).__name__
    print("state", st, "wait", rc, "cpu_per_s %.2f" % cpu, flush=True)
    os._exit(0)
"""


@pytest.mark.parametrize("kinds", [("uts",), ("pid", "uts")])
def test_a_holder_whose_lifeline_is_held_by_a_fork_is_never_noticed_and_the_watcher_spins(kinds):
    out = run_child(f"KINDS = {kinds!r}\n" + textwrap.dedent(FORK_IN_BEGIN))
    fields = out.split()
    assert fields[1] == "exited" and fields[3] == "-9", out
    assert float(fields[5]) < 0.3, f"busy loop: {out}"


# ---- 4. a failed restart ---------------------------------------------------------


def _failing_begin(*a, **k):
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def test_wait_and_returncode_after_a_failed_automatic_restart(monkeypatch):
    pod = Pod(kinds=("uts",), restart=True).start()
    monkeypatch.setattr(nsbox.holder.Holder, "begin", classmethod(_failing_begin))
    os.kill(pod.pid, signal.SIGKILL)
    assert wait_until(lambda: pod.status().error is not None, timeout=3)
    monkeypatch.undo()
    try:
        assert pod.status().returncode == -signal.SIGKILL
        assert pod.returncode == -signal.SIGKILL  # None: the holder (and its code) were dropped
        assert pod.wait(timeout=1) == -signal.SIGKILL  # AssertionError: holder is None
    finally:
        pod.stop()


def test_restart_that_fails_never_runs_the_callbacks_of_the_stop_it_did(monkeypatch):
    pod = Pod(kinds=("uts",)).start()
    calls = []
    pod.add_done_callback(calls.append)
    monkeypatch.setattr(nsbox.holder.Holder, "begin", classmethod(_failing_begin))
    with pytest.raises(OSError):
        pod.restart()
    monkeypatch.undo()
    pod.stop()
    assert calls == [pod]  # the sandbox did stop: its exit must be reported


# ---- 5. callbacks run twice ------------------------------------------------------


def test_a_callback_added_right_after_the_exit_runs_twice(monkeypatch):
    orig = Pod._run_callbacks

    def widened(self):  # the window between releasing the lock and copying the list
        time.sleep(0.3)
        orig(self)

    monkeypatch.setattr(Pod, "_run_callbacks", widened)
    pod = Pod(kinds=("uts",)).start()
    os.kill(pod.pid, signal.SIGKILL)
    assert wait_until(lambda: pod.returncode is not None, timeout=2)  # reaped: the watcher is past the lock
    calls = []
    pod.add_done_callback(calls.append)  # stopped already: called at once ...
    time.sleep(0.6)  # ... and again by the watcher
    assert calls == [pod]


# ---- 6. stop_all runs callbacks with every pod locked, before detaching --------


def test_stop_all_runs_callbacks_with_all_locks_held():
    a = Pod(kinds=("uts",)).start()
    b = Pod(kinds=("uts",)).start()
    got = []

    def cb(p):
        t = threading.Thread(target=lambda: got.append(b.status().state))
        t.start()
        t.join(1.0)
        got.append("joined" if not t.is_alive() else "blocked")

    a.add_done_callback(cb)
    nsbox.stop_all([a, b])
    wait_until(lambda: len(got) == 2, timeout=2)
    assert got[0] != "blocked", got  # with stop() the callback could use b at once


def test_stop_all_runs_callbacks_before_the_pod_is_torn_down():
    pod = Pod(kinds=("net",), network=nsbox.Veth("10.243.9.2/24", "10.243.9.1/24")).start()
    ifname = pod.host_ifname
    seen = []
    pod.add_done_callback(lambda p: seen.append(os.path.exists(f"/sys/class/net/{ifname}")))
    nsbox.stop_all([pod])
    assert seen == [False], "the host link still existed when the done callback ran"


# ---- 7. status -------------------------------------------------------------------


def test_status_after_an_automatic_restart_keeps_when_the_last_sandbox_exited():
    pod = Pod(kinds=("uts",), restart=True).start()
    try:
        os.kill(pod.pid, signal.SIGKILL)
        assert wait_until(lambda: pod.status().restarts == 1, timeout=3)
        s = pod.status()
        assert s.returncode == -signal.SIGKILL
        assert s.exited_at is not None, s  # returncode of the last sandbox, but no exited_at
    finally:
        pod.stop()


def test_status_start_time_is_known_after_the_pod_exited():
    pod = Pod(kinds=("uts",)).start()
    os.kill(pod.pid, signal.SIGKILL)
    assert wait_until(lambda: pod.returncode is not None, timeout=2)
    assert pod.status().start_time is not None  # only filled in by a status() call while running


# ---- 8. restart storm ------------------------------------------------------------


def test_restart_true_has_no_backoff():
    pod = Pod(kinds=("uts",), restart=True).start()
    stop = threading.Event()

    def killer():
        while not stop.is_set():
            pid = pod._pid
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.001)

    t = threading.Thread(target=killer)
    t.start()
    time.sleep(1.0)
    stop.set()
    t.join()
    n = pod.status().restarts
    pod.stop()
    assert n <= 10, f"{n} restarts in one second: a crash loop restarts as fast as it can"


# ---- 9. cycles: fds and watcher bookkeeping --------------------------------------


def test_many_cycles_leak_nothing():
    import nsbox.lifecycle as lc
    pod = Pod(kinds=("uts",), restart=True)
    pod.start()
    pod.stop()
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(30):
        pod.restart()
        if i % 2:
            old = pod.pid
            os.kill(old, signal.SIGKILL)
            assert wait_until(lambda old=old: pod.pid != old and pod.alive, timeout=3)
        pod.stop()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert not lc._watcher._pods and not lc._watcher._fds

