"""Bad input and failures: clear nsbox errors, nothing half-built."""
import os
import textwrap

import pytest

import nsbox
from helpers import holder_pids, run_python


@pytest.mark.parametrize("kinds", [("net", "bogus"), "network", 42, [], ["net", 3]])
def test_bad_kinds(kinds):
    with pytest.raises(nsbox.KindError) as e:
        nsbox.Pod(kinds=kinds)
    assert isinstance(e.value, ValueError) and isinstance(e.value, nsbox.NsboxError)


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(nsbox.KindError, match="valid kinds are: user, mnt, pid, net, ipc, uts, cgroup, time"):
        nsbox.Pod(kinds=("net", "netns"))
    with pytest.raises(nsbox.KindError, match="did you mean 'mnt'"):
        nsbox.Pod(kinds=("mount",))


def test_time_kind_is_refused_with_a_reason():
    with pytest.raises(nsbox.UnsupportedError, match="time"):
        nsbox.Pod(kinds=("time", "pid"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kinds=("net",), hostname="h"), "needs the 'uts' kind"),
        (dict(hostname=""), "1 to 64 bytes"),
        (dict(hostname="x" * 65), "1 to 64 bytes"),
        (dict(hostname="a b"), "whitespace"),
        (dict(hostname=b"h"), "must be a str"),
        (dict(mount_proc=True), "needs the 'mnt' kind"),
        (dict(uid_map="0 0 1"), "need the 'user' kind"),
        (dict(kinds=("user",), uid_map="0 x 1"), "integers"),
        (dict(kinds=("user",), uid_map=[(0, 0, 0)]), "out of range"),
        (dict(kinds=("user",), gid_map=""), "empty"),
    ],
)
def test_bad_pod_arguments(kwargs, match):
    with pytest.raises(nsbox.ConfigError, match=match):
        nsbox.Pod(**kwargs)


def test_start_twice_and_bad_stop_timeout():
    with nsbox.Pod() as pod:
        with pytest.raises(nsbox.ConfigError, match="already started"):
            pod.start()
        with pytest.raises(nsbox.ConfigError, match="timeout"):
            pod.stop(timeout=-1)
    assert nsbox.Pod().stop() is None  # never started: nothing to do


def test_failure_inside_the_new_namespaces_rolls_back():
    # Overlapping uid_map ranges: the kernel refuses the map after the holder
    # was cloned.  The half-made holder must be gone.
    before = holder_pids()
    with pytest.raises(nsbox.PodStartError, match="uid_map") as e:
        nsbox.Pod(kinds=("user", "pid"), uid_map="0 0 10\n5 5 10").start()
    assert isinstance(e.value, OSError) and e.value.errno == 22
    assert holder_pids() == before


def test_failure_after_the_holder_started_rolls_back(monkeypatch):
    def boom(self, pid):
        raise RuntimeError("injected failure after start")

    monkeypatch.setattr(nsbox.Pod, "_wire", boom)
    pod = nsbox.Pod()
    before = holder_pids()
    with pytest.raises(RuntimeError, match="injected"):
        pod.start()
    assert holder_pids() == before
    assert not pod.alive and "stopped" in repr(pod)


def test_without_cap_sys_admin():
    script = textwrap.dedent(
        """
        import prctl, nsbox
        prctl.cap_effective.sys_admin = False
        try:
            nsbox.Pod().start()
        except nsbox.PrivilegeError as e:
            assert isinstance(e, PermissionError)
            print(e)
        """
    )
    r = run_python(script)
    assert r.returncode == 0, r.stderr
    assert "needs CAP_SYS_ADMIN" in r.stdout and "run as root" in r.stdout


def test_unprivileged_id_map_refusal_says_what_to_do():
    # Without CAP_SYS_ADMIN the 'user' kind still makes a pod possible, but the
    # default map for root (0..65535) needs CAP_SETUID/CAP_SETGID: the kernel's
    # EPERM becomes a PrivilegeError that says which map would work.
    script = textwrap.dedent(
        """
        import prctl, nsbox
        for cap in ("sys_admin", "setuid", "setgid"):
            setattr(prctl.cap_effective, cap, False)
        try:
            nsbox.Pod(kinds=("user", "net")).start()
        except nsbox.PrivilegeError as e:
            print(e)
        """
    )
    r = run_python(script)
    assert r.returncode == 0, r.stderr
    assert "may only map its own id" in r.stdout and "'0 0 1'" in r.stdout


def test_too_many_open_files_says_what_to_do():
    script = textwrap.dedent(
        """
        import os, resource, nsbox
        nsbox.Pod().start().stop()  # warm up: per-process fds are open now
        used = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (used + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        try:
            nsbox.Pod().start()
        except nsbox.PodStartError as e:
            print(e)
        """
    )
    r = run_python(script)
    assert r.returncode == 0, r.stderr
    assert "RLIMIT_NOFILE" in r.stdout


def test_a_pod_whose_holder_died_says_so():
    import signal
    import time

    pod = nsbox.Pod().start()
    try:
        os.kill(pod.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pod.status().state == "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(nsbox.NotRunningError, match="has exited"):
            pod.run(["true"])
    finally:
        pod.stop()
