"""Regression tests for defects a review found in persistence, gc and
cleanup; each failed before its fix."""
import subprocess
import sys
import textwrap
import threading
import time


import nsbox
from helpers import wait_until
from nsbox.net.rundir import run_dir
from nsbox.persist import Persistence
from nsbox.records import Record


def _status(name):
    return next((s for s in nsbox.pods() if s.name == name), None)


def _cleanup(name):
    try:
        nsbox.Pod.attach(name).remove(force=True)
    except nsbox.NotRunningError:
        pass
    nsbox.net.settle()
    nsbox.gc()


# A creator whose start pauses between Persistence.starting() (record saved,
# state "starting", holder None) and holder_cloned(): the clone itself is
# slow (a busy machine), 3 s here.
_SLOW_START = textwrap.dedent("""
    import sys, time, nsbox, nsbox.holder as h
    orig = h.Holder.begin.__func__
    def slow(cls, *a, **k):
        open(sys.argv[2], "w").close()
        time.sleep(3)
        return orig(cls, *a, **k)
    h.Holder.begin = classmethod(slow)
    pod = nsbox.Pod(name=sys.argv[1], persist=True).start()
    print(pod.pid, flush=True)
""")


def _slow_creator(name, tmp_path):
    marker = tmp_path / "in-start"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_START, name, str(marker)], cwd="/",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(marker.exists, timeout=10)
    time.sleep(0.2)  # (inside the sleep, past starting())
    return child


def test_gc_never_touches_a_start_in_progress_in_another_process(tmp_path):
    name = "r3-gcstart"
    child = _slow_creator(name, tmp_path)
    problems = []
    try:
        rec = Record.load(name)
        assert rec is not None and rec.state == "starting" and rec.holder is None and rec.creator_alive()
        out = nsbox.gc()
        if any(name in line for line in out):
            problems.append(f"gc acted on a start in progress: {out}")
        if not (run_dir() / "pods" / name / "record.json").exists():
            problems.append("gc deleted the record (and directory) of a start in progress")
        # The creator still holds the pod's exclusive lock: no one else may take it.
        got = threading.Event()

        def take():
            with Persistence(name).exclusive():
                got.set()

        threading.Thread(target=take, daemon=True).start()
        if got.wait(0.5):
            problems.append("another process took the pod's exclusive lock while its creator holds it "
                            "(gc removed the locked directory; exclusive() made a new one)")
    finally:
        out, err = child.communicate(timeout=30)
        _cleanup(name)
    assert not problems, problems


def test_pods_reports_only_documented_states_during_a_start(tmp_path):
    name = "r3-state"
    child = _slow_creator(name, tmp_path)
    try:
        st = _status(name)
        assert st is not None
        # Its creator is alive and still starting it: not "exited" (nor gc's to remove).
        assert st.state != "exited", st
    finally:
        child.communicate(timeout=30)
        _cleanup(name)


def test_remove_from_another_process_during_a_start_is_refused_or_final(tmp_path):
    name = "r3-rmstart"
    child = _slow_creator(name, tmp_path)
    removed = False
    try:
        try:
            nsbox.Pod.attach(name).remove()
            removed = True
        except nsbox.ConfigError:
            pass
        out, err = child.communicate(timeout=30)
        # remove() returned: the name is gone for good (not resurrected by the start).
        if removed:
            assert _status(name) is None, (_status(name), out, err)
    finally:
        if child.poll() is None:
            child.communicate(timeout=30)
        _cleanup(name)


_STALE_STOPPER = textwrap.dedent("""
    import os, sys, time, nsbox
    name, ready, go = sys.argv[1:4]
    pod = nsbox.Pod.attach(name)
    with pod._lock:  # (the watcher is slow to notice the death of the holder it adopted)
        open(ready, "w").close()
        while not os.path.exists(go):
            time.sleep(0.01)
        pod.stop()  # stops the sandbox it knows, which another process replaced
    print("stopped", flush=True)
""")


def test_a_stale_stop_never_marks_or_kills_another_process_s_new_sandbox(tmp_path):
    name = "r3-stale"
    first = nsbox.Pod(name=name, persist=True).start()
    ready, go = tmp_path / "ready", tmp_path / "go"
    stopper = subprocess.Popen([sys.executable, "-c", _STALE_STOPPER, name, str(ready), str(go)], cwd="/",
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(ready.exists, timeout=10)
        first.restart()  # this process replaces the sandbox: a new holder
        new_pid = first.pid
        go.touch()
        out, err = stopper.communicate(timeout=30)
        assert "stopped" in out, err
        problems = []
        rec = Record.load(name)
        if rec.state != "running":
            problems.append(f"the record of the new sandbox now says {rec.state!r} (creator {rec.creator})")
        if not nsbox.Pod.attach(name).alive:
            problems.append("attach() does not see the running sandbox")
        out = nsbox.gc()  # the stale stopper has exited: no 'abandoned stop' for gc
        if not first.alive:
            problems.append(f"gc killed the running holder {new_pid} of a pod nobody stopped: {out}")
        assert not problems, problems
    finally:
        if stopper.poll() is None:
            stopper.kill()
            stopper.communicate()
        first.stop()
        first.remove()
        _cleanup(name)


def test_one_unreadable_record_does_not_break_gc_and_every_persistent_start():
    bad = run_dir() / "pods" / "r3-bad"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "record.json").write_text("{")  # e.g. written by a newer/older nsbox, or damaged
    problems = []
    try:
        try:
            nsbox.gc()
        except nsbox.NsboxError as e:
            problems.append(f"gc(): {e}")
        try:
            pod = nsbox.Pod(name="r3-good", persist=True).start()
            pod.remove(force=True)
        except nsbox.NsboxError as e:
            problems.append(f"an unrelated pod's start: {e}")
        try:
            nsbox.pods()
        except nsbox.NsboxError as e:
            problems.append(f"pods(): {e}")
    finally:
        (bad / "record.json").unlink()
        bad.rmdir()
        _cleanup("r3-good")
        from nsbox.net.rundir import prune

        prune(run_dir() / "pods")  # (made by this test)
    assert not problems, problems


def test_removing_a_record_also_removes_a_half_written_newer_version():
    # A creator killed inside Record.save() leaves .record.json.tmp next to
    # record.json; gc deletes the record of that abandoned start, and the
    # directory (and the shared pods mount) must go with it.
    from nsbox.records import pod_dir

    pod = nsbox.Pod(name="nsbt-tmprec", persist=True).start()
    pod.stop()
    (pod_dir("nsbt-tmprec") / ".record.json.tmp").write_text("{")
    pod.remove()
    assert not pod_dir("nsbt-tmprec").exists()
