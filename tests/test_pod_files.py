"""A pod's own /etc/hostname, /etc/hosts and /etc/resolv.conf (the host's
never change), names of the pods on a bridge, and namespaced sysctls."""
import hashlib
import os

import pytest

import nsbox
from nsbox.net.rundir import run_dir

KINDS = ("net", "ipc", "uts", "pid", "mnt")
HOST_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")


def digest():
    out = {}
    for path in HOST_FILES:
        try:
            with open(path, "rb") as f:
                out[path] = (hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_ino)
        except FileNotFoundError:
            out[path] = None
    return out


def cat(pod, path):
    return pod.run(["cat", path], capture_output=True, text=True, check=True).stdout


def test_pod_files_say_what_was_asked_and_the_hosts_files_do_not_change():
    before = digest()
    dns = nsbox.DNS(nameservers=["10.201.0.1"], search=["pod.test"], options=["ndots:2"])
    with nsbox.Pod(kinds=KINDS, hostname="web-0", hosts={"db.test": "10.201.0.9", "cache.test": "10.201.0.9"},
                   dns=dns, network=nsbox.Veth("10.201.1.2/24", "10.201.1.1/24")) as pod:
        assert cat(pod, "/etc/hostname") == "web-0\n"
        hosts = cat(pod, "/etc/hosts")
        lines = [line.split() for line in hosts.splitlines() if line and not line.startswith("#")]
        assert ["127.0.0.1", "localhost"] in lines
        assert ["10.201.1.2", "web-0"] in lines
        assert any(line[0] == "10.201.0.9" and {"db.test", "cache.test"} <= set(line[1:]) for line in lines)
        resolv = cat(pod, "/etc/resolv.conf")
        assert "nameserver 10.201.0.1\n" in resolv and "search pod.test\n" in resolv
        assert "options ndots:2\n" in resolv
        r = pod.run(["getent", "ahostsv4", "db.test"], capture_output=True, text=True)
        assert r.stdout.split()[0] == "10.201.0.9"
        # A member that does not join mnt sees the host's files.
        r = pod.run(["cat", "/etc/hostname"], kinds=("net", "uts"), capture_output=True, text=True)
        assert r.stdout == open("/etc/hostname").read()
        assert digest() == before
    assert digest() == before


def test_default_resolv_conf_is_the_hosts_without_loopback_servers(monkeypatch, tmp_path):
    from nsbox import podfiles

    fake = tmp_path / "resolv.conf"
    fake.write_text("nameserver 127.0.0.53\nnameserver 10.202.0.53\nsearch example.test\n")
    monkeypatch.setattr(podfiles, "HOST_RESOLV_CONF", fake)
    with nsbox.Pod(kinds=KINDS) as pod:
        resolv = cat(pod, "/etc/resolv.conf")
    assert "nameserver 127.0.0.53" not in resolv
    assert "nameserver 10.202.0.53" in resolv and "search example.test" in resolv


def test_a_pod_without_hostname_gets_the_hosts_name_in_its_files():
    with nsbox.Pod(kinds=KINDS) as pod:
        name = os.uname().nodename
        assert cat(pod, "/etc/hostname") == name + "\n"
        assert name in cat(pod, "/etc/hosts")


def resolves(pod, name):
    r = pod.run(["getent", "ahostsv4", name], capture_output=True, text=True)
    return r.stdout.split()[0] if r.returncode == 0 else None


def test_pods_on_a_bridge_resolve_and_ping_each_other_by_name(bridge):
    # (No name server: a name that is not in /etc/hosts fails at once instead
    # of waiting for the host's server, which the pods cannot reach.)
    a = nsbox.Pod(kinds=KINDS, hostname="nsbt-a", network=bridge, dns=nsbox.DNS()).start()
    b = nsbox.Pod(kinds=KINDS, hostname="nsbt-b", network=bridge, dns=nsbox.DNS()).start()
    try:
        assert resolves(a, "nsbt-b") == str(b.address.ip)
        assert resolves(b, "nsbt-a") == str(a.address.ip)
        # One started later (without mnt: no files of its own, a name all the same).
        c = nsbox.Pod(hostname="nsbt-c", network=bridge).start()
        try:
            for pod in (a, b):
                assert resolves(pod, "nsbt-c") == str(c.address.ip)
                r = pod.run(["ping", "-c", "1", "-W", "2", "nsbt-c"], capture_output=True, text=True)
                assert r.returncode == 0, r.stdout + r.stderr
            r = a.run(["ping", "-c", "1", "-W", "2", "nsbt-b"], capture_output=True, text=True)
            assert r.returncode == 0, r.stdout + r.stderr
        finally:
            c.stop()
        # A stopped pod disappears.
        assert resolves(a, "nsbt-c") is None and resolves(b, "nsbt-c") is None
        assert resolves(a, "nsbt-b") == str(b.address.ip)
    finally:
        a.stop()
        b.stop()
    assert not (run_dir() / "names").exists()


