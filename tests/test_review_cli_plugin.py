"""Review of the nsbox command, the pytest plugin and the lazy package
(issue 11): regressions for the defects the review found."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

import pytest

import nsbox

pytest_plugins = ["pytester"]

NSBOX = [sys.executable, "-m", "nsbox"]


def nsbox_cli(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*NSBOX, *args], capture_output=True, text=True, timeout=timeout, cwd="/", **kwargs)


# ---- argument parsing ---------------------------------------------------------------


def test_abbreviated_option_is_not_mistaken_for_the_command():
    # argparse accepted "--hostn" for --hostname, but the split at the
    # command did not know it takes a value: "web" became the command and
    # the error said "--hostname: expected one argument".
    r = nsbox_cli("run", "--hostn", "web", "--", "hostname")
    assert r.returncode == 2, r
    assert "expected one argument" not in r.stderr
    assert "--hostn" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_combined_short_options_before_the_command():
    # "-tw DIR": -t, then -w with the next word as its value.
    r = nsbox_cli("run", "-tw", "/tmp", "--", "pwd", stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r
    assert r.stdout.strip() == "/tmp"


# ---- -t: our stdout goes away ----------------------------------------------------------------


def test_run_t_ends_when_its_reader_goes_away():
    # The relay dropped what it could not write and the program went on
    # writing into the pty for ever: `nsbox run -t -- yes | head -1` hung.
    r, w = os.pipe()
    proc = subprocess.Popen([*NSBOX, "run", "-t", "--", "yes"], stdin=subprocess.DEVNULL, stdout=w,
                            stderr=subprocess.PIPE, cwd="/")
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 20)
        assert ready and os.read(r, 10)
        os.close(r)
        r = -1
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("nsbox run -t went on after its stdout's reader had gone")
        assert rc == 128 + signal.SIGPIPE
    finally:
        if r >= 0:
            os.close(r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


# ---- exec/stop on a pod another process is starting -----------------------------------


STARTER = """
import sys, time, nsbox, nsbox.pod as P
def slow(self, first):
    print("starting", flush=True)
    time.sleep(30)
P.Pod._make_sandbox = slow
nsbox.Pod(name=sys.argv[1], persist=True).start()
"""


def test_exec_and_stop_of_a_pod_being_started_elsewhere():
    name = f"rv11-st-{os.getpid()}"
    starter = subprocess.Popen([sys.executable, "-c", STARTER, name], stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert starter.stdout is not None and starter.stdout.readline() == "starting\n"
        r = nsbox_cli("exec", name, "--", "true")
        assert r.returncode == 125 and "starting" in r.stderr and "exited" not in r.stderr, r
        r = nsbox_cli("stop", name)  # was: exit 0, and the pod went on to run
        assert r.returncode == 1 and "starting" in r.stderr, r
    finally:
        starter.kill()
        starter.wait()
        assert starter.stdout is not None
        starter.stdout.close()
        nsbox.gc()
        nsbox_cli("rm", "--force", name)


# ---- the plugin ------------------------------------------------------------------------------


def test_leak_check_does_not_change_how_warnings_are_filtered(pytester):
    # The leak check recorded every warning of the test and re-emitted it
    # with warn_explicit() and no module: filters by module no longer
    # matched, and "error" turned an allowed warning into an error.
    pytester.makeini(
        """
        [pytest]
        filterwarnings =
            error
            default::UserWarning:test_warns
        """
    )
    pytester.makepyfile(
        test_warns="""
        import warnings

        def test_warns():
            warnings.warn("allowed here", UserWarning)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--nsbox-leak-check")
    result.assert_outcomes(passed=1, warnings=1)


def test_leak_check_still_sees_a_pod_dropped_without_stop(pytester):
    pytester.makepyfile(
        """
        import nsbox

        def test_drops():
            nsbox.Pod().start()  # no reference kept: its __del__ stops it
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--nsbox-leak-check")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*nsbox leak check*", "*was never stopped*"])


# ---- the lazy package ----------------------------------------------------------------------


def test_submodules_are_still_attributes_of_the_package():
    # Before the lazy __init__, `import nsbox` imported these, and code
    # (this repository's own tests among it) reached them as attributes.
    code = ("import nsbox; print(nsbox.holder.INIT_PATH.name, nsbox.persist.pods is nsbox.pods, "
            "nsbox.pod.Pod is nsbox.Pod, nsbox.lifecycle.PodStatus is nsbox.PodStatus, nsbox._proc.owner(1) is not None)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1:] == ["True", "True", "True", "True"]
    r = subprocess.run([sys.executable, "-c", "import nsbox; nsbox.no_such_thing"], capture_output=True, text=True,
                       cwd="/", timeout=60)
    assert r.returncode == 1 and "AttributeError: module 'nsbox' has no attribute 'no_such_thing'" in r.stderr


def test_lazy_names_are_typed_and_a_misspelt_one_is_a_type_error(tmp_path):
    # The module-level __getattr__ (-> Any) made every nsbox.X Any to mypy:
    # nsbox.Podd type-checked.
    mypy = os.path.join(os.path.dirname(sys.executable), "mypy")
    if not os.path.exists(mypy):
        pytest.skip("mypy is not installed (make lint installs it)")
    (tmp_path / "use.py").write_text("import nsbox\n\nnsbox.Podd\nx: int = nsbox.Pod\nnsbox.net.settle()\n")
    r = subprocess.run([mypy, "--python-version", "3.11", "--cache-dir", str(tmp_path / "cache"), "use.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, r.stdout + r.stderr
    assert 'has no attribute "Podd"' in errors[0] and 'type "type[Pod]"' in errors[1]
