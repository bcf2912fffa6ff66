"""The holder reaps every zombie in the pod, orphans included."""
import sys
import time
import textwrap

import nsbox
from helpers import pids_in_ns, proc_state, wait_until

ORPHAN_MAKER = textwrap.dedent(
    """
    import os, sys, time
    n = int(sys.argv[1])
    for i in range(n):
        if os.fork() == 0:
            if i % 2:
                time.sleep(0.3)   # orphaned while alive, exits later
            os._exit(0)           # or exits at once: a zombie handed to PID 1
    # exit without waiting: every child becomes the holder's
    """
)


def zombies(inode):
    return [p for p in pids_in_ns("pid", inode) if proc_state(p) == "Z"]


def test_thousand_orphans_are_reaped():
    with nsbox.Pod(kinds=("pid",)) as pod:
        inode = pod.inode("pid")
        pod.run([sys.executable, "-c", ORPHAN_MAKER, "1000"], check=True)
        # The late ones exit 0.3 s after their parent; within a second of that
        # nothing but the holder is left, and no zombie at any time after.
        assert wait_until(lambda: pids_in_ns("pid", inode) == [pod.pid], timeout=1.3), zombies(inode)
        assert zombies(inode) == []


def test_holder_without_pid_namespace_is_a_quiet_subreaper():
    # No PID namespace: the holder is not PID 1.  It becomes a child subreaper
    # (-s) instead of warning.  Orphans of *members* are not its to reap then:
    # members are the creator's children (see docs/concepts.md).
    with nsbox.Pod(kinds=("uts",), hostname="sub") as pod:
        with open(f"/proc/{pod.pid}/status") as f:
            assert "NSpid:\t%d\n" % pod.pid in f.read()
        with open(f"/proc/{pod.pid}/cmdline", "rb") as f:
            assert b"-s" in f.read().split(b"\0")


def test_an_idle_holder_never_wakes_up():
    # Issue 13: 10,000 holders that each woke once a second (a reap timer)
    # took ~7% of a CPU.  Zombies are reaped on SIGCHLD alone (see above).
    def switches(pid):
        with open(f"/proc/{pid}/status") as f:
            return [line for line in f if "ctxt_switches" in line]

    with nsbox.Pod() as pod:
        time.sleep(0.2)  # past its start
        before = switches(pod.pid)
        time.sleep(2.5)
        assert switches(pod.pid) == before
