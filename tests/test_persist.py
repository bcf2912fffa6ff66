"""Persistent named pods: records, pins, attach from another process, gc."""
import json
import os
import signal
import subprocess
import textwrap

import pytest

import nsbox
from helpers import proc_state, run_python, wait_until
from nsbox.net.rundir import run_dir


def _pods_dir():
    return run_dir() / "pods"


def _status(name):
    return next((s for s in nsbox.pods() if s.name == name), None)


def test_a_persistent_pod_outlives_its_creator_and_is_attached_by_name():
    r = run_python(textwrap.dedent("""
        import nsbox
        pod = nsbox.Pod(name="nsbt-web", persist=True, hostname="web",
                        network=nsbox.Veth("10.245.1.2/24", "10.245.1.1/24"))
        pod.start()
        print(pod.pid, pod.host_ifname)
    """))
    assert r.returncode == 0, r.stderr
    pid, host_ifname = r.stdout.split()
    pid = int(pid)
    try:
        assert proc_state(pid) in ("S", "R")  # its creator has exited; the holder lives on
        status = _status("nsbt-web")
        assert status is not None and status.state == "running" and status.pid == pid
        assert status.pins["net"] == str(_pods_dir() / "nsbt-web" / "ns" / "net")
        # A shell user's tools take the pins.
        out = subprocess.run(["nsenter", f"--net={status.pins['net']}", "ip", "-o", "addr", "show", "eth0"],
                             capture_output=True, text=True, check=True).stdout
        assert "10.245.1.2/24" in out
        pod = nsbox.Pod.attach("nsbt-web")
        assert pod.alive and pod.pid == pid and pod.persist and pod.spec.hostname == "web"
        assert pod.run(["hostname"], capture_output=True, text=True).stdout == "web\n"
        assert str(pod.address) == "10.245.1.2/24" and pod.host_ifname == host_ifname
        member = pod.spawn(["sleep", "60"])
        pod.stop()
        assert member.returncode == -signal.SIGTERM
        assert proc_state(pid) in (None, "Z")  # dead (not our child: init reaps it, in its own time)
        assert not os.path.exists(f"/sys/class/net/{host_ifname}")
        assert not (_pods_dir() / "nsbt-web" / "ns").exists()  # unpinned
        assert _status("nsbt-web").state == "stopped"  # the name stays until remove()
        again = nsbox.Pod.attach("nsbt-web")
        assert again.status().state == "stopped"
        again.restart()  # any process may restart it
        assert again.alive and _status("nsbt-web").state == "running"
        again.remove(force=True)
        assert _status("nsbt-web") is None
        with pytest.raises(nsbox.NotRunningError):
            nsbox.Pod.attach("nsbt-web")
    finally:
        if proc_state(pid) not in (None, "Z"):
            os.kill(pid, signal.SIGKILL)
        nsbox.gc()
        for s in nsbox.pods():
            if s.name == "nsbt-web":
                nsbox.Pod.attach("nsbt-web").remove(force=True)


def test_the_pods_directory_is_a_shared_mount_point_while_pods_exist():
    def mount_of(path):
        with open("/proc/self/mountinfo") as f:
            return next((line.split() for line in f if line.split()[4] == str(path)), None)

    pod = nsbox.Pod(name="nsbt-shared", persist=True).start()
    try:
        fields = mount_of(_pods_dir())
        assert fields is not None and any(f.startswith("shared:") for f in fields[6:fields.index("-")])
        assert mount_of(_pods_dir() / "nsbt-shared" / "ns" / "uts") is not None
    finally:
        pod.stop()
        pod.remove()
    assert mount_of(_pods_dir()) is None and not _pods_dir().exists()


def test_names_are_checked_and_unique():
    with pytest.raises(nsbox.ConfigError, match="needs a name"):
        nsbox.Pod(persist=True)
    for bad in ("", "a/b", "..", "-x", "x" * 64, 5):
        with pytest.raises(nsbox.ConfigError):
            nsbox.Pod(name=bad, persist=True)  # type: ignore[arg-type]
    pod = nsbox.Pod(name="nsbt-once", persist=True).start()
    try:
        with pytest.raises(nsbox.ConfigError, match="exists"):
            nsbox.Pod(name="nsbt-once", persist=True).start()
        with pytest.raises(nsbox.ConfigError, match="running"):
            pod.remove()
    finally:
        pod.stop()
        pod.remove()
    assert not (_pods_dir() / "nsbt-once").exists()


def test_a_killed_persistent_holder_is_noticed_and_restarted():
    pod = nsbox.Pod(name="nsbt-phoenix", persist=True, restart=True).start()
    try:
        first = pod.pid
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: pod.pid != first and pod.alive, timeout=2)
        s = _status("nsbt-phoenix")
        assert s.state == "running" and s.pid == pod.pid and s.restarts == 1
        assert os.stat(s.pins["uts"]).st_ino == pod.inode("uts")  # pinned anew
    finally:
        pod.stop()
        pod.remove()


