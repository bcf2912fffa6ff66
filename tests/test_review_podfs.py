"""Review of pod volumes and pod files (issue 10): defects found, one test each."""
import os
import subprocess
import textwrap
import time

import pytest

import nsbox
from helpers import run_python
from nsbox.net.rundir import run_dir

KINDS = ("net", "ipc", "uts", "pid", "mnt")


def sh(pod, script, **kw):
    return pod.run(["sh", "-c", script], capture_output=True, text=True, **kw)


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def mounts_under(path) -> list[str]:
    prefix = str(path)
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


@pytest.fixture
def shared_dir(tmp_path):
    """A host directory on a *shared* mount, as most of a systemd host is
    (/, /run, /srv...): the isolated test run's mounts are private."""
    d = tmp_path / "shared"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "nsbt-shared", str(d)], check=True)
    subprocess.run(["mount", "--make-shared", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-R", "-l", str(d)], check=False)


def test_mounts_inside_a_volume_never_propagate_to_the_host(shared_dir):
    # A volume nested under a HostPath, a missing path under it (shadowed),
    # and a member's own mount below the volume: all in the pod only.
    (shared_dir / "sub").mkdir()
    vols = {"/src": nsbox.HostPath(str(shared_dir)), "/src/sub": nsbox.EmptyDir(),
            "/src/new/x": nsbox.EmptyDir()}
    with nsbox.Pod(kinds=KINDS, volumes=vols) as pod:
        assert mounts_under(shared_dir) == [str(shared_dir)]
        r = sh(pod, "mkdir -p /src/m && mount -t tmpfs nsbt-member /src/m && ls /src")
        assert r.returncode == 0, r.stderr
        assert mounts_under(shared_dir) == [str(shared_dir)]
        assert not (shared_dir / "new").exists()
    assert mounts_under(shared_dir) == [str(shared_dir)]


def test_a_failed_prepare_leaves_no_tmpfs_and_no_storage(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("")
    # The memory EmptyDir (depth 1) is made before the HostPath (depth 2),
    # whose creation fails: a file is in the way.
    pod = nsbox.Pod(kinds=KINDS, volumes={"/a": nsbox.EmptyDir(medium="memory"),
                                          "/b/c": nsbox.HostPath(str(f / "sub"), create=True)})
    with pytest.raises(nsbox.NsboxError):
        pod.start()
    assert mounts_under(run_dir()) == []
    assert not (run_dir() / "fs").exists()


def test_storage_belongs_to_the_process_that_started_the_pod():
    # A Pod made in one process and started in another (fork): once the
    # process that *made* the object is gone, gc must not take the storage
    # of the pod that runs (and is tied to the process that started it).
    script = textwrap.dedent("""
        import os, sys, nsbox
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        c1 = os.fork()
        if c1 == 0:
            pod = nsbox.Pod(kinds=("net", "ipc", "uts", "pid", "mnt"), volumes={"/data": nsbox.EmptyDir()})
            if os.fork() == 0:
                os.read(go_r, 1)  # the maker is gone
                try:
                    pod.start()
                    (pod.volume_path("/data") / "f").write_text("x")
                    nsbox.gc()
                    ok = (pod.volume_path("/data") / "f").exists()
                    r = pod.run(["cat", "/data/f"], capture_output=True, text=True)
                    pod.stop()
                    msg = f"{ok} {r.stdout!r}"
                except BaseException as e:
                    msg = f"error {e!r}"
                os.write(out_w, msg.encode())
                os._exit(0)
            os._exit(0)
        os.waitpid(c1, 0)
        os.write(go_w, b"x")
        os.close(out_w)
        print(os.read(out_r, 1000).decode())
    """)
    r = run_python(script)
    assert r.stdout.strip() == "True 'x'", (r.stdout, r.stderr)


def test_a_created_host_path_is_not_removed_from_under_another_pod(tmp_path):
    want = tmp_path / "made"
    vol = {"/m": nsbox.HostPath(str(want), create=True)}
    with nsbox.Pod(kinds=KINDS, volumes=vol) as a:
        with nsbox.Pod(kinds=KINDS, volumes=vol) as b:
            a.stop()
            assert want.is_dir()  # b still uses it
            r = sh(b, "touch /m/x")
            assert r.returncode == 0, r.stderr
            assert (want / "x").exists()
    # As Kubernetes' DirectoryOrCreate: a directory made for a pod is the host's.
    assert want.is_dir()


def test_stop_all_during_a_restart_back_off_removes_the_storage(monkeypatch):
    monkeypatch.setattr(nsbox.lifecycle.Backoff, "FIRST", 30.0)
    pod = nsbox.Pod(kinds=KINDS, restart=True, volumes={"/d": nsbox.EmptyDir(medium="memory")})
    pod.start()
    try:
        host = pod.volume_path("/d")
        pid = pod.pid
        os.kill(pid, 9)  # the first restart is immediate
        wait_until(lambda: pod.pid != pid and pod.alive)
        pid = pod.pid
        os.kill(pid, 9)  # the second waits Backoff.FIRST
        wait_until(lambda: pod._restart_timer is not None and pod._state == "stopped")
        assert pod._restart_timer is not None and pod._state == "stopped"
        assert host.exists()  # kept for the restart to come
        nsbox.stop_all([pod])
        assert not host.exists()
        assert mounts_under(run_dir()) == []
    finally:
        pod.stop()


def test_a_failed_name_registration_leaves_no_entry(bridge, monkeypatch):
    from nsbox import podfiles

    def fail(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(podfiles, "_refresh", fail)
    pod = nsbox.Pod(kinds=KINDS, hostname="nsbt-a", network=bridge)
    with pytest.raises(nsbox.NsboxError):
        pod.start()
    assert not (run_dir() / "names" / f"{bridge.name}.json").exists(), (run_dir() / "names" / f"{bridge.name}.json").read_text()


def test_a_path_made_below_a_host_path_inside_an_empty_dir_is_not_made_on_the_host(tmp_path):
    h = tmp_path / "h"
    h.mkdir()
    vols = {"/nsbt-d": nsbox.EmptyDir(), "/nsbt-d/h": nsbox.HostPath(str(h)),
            "/nsbt-d/h/new/x": nsbox.EmptyDir()}
    with nsbox.Pod(kinds=KINDS, volumes=vols) as pod:
        assert os.listdir(h) == []  # the host's directory, untouched
        r = sh(pod, "ls /nsbt-d/h/new/x && touch /nsbt-d/h/new/x/f")
        assert r.returncode == 0, r.stderr
    assert os.listdir(h) == []


def test_a_deep_mount_path_can_hold_an_empty_dir():
    deep = "/nsbt" + "/d" * 100  # 205 characters: far from PATH_MAX
    with nsbox.Pod(kinds=KINDS, volumes={deep: nsbox.EmptyDir()}) as pod:
        assert sh(pod, f"touch {deep}/f").returncode == 0
        assert (pod.volume_path(deep) / "f").exists()


def test_a_user_namespace_pod_gets_volumes_files_and_sysctls():
    with nsbox.Pod(kinds=("user",) + KINDS, hostname="nsbt-u", volumes={"/nsbt-u": nsbox.EmptyDir()},
                   sysctls={"net.ipv4.ip_unprivileged_port_start": "0"}) as pod:
        r = sh(pod, "cat /etc/hostname; touch /nsbt-u/f; cat /proc/sys/net/ipv4/ip_unprivileged_port_start")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "nsbt-u\n0\n"
        assert (pod.volume_path("/nsbt-u") / "f").exists()


def test_threads_start_and_stop_pods_with_volumes_at_once():
    import threading

    errors: list[BaseException] = []

    def loop():
        try:
            for _ in range(15):
                with nsbox.Pod(kinds=KINDS, volumes={"/nsbt-t": nsbox.EmptyDir(medium="memory")}) as pod:
                    assert sh(pod, "touch /nsbt-t/f").returncode == 0
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=loop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert mounts_under(run_dir()) == []
