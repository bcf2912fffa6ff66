"""Pod volumes: EmptyDir (disk and memory) and HostPath, mounted in the pod's
mount namespace; the host's filesystem untouched at the mount paths."""
import os
import subprocess
import sys
import textwrap

import pytest

import nsbox
from helpers import run_python
from nsbox.net.rundir import run_dir

KINDS = ("net", "ipc", "uts", "pid", "mnt")


def sh(pod, script, **kw):
    return pod.run(["sh", "-c", script], capture_output=True, text=True, **kw)


def test_two_members_share_a_file_through_an_empty_dir():
    assert not os.path.exists("/nsbt-data")
    with nsbox.Pod(kinds=KINDS, volumes={"/nsbt-data": nsbox.EmptyDir()}) as pod:
        host = pod.volume_path("/nsbt-data")
        assert host.is_dir() and str(run_dir()) in str(host) and os.listdir(host) == []
        writer = pod.spawn(["sh", "-c", "echo hello > /nsbt-data/greeting"])
        assert writer.wait() == 0
        assert sh(pod, "cat /nsbt-data/greeting").stdout == "hello\n"
        assert (host / "greeting").read_text() == "hello\n"  # the host sees it where volume_path says
        # A member that does not join mnt sees the host's view: no such directory.
        r = pod.run(["sh", "-c", "ls /nsbt-data"], kinds=("net", "ipc", "uts", "pid"), capture_output=True)
        assert r.returncode != 0
    assert not host.exists()  # gone with the pod, contents and all
    assert not os.path.exists("/nsbt-data")  # the host's / was never touched


def test_memory_empty_dir_is_a_tmpfs_whose_limit_holds():
    with nsbox.Pod(kinds=KINDS, volumes={"/scratch": nsbox.EmptyDir(medium="memory", size_limit="1Mi")}) as pod:
        r = sh(pod, "grep ' /scratch ' /proc/self/mountinfo; dd if=/dev/zero of=/scratch/big bs=64k count=32")
        assert " - tmpfs " in r.stdout and "size=1024k" in r.stdout
        assert r.returncode != 0 and "No space left on device" in r.stderr
        assert sh(pod, "rm /scratch/big; echo x > /scratch/small && cat /scratch/small").stdout == "x\n"
        host = pod.volume_path("/scratch")
        assert os.path.ismount(host)
    assert not host.exists()


def test_host_path_read_only_refuses_writes_and_read_write_writes_through(tmp_path):
    src = tmp_path / "app"
    src.mkdir()
    (src / "main.py").write_text("print('hi')\n")
    rw = tmp_path / "out"
    rw.mkdir()
    with nsbox.Pod(kinds=KINDS, volumes={"/src": nsbox.HostPath(str(src), read_only=True),
                                         "/srv/nsbt/out": nsbox.HostPath(str(rw))}) as pod:
        assert pod.volume_path("/src") == src
        assert sh(pod, "cat /src/main.py").stdout == "print('hi')\n"
        r = sh(pod, "echo x > /src/new")
        assert r.returncode != 0 and "Read-only file system" in r.stderr
        assert sh(pod, "echo x > /srv/nsbt/out/new").returncode == 0
        assert (rw / "new").read_text() == "x\n"
        # /srv existed on the host, /srv/nsbt did not: it was made in the pod only.
        assert not os.path.exists("/srv/nsbt")
        assert sh(pod, "ls /srv").returncode == 0
    assert src.exists() and (src / "main.py").exists()  # a host path is the host's: kept


def test_nested_volumes_and_a_file_host_path(tmp_path):
    f = tmp_path / "config.ini"
    f.write_text("[x]\n")
    with nsbox.Pod(kinds=KINDS, volumes={"/nsbt-v": nsbox.EmptyDir(), "/nsbt-v/inner": nsbox.EmptyDir(),
                                         "/opt/nsbt/config.ini": nsbox.HostPath(str(f), read_only=True)}) as pod:
        r = sh(pod, "echo a > /nsbt-v/inner/a && cat /opt/nsbt/config.ini && ls /nsbt-v")
        assert r.returncode == 0, r.stderr
        assert r.stdout == "[x]\ninner\n"
        assert (pod.volume_path("/nsbt-v/inner") / "a").read_text() == "a\n"
        # The outer EmptyDir holds the inner one's mount point, nothing else.
        assert os.listdir(pod.volume_path("/nsbt-v")) == ["inner"]
    assert not os.path.exists("/opt/nsbt")


def test_host_path_create_makes_a_missing_directory(tmp_path):
    want = tmp_path / "made" / "here"
    with nsbox.Pod(kinds=KINDS, volumes={"/m": nsbox.HostPath(str(want), create=True)}) as pod:
        assert want.is_dir()
        assert sh(pod, "touch /m/x").returncode == 0
    assert (want / "x").exists()


def test_volumes_survive_a_restart_and_go_with_the_pod():
    with nsbox.Pod(kinds=KINDS, volumes={"/d": nsbox.EmptyDir()}) as pod:
        sh(pod, "echo kept > /d/f")
        pod.restart()
        assert sh(pod, "cat /d/f").stdout == "kept\n"  # as emptyDir across a sandbox re-creation
        host = pod.volume_path("/d")
    assert not host.exists()


