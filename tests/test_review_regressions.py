"""Regression tests for problems found in review."""
import os
import signal
import subprocess
import textwrap
import threading
import time

import pytest

import nsbox
from helpers import proc_state, run_python, wait_until


def test_wait_in_a_thread_does_not_block_stop():
    pod = nsbox.Pod().start()
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("rc", pod.wait()))
    t.start()
    time.sleep(0.1)
    start = time.monotonic()
    assert pod.stop() == 0
    t.join(timeout=5)
    assert not t.is_alive() and box["rc"] == 0
    assert time.monotonic() - start < 3


def test_plain_subprocess_zombie_in_the_pod_does_not_hang_stop():
    pod = nsbox.Pod().start()
    box = {}

    def inside():
        with pod.joined("pid"):
            box["p"] = subprocess.Popen(["sleep", "60"])  # not a pod member: our own child

    t = threading.Thread(target=inside)
    t.start()
    t.join()
    p = box["p"]
    done = threading.Event()
    threading.Thread(target=lambda: (pod.stop(), done.set())).start()
    assert done.wait(timeout=10), "stop() hung on a zombie it did not spawn"
    assert proc_state(p.pid) is None  # reaped
    p.wait()  # no error: the status is gone, but the Popen copes


def test_pod_without_pid_namespace_stops_orphaned_descendants():
    with nsbox.Pod(kinds=("net", "uts"), hostname="nopid") as pod:
        r = pod.run(["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
        orphan = int(r.stdout)
        assert proc_state(orphan) in ("S", "R")
    assert wait_until(lambda: proc_state(orphan) in (None, "Z"), timeout=5)


def test_member_with_a_subset_of_kinds_gets_sigterm():
    with nsbox.Pod() as pod:
        p = pod.spawn(["sleep", "60"], kinds=("net", "uts"))
    assert p.returncode == -signal.SIGTERM


def test_joined_mnt_restores_the_working_directory(tmp_path):
    with nsbox.Pod(kinds=("mnt", "pid")) as pod:
        def inside():
            os.chdir(tmp_path)  # this thread's cwd once joined() unshared its fs
            with pod.joined("mnt"):
                pass
            return os.getcwd()

        box = {}
        t = threading.Thread(target=lambda: box.setdefault("cwd", inside()))
        t.start()
        t.join()
        assert box["cwd"] == str(tmp_path)


def test_subreaper_holder_survives_abrt_trap_sys():
    with nsbox.Pod(kinds=("net",)) as pod:
        for sig in (signal.SIGABRT, signal.SIGTRAP, signal.SIGSYS, signal.SIGHUP, signal.SIGUSR1):
            os.kill(pod.pid, sig)
        assert not wait_until(lambda: not pod.alive, timeout=0.2)


def test_pod_with_user_namespace_without_privileges():
    # No CAP_SYS_ADMIN/CAP_SETUID/CAP_SETGID: a user namespace (mapping only
    # our own ids) is what makes a pod possible; gid_map then needs
    # setgroups=deny first.
    script = textwrap.dedent(
        """
        import prctl, nsbox
        for cap in ("sys_admin", "setuid", "setgid"):
            setattr(prctl.cap_effective, cap, False)
        with nsbox.Pod(kinds=("user", "net", "uts", "pid"), hostname="rootless",
                       uid_map="0 0 1", gid_map="0 0 1") as pod:
            r = pod.run(["sh", "-c", "hostname; cat /proc/self/setgroups"], capture_output=True, text=True,
                        kinds=("user", "net", "uts"))
            print(r.stdout.split())
            try:
                pod.run(["true"])  # joins 'pid' too: not yet possible rootless
            except nsbox.PrivilegeError as e:
                assert "leaving out 'pid'" in str(e)
            else:
                raise AssertionError("expected PrivilegeError")
        """
    )
    r = run_python(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['rootless', 'deny']"


def test_a_holder_starting_does_not_touch_the_callers_errno():
    # The pending holder child shares the calling thread's errno (CLONE_VM, no
    # TLS of its own) while that thread runs Python: a failed call on its
    # success path (rt_sigaction(SIGKILL) -> EINVAL) made os.listdir() in the
    # caller raise spuriously.
    import ctypes

    from nsbox import holder

    libc = ctypes.CDLL(None)
    libc.__errno_location.restype = ctypes.POINTER(ctypes.c_int)
    errno_of_this_thread = libc.__errno_location()
    changed = []
    for _ in range(50):
        pending = holder.begin_holder(("pid", "uts"))
        errno_of_this_thread[0] = 0  # (after the call: cffi restores its own copy around calls)
        time.sleep(0.005)  # the child sets itself up and execs meanwhile
        if errno_of_this_thread[0]:
            changed.append(errno_of_this_thread[0])
        pid, pidfd = pending.finish()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(pidfd)
    assert changed == []


def test_an_exception_right_after_a_holder_is_cloned_leaks_nothing(monkeypatch):
    # Signals are blocked inside the native call, so a KeyboardInterrupt (or
    # any signal handler's exception) is raised just after it returns, before
    # the Python object is complete: the holder must still be killed and
    # reaped.  Simulated: the native call succeeds, then Python raises.
    import gc

    from helpers import children_of_self
    from nsbox import _clone, holder

    class LibThenInterrupt:
        def __getattr__(self, name):
            return getattr(real, name)

        def nsbox_spawn_begin(self, *args):
            assert real.nsbox_spawn_begin(*args) == 0
            raise KeyboardInterrupt

    real = _clone.lib
    monkeypatch.setattr(_clone, "lib", LibThenInterrupt())
    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            holder.begin_holder(("pid", "uts"))
    gc.collect()
    assert [p for p in children_of_self() if proc_state(p) is not None] == []
    assert len(os.listdir("/proc/self/fd")) == fds_before


def _fds_on(inode: int) -> list:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == f"net:[{inode}]":
                out.append(fd)
        except OSError:
            pass
    return out


def test_pods_made_or_stopped_inside_another_pods_netns_do_not_pin_it():
    # A shared rtnetlink socket (and its namespace fd) is kept only for the
    # process's own namespace; one kept for a pod's would keep that pod's
    # network namespace alive after the pod stopped.
    a = nsbox.Pod(network=nsbox.Veth(address="10.229.1.2/24", host_address="10.229.1.1/24")).start()
    b = nsbox.Pod(network=nsbox.Veth(address="10.229.2.2/24", host_address="10.229.2.1/24")).start()
    inode = a.inode("net")
    try:
        with a.joined("net"):
            nested = nsbox.Pod(network=nsbox.Veth(address="10.229.3.2/24", host_address="10.229.3.1/24")).start()
            assert nested.run(["ping", "-c", "1", "-W", "2", "10.229.3.1"], capture_output=True).returncode == 0
            b.stop()
            nested.stop()
    finally:
        b.stop()
        a.stop()
    nsbox.net.settle()  # (the nested pod's host side, in a's namespace, goes in the background)
    assert _fds_on(inode) == []


# ---- issue 8: defects found by a careful read, each failed before its fix ----


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (["echo", "a\0b"], {}),
        (["echo"], {"env": {"A": "x\0y"}}),
        (["echo"], {"env": {"A\0B": "x"}}),
        (["echo"], {"cwd": "/tmp\0x"}),
        (["echo"], {"executable": "/bin/echo\0x"}),
    ],
)
def test_embedded_nul_is_refused_like_subprocess(pod, args, kwargs):
    # C strings end at the first NUL: "a\0b" used to run as "a".
    with pytest.raises(ValueError, match="embedded null byte"):
        subprocess.run(args, **kwargs)
    with pytest.raises(ValueError, match="embedded null byte"):
        pod.run(args, capture_output=True, **kwargs)


def test_run_timeout_returns_while_a_grandchild_holds_the_pipe(pod):
    # subprocess.run kills and then waits for the process only; reading the
    # pipes again would wait for the background sleep that holds them.
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as e:
        pod.run(["sh", "-c", "echo partial; sleep 8 & sleep 8"], capture_output=True, timeout=1)
    assert time.monotonic() - start < 4
    assert e.value.stdout == b"partial\n"  # what was read before the timeout


def test_stop_all_from_two_threads_in_opposite_orders_does_not_deadlock():
    pods = [nsbox.Pod().start() for _ in range(6)]
    for pod in pods:  # members that ignore SIGTERM: each stop holds its pod's lock until the timeout
        pod.spawn(["sh", "-c", "trap '' TERM; exec sleep 60"])
    time.sleep(0.3)
    barrier = threading.Barrier(2)
    done = []

    def stop(order):
        barrier.wait()
        nsbox.stop_all(order, timeout=0.5)
        done.append(True)

    threads = [threading.Thread(target=stop, args=(order,), daemon=True) for order in (pods, pods[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    assert len(done) == 2, "stop_all deadlocked"


def test_stop_takes_a_members_pidfd_under_its_lock(pod):
    # A concurrent wait() closes the pidfd under this lock (and its number can
    # then be reused by another process's pidfd): stop() must not copy it
    # without the lock.  While the lock is held, the member is not signalled.
    member = pod.spawn(["sleep", "60"])
    holding = threading.Event()
    box = {}

    def hold():
        with member._pidfd_lock:
            holding.set()
            time.sleep(0.5)
            try:
                box["alive"] = os.waitid(os.P_PIDFD, member.pidfd, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None
            except ChildProcessError:  # reaped already
                box["alive"] = False

    t = threading.Thread(target=hold)
    t.start()
    holding.wait()
    pod.stop()
    t.join()
    assert box["alive"], "stop() signalled the member without its pidfd lock"
    assert member.returncode == -signal.SIGTERM


def test_stopping_a_pod_leaves_other_zombie_children_alone():
    # Stopping a pod reaps zombies that block its holder's exit; a zombie
    # child of ours in another PID namespace is not its business.
    other = nsbox.Pod().start()
    pod = nsbox.Pod().start()
    box = {}

    def start_in(target, key, argv):
        with target.joined("pid"):
            box[key] = subprocess.Popen(argv)

    for target, key, argv in ((pod, "stray", ["sleep", "60"]), (other, "mine", ["sh", "-c", "exit 7"])):
        t = threading.Thread(target=start_in, args=(target, key, argv))
        t.start()
        t.join()
    try:
        assert wait_until(lambda: proc_state(box["mine"].pid) == "Z")
        pod.stop()  # its holder waits for the stray zombie: stop() reaps it
        assert proc_state(box["stray"].pid) is None  # the stray zombie was reaped
        assert box["mine"].wait() == 7
    finally:
        pod.stop()
        other.stop()


_NO_CLOSE_RANGE = """
import ctypes, os, struct, sys, tempfile
import nsbox

# A seccomp filter that fails close_range(2) with ENOSYS, as a kernel older
# than 5.9 does, for this process and everything it starts.
libc = ctypes.CDLL(None, use_errno=True)
insns = [(0x20, 0, 0, 0),                      # A = syscall number
         (0x15, 0, 1, 436),                    # close_range (436 on every arch)?
         (0x06, 0, 0, 0x00050000 | 38),        # -> SECCOMP_RET_ERRNO | ENOSYS
         (0x06, 0, 0, 0x7FFF0000)]             # else SECCOMP_RET_ALLOW
buf = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in insns))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Fprog(len(insns), ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0                                  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0                 # PR_SET_SECCOMP, FILTER
assert libc.syscall(436, 3, 3, 0) == -1 and ctypes.get_errno() == 38

marker = tempfile.NamedTemporaryFile(prefix="nsbox-leak-")
os.dup2(marker.fileno(), 40, inheritable=True)  # (above the fds a child installs)

def leaked(pid):
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == marker.name:
                out.append(fd)
        except OSError:
            pass
    return out

with nsbox.Pod() as pod:
    member = pod.spawn(["sleep", "60"])
    print("holder", leaked(pod.pid), "member", leaked(member.pid))
"""


def test_fds_are_closed_without_close_range():
    r = run_python(_NO_CLOSE_RANGE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["holder", "[]", "member", "[]"]


def test_the_kernel_floor_is_checked_with_a_clear_error():
    from nsbox import _syscalls

    with pytest.raises(nsbox.UnsupportedError, match=r"Linux 5\.8 or newer .* this kernel is 5\.4\.0-42"):
        _syscalls.require_kernel("5.4.0-42-generic")
    _syscalls.require_kernel("5.8.0")
    _syscalls.require_kernel(os.uname().release)


def test_changing_credentials_leaves_the_caller_dumpable():
    # The "dumpable" flag belongs to the memory: a child that changes its euid
    # while it shares the caller's memory makes the caller non-dumpable.
    r = run_python(textwrap.dedent("""
        import prctl, nsbox
        before = prctl.get_dumpable()
        with nsbox.Pod() as pod:
            uid = pod.run(["id", "-u"], user=65534, group=65534, extra_groups=[], capture_output=True, text=True).stdout.strip()
        print(before, uid, prctl.get_dumpable())
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "65534", "True"]


# ---- issue 8: defects a second review found in the change (each test failed before its fix) ----

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from nsbox import _clone  # noqa: E402

NATIVE = Path(__file__).resolve().parent.parent / "nsbox" / "_native"  # the sources
PF_FORKNOEXEC = 0x40


def _flags(pid: int) -> tuple[str, int]:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data.rsplit(b")", 1)[1].split()
    return fields[0].decode(), int(fields[6])


# ---- F1: child_exec_state() reads minflt instead of flags ---------------------------


def test_f1_child_exec_state_parses_the_flags_field(tmp_path):
    """spawn.c child_exec_state() skips 6 fields after the state, landing on
    minflt (field 10) instead of flags (field 9).  A forked, not yet exec'd
    process (PF_FORKNOEXEC set) whose minflt has bit 6 clear is called
    EXEC_DONE."""
    src = tmp_path / "t.c"
    src.write_text(textwrap.dedent(f"""
        #include "{NATIVE}/spawn.c"
        int main(void) {{
            int p[2]; char c;
            pipe(p);
            pid_t pid = fork();
            if (pid == 0) {{
                /* fault pages until minflt has bit 6 clear, then wait */
                static char mem[1 << 22];
                for (int i = 0; ; i++) {{
                    char b[512]; int fd = open("/proc/self/stat", O_RDONLY);
                    int n = read(fd, b, sizeof b - 1); close(fd); b[n] = 0;
                    char *q = strrchr(b, ')') + 2; unsigned long v = 0;
                    for (int f = 0; f < 8; f++) q = strchr(q, ' ') + 1;  /* -> minflt */
                    v = strtoul(q, NULL, 10);
                    if (!(v & 0x40)) break;
                    mem[(i * 4096) % sizeof mem] = 1;
                }}
                write(p[1], "x", 1);
                for (;;) pause();
            }}
            read(p[0], &c, 1);
            int st = child_exec_state(pid);
            kill(pid, 9); waitpid(pid, 0, 0);
            printf("%d\\n", st);
            return 0;
        }}
    """))
    exe = tmp_path / "t"
    subprocess.run(["cc", f"-I{NATIVE}", "-o", str(exe), str(src), "-lpthread"], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "0", f"a forked, not exec'd child was classified as {out} (0=NOT_YET, 1=DONE)"


def test_f1_finish_returns_before_exec_and_unmaps_a_live_childs_stack():
    """Library level: a child that is slow to exec (here: stopped, as a
    loaded machine may deschedule it for > 50 ms) is reported exec'd by
    nsbox_spawn_finish(), which then munmaps the stack the CLONE_VM child
    is still running on: it dies of SIGSEGV once it runs again, and Python
    was told the spawn succeeded."""
    for _ in range(200):
        p = _clone.PendingSpawn(_clone.SpawnRequest(exec_paths=[b"/bin/true"], argv=[b"true"], share_fds=False))
        try:
            os.kill(p.pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
        # Wait until it is stopped (or done).
        for _ in range(1000):
            state, flags = _flags(p.pid)
            if state in "TtZ":
                break
            time.sleep(0.001)
        if state == "T" and flags & PF_FORKNOEXEC:
            break  # stopped before its exec: the scenario
        os.kill(p.pid, signal.SIGCONT)
        pid, pidfd = p.finish()
        os.waitpid(pid, 0)
        os.close(pidfd)
    else:
        pytest.skip("could not stop a child before its exec")
    import threading

    resume = threading.Timer(0.3, os.kill, (p.pid, signal.SIGCONT))  # it execs once it runs again
    resume.start()
    try:
        pid, pidfd = p.finish()  # must wait for the exec (or report a failure)
        state, flags = _flags(pid)
        returned_before_exec = bool(flags & PF_FORKNOEXEC)
    finally:
        resume.join()
    _, status = os.waitpid(pid, 0)
    os.close(pidfd)
    code = os.waitstatus_to_exitcode(status)
    assert not returned_before_exec and code == 0, (
        f"finish() returned success before the child's exec (child then exited with {code})")


# ---- F2: stop_all() gives the members of every pod but the first no grace ---------


def test_f2_stop_all_gives_every_pods_members_the_grace_period(tmp_path):
    """stop_all() calls _begin_stop() -> Members.terminate(deadline) pod after
    pod: terminate() *waits* until the shared deadline for that pod's
    members, so when a member of the first pod ignores SIGTERM, the next
    pod's members get SIGTERM only at the deadline, and the holder's
    SIGTERM right after kills them (the PID namespace dies): no grace."""
    stubborn_pod = nsbox.Pod().start()
    polite_pod = nsbox.Pod().start()
    done = tmp_path / "cleaned-up"
    try:
        stubborn = stubborn_pod.spawn(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
                                      stdout=subprocess.PIPE)
        polite = polite_pod.spawn(["sh", "-c", f"trap 'echo bye > {done}; exit 0' TERM; echo ready; "
                                               "while :; do sleep 0.05; done"], stdout=subprocess.PIPE)
        assert stubborn.stdout.readline() == b"ready\n" and polite.stdout.readline() == b"ready\n"
        order = sorted([stubborn_pod, polite_pod], key=lambda p: p._order)
        assert order[0] is stubborn_pod
        t0 = time.monotonic()
        nsbox.stop_all([stubborn_pod, polite_pod], timeout=1.5)
        took = time.monotonic() - t0
    finally:
        stubborn_pod.stop(timeout=0)
        polite_pod.stop(timeout=0)
        for p in (stubborn, polite):
            p.stdout.close()
    assert polite.returncode == 0 and done.exists(), (
        f"the polite member was killed (returncode {polite.returncode}) after {took:.2f}s, "
        "its SIGTERM came only at the deadline")


# ---- F3: stopping a pod without a PID namespace signals the caller itself -------------


def test_f3_stop_while_the_main_thread_is_joined_does_not_kill_the_caller():
    """Members._open_all() adds every process whose /proc/PID/ns/<kind> is
    the pod's (no PID namespace).  That link shows the *main thread's*
    namespace: while the main thread is inside pod.joined("net") (or
    nsbox.join), the caller's own PID matches and stop() SIGTERMs (and after
    the timeout SIGKILLs) its own process."""
    script = textwrap.dedent("""
        import nsbox, sys
        pod = nsbox.Pod(kinds=("net", "uts")).start()
        with pod.joined("net"):
            pod.stop(timeout=1)
        print("survived", flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0 and "survived" in r.stdout, f"caller died: rc={r.returncode} {r.stderr[-500:]}"


# ---- F4: without close_range the CLONE_VM child writes the caller's errno -------------

_ERRNO_NO_CLOSE_RANGE = """
import ctypes, os, signal, struct, time
libc = ctypes.CDLL(None, use_errno=True)
insns = [(0x20, 0, 0, 0), (0x15, 0, 1, 436), (0x06, 0, 0, 0x00050000 | 38), (0x06, 0, 0, 0x7FFF0000)]
buf = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in insns))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Fprog(len(insns), ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0
from nsbox import holder
libc.__errno_location.restype = ctypes.POINTER(ctypes.c_int)
mine = libc.__errno_location()
changed = []
for _ in range(50):
    pending = holder.begin_holder(("pid", "uts"))
    mine[0] = 0
    time.sleep(0.005)
    if mine[0]:
        changed.append(mine[0])
    pid, pidfd = pending.finish()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(pidfd)
print(sorted(set(changed)))
"""


def test_f4_a_holder_starting_without_close_range_does_not_touch_the_callers_errno():
    """The child's failed close_range() calls (ENOSYS before Linux 5.9, or
    EPERM under seccomp: the kernel floor is 5.8) set errno, which for a
    CLONE_VM child without its own TLS is the *calling thread's*, while that
    thread runs Python (begin/finish).  Same defect as the one fixed for
    rt_sigaction, on the fallback path."""
    r = subprocess.run([sys.executable, "-c", _ERRNO_NO_CLOSE_RANGE], capture_output=True, text=True,
                       timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"errno of the caller's thread was set to {r.stdout.strip()}"


# ---- F5: PodSpec validation lets Python errors through --------------------------------


@pytest.mark.parametrize("make", [
    lambda: nsbox.PodSpec.from_dict({"kinds": None}),
    lambda: nsbox.PodSpec.from_dict({"kinds": 5}),
    lambda: nsbox.PodSpec.from_json('{"ports": [["tcp", 1e400, 80]], "networks": [{"type": "veth", '
                                    '"address": "10.240.0.2/24", "host_address": "10.240.0.1/24"}]}'),
    lambda: nsbox.PodSpec(networks=None),
    lambda: nsbox.PodSpec(ports=None),
], ids=["kinds-null", "kinds-int", "port-infinity", "networks-None", "ports-None"])
def test_f5_bad_spec_input_gives_a_config_error(make):
    with pytest.raises(nsbox.NsboxError):
        make()


def test_f5_mount_proc_must_be_a_bool():
    """from_dict takes any truthy value as mount_proc: "false" turns it on."""
    with pytest.raises(nsbox.ConfigError):
        nsbox.PodSpec.from_dict({"kinds": ["mnt", "pid"], "mount_proc": "false"})


@pytest.mark.parametrize("make", [
    lambda: nsbox.Pod(network=nsbox.Veth("10.240.0.2/24", "10.240.0.1/24"), ports={80.7: 80}),
    lambda: nsbox.PodSpec(kinds=("user",), uid_map="0 0 4294967296"),
    lambda: nsbox.PodSpec(networks=(nsbox.Veth("10.240.0.2/24", "10.240.0.1/24"),), ports=(("tcp", 80),)),
], ids=["float-port", "id-map-past-u32", "port-not-a-triple"])
def test_more_bad_spec_input_gives_a_config_error(make):
    with pytest.raises(nsbox.ConfigError):
        make()
