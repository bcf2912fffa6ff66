"""A pod dies with the process that created it, even on SIGKILL."""
import json
import os
import textwrap

from helpers import pids_in_ns, run_python

# The creator: makes a pod from a worker thread (which then exits) with two
# members, one of them in its own session, reports, and sleeps.
CREATOR = textwrap.dedent(
    """
    import json, sys, threading, time, nsbox
    box = {}
    def make():
        pod = nsbox.Pod().start()
        a = pod.spawn(["sleep", "600"])
        b = pod.spawn(["sleep", "600"], start_new_session=True)
        box.update(holder=pod.pid, members=[a.pid, b.pid], inode=pod.inode("pid"), pod=pod, procs=[a, b])
    t = threading.Thread(target=make); t.start(); t.join()
    print(json.dumps({k: box[k] for k in ("holder", "members", "inode")}), flush=True)
    time.sleep(600)
    """
)

# Runs the creator as a child subreaper, so that the orphans it leaves come
# here and are reaped (this machine's PID 1 may not reap), kills it with
# SIGKILL and reports what it reaped and what is left.
REAPER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    import prctl
    prctl.set_child_subreaper(1)
    creator = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, text=True)
    info = json.loads(creator.stdout.readline())
    os.kill(creator.pid, signal.SIGKILL)
    reaped, deadline = [], time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            reaped.append(pid)
        else:
            time.sleep(0.01)
    info["reaped"] = reaped
    print(json.dumps(info), flush=True)
    """
)


def test_creator_sigkill_leaves_nothing_behind():
    r = run_python(REAPER, CREATOR)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    # Holder and both members died (and were reaped by the subreaper above the creator).
    assert set(info["reaped"]) >= {info["holder"], *info["members"]}
    assert pids_in_ns("pid", info["inode"]) == []
    for pid in [info["holder"], *info["members"]]:
        assert not os.path.exists(f"/proc/{pid}") or pid not in pids_in_ns("pid", info["inode"])