@pytest.mark.parametrize("volumes, match", [
    ({"data": nsbox.EmptyDir()}, "absolute"),
    ({"/a/../b": nsbox.EmptyDir()}, r"'\.\.'"),
    ({"/": nsbox.EmptyDir()}, "cannot be '/'"),
    ({"/d": nsbox.EmptyDir(), "/d/": nsbox.EmptyDir()}, "two volumes"),
    ({"/d": "tmpfs"}, "EmptyDir or nsbox.HostPath"),
    ({"/proc/x": nsbox.EmptyDir()}, "kernel file system"),
    ({"/sys": nsbox.EmptyDir()}, "kernel file system"),
])
def test_bad_volumes_are_config_errors(volumes, match):
    with pytest.raises(nsbox.ConfigError, match=match):
        nsbox.Pod(kinds=KINDS, volumes=volumes)


@pytest.mark.parametrize("make, match", [
    (lambda: nsbox.EmptyDir(medium="disk"), "medium"),
    (lambda: nsbox.EmptyDir(medium="memory", size_limit="64 MB"), "not a size"),
    (lambda: nsbox.EmptyDir(medium="memory", size_limit="-1"), "not a size"),
    (lambda: nsbox.EmptyDir(medium="memory", size_limit=0), "positive"),
    (lambda: nsbox.EmptyDir(size_limit="64Mi"), "needs medium='memory'"),
    (lambda: nsbox.HostPath("relative/dir"), "absolute"),
    (lambda: nsbox.HostPath("/x", read_only="yes"), "read_only"),
])
def test_bad_volume_arguments_are_config_errors(make, match):
    with pytest.raises(nsbox.ConfigError, match=match):
        make()


def test_sizes_follow_kubernetes_quantities():
    assert nsbox.EmptyDir(medium="memory", size_limit="64M").size_limit == 64_000_000
    assert nsbox.EmptyDir(medium="memory", size_limit="64Mi").size_limit == 64 * 2**20
    assert nsbox.EmptyDir(medium="memory", size_limit=4096).size_limit == 4096


def test_volumes_need_mnt_and_a_missing_host_path_is_an_error_with_no_side_effect(tmp_path):
    with pytest.raises(nsbox.ConfigError, match="'mnt' kind"):
        nsbox.Pod(volumes={"/d": nsbox.EmptyDir()})
    before = set(run_dir().rglob("*")) if run_dir().exists() else set()
    pod = nsbox.Pod(kinds=KINDS, volumes={"/d": nsbox.EmptyDir(), "/h": nsbox.HostPath(str(tmp_path / "nope"))})
    with pytest.raises(nsbox.ConfigError, match="does not exist"):
        pod.start()
    assert pod.pid is None
    after = set(run_dir().rglob("*")) if run_dir().exists() else set()
    assert after == before


def test_a_failed_mount_rolls_back_everything(tmp_path):
    # A directory volume onto a path that is a file in the pod's view: the
    # mount fails after the holder, the EmptyDir and the files were made.
    with pytest.raises(nsbox.PodStartError, match="volume /etc/passwd"):
        nsbox.Pod(kinds=KINDS, volumes={"/d": nsbox.EmptyDir(), "/etc/passwd": nsbox.EmptyDir()}).start()
    assert not list((run_dir() / "fs").glob("*")) if (run_dir() / "fs").exists() else True


def test_spec_round_trip_with_volumes():
    spec = nsbox.PodSpec.from_args(KINDS, volumes={"/a": nsbox.EmptyDir(medium="memory", size_limit="1Mi"),
                                                   "/b": nsbox.HostPath("/srv", read_only=True)})
    again = nsbox.PodSpec.from_json(spec.to_json())
    assert again == spec and again.volumes[0] == ("/a", nsbox.EmptyDir(medium="memory", size_limit=2**20))


def test_persistent_pod_keeps_its_volumes_until_removed():
    r = run_python(textwrap.dedent("""
        import nsbox
        pod = nsbox.Pod(name="nsbt-vol", persist=True, kinds=("net", "ipc", "uts", "pid", "mnt"),
                        volumes={"/d": nsbox.EmptyDir()})
        pod.start()
        pod.run(["sh", "-c", "echo persisted > /d/f"], check=True)
        print(pod.volume_path("/d"))
    """))
    assert r.returncode == 0, r.stderr
    host = r.stdout.strip()
    pod = nsbox.Pod.attach("nsbt-vol")
    try:
        assert open(os.path.join(host, "f")).read() == "persisted\n"
        pod.restart()
        assert pod.run(["cat", "/d/f"], capture_output=True, text=True).stdout == "persisted\n"
        pod.stop()
        assert os.path.exists(os.path.join(host, "f"))  # stopped, not removed: kept
    finally:
        pod.remove(force=True)
    assert not os.path.exists(host)


def test_gc_removes_the_volumes_of_a_killed_creator():
    code = textwrap.dedent("""
        import os, sys, nsbox
        pod = nsbox.Pod(kinds=("net", "ipc", "uts", "pid", "mnt"),
                        volumes={"/m": nsbox.EmptyDir(medium="memory", size_limit="1Mi")})
        pod.start()
        print(pod.volume_path("/m"), flush=True)
        sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         cwd="/")
    host = p.stdout.readline().strip()
    assert os.path.ismount(host)
    p.kill()
    p.wait()
    removed = nsbox.gc()
    assert any("storage" in line for line in removed), removed
    assert not os.path.exists(host)


def test_an_empty_dir_has_no_host_path_before_the_first_start():
    pod = nsbox.Pod(kinds=KINDS, volumes={"/d": nsbox.EmptyDir(), "/h": nsbox.HostPath("/srv")})
    with pytest.raises(nsbox.NotRunningError, match="never started"):
        pod.volume_path("/d")
    assert str(pod.volume_path("/h")) == "/srv"  # (a host path is known at once)
    with pod:
        assert pod.volume_path("/d").is_dir()
