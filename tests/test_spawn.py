"""spawn()/run(): a real Popen, fd and signal hygiene, subprocess-compatible errors."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import nsbox
from helpers import run_python

LIST_FDS = "import os; print(' '.join(sorted(os.listdir('/proc/self/fd'), key=int)))"


def test_spawn_returns_a_popen(pod):
    p = pod.spawn(["sh", "-c", "read x; echo got $x; exit 3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert isinstance(p, subprocess.Popen)
    out, _ = p.communicate("hello", timeout=10)
    assert out == "got hello\n" and p.returncode == 3
    assert p.pidfd == -1  # closed once reaped


def test_run_is_subprocess_run(pod):
    r = pod.run(["sh", "-c", "echo out; echo err >&2; exit 4"], capture_output=True, text=True)
    assert isinstance(r, subprocess.CompletedProcess)
    assert (r.returncode, r.stdout, r.stderr) == (4, "out\n", "err\n")
    with pytest.raises(subprocess.CalledProcessError) as e:
        pod.run(["false"], check=True)
    assert e.value.returncode == 1
    assert pod.run(["cat"], input=b"abc", capture_output=True).stdout == b"abc"
    with pytest.raises(subprocess.TimeoutExpired):
        pod.run(["sleep", "10"], timeout=0.1)


def test_run_options(pod, tmp_path):
    r = pod.run("echo $FOO; pwd; umask", shell=True, env={"FOO": "bar", "PATH": os.environ["PATH"]},
                cwd=tmp_path, umask=0o027, capture_output=True, text=True)
    assert r.stdout.split() == ["bar", str(tmp_path), "0027"]
    r = pod.run(["id", "-u"], user=65534, capture_output=True, text=True)
    assert r.stdout.strip() == "65534"
    r = pod.run([sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())"],
                start_new_session=True, capture_output=True, text=True)
    assert r.stdout.split() == ["True", "True"]


def test_spawned_process_inherits_only_std_fds_and_pass_fds(pod):
    leaky = os.open("/dev/null", os.O_RDONLY)  # inheritable, not CLOEXEC
    os.set_inheritable(leaky, True)
    r_fd, w_fd = os.pipe()
    try:
        host = subprocess.run([sys.executable, "-c", LIST_FDS], capture_output=True, text=True).stdout.split()
        got = pod.run([sys.executable, "-c", LIST_FDS], capture_output=True, text=True).stdout.split()
        assert got == host  # 0 1 2 and the fd listdir itself used
        assert str(leaky) not in got
        passed = pod.run([sys.executable, "-c", LIST_FDS], pass_fds=[w_fd], capture_output=True, text=True)
        assert str(w_fd) in passed.stdout.split()
    finally:
        for fd in (leaky, r_fd, w_fd):
            os.close(fd)


def test_holder_fds_do_not_reach_members(pod):
    got = pod.run(["ls", "/proc/self/fd"], capture_output=True, text=True).stdout.split()
    assert sorted(map(int, got)) == [0, 1, 2, 3]  # 3: ls's own directory fd


def test_clean_signal_state(pod):
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    old_usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        r = pod.run(["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"], capture_output=True, text=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGUSR2, old_usr2)
    assert r.stdout.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]


def test_missing_program_raises_like_subprocess(pod, tmp_path):
    not_executable = tmp_path / "data"
    not_executable.write_text("x")
    not_executable.chmod(0o644)
    with pytest.raises(FileNotFoundError) as e:
        pod.spawn(["/nonexistent/program"])
    assert e.value.filename == "/nonexistent/program"
    with pytest.raises(FileNotFoundError):
        pod.spawn(["no-such-program-anywhere"])
    with pytest.raises(PermissionError):
        pod.spawn([not_executable])
    with pytest.raises(FileNotFoundError) as e:
        pod.spawn(["true"], cwd="/nonexistent-dir")
    assert e.value.filename == "/nonexistent-dir"


def test_kill_uses_the_pidfd(pod):
    p = pod.spawn(["sleep", "30"])
    assert p.pidfd >= 0
    p.kill()
    assert p.wait() == -signal.SIGKILL
    p.kill()  # after reaping: a no-op, never a signal to a reused PID
    p.terminate()


def test_spawn_subset_of_kinds(pod):
    r = pod.run(["sh", "-c", "hostname; stat -L -c %i /proc/self/ns/net"], kinds=("uts",), capture_output=True, text=True)
    host, net = r.stdout.split()
    assert host == "nsbox-test"
    assert int(net) == os.stat("/proc/self/ns/net").st_ino


def test_unsupported_popen_options(pod):
    with pytest.raises(nsbox.ConfigError, match="preexec_fn"):
        pod.spawn(["true"], preexec_fn=lambda: None)
    with pytest.raises(nsbox.ConfigError, match="close_fds"):
        pod.spawn(["true"], close_fds=False)
    with pytest.raises(nsbox.ConfigError, match="restore_signals"):
        pod.run(["true"], restore_signals=False)
    with pytest.raises(nsbox.ConfigError, match="no 'mnt' namespace"):
        pod.spawn(["true"], kinds=("mnt",))
    with pytest.raises(nsbox.KindError):
        pod.spawn(["true"], kinds=("bogus",))


def test_spawn_outside_a_running_pod():
    pod = nsbox.Pod()
    with pytest.raises(nsbox.NotRunningError, match="never started"):
        pod.spawn(["true"])
    pod.start()
    pod.stop()
    with pytest.raises(nsbox.NotRunningError, match="stopped"):
        pod.run(["true"])
    with pytest.raises(ProcessLookupError):  # the built-in it also is
        pod.run(["true"])


def test_ignored_libc_internal_signals_are_reset_too():
    # glibc's sigaction() refuses signals 32/33, so an inherited SIG_IGN on them
    # needs the raw system call to clear.  Set one with that call, then spawn.
    script = textwrap.dedent(
        """
        import ctypes, nsbox
        libc = ctypes.CDLL(None, use_errno=True)
        ksa = (ctypes.c_ulong * 4)(1, 0, 0, 0)           # handler = SIG_IGN
        assert libc.syscall(13, 32, ksa, None, 8) == 0   # rt_sigaction (x86_64)
        own = [l for l in open("/proc/self/status") if l.startswith("SigIgn")][0].split()[1]
        with nsbox.Pod() as pod:
            r = pod.run(["grep", "^SigIgn", "/proc/self/status"], capture_output=True, text=True)
        print(own, r.stdout.split()[1])
        """
    )
    if os.uname().machine != "x86_64":
        pytest.skip("the raw rt_sigaction call in this test is x86_64's")
    r = run_python(script)
    assert r.returncode == 0, r.stderr
    own, child = r.stdout.split()
    assert int(own, 16) & (1 << 31)
    assert child == "0000000000000000"


@pytest.mark.parametrize("share", [True, False])
def test_both_fd_table_paths(monkeypatch, share):
    # Children are cloned sharing the fd table (no copy) and keep only what
    # they need; the copying path (share=False) must behave the same.
    from nsbox import _clone

    monkeypatch.setattr(_clone, "SHARE_FDS", share)
    leaky = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leaky, True)
    r_fd, w_fd = os.pipe()
    try:
        with nsbox.Pod(kinds=("user", "pid", "uts"), hostname="shared") as pod:  # user: the sync pipe too
            r = pod.run([sys.executable, "-c", LIST_FDS], pass_fds=[w_fd], capture_output=True, text=True)
            got = r.stdout.split()
            assert str(w_fd) in got and str(leaky) not in got
            assert pod.run(["hostname"], capture_output=True, text=True).stdout == "shared\n"
            with pytest.raises(FileNotFoundError):
                pod.spawn(["/nonexistent/program"])
            p = pod.spawn(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert p.communicate(b"through pipes")[0] == b"through pipes"
        # the parent's fds are all still there
        os.fstat(leaky)
        os.fstat(w_fd)
    finally:
        for fd in (leaky, r_fd, w_fd):
            os.close(fd)


def test_a_forgotten_pending_holder_is_killed_and_reaped():
    # begin_holder() returns while the child may still run on our memory;
    # dropped without finish(), it is waited for, then killed and reaped.
    import gc

    from helpers import proc_state
    from nsbox import holder

    pending = holder.begin_holder(("pid", "uts"))
    pid = pending.pid
    del pending
    gc.collect()
    assert proc_state(pid) is None