def test_sysctls_are_visible_inside_only():
    path = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
    host = open(path).read()
    with nsbox.Pod(kinds=("net", "ipc", "uts", "pid"), sysctls={"net.ipv4.ip_unprivileged_port_start": "0",
                                                                  "kernel.shmmni": 1024}) as pod:
        assert cat(pod, path) == "0\n"
        assert cat(pod, "/proc/sys/kernel/shmmni") == "1024\n"
        assert open(path).read() == host


@pytest.mark.parametrize("sysctls, kinds, match", [
    ({"kernel.pid_max": "100000"}, ("net", "ipc", "uts", "pid"), "kernel.pid_max"),
    ({"vm.swappiness": "10"}, ("net", "ipc", "uts", "pid"), "vm.swappiness"),
    ({"net.ipv4.no_such_thing": "1"}, ("net", "ipc", "uts", "pid"), "net.ipv4.no_such_thing"),
    ({"net.ipv4.ip_forward": "1"}, ("ipc", "uts", "pid"), "net.ipv4.ip_forward"),
    ({"kernel.shmmni": "1"}, ("net", "uts", "pid"), "kernel.shmmni"),
])
def test_bad_sysctls_are_config_errors_before_anything_is_made(sysctls, kinds, match):
    with pytest.raises(nsbox.ConfigError, match=match):
        nsbox.Pod(kinds=kinds, sysctls=sysctls)


def test_a_value_the_kernel_refuses_rolls_the_start_back():
    pod = nsbox.Pod(kinds=KINDS, volumes={"/d": nsbox.EmptyDir()},
                    sysctls={"net.ipv4.ip_local_port_range": "not numbers"})
    with pytest.raises(nsbox.ConfigError, match="ip_local_port_range"):
        pod.start()
    assert pod.status().state == "stopped"
    assert not (run_dir() / "fs").exists() or not list((run_dir() / "fs").iterdir())


@pytest.mark.parametrize("kwargs, match", [
    ({"hosts": {"db.test": "10.201.0.9"}}, "'mnt' kind"),
    ({"dns": nsbox.DNS(nameservers=["10.201.0.1"])}, "'mnt' kind"),
    ({"kinds": KINDS, "hosts": {"db test": "10.201.0.9"}}, "db test"),
    ({"kinds": KINDS, "hosts": {"db.test": "not-an-address"}}, "not-an-address"),
    ({"kinds": KINDS, "hostname": "web#0"}, "web#0"),
])
def test_bad_pod_file_arguments_are_config_errors(kwargs, match):
    with pytest.raises(nsbox.ConfigError, match=match):
        nsbox.Pod(**kwargs)


def test_spec_round_trip_with_files_and_sysctls():
    spec = nsbox.PodSpec.from_args(KINDS, hostname="h", hosts={"db.test": "10.201.0.9"},
                                   dns=nsbox.DNS(nameservers=["10.201.0.1"], options=["ndots:2"]),
                                   sysctls={"net.ipv4.ip_forward": 1})
    assert nsbox.PodSpec.from_json(spec.to_json()) == spec
    assert spec.sysctls == (("net.ipv4.ip_forward", "1"),)


def test_a_pod_of_another_process_is_resolvable_and_goes_when_it_stops(bridge):
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys, nsbox
        br = nsbox.Bridge({bridge.name!r}, subnet={str(bridge.subnet)!r})
        with nsbox.Pod(hostname="nsbt-other", network=br) as pod:
            print(pod.address.ip, flush=True)
            sys.stdin.readline()
    """)
    with nsbox.Pod(kinds=KINDS, hostname="nsbt-here", network=bridge, dns=nsbox.DNS()) as here:
        other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, cwd="/")
        try:
            address = other.stdout.readline().strip()
            assert address and resolves(here, "nsbt-other") == address
            other.stdin.write("\n")
            other.stdin.flush()
            assert other.wait(timeout=10) == 0
        finally:
            if other.poll() is None:
                other.kill()
                other.wait()
        assert resolves(here, "nsbt-other") is None
