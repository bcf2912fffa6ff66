"""nsbox's pytest plugin (nsbox/pytest_plugin.py), under pytest's own pytester.

Inner sessions run in this process (``runpytest``) or as subprocesses
(``runpytest_subprocess``, ``-n 2``, several at once, SIGKILLed, as an
unprivileged user); this suite's own leak checks (conftest.py) then check
that the plugin left nothing behind.
"""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import nsbox
from helpers import wait_until
from nsbox.net.rundir import run_dir

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "test_client_server.py"


def leases() -> list[str]:
    d = run_dir() / "pytest" / "subnets"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def plugin_links() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex() if name.startswith("nsbp"))


def assert_nothing_left() -> None:
    nsbox.net.settle()
    assert leases() == []
    assert plugin_links() == []
    assert nsbox.pods() == []


# ---- the fixtures ----------------------------------------------------------------


def test_fixtures(pytester):
    pytester.makepyfile(
        """
        import ipaddress
        import nsbox

        def test_pod(nsbox_pod):
            assert nsbox_pod.alive and set(nsbox_pod.kinds) == set(nsbox.DEFAULT_KINDS)
            links = nsbox_pod.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
            assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]

        def test_network(nsbox_network, nsbox_pod_factory):
            assert isinstance(nsbox_network, nsbox.Bridge)
            assert nsbox_network.name.startswith("nsbp") and len(nsbox_network.name) <= 15
            assert nsbox_network.subnet.subnet_of(ipaddress.ip_network("10.240.0.0/12"))
            assert nsbox_network.subnet.prefixlen == 24
            a = nsbox_pod_factory(network=nsbox_network, hostname="a")
            b = nsbox_pod_factory(network=nsbox_network, hostname="b")
            assert a.address.network == nsbox_network.subnet
            b.run(["ping", "-c1", "-W2", str(a.address.ip)], check=True)

        def test_each_test_its_own(nsbox_pod, nsbox_network, nsbox_pod_factory):
            other = nsbox_pod_factory()
            assert other.inode("net") != nsbox_pod.inode("net")
            second = nsbox_pod_factory.network()
            assert second.name != nsbox_network.name
            assert not second.subnet.overlaps(nsbox_network.subnet)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    assert_nothing_left()


def test_factory_options(pytester):
    pytester.makepyfile(
        """
        import pytest
        import nsbox

        def test_options(nsbox_pod_factory):
            pod = nsbox_pod_factory(("net", "uts"), hostname="web-0", start=False)
            assert pod.status().state == "new"
            pod.start()
            assert pod.run(["hostname"], capture_output=True, text=True).stdout == "web-0\\n"
            spec = nsbox.PodSpec(kinds=("net", "ipc"))
            from_spec = nsbox_pod_factory(spec)
            assert from_spec.spec == spec and from_spec.alive
            assert nsbox_pod_factory.pods == [pod, from_spec]

        def test_veth_and_subnet(nsbox_pod_factory):
            veth = nsbox_pod_factory.veth(rate="10mbit")
            pod = nsbox_pod_factory(network=veth)
            net = pod.address.network
            assert pod.address.ip == net[2] and net.prefixlen == 24
            pod.run(["ping", "-c1", "-W2", str(net[1])], check=True)
            assert not nsbox_pod_factory.subnet().overlaps(net)

        def test_persistent(nsbox_pod_factory):
            name = nsbox_pod_factory.name("web")
            assert name != nsbox_pod_factory.name("web") and name.startswith("web-")
            pod = nsbox_pod_factory(name=name, persist=True)
            assert [s.name for s in nsbox.pods()] == [name]

        def test_shaped_network(nsbox_pod_factory):
            net = nsbox_pod_factory.network(rate="10mbit")
            a = nsbox_pod_factory(network=net)
            b = nsbox_pod_factory(network=net)
            b.run(["ping", "-c1", "-W2", str(a.address.ip)], check=True)

        def test_refused(nsbox_pod_factory):
            with pytest.raises(TypeError, match="name"):
                nsbox_pod_factory.network(name="br0")
            with pytest.raises(TypeError, match="address"):
                nsbox_pod_factory.veth(address="10.0.0.2/24")
            with pytest.raises(nsbox.ConfigError):
                nsbox_pod_factory(hostname="x y")   # not started: nothing to tear down
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    assert_nothing_left()


def test_teardown_after_a_failing_test(pytester):
    pytester.makepyfile(
        """
        import pytest

        def test_fails(nsbox_pod_factory, nsbox_network):
            a = nsbox_pod_factory(network=nsbox_network)
            nsbox_pod_factory(network=nsbox_pod_factory.veth(rate="10mbit"), ports={18080: 80})
            nsbox_pod_factory(name=nsbox_pod_factory.name("web"), persist=True, network=nsbox_network)
            a.spawn(["sleep", "60"])
            assert False, "boom"

        @pytest.fixture
        def broken(nsbox_pod_factory, nsbox_network):
            nsbox_pod_factory(network=nsbox_network)
            raise RuntimeError("fixture broke")

        def test_fixture_fails(broken):
            pass

        def test_stopped_by_hand(nsbox_pod_factory, nsbox_network):
            pod = nsbox_pod_factory(network=nsbox_network)
            pod.stop()     # its link goes in the background: the bridge is removed after it
            raise KeyError("after stop")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2, errors=1)
    result.stdout.fnmatch_lines(["*AssertionError: boom*"])
    result.stdout.fnmatch_lines(["*RuntimeError: fixture broke*"])
    assert "ERROR at teardown" not in result.stdout.str()
    assert_nothing_left()


# ---- parallel: xdist workers, sessions --------------------------------------------

PARALLEL = """
import json, os, time
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_net(i, nsbox_network, nsbox_pod_factory):
    t0 = time.monotonic()
    a = nsbox_pod_factory(network=nsbox_network)
    b = nsbox_pod_factory(network=nsbox_network)
    veth = nsbox_pod_factory.veth()
    v = nsbox_pod_factory(network=veth)
    b.run(["ping", "-c1", "-W2", str(a.address.ip)], check=True)
    v.run(["ping", "-c1", "-W2", str(v.address.network[1])], check=True)
    time.sleep(0.3)  # hold the leases a while: workers and sessions overlap
    record = {{"worker": os.environ.get("PYTEST_XDIST_WORKER"), "pid": os.getpid(), "t0": t0,
               "t1": time.monotonic(), "bridge": nsbox_network.name, "subnets": [str(nsbox_network.subnet), str(v.address.network)]}}
    with open(os.path.join(os.environ["NSBOX_PLUGIN_RESULTS"], f"{{os.getpid()}}-{{i}}.json"), "w") as f:
        json.dump(record, f)
"""


def check_no_collisions(records: list[dict]) -> int:
    """Records held at overlapping times never share a subnet or a bridge
    name; returns how many pairs overlapped."""
    overlapping = 0
    for i, r in enumerate(records):
        for s in records[i + 1:]:
            if r["t0"] < s["t1"] and s["t0"] < r["t1"]:
                overlapping += 1
                assert r["bridge"] != s["bridge"], (r, s)
                assert not set(r["subnets"]) & set(s["subnets"]), (r, s)
    for r in records:
        assert len(set(r["subnets"])) == 2
    return overlapping


def read_records(d: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(d.iterdir())]


def test_xdist_workers_get_their_own(pytester, tmp_path, monkeypatch):
    pytest.importorskip("xdist")
    monkeypatch.setenv("NSBOX_PLUGIN_RESULTS", str(tmp_path))
    pytester.makepyfile(PARALLEL.format(n=8))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=120)
    result.assert_outcomes(passed=8)
    records = read_records(tmp_path)
    assert len(records) == 8
    assert {r["worker"] for r in records} == {"gw0", "gw1"}
    assert check_no_collisions(records) > 0
    assert_nothing_left()


def test_two_sessions_at_once(pytester, tmp_path):
    """Two pytest sessions (each with two xdist workers) on one machine."""
    pytest.importorskip("xdist")
    test = pytester.makepyfile(PARALLEL.format(n=6))
    env = dict(os.environ, NSBOX_PLUGIN_RESULTS=str(tmp_path))
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", str(test)]
    procs = [subprocess.Popen(cmd, cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    records = read_records(tmp_path)
    assert len(records) == 12 and len({r["pid"] for r in records}) == 4
    assert check_no_collisions(records) > 0
    assert_nothing_left()


def test_a_killed_session_is_reclaimed(pytester, tmp_path):
    """A session SIGKILLed while it holds a network: the next session gets
    the block again, after deleting the bridge it left."""
    ready = tmp_path / "ready"
    test = pytester.makepyfile(
        f"""
        import time
        def test_hang(nsbox_network, nsbox_pod_factory):
            nsbox_pod_factory(network=nsbox_network)
            open({str(ready)!r}, "w").write(nsbox_network.name + " " + str(nsbox_network.subnet))
            time.sleep(120)
        """
    )
    pool = "--nsbox-subnet-pool=10.251.0.0/22"
    p = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", pool, str(test)], cwd=pytester.path,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(ready.exists, timeout=60)
        assert wait_until(lambda: ready.read_text().count(" ") == 1, timeout=5)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    name, subnet = ready.read_text().split()
    assert subnet == "10.251.0.0/24" and name in plugin_links()
    assert leases() == ["10.251.0.0_24"]
    # Its pod died with it (the kernel removes the veth with the namespace).
    assert wait_until(lambda: not os.listdir(f"/sys/class/net/{name}/brif"), timeout=10)
    index = socket.if_nametoindex(name)
    pytester.makepyfile(
        test_next="""
        def test_next(nsbox_network, nsbox_pod_factory):
            import socket
            assert str(nsbox_network.subnet) == "10.251.0.0/24"
            nsbox_pod_factory(network=nsbox_network)
            print("INDEX", socket.if_nametoindex(nsbox_network.name))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", pool, "test_next.py")
    result.assert_outcomes(passed=1)
    (line,) = [x for x in result.stdout.lines if "INDEX" in x]
    assert int(line.split("INDEX")[1].split()[0]) != index  # a new bridge: the stale one was deleted
    assert_nothing_left()


# ---- the pool -----------------------------------------------------------------------


def test_pool_options(pytester):
    pytester.makeini(
        """
        [pytest]
        nsbox_subnet_pool = 10.252.0.0/16
        nsbox_subnet_prefix = 28
        """
    )
    pytester.makepyfile(
        """
        import ipaddress

        def test_ini(nsbox_network, nsbox_pod_factory):
            assert nsbox_network.subnet == ipaddress.ip_network("10.252.0.0/28")
            assert nsbox_pod_factory.subnet() == ipaddress.ip_network("10.252.0.16/28")
            nsbox_pod_factory(network=nsbox_network)
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.makepyfile(
        test_small="""
        def test_exhausted(nsbox_pod_factory):
            nsbox_pod_factory.network()
            nsbox_pod_factory.network()
            nsbox_pod_factory.network()
        """
    )
    # The command line wins over the ini file.
    result = pytester.runpytest("-p", "no:cacheprovider", "--nsbox-subnet-pool", "10.252.0.0/23",
                                "--nsbox-subnet-prefix", "24", "test_small.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no free /24 left in the nsbox test pool 10.252.0.0/23*"])
    for bad, message in [(["--nsbox-subnet-pool", "nonsense"], "*subnet pool 'nonsense' is not a network*"),
                         (["--nsbox-subnet-pool", "fd00::/64"], "*must be IPv4*"),
                         (["--nsbox-subnet-pool", "10.0.0.0/24", "--nsbox-subnet-prefix", "16"], "*between the pool's /24 and /29*")]:
        result = pytester.runpytest("-p", "no:cacheprovider", *bad)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])
    assert_nothing_left()


def test_blocks_in_use_on_the_host_are_skipped(pytester):
    subprocess.run(["ip", "link", "add", "nsbtroute0", "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.253.0.1/24", "dev", "nsbtroute0"], check=True)
        subprocess.run(["ip", "link", "set", "nsbtroute0", "up"], check=True)
        # A link with the first free block's bridge name is skipped too.
        subprocess.run(["ip", "link", "add", "nsbp0afd0100", "type", "bridge"], check=True)
        pytester.makepyfile(
            """
            def test_net(nsbox_network):
                assert str(nsbox_network.subnet) == "10.253.2.0/24"
            """
        )
        pytester.runpytest("-p", "no:cacheprovider", "--nsbox-subnet-pool=10.253.0.0/16").assert_outcomes(passed=1)
    finally:
        subprocess.run(["ip", "link", "del", "nsbtroute0"])
        subprocess.run(["ip", "link", "del", "nsbp0afd0100"])
    assert leases() == []


# ---- leak check -----------------------------------------------------------------------

LEAKY = """
import os, subprocess, tempfile
import pytest
import nsbox

KEEP = []

@pytest.fixture(scope="module")
def shared_pod():
    with nsbox.Pod() as pod:      # module-scoped: not the test's leak
        yield pod

def test_clean(nsbox_pod_factory, nsbox_network, shared_pod):
    nsbox_pod_factory(network=nsbox_network)
    with nsbox.Pod() as pod:
        pod.run(["true"], check=True)
    subprocess.run(["true"], check=True)

def test_kept_pod(nsbox_pod_factory, shared_pod):
    KEEP.append(nsbox.Pod(hostname="kept", network=nsbox_pod_factory.veth(), ports={18081: 80}).start())

def test_dropped_pod():
    nsbox.Pod(hostname="dropped").start()

def test_process():
    KEEP.append(subprocess.Popen(["sleep", "60"]))

def test_link():
    subprocess.run(["ip", "link", "add", "nsbleak0", "type", "bridge"], check=True)

def test_mount():
    d = tempfile.mkdtemp(prefix="nsbox-leak-")
    open(os.environ["NSBOX_PLUGIN_MOUNT"], "w").write(d)
    subprocess.run(["mount", "-t", "tmpfs", "none", d], check=True)

def test_persistent(nsbox_pod_factory):
    pod = nsbox.Pod(name=nsbox_pod_factory.name("left"), persist=True).start()
    pod.stop()                    # stopped, never removed: the name stays taken
"""


@pytest.fixture
def leak_cleanup(tmp_path, monkeypatch):
    marker = tmp_path / "mount"
    monkeypatch.setenv("NSBOX_PLUGIN_MOUNT", str(marker))
    yield
    subprocess.run(["ip", "link", "del", "nsbleak0"], capture_output=True)
    if marker.exists():
        subprocess.run(["umount", marker.read_text()], capture_output=True)
        os.rmdir(marker.read_text())


def test_leak_check_names_what_leaked(pytester, leak_cleanup):
    pytester.makepyfile("import pytest\npytestmark = pytest.mark.nsbox_leakcheck\n" + LEAKY)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7, errors=6)
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_kept_pod*",
        "nsbox leak check: test_*.py::test_kept_pod left behind:",
        "  pod: <nsbox.Pod running pid=* hostname='kept'> (holder PID *) still running: never stopped",
        "  rule: nft nsbox-* chain *: nsbox:*",
        "(cleaned up: PID *)",
    ])
    result.stdout.fnmatch_lines([
        "*test_dropped_pod left behind:",
        "  pod: <nsbox.Pod running pid=* hostname='dropped'> was never stopped (its __del__ stopped it)",
    ])
    result.stdout.fnmatch_lines(["*test_process left behind:", "  process: PID * (sleep 60, state S) still a child of the test process"])
    result.stdout.fnmatch_lines(["*test_link left behind:", "  link: nsbleak0 (bridge) in the host network namespace"])
    result.stdout.fnmatch_lines(["*test_mount left behind:", "  mount: /tmp/nsbox-leak-*"])
    result.stdout.fnmatch_lines(["*test_persistent left behind:", "  persistent pod: 'left-*' (stopped), never removed",
                                 "(cleaned up: persistent pod 'left-*' (removed))"])
    assert "test_clean left behind" not in out
    assert "ERROR at teardown of test_clean" not in out
    assert nsbox.pods() == []


def test_leak_check_option_and_opt_out(pytester, leak_cleanup):
    pytester.makepyfile(
        """
        import subprocess
        import pytest

        def test_leaks(request):
            assert "_nsbox_leak_check" in request.fixturenames
            subprocess.run(["ip", "link", "add", "nsbleak0", "type", "bridge"], check=True)

        @pytest.mark.nsbox_leakcheck(enabled=False)
        def test_opted_out(request):
            assert "_nsbox_leak_check" not in request.fixturenames
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--nsbox-leak-check")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_leaks left behind:", "  link: nsbleak0 (bridge)*"])
    subprocess.run(["ip", "link", "del", "nsbleak0"], check=True)
    pytester.makeini("[pytest]\nnsbox_leak_check = true\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)


def test_no_autouse_behaviour(pytester):
    """Tests that use no nsbox fixture see nothing of the plugin."""
    pytester.makepyfile(
        """
        def test_plain(request):
            assert request.fixturenames == ["request"]
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = pytester.runpytest("-p", "no:cacheprovider", "--fixtures")
    result.stdout.fnmatch_lines(["nsbox_pod_factory*", "*Make any number of pods*"])
    result.stdout.fnmatch_lines(["nsbox_pod -- *", "*A fresh, started*"])
    result.stdout.fnmatch_lines(["nsbox_network -- *", "*own name and subnet*"])
    assert "_nsbox" not in result.stdout.str()


# ---- the skip path, for real ----------------------------------------------------------------

SKIPPY = """
def test_pod(nsbox_pod):
    raise AssertionError("not reached")

def test_network(nsbox_network):
    raise AssertionError("not reached")

def test_factory(nsbox_pod_factory):
    raise AssertionError("not reached")

def test_plain():
    pass
"""


@pytest.fixture
def readable_dir():
    d = Path(tempfile.mkdtemp(prefix="nsbox-plugin-"))
    os.chmod(d, 0o755)
    (d / "test_skippy.py").write_text(SKIPPY)
    os.chmod(d / "test_skippy.py", 0o644)
    yield d
    shutil.rmtree(d)


@pytest.mark.parametrize("how", ["nobody", "root without CAP_SYS_ADMIN"])
def test_skips_without_privileges(readable_dir, how):
    if how == "nobody":
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
        reason = "*nsbox cannot make pods here (running as uid 65534)*CAP_SYS_ADMIN*"
    else:
        prefix = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
        reason = "*nsbox cannot make pods here (running as root)*CAP_SYS_ADMIN*"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "test_skippy.py"],
                       cwd=readable_dir, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "1 passed, 3 skipped" in lines[-1], r.stdout
    skips = [line for line in lines if line.startswith("SKIPPED")]
    assert len(skips) == 3 and all(fnmatch.fnmatch(line, "SKIPPED [[]1[]] test_skippy.py:*: " + reason) for line in skips), r.stdout


# ---- the example ------------------------------------------------------------------------------


def test_example_client_server(pytester):
    pytester.makepyfile(test_client_server=EXAMPLE.read_text())
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "-v")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 2 + ("skipped" not in outcomes), result.stdout.str()
    if "skipped" in outcomes:  # a kernel without sch_netem: delay cannot be emulated
        result.stdout.fnmatch_lines(["*test_delay SKIPPED*", "SKIPPED*no netem*"])
    assert_nothing_left()
