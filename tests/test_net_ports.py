"""Port publishing with nftables: host -> pod through the mapping, rules
tagged and removed, ports reserved across pods."""
import errno
import os
import subprocess
import sys
import textwrap
import urllib.request

import pytest

import nsbox
import nsbox.net.ports
from helpers import run_python

SERVER = textwrap.dedent(
    """
    import http.server, socketserver, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers()
            self.wfile.write(b"pod saw " + self.client_address[0].encode())
        def log_message(self, *a):
            pass
    socketserver.TCPServer.allow_reuse_address = True
    srv = socketserver.TCPServer(("0.0.0.0", int(sys.argv[1])), H)
    print("ready", flush=True)
    srv.serve_forever()
    """
)


def nsbox_rules() -> str:
    """Every ip-family table (nsbox's: the shared ``nsbox`` and each
    process's kernel-owned ``nsbox-PID``)."""
    r = subprocess.run(["nft", "list", "ruleset", "ip"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else ""


def serve(pod, port):
    p = pod.spawn([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    return p


def get(host, port):
    return urllib.request.urlopen(f"http://{host}:{port}/", timeout=5).read().decode()


def test_published_port_reachable_from_the_host(bridge):
    with nsbox.Pod(network=bridge, ports={18081: 80}) as pod:
        server = serve(pod, 80)
        assert get("127.0.0.1", 18081) == f"pod saw {bridge.gateway.ip}"
        assert get(str(bridge.gateway.ip), 18081) == f"pod saw {bridge.gateway.ip}"
        assert nsbox_rules().count(f"dnat to {pod.address.ip}:80") == 2
        server.kill()
        server.wait()
        server.stdout.close()
    nsbox.net.settle()  # (the host side goes in the background)
    assert "nsbox:" not in nsbox_rules()


def test_veth_pod_ports_and_udp():
    net = nsbox.Veth(address="10.226.0.2/24", host_address="10.226.0.1/24")
    with nsbox.Pod(network=net, ports={18082: 8080, "18083/udp": 53}) as pod:
        server = serve(pod, 8080)
        assert get("127.0.0.1", 18082) == "pod saw 10.226.0.1"
        assert "udp dport 18083 dnat to 10.226.0.2:53" in nsbox_rules()
        server.kill()
        server.wait()
        server.stdout.close()
    nsbox.net.settle()  # (the host side goes in the background)
    assert "nsbox:" not in nsbox_rules()


def test_port_published_twice_is_refused(bridge):
    with nsbox.Pod(network=bridge, ports={18084: 80}):
        with pytest.raises(nsbox.NetworkError, match="already published") as e:
            nsbox.Pod(network=bridge, ports={18084: 81}).start()
        assert e.value.errno == errno.EADDRINUSE
        nsbox.net.settle()  # (the host side goes in the background)
        assert len(bridge.leases()) == 1  # the failed pod's lease went back


def test_port_used_by_a_host_process_is_refused(bridge):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 18085))
        s.listen()
        with pytest.raises(nsbox.NetworkError, match="in use by a host process"):
            nsbox.Pod(network=bridge, ports={18085: 80}).start()
    nsbox.net.settle()  # (the host side goes in the background)
    assert "nsbox:" not in nsbox_rules()


def test_rules_of_a_killed_creator_vanish_with_it(bridge):
    # The rules are in the creator's kernel-owned table: the kernel deletes
    # them when its netlink socket closes, before anyone sweeps.
    script = textwrap.dedent(
        """
        import os, signal, sys, subprocess, nsbox
        pod = nsbox.Pod(network=nsbox.Bridge(sys.argv[1], subnet=sys.argv[2]), ports={18086: 80}).start()
        print(subprocess.run(["nft", "list", "ruleset", "ip"], capture_output=True, text=True).stdout.count("dport 18086"),
              flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    r = run_python(script, bridge.name, str(bridge.subnet))
    assert r.stdout.split() == ["2"], r.stderr  # it was published (output + prerouting) ...
    assert "nsbox" not in nsbox_rules()  # ... and nothing is left: no table, no rule
    with nsbox.Pod(network=bridge, ports={18086: 80}) as pod:  # the port is free again (its reservation is swept)
        assert nsbox_rules().count("dport 18086") == 2
        assert f"dnat to {pod.address.ip}:80" in nsbox_rules()
    nsbox.net.settle()  # (the host side goes in the background)
    assert "nsbox" not in nsbox_rules()


def test_shared_table_rules_of_a_killed_creator_are_swept(bridge):
    # kernel_owned=False (pods that outlive their creator): the shared table,
    # where a dead holder's rules stay until the next sweep.
    script = textwrap.dedent(
        """
        import os, signal, sys, nsbox
        from nsbox.net import PodNetwork
        pod = nsbox.Pod(network=nsbox.Bridge(sys.argv[1], subnet=sys.argv[2]))
        real = PodNetwork.publish
        PodNetwork.publish = lambda self, owner, ports, **k: real(self, owner, ports, kernel_owned=False)
        pod = nsbox.Pod(network=nsbox.Bridge(sys.argv[1], subnet=sys.argv[2]), ports={18088: 80}).start()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    run_python(script, bridge.name, str(bridge.subnet))
    assert "table ip nsbox {" in nsbox_rules() and "dport 18088" in nsbox_rules()  # left behind by the SIGKILL
    nsbox.net.ports.sweep()
    assert "nsbox" not in nsbox_rules()  # swept, and the empty table dropped


def test_holder_sigkilled_rules_and_lease_removed_by_stop(bridge):
    import os
    import signal

    pod = nsbox.Pod(network=bridge, ports={18087: 80}).start()
    os.kill(pod.pid, signal.SIGKILL)
    pod.stop()
    nsbox.net.settle()  # (the host side goes in the background)
    assert "nsbox:" not in nsbox_rules()
    assert bridge.leases() == {} and bridge.ports() == []


@pytest.mark.parametrize(
    "ports, match",
    [
        ([8080], "mapping"),
        ({0: 80}, "host port"),
        ({8080: 70000}, "pod port"),
        ({"8080/sctp": 80}, "tcp or udp"),
        ({"x": 80}, "host port"),
        ({8080: 80, "8080/tcp": 81}, "twice"),
    ],
)
def test_bad_ports(bridge, ports, match):
    with pytest.raises(nsbox.ConfigError, match=match):
        nsbox.Pod(network=bridge, ports=ports)


def test_ports_need_a_network():
    with pytest.raises(nsbox.ConfigError, match="needs a network"):
        nsbox.Pod(ports={8080: 80})


SPOOF = textwrap.dedent(
    """
    import socket, subprocess, sys
    gw = sys.argv[1]
    # root in the pod: route 127.0.0.1 out of eth0 towards the host
    subprocess.run(["ip", "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local"], check=True)
    subprocess.run(["ip", "route", "del", "local", "127.0.0.1", "dev", "lo", "table", "local"], check=True)
    subprocess.run(["ip", "route", "add", "127.0.0.1/32", "via", gw, "dev", "eth0"], check=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(5):
        s.sendto(b"from the pod", ("127.0.0.1", 18095))
    """
)


def test_published_pods_cannot_reach_host_loopback_services(bridge):
    import socket as so

    with so.socket(so.AF_INET, so.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 18095))
        listener.settimeout(0.5)
        with nsbox.Pod(network=bridge, ports={18096: 80}) as pod:
            with open(f"/proc/sys/net/ipv4/conf/{bridge.name}/route_localnet") as f:
                assert f.read().strip() == "1"
            pod.run([sys.executable, "-c", SPOOF, str(bridge.gateway.ip)], check=True)
            with pytest.raises(so.timeout):
                listener.recvfrom(100)
        nsbox.net.settle()  # (the host side goes in the background)
        with open(f"/proc/sys/net/ipv4/conf/{bridge.name}/route_localnet") as f:
            assert f.read().strip() == "0"  # back off once no published pod uses the bridge


def test_stale_handles_never_delete_another_pods_rules(bridge):
    import os
    import signal

    a = nsbox.Pod(network=bridge, ports={18097: 80}).start()
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    nsbox.net.ports.sweep()  # a's rules are gone; handles get reused
    with nsbox.Pod(network=bridge, ports={18098: 80}) as d:
        a.stop()  # must not touch d's rules
        assert f"dnat to {d.address.ip}:80" in nsbox_rules()
    nsbox.net.settle()  # (the host side goes in the background)
    assert "nsbox:" not in nsbox_rules()


def test_rules_are_changed_in_process_and_the_socket_is_not_inherited(bridge):
    import fcntl

    from nsbox.net import nft

    if not nft.available():
        pytest.skip("libnftables is not installed")
    with nsbox.Pod(network=bridge, ports={18113: 80}) as pod:
        assert f"table ip nsbox-{os.getpid()} {{" in nsbox_rules()
        assert "flags owner" in nsbox_rules()
        fds = nft.context().socket_fds
        assert fds and all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in fds)
        assert f"dnat to {pod.address.ip}:80" in nsbox_rules()
    nsbox.net.settle()
    assert "nsbox" not in nsbox_rules()  # the empty table goes too


def test_without_libnftables_the_nft_command_and_the_shared_table_are_used(bridge, monkeypatch):
    from nsbox.net import nft, ports

    monkeypatch.setattr(nft, "_library", lambda: None)
    monkeypatch.setattr(ports, "_owner_ok", None)
    with nsbox.Pod(network=bridge, ports={18114: 80}) as pod:
        assert "table ip nsbox {" in nsbox_rules()
        assert f"dnat to {pod.address.ip}:80" in nsbox_rules()
    nsbox.net.settle()
    assert "nsbox" not in nsbox_rules()
