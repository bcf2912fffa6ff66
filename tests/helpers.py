"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""
from __future__ import annotations

import os
import time

from nsbox.holder import INIT_PATH


def holder_pids() -> set[int]:
    """PIDs of every running nsbox-init on the machine."""
    out = set()
    target = os.path.realpath(INIT_PATH)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/exe") == target:
                    out.add(int(name))
            except OSError:
                pass
    return out


def children_of_self() -> list[int]:
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def pids_in_ns(kind: str, inode: int) -> list[int]:
    """Every process (host view) whose ``kind`` namespace has ``inode``."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}/ns/{kind}").st_ino == inode:
                    out.append(int(name))
            except OSError:
                pass
    return out


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def run_python(script: str, *args: str, timeout: float = 60):
    """Run ``script`` in a fresh interpreter of this venv.

    cwd is ``/`` so that the source tree cannot shadow the installed nsbox
    (``python -c`` puts the cwd first on sys.path).
    """
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout, cwd="/"
    )


def run_in_thread(fn):
    """``fn()`` on a thread of its own (a thread that joins a namespace must
    not be the test's); returns its result, re-raises what it raised."""
    import threading

    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


class another_thread:
    """Context manager: one more thread alive in this process while inside
    (for rules that depend on the process being single-threaded)."""

    def __enter__(self):
        import threading

        self._stop = threading.Event()
        self._t = threading.Thread(target=self._stop.wait)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def link_exists(name: str) -> bool:
    """Whether link ``name`` is in the calling thread's network namespace
    (/sys/class/net shows the namespace sysfs was mounted in, not the thread's)."""
    import subprocess

    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def bridge_ports(bridge: str) -> list[str]:
    """The links enslaved to ``bridge``, in the calling thread's network namespace."""
    import subprocess

    out = subprocess.run(["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip())
