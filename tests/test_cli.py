"""The ``nsbox`` command, end to end: every subcommand as a subprocess
(``python -m nsbox``, cwd ``/`` so the source tree cannot shadow the
installed package), its exit statuses, signal forwarding, terminals, the
JSON it prints, and that ``run`` leaves nothing behind, even SIGKILLed."""
from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nsbox
from helpers import holder_pids, wait_until

NSBOX = [sys.executable, "-m", "nsbox"]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cli_session.sh"
SUBCOMMANDS = ["run", "create", "exec", "ls", "inspect", "stop", "restart", "rm", "gc", "join"]
# Signals forwarded to the program, and how a trapping shell reports them.
TRAP = ("trap 'echo got TERM; exit 5' TERM; trap 'echo got INT; exit 6' INT; trap 'echo got HUP; exit 7' HUP; "
        "echo ready; while :; do sleep 0.02; done")


def nsbox_cli(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*NSBOX, *args], capture_output=True, text=True, timeout=timeout, cwd="/", **kwargs)


def start_cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*NSBOX, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                            **kwargs)


def wait_ready(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Read the program's first line: "ready"."""
    assert proc.stdout is not None
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    assert r, "the program never said it was ready"
    assert proc.stdout.readline() == "ready\n"


@pytest.fixture
def pods():
    """Names of persistent pods made by a test: removed after it, whatever happens."""
    made: list[str] = []
    yield made
    if made:
        nsbox_cli("rm", "--force", *made)


BRIDGE_SUBNETS = {"test_run_bridge_publish_and_shaping": "10.234.0.0/24", "test_run_sigkilled_leaves_nothing_after_gc": "10.238.0.0/24"}


@pytest.fixture
def bridge(request):
    """A bridge name and subnet of a test's own; the bridge is removed after it."""
    subnet = BRIDGE_SUBNETS[request.node.originalname]
    name = f"nsbt-br{subnet.split('.')[1]}"
    yield name, subnet
    nsbox.net.settle()
    br = nsbox.Bridge(name, subnet=subnet)
    if br.exists:
        br.remove()


# ---- --version, --help, usage errors -------------------------------------------------------


def test_version():
    r = nsbox_cli("--version")
    assert (r.returncode, r.stdout) == (0, f"nsbox {nsbox.__version__}\n")


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "nsbox"
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, cwd="/", timeout=30)
    assert (r.returncode, r.stdout) == (0, f"nsbox {nsbox.__version__}\n")


def test_help_lists_every_subcommand():
    r = nsbox_cli("--help")
    assert r.returncode == 0
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in r.stdout, name
    assert "examples:" in r.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_of_each_subcommand_has_examples(name):
    r = nsbox_cli(name, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: nsbox {name}")
    assert "examples:\n  nsbox " + name in r.stdout


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run"], "no command given"),
    (["run", "--bogus", "--", "true"], "unrecognized arguments: --bogus"),
    (["run", "--kinds", "net,bogus", "--", "true"], "bogus"),
    (["run", "--kinds", "time", "--", "true"], "time"),
    (["run", "--veth", "10.230.0.2/24", "--bridge", "b", "--subnet", "10.231.0.0/24", "--", "true"], "exclude"),
    (["run", "--bridge", "nsbt-b", "--", "true"], "--bridge needs --subnet"),
    (["run", "--subnet", "10.231.0.0/24", "--", "true"], "need --bridge"),
    (["run", "--veth", "nonsense", "--", "true"], "nonsense"),
    (["run", "--rate", "10mbit", "--", "true"], "need --veth or --bridge"),
    (["run", "--publish", "8080:80", "--", "true"], "--publish needs a network"),
    (["run", "--veth", "10.230.0.2/24,10.230.0.1/24", "--publish", "80", "--", "true"], "HOST_PORT:POD_PORT"),
    (["run", "--volume", "/data:disk", "--", "true"], "--volume takes"),
    (["run", "--volume", "data", "--", "true"], "data"),
    (["run", "--host-path", "/srv", "--", "true"], "--host-path takes"),
    (["run", "--add-host", "db", "--", "true"], "NAME=ADDR"),
    (["run", "--sysctl", "kernel.hostname=x", "--", "true"], "kernel.hostname"),
    (["run", "--hostname", "a b", "--", "true"], "hostname"),
    (["run", "--name", "no/slash", "--", "true"], "a pod name"),
    (["create"], "required: NAME"),
    (["create", "-bad"], "NAME"),
    (["exec", "nsbt-x"], "no command given"),
    (["join", "0", "--", "true"], "positive"),
    (["join", "1", "--kinds", "", "--", "true"], "at least one"),
    (["stop", "--timeout", "-1", "nsbt-x"], "--timeout"),
    (["rm"], "required: NAME"),
])
def test_usage_errors_exit_2_with_one_line(args, message):
    r = nsbox_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("nsbox"), r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback():
    r = nsbox_cli("inspect", "nsbt-nosuch")
    assert r.returncode == 1
    assert r.stderr == "nsbox: no persistent pod named 'nsbt-nosuch' (nsbox ls lists them)\n"
    r = nsbox_cli("--debug", "inspect", "nsbt-nosuch")
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert r.stderr.endswith("nsbox: no persistent pod named 'nsbt-nosuch' (nsbox ls lists them)\n")
    r = nsbox_cli("inspect", "--debug", "nsbt-nosuch")  # after the subcommand too
    assert r.returncode == 1 and "Traceback" in r.stderr