_CRASH_MID_START = """
import os, signal, sys
import nsbox
from nsbox.pod import Pod
where = sys.argv[1]
if where == "network":
    orig = Pod._wire
    def wire(self, pid):
        orig(self, pid)          # links, lease and port rules made...
        os.kill(os.getpid(), signal.SIGKILL)   # ...and the creator dies before the record says so
    Pod._wire = wire
net = nsbox.Bridge("nsbtgc0", subnet="10.246.0.0/24")
pod = nsbox.Pod(name="nsbt-crash", persist=where != "plain", network=net, ports={18471: 80})
pod.start()
os.kill(os.getpid(), signal.SIGKILL)     # "plain": a non-persistent pod, creator killed after start
"""


@pytest.mark.parametrize("where", ["network", "plain"])
def test_gc_removes_what_a_crashed_creator_left(where):
    r = run_python(_CRASH_MID_START, where)
    assert r.returncode == -signal.SIGKILL, r.stderr
    # ("plain": the holder follows its killed creator by itself, a moment
    # later; until it is gone its lease is rightly kept.)
    left: list = []
    assert wait_until(lambda: bool(left.extend(nsbox.gc()) or any("lease" in x for x in left)), timeout=5), left
    assert _status("nsbt-crash") is None
    assert not (run_dir() / "ipam" / "nsbtgc0").exists()  # the lease went
    assert not (run_dir() / "ports").exists()  # the host port reservation went
    # (the conftest leak checks: no holder, link, rule or state is left)
    bridge = nsbox.Bridge("nsbtgc0", subnet="10.246.0.0/24")
    # A link made just before the crash, before the record said so, goes with
    # its network namespace: in the kernel's own time.
    assert wait_until(lambda: not bridge.ports(), timeout=5)
    bridge.remove()


def test_a_record_naming_a_reused_pid_is_never_acted_on():
    # A record whose holder identity names a live process that is not the
    # holder (same PID, other start time): attach does not adopt it, gc does
    # not kill it.
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        from nsbox.net.rundir import locked
        from nsbox.records import Record

        with locked():
            rec = Record(name="nsbt-stale", spec=nsbox.PodSpec().to_dict(), state="running",
                         holder=(bystander.pid, 1), creator=(bystander.pid, 1))
            rec.save()
        pod = nsbox.Pod.attach("nsbt-stale")
        assert pod.status().state == "exited" and not pod.alive
        assert any("nsbt-stale" in line for line in nsbox.gc())
        assert bystander.poll() is None
        assert json.loads((_pods_dir() / "nsbt-stale" / "record.json").read_text())["state"] == "exited"
        pod.remove()
        assert _status("nsbt-stale") is None
    finally:
        bystander.kill()
        bystander.wait()


_START_THEN_DIE = """
import os, signal, sys, threading, time
import nsbox
delay = float(sys.argv[1])
threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
net = nsbox.Bridge("nsbtgc1", subnet="10.247.0.0/24")
for i in range(1000):
    pod = nsbox.Pod(name=f"nsbt-rnd{i}", persist=i % 2 == 0, network=net, ports={18480 + i % 8: 80})
    pod.start()
    if i % 3 == 0:
        pod.stop()
        if pod.persist:
            pod.remove()
"""


def test_creators_killed_at_random_points_leave_nothing_after_gc():
    import random

    rng = random.Random(8)
    for _ in range(50):
        r = run_python(_START_THEN_DIE, str(rng.uniform(0.0, 0.08)))
        assert r.returncode == -signal.SIGKILL, r.stderr
        nsbox.gc()
        for s in nsbox.pods():
            # What gc keeps: a persistent pod that was started before the crash
            # (it outlives its creator, by design), or the record of one whose
            # holder is gone (to restart or remove).
            assert s.state in ("running", "exited", "stopped"), s
            pod = nsbox.Pod.attach(s.name)
            assert pod.alive == (s.state == "running")
            pod.remove(force=True)
    bridge = nsbox.Bridge("nsbtgc1", subnet="10.247.0.0/24")
    assert wait_until(lambda: not bridge.ports(), timeout=5)  # (see above)
    bridge.remove()
    # (conftest: no holder, link, rule, mount or file under the run directory is left)


def test_two_processes_restarting_one_pod_make_one_sandbox():
    pod = nsbox.Pod(name="nsbt-race", persist=True).start()
    pod.stop()
    script = textwrap.dedent("""
        import sys, time, nsbox
        pod = nsbox.Pod.attach("nsbt-race")
        time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # both at once
        pod.restart()
        print(pod.pid)
    """)
    import time as _time

    at = str(_time.time() + 0.5)
    procs = [subprocess.Popen([__import__("sys").executable, "-c", script, at], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd="/") for _ in range(2)]
    outs = [p.communicate(timeout=30) for p in procs]
    try:
        assert all(p.returncode == 0 for p in procs), outs
        pids = {int(out) for out, _ in outs}
        assert len(pids) == 1, f"two sandboxes: {pids}"
        s = _status("nsbt-race")
        assert s.state == "running" and s.pid in pids
    finally:
        nsbox.Pod.attach("nsbt-race").remove(force=True)
