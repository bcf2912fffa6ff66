"""The holder program on its own: CLI, PID-1 warning, signals."""
import os
import signal
import subprocess
import time

from nsbox.holder import INIT_PATH
from helpers import proc_state

INIT = str(INIT_PATH)


def test_version_and_help():
    r = subprocess.run([INIT, "-v"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("nsbox-init ")
    r = subprocess.run([INIT, "-h"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage" in r.stdout


def test_bad_options():
    for argv in (["-z"], ["-r", "x"], ["-p", "-1"], ["extra"]):
        r = subprocess.run([INIT, *argv], capture_output=True, text=True)
        assert r.returncode == 2, argv
        assert "nsbox-init" in r.stderr or "usage" in r.stderr


def test_is_small_and_static():
    assert os.path.getsize(INIT) < 1_000_000
    with open(INIT, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # ELF64
    import struct

    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    assert 3 not in types  # no PT_INTERP: statically linked, no dynamic loader


def test_not_pid_1_warns_and_obeys_signals():
    r, w = os.pipe()
    p = subprocess.Popen([INIT, "-r", str(w)], stderr=subprocess.PIPE, text=True, pass_fds=[w])
    os.close(w)
    try:
        assert os.read(r, 1) == b"R"  # ready: signals are routed to its signalfd now
        assert "not PID 1" in p.stderr.readline()
        os.kill(p.pid, signal.SIGUSR1)
        os.kill(p.pid, signal.SIGHUP)
        time.sleep(0.1)
        assert p.poll() is None and proc_state(p.pid) == "S"
        os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=5) == 0
    finally:
        os.close(r)
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()