# ---- run: exit statuses -----------------------------------------------------------------------


@pytest.mark.parametrize("script, status", [("exit 0", 0), ("exit 3", 3), ("exit 255", 255), ("kill -TERM $$", 143),
                                             ("kill -KILL $$", 137), ("kill -SEGV $$", 139)])
def test_run_exit_status_is_the_commands(script, status):
    r = nsbox_cli("run", "--", "sh", "-c", script)
    assert r.returncode == status, r.stderr
    assert r.stderr == ""


def test_run_command_not_found_is_127():
    r = nsbox_cli("run", "--", "nsbt-no-such-program", "x")
    assert r.returncode == 127
    assert r.stderr == "nsbox: failed to execute nsbt-no-such-program: No such file or directory\n"
    r = nsbox_cli("run", "--", "/nonexistent/prog")
    assert r.returncode == 127


def test_run_command_not_executable_is_126(tmp_path):
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    r = nsbox_cli("run", "--", str(script))
    assert r.returncode == 126
    assert r.stderr == f"nsbox: failed to execute {script}: Permission denied\n"
    r = nsbox_cli("run", "--", "/")  # a directory
    assert r.returncode == 126
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF" + b"\0" * 60)  # ENOEXEC
    garbage.chmod(0o755)
    r = nsbox_cli("run", "--", str(garbage))
    assert r.returncode == 126, r.stderr
    assert "Exec format error" in r.stderr


def test_run_missing_cwd_is_an_nsbox_failure():
    r = nsbox_cli("run", "--cwd", "/nonexistent-nsbt", "--", "true")
    assert r.returncode == 125
    assert r.stderr == "nsbox: cannot change directory to /nonexistent-nsbt: No such file or directory\n"


def test_run_pod_that_cannot_start_is_125(tmp_path):
    r = nsbox_cli("run", "--host-path", f"{tmp_path}/missing:/src", "--", "true")
    assert r.returncode == 125
    assert r.stderr.startswith("nsbox: the pod could not be made: ") and r.stderr.count("\n") == 1
    assert "missing" in r.stderr


def test_run_without_double_dash():
    r = nsbox_cli("run", "--hostname", "nsbt-h", "sh", "-c", "hostname; exit 4")
    assert (r.returncode, r.stdout) == (4, "nsbt-h\n")


# ---- run: what the command sees ------------------------------------------------------------------


def test_run_passes_stdio_through():
    r = subprocess.run([*NSBOX, "run", "--", "sh", "-c", "cat; echo err >&2"], input="from stdin\n",
                       capture_output=True, text=True, cwd="/", timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "from stdin\n", "err\n")


def test_run_in_its_own_namespaces():
    host_net = os.stat("/proc/self/ns/net").st_ino
    r = nsbox_cli("run", "--hostname", "nsbt-web", "--", "sh", "-c",
                  "hostname; echo $$; stat -L -c %i /proc/self/ns/net; ip -o link | wc -l")
    assert r.returncode == 0, r.stderr
    hostname, pid, net, links = r.stdout.split()
    assert hostname == "nsbt-web"
    assert pid == "2"  # the holder is PID 1
    assert int(net) != host_net
    assert links == "1"  # lo only


def test_run_kinds():
    r = nsbox_cli("run", "--kinds", "uts", "--hostname", "nsbt-u", "--", "sh", "-c",
                  "hostname; stat -L -c %i /proc/self/ns/net")
    assert r.returncode == 0, r.stderr
    hostname, net = r.stdout.split()
    assert (hostname, int(net)) == ("nsbt-u", os.stat("/proc/self/ns/net").st_ino)


def test_run_command_starts_with_an_empty_signal_mask_and_default_dispositions():
    # Signals are blocked in the nsbox process; the command must not inherit that.
    r = nsbox_cli("run", "--", "sh", "-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]


def test_run_veth_volume_etc_and_sysctl():
    r = nsbox_cli("run", "--veth", "10.235.0.2/24,10.235.0.1/24", "--hostname", "nsbt-v",
                  "--volume", "/data", "--volume", "/scratch:memory:1Mi", "--add-host", "db.test=10.235.0.9",
                  "--dns", "10.235.0.1", "--dns-search", "pod.test", "--sysctl", "net.ipv4.ip_unprivileged_port_start=0",
                  "--", "sh", "-c",
                  "ip -o -4 addr show eth0 | awk '{print $4}'; ping -c1 -W2 10.235.0.1 >/dev/null && echo ping; "
                  "touch /data/x && echo data; df -k /scratch | awk 'NR==2 {print $2}'; "
                  "grep db.test /etc/hosts; cat /etc/resolv.conf; cat /proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:4] == ["10.235.0.2/24", "ping", "data", "1024"]
    assert lines[4].split() == ["10.235.0.9", "db.test"]
    assert "nameserver 10.235.0.1" in lines and "search pod.test" in lines
    assert lines[-1] == "0"


def test_run_host_path(tmp_path):
    (tmp_path / "f").write_text("from the host\n")
    r = nsbox_cli("run", "--host-path", f"{tmp_path}:/src:ro", "--cwd", "/src", "--", "sh", "-c",
                  "cat f; touch g 2>/dev/null || echo read-only")
    assert (r.returncode, r.stdout) == (0, "from the host\nread-only\n"), r.stderr


def test_run_bridge_publish_and_shaping(bridge):
    name, subnet = bridge
    r = nsbox_cli("run", "--bridge", name, "--subnet", subnet, "--ip", "10.234.0.7", "--publish", "18080:80",
                  "--rate", "10mbit", "--", "sh", "-c", "ip -o -4 addr show eth0 | awk '{print $4}'; "
                  "ping -c1 -W2 10.234.0.1 >/dev/null && echo ping; tc qdisc show dev eth0 | grep -o 'rate 10Mbit'")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n") == ["10.234.0.7/24", "ping", "rate 10Mbit", ""]


# ---- run: signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig, status, said", [(signal.SIGTERM, 5, "got TERM"), (signal.SIGINT, 6, "got INT"),
                                               (signal.SIGHUP, 7, "got HUP")])
def test_run_forwards_signals(sig, status, said):
    proc = start_cli("run", "--", "sh", "-c", TRAP)
    wait_ready(proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert (proc.returncode, out, err) == (status, said + "\n", "")


def test_run_forwarded_signal_that_kills_is_128_plus_n():
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1):
        proc = start_cli("run", "--", "sh", "-c", "echo ready; while :; do sleep 0.02; done")
        wait_ready(proc)
        proc.send_signal(sig)
        proc.communicate(timeout=20)
        assert proc.returncode == 128 + sig


def test_run_signal_during_start_is_not_lost():
    """A SIGTERM that comes once nsbox has blocked its signals -- while the
    pod is made, or once the program runs -- ends the command: 143."""
    proc = subprocess.Popen([*NSBOX, "run", "--", "sleep", "100"], cwd="/", stderr=subprocess.PIPE, text=True)

    def blocked() -> bool:
        with open(f"/proc/{proc.pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
        return bool(mask & (1 << (signal.SIGTERM - 1)))

    assert wait_until(blocked, timeout=20, interval=0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert (proc.returncode, err) == (143, "")


def test_pending_signal_before_the_program_starts():
    script = ("import os, signal\n"
              "from nsbox import cli\n"
              "cli._block_signals()\n"
              "os.kill(os.getpid(), signal.SIGHUP)\n"
              "print(cli._pending_exit_signal(), cli._pending_exit_signal())\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=30)
    assert r.stdout == "1 None\n", r.stderr


def test_run_stops_what_the_command_left_in_the_pod():
    before = holder_pids()
    r = nsbox_cli("run", "--", "sh", "-c", "sleep 100 & sleep 100 & echo started")
    assert (r.returncode, r.stdout) == (0, "started\n")
    assert holder_pids() <= before
    r = subprocess.run(["pgrep", "-f", "^sleep 100$"], capture_output=True, text=True)
    assert r.stdout == ""


def test_run_sigkilled_leaves_nothing_after_gc(bridge):
    """The CLI dies with SIGKILL in the middle: its holder goes by itself (tied
    to its creator), the kernel takes the namespaces and the veth, and
    ``nsbox gc`` the lease and the volume (the autouse leak checks of
    conftest look at holders, links and the run directory)."""
    name, subnet = bridge
    before = holder_pids()
    proc = start_cli("run", "--bridge", name, "--subnet", subnet, "--volume", "/data", "--hostname", "nsbt-k",
                     "--", "sh", "-c", "echo ready; exec sleep 100")
    wait_ready(proc)
    assert len(holder_pids() - before) == 1
    proc.kill()
    proc.communicate(timeout=10)
    assert wait_until(lambda: not holder_pids() - before, timeout=10)
    # (The holder, PID 1 of the pod, ends only once the pod's other processes
    # are reaped; those were the CLI's children, so the host's init reaps
    # them, in its own time: until then the holder counts as alive and gc
    # rightly keeps its lease.)
    out = ""

    def collected() -> bool:
        nonlocal out
        r = nsbox_cli("gc")
        assert r.returncode == 0, r.stderr
        out += r.stdout
        return "lease" in out and "storage" in out

    assert wait_until(collected, timeout=20), out
    assert nsbox_cli("gc").stdout == ""  # nothing left the second time


def test_run_terminal_signals_are_not_forwarded_twice():
    """^C on a terminal reaches nsbox and the command (its foreground process
    group): nsbox must not send a second SIGINT (si_code SI_KERNEL)."""
    counter = ("import signal, sys, time\n"
               "n = 0\n"
               "def on(*_):\n    global n; n += 1\n"
               "signal.signal(signal.SIGINT, on)\n"
               "print('ready', flush=True)\n"
               "end = time.monotonic() + 60\n"
               "while not n and time.monotonic() < end: time.sleep(0.01)\n"
               "time.sleep(0.5)\n"
               "print('count', n, flush=True)\n")
    out, status = run_on_terminal(["run", "--", sys.executable, "-c", counter], [(b"ready", b"\x03")])
    assert status == 0, out
    assert b"count 1" in out, out


# ---- terminals (-t) -------------------------------------------------------------------------------


def run_on_terminal(args: list[str], script: list, timeout: float = 30) -> tuple[bytes, int]:
    """Run nsbox with a pty as its controlling terminal (setsid -c), wait for
    each ``expect`` in its output and type ``send`` (or call it with the
    master); return all the output and the exit status.  The terminal's
    modes must be what they were before (-t sets ours raw, then restores)."""
    import termios

    master, slave = pty.openpty()
    modes = termios.tcgetattr(slave)
    proc = subprocess.Popen(["setsid", "--ctty", "--", *NSBOX, *args], stdin=slave, stdout=slave, stderr=slave,
                            cwd="/", close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        for expect, send in script + [(b"", b"")]:
            while expect not in out:
                r, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
                assert r, f"timed out waiting for {expect!r}; got {out!r}"
                try:
                    data = os.read(master, 4096)
                except OSError:
                    data = b""
                assert data, f"EOF before {expect!r}; got {out!r}"
                out += data
            if callable(send):
                send(master)
            elif send:
                os.write(master, send)
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert termios.tcgetattr(master) == modes, "the terminal's modes were not restored"
        while select.select([master], [], [], 0.2)[0]:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
        return out, status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_run_t_gives_a_terminal_with_our_size():
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    proc = subprocess.Popen([*NSBOX, "run", "-t", "--", "sh", "-c", "tty; stty size; test -t 0 && echo stdin-tty"],
                            stdin=slave, stdout=slave, stderr=slave, cwd="/")
    os.close(slave)
    out = b""
    while True:
        r, _, _ = select.select([master], [], [], 20)
        assert r, out
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
        if proc.poll() is not None and b"stdin-tty" in out:
            break
    os.close(master)
    assert proc.wait(timeout=20) == 0
    lines = out.decode().split("\r\n")
    assert lines[0].startswith("/dev/pts/")
    assert lines[1] == "33 111"
    assert lines[2] == "stdin-tty"


def test_exec_t_interactive_shell_with_job_control(pods):
    """exec -t: the pty is the shell's controlling terminal (^C becomes
    SIGINT for its foreground job), input and output are relayed, the
    exit status comes back."""
    pods.append("nsbt-tty")
    assert nsbox_cli("create", "nsbt-tty", "--hostname", "nsbt-tty").returncode == 0
    out, status = run_on_terminal(
        ["exec", "-t", "nsbt-tty", "--", "sh", "-c",
         "trap 'echo got INT; exit 9' INT; echo ready; read line; echo read:$line; while :; do sleep 0.02; done"],
        [(b"ready", b"hello\r"), (b"read:hello", b"\x03")],
    )
    assert status == 9, out
    assert b"got INT" in out


def test_run_t_passes_window_size_changes_on():
    import fcntl
    import struct
    import termios

    def resize(master):
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 42, 123, 0, 0))  # (SIGWINCH to nsbox)

    out, status = run_on_terminal(
        ["run", "-t", "--", "sh", "-c", "trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 0.02; done"],
        [(b"ready", resize), (b"42 123", b"")],
    )
    assert status == 0, out


def test_exec_t_bash_has_no_job_control_warning(pods):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    pods.append("nsbt-bash")
    assert nsbox_cli("create", "nsbt-bash").returncode == 0
    out, status = run_on_terminal(["exec", "-t", "nsbt-bash", "--", "bash", "--norc", "-i"],
                                  [(b"# ", b"hostname >/dev/null; echo $((6 * 7))\r"), (b"42", b"exit 3\r")])
    assert status == 3, out
    assert b"no job control" not in out and b"cannot set terminal process group" not in out, out


def test_run_t_stdin_not_a_terminal():
    # -t with a pipe on stdin: the input is relayed, its end becomes EOF.
    r = subprocess.run([*NSBOX, "run", "-t", "--", "sh", "-c", "cat; echo done"], input=b"abc\n",
                       capture_output=True, cwd="/", timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"abc" in r.stdout and r.stdout.endswith(b"done\r\n")


# ---- persistent pods: create, ls, inspect, exec, stop, restart, rm ------------------------------


LS_KEYS = {"name", "state", "pid", "address", "addresses", "created_at", "restarts", "returncode", "exited_at"}
INSPECT_KEYS = LS_KEYS | {"start_time", "spec", "pins", "inodes", "host_links", "volumes"}


def test_create_ls_inspect_exec_rm(pods):
    pods += ["nsbt-a", "nsbt-b"]
    r = nsbox_cli("create", "nsbt-a", "--hostname", "nsbt-a", "--veth", "10.236.0.2/24,10.236.0.1/24",
                  "--volume", "/data")
    assert (r.returncode, r.stdout, r.stderr) == (0, "nsbt-a\n", "")
    assert nsbox_cli("create", "nsbt-b", "--kinds", "net,uts").returncode == 0

    r = nsbox_cli("ls", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) >= {"nsbt-a", "nsbt-b"}
    a = rows["nsbt-a"]
    assert set(a) == LS_KEYS
    assert a["state"] == "running" and isinstance(a["pid"], int)
    assert a["address"] == "10.236.0.2/24" and a["addresses"] == {"eth0": "10.236.0.2/24"}
    assert abs(a["created_at"] - time.time()) < 60
    assert (a["restarts"], a["returncode"], a["exited_at"]) == (0, None, None)
    assert rows["nsbt-b"]["address"] is None and rows["nsbt-b"]["addresses"] == {}

    table = nsbox_cli("ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "PID", "ADDRESS", "AGE"]
    line = next(row.split() for row in table if row.startswith("nsbt-a "))
    assert line[:4] == ["nsbt-a", "running", str(a["pid"]), "10.236.0.2/24"]
    assert line[4].endswith("s") or line[4].endswith("m")

    r = nsbox_cli("inspect", "nsbt-a")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert set(info) == INSPECT_KEYS
    assert nsbox.PodSpec.from_dict(info["spec"]).hostname == "nsbt-a"
    assert info["spec"]["kinds"] == ["mnt", "pid", "net", "ipc", "uts"]  # mnt: implied by --volume
    assert set(info["pins"]) == {"pid", "net", "ipc", "uts"}
    assert info["pins"]["net"].endswith("/pods/nsbt-a/ns/net")
    assert info["inodes"]["net"] == os.stat(info["pins"]["net"]).st_ino
    assert set(info["host_links"]) == {"eth0"}
    volume = Path(info["volumes"]["/data"])
    assert volume.is_dir()

    # exec: the pod's namespaces, its volume, the exit status
    r = nsbox_cli("exec", "nsbt-a", "--", "sh", "-c", "hostname; echo hi > /data/f; exit 7")
    assert (r.returncode, r.stdout) == (7, "nsbt-a\n"), r.stderr
    assert (volume / "f").read_text() == "hi\n"
    r = nsbox_cli("exec", "--kinds", "uts", "nsbt-a", "--", "stat", "-L", "-c", "%i", "/proc/self/ns/net")
    assert int(r.stdout) == os.stat("/proc/self/ns/net").st_ino
    assert nsbox_cli("exec", "nsbt-a", "--", "nsbt-no-such").returncode == 127
    r = nsbox_cli("exec", "--kinds", "cgroup", "nsbt-a", "--", "true")
    assert r.returncode == 2 and "no cgroup namespace" in r.stderr

    # a second pod of the same name is refused
    r = nsbox_cli("create", "nsbt-a")
    assert r.returncode == 1 and "exists" in r.stderr and r.stderr.count("\n") == 1

    # rm refuses a running pod, --force stops it; rm is idempotent
    r = nsbox_cli("rm", "nsbt-a")
    assert r.returncode == 1
    assert r.stderr == "nsbox: pod 'nsbt-a' is running; stop it first, or use --force\n"
    r = nsbox_cli("rm", "--force", "nsbt-a", "nsbt-b", "nsbt-never-made")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert not volume.exists()
    r = nsbox_cli("rm", "nsbt-a", "nsbt-b")
    assert (r.returncode, r.stderr) == (0, "")
    names = [row["name"] for row in json.loads(nsbox_cli("ls", "--json").stdout)]
    assert "nsbt-a" not in names and "nsbt-b" not in names


def test_stop_restart_and_exited_pods(pods):
    pods.append("nsbt-s")
    assert nsbox_cli("create", "nsbt-s", "--volume", "/data").returncode == 0
    assert nsbox_cli("exec", "nsbt-s", "--", "touch", "/data/kept").returncode == 0
    first = json.loads(nsbox_cli("inspect", "nsbt-s").stdout)

    assert nsbox_cli("stop", "nsbt-s").returncode == 0
    info = json.loads(nsbox_cli("inspect", "nsbt-s").stdout)
    assert (info["state"], info["pid"], info["pins"]) == ("stopped", None, {})
    assert nsbox_cli("stop", "nsbt-s").returncode == 0  # idempotent
    r = nsbox_cli("exec", "nsbt-s", "--", "true")
    assert r.returncode == 125 and "not running (stopped)" in r.stderr

    assert nsbox_cli("restart", "nsbt-s").returncode == 0
    info = json.loads(nsbox_cli("inspect", "nsbt-s").stdout)
    assert info["state"] == "running" and info["pid"] != first["pid"] and info["restarts"] == 1
    assert nsbox_cli("exec", "nsbt-s", "--", "test", "-f", "/data/kept").returncode == 0  # volumes survive

    # a holder killed from outside: exited, then gc removes its pins; restart brings it back
    os.kill(info["pid"], signal.SIGKILL)
    assert wait_until(lambda: json.loads(nsbox_cli("inspect", "nsbt-s").stdout)["state"] == "exited", timeout=10)
    r = nsbox_cli("gc")
    assert r.returncode == 0 and "nsbt-s" in r.stdout
    row = next(r for r in json.loads(nsbox_cli("ls", "--json").stdout) if r["name"] == "nsbt-s")
    assert row["state"] == "exited" and row["pid"] is None
    assert ["nsbt-s", "exited", "-", "-"] in [line.split()[:4] for line in nsbox_cli("ls").stdout.splitlines()]
    assert nsbox_cli("restart", "nsbt-s").returncode == 0
    assert nsbox_cli("rm", "--force", "nsbt-s").returncode == 0


def test_management_commands_on_missing_pods():
    for args in (["inspect", "nsbt-none"], ["stop", "nsbt-none"], ["restart", "nsbt-none"]):
        r = nsbox_cli(*args)
        assert r.returncode == 1, args
        assert r.stderr == "nsbox: no persistent pod named 'nsbt-none' (nsbox ls lists them)\n"
    r = nsbox_cli("exec", "nsbt-none", "--", "true")
    assert r.returncode == 125


def test_exec_forwards_signals(pods):
    pods.append("nsbt-sig")
    assert nsbox_cli("create", "nsbt-sig").returncode == 0
    proc = start_cli("exec", "nsbt-sig", "--", "sh", "-c", TRAP)
    wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert (proc.returncode, out) == (5, "got TERM\n")


# ---- join ---------------------------------------------------------------------------------------


def test_join_a_pods_holder(pods):
    pods.append("nsbt-j")
    assert nsbox_cli("create", "nsbt-j", "--hostname", "nsbt-j", "--veth", "10.237.0.2/24").returncode == 0
    pid = json.loads(nsbox_cli("inspect", "nsbt-j").stdout)["pid"]
    r = nsbox_cli("join", str(pid), "--kinds", "net,uts", "--", "sh", "-c", "hostname; ip -o -4 addr show eth0")
    assert r.returncode == 0, r.stderr
    hostname, addr = r.stdout.splitlines()
    assert hostname == "nsbt-j" and "10.237.0.2/24" in addr
    # default: every namespace of the target that is not ours (nsenter --all), pid included
    r = nsbox_cli("join", str(pid), "--", "sh", "-c", "hostname; echo $$; exit 3")
    assert r.returncode == 3
    assert r.stdout.splitlines()[0] == "nsbt-j" and int(r.stdout.splitlines()[1]) > 1


def test_join_any_process_and_its_errors():
    with nsbox.Pod(hostname="nsbt-any") as pod:
        server = pod.spawn(["sleep", "100"])
        r = nsbox_cli("join", str(server.pid), "--kinds", "uts", "--", "hostname")
        assert (r.returncode, r.stdout) == (0, "nsbt-any\n"), r.stderr
        r = nsbox_cli("join", str(server.pid), "--kinds", "uts", "--", "nsbt-no-such")
        assert r.returncode == 127
    r = nsbox_cli("join", str(os.getpid()), "--", "true")
    assert r.returncode == 125 and "same namespaces" in r.stderr
    r = nsbox_cli("join", "999999999", "--", "true")
    assert r.returncode == 125 and "no process with PID 999999999" in r.stderr


def test_join_forwards_signals():
    with nsbox.Pod() as pod:
        r = subprocess.Popen([*NSBOX, "join", str(pod.pid), "--kinds", "net", "--", "sh", "-c", TRAP],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        wait_ready(r)
        r.send_signal(signal.SIGHUP)
        out, _ = r.communicate(timeout=20)
        assert (r.returncode, out) == (7, "got HUP\n")


# ---- gc, the example --------------------------------------------------------------------------


def test_gc_on_a_clean_machine():
    r = nsbox_cli("gc")
    assert (r.returncode, r.stderr) == (0, "")


def test_example_cli_session_runs():
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    r = subprocess.run(["bash", str(EXAMPLE)], capture_output=True, text=True, timeout=120, cwd="/", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cli-demo" in r.stdout


def test_example_cli_session_runs_as_the_readme_says():
    # From the checkout, by a relative path, without the venv on PATH.
    checkout = EXAMPLE.parent.parent
    if not (checkout / ".venv" / "bin" / "nsbox").exists():
        pytest.skip("no .venv in the checkout (make install makes it)")
    env = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    r = subprocess.run(["bash", "examples/cli_session.sh"], capture_output=True, text=True, timeout=120,
                       cwd=checkout, env=env)
    assert r.returncode == 0, r.stdout + r.stderr



def test_a_reader_that_goes_away_is_not_an_error():
    # `nsbox ls --json | head`, with head gone before nsbox writes: no
    # "Broken pipe" message, the status of a tool killed by SIGPIPE.
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "nsbox", "ls", "--json"], stdout=w, stderr=subprocess.PIPE,
                           text=True, cwd="/", timeout=60)
    finally:
        os.close(w)
    assert p.stderr == "" and p.returncode == 128 + signal.SIGPIPE
