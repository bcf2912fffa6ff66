"""CNI networks driven through the real plugins (Debian's
containernetworking-plugins, /usr/lib/cni).

The plugins change the network namespace they run in (a bridge, iptables
rules): every test runs with its thread in a private "node" network
namespace (the ``cni_node`` fixture of conftest), so nothing here touches
the real host's network, wherever the suite runs.
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import nsbox
from nsbox.net import network_from_dict
from nsbox.net.cni import CNIAttachment
from nsbox.net.rundir import run_dir
from helpers import bridge_ports, link_exists, wait_until

# Every test runs in a private "node" network namespace (see conftest.cni_node).
pytestmark = pytest.mark.usefixtures("cni_node")

PLUGINS = "/usr/lib/cni"
if not os.path.exists(os.path.join(PLUGINS, "bridge")):
    pytest.skip("containernetworking-plugins is not installed (make sysdeps)", allow_module_level=True)

_numbers = itertools.count()


class Net:
    """A conflist of the test's own: its bridge, subnet and host-local dataDir."""

    def __init__(self, tmp_path, n: int):
        self.n = n
        self.bridge = f"cnit{n}"
        self.subnet = ipaddress.ip_network(f"10.231.{n}.0/24")
        self.gateway = next(self.subnet.hosts())
        self.data_dir = tmp_path / "ipam"
        self.name = f"cnitest{n}"

    def ipam(self) -> dict:
        return {"type": "host-local", "dataDir": str(self.data_dir),
                "ranges": [[{"subnet": str(self.subnet)}]], "routes": [{"dst": "0.0.0.0/0"}]}

    def bridge_conf(self, portmap: bool = False, **extra) -> dict:
        plugins = [{"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True,
                    "ipam": self.ipam(), **extra}]
        if portmap:
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
        return {"cniVersion": "1.0.0", "name": self.name, "plugins": plugins}

    def leases(self) -> list[str]:
        """host-local's lease files (one per leased address)."""
        d = self.data_dir / self.name
        if not d.exists():
            return []
        return sorted(f for f in os.listdir(d) if f not in ("lock",) and not f.startswith("last_reserved_ip"))


def iptables_rules() -> str:
    out = ""
    for tool in ("iptables-save", "ip6tables-save"):
        r = subprocess.run([tool], capture_output=True, text=True)
        out += r.stdout
    return out


def cni_rules(ids) -> list[str]:
    """iptables lines naming one of the container ids, or a per-container chain."""
    rules = iptables_rules().splitlines()
    return [line for line in rules if any(i in line for i in ids)
            or line.startswith(":CNI-DN-") or (line.startswith(":CNI-") and "HOSTPORT" not in line)]


@pytest.fixture
def net(tmp_path):
    n = Net(tmp_path, next(_numbers) % 250)
    yield n
    nsbox.net.settle()
    subprocess.run(["ip", "link", "del", n.bridge], capture_output=True)
    assert n.leases() == [], "host-local leases left"
    assert cni_rules(["nsbox-"]) == [], "iptables rules of CNI attachments left"


def state_dirs() -> list[str]:
    try:
        return sorted(os.listdir(run_dir() / "cni"))
    except FileNotFoundError:
        return []


# ---- configuration ----------------------------------------------------------------------


def test_config_is_validated_when_made(tmp_path):
    good = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "loopback"}]}
    bad = {
        "no plugins": {"cniVersion": "1.0.0", "name": "n", "plugins": []},
        "no 'cniVersion'": {"name": "n", "plugins": [{"type": "loopback"}]},
        "unsupported cniVersion": {"cniVersion": "2.0.0", "name": "n", "plugins": [{"type": "loopback"}]},
        "needs a 'name'": {"cniVersion": "1.0.0", "plugins": [{"type": "loopback"}]},
        "needs a 'type'": {"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "x"}]},
        "'type'": {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../bin/sh"}]},
    }
    for what, conf in bad.items():
        with pytest.raises(nsbox.ConfigError, match=what):
            nsbox.CNI(conf)
    with pytest.raises(nsbox.ConfigError, match="not valid JSON"):
        nsbox.CNI('{"cniVersion": ')
    with pytest.raises(nsbox.ConfigError, match="cannot read"):
        nsbox.CNI(str(tmp_path / "missing.conflist"))
    # JSON text, a .conflist path and a single plugin's .conf are the same network
    path = tmp_path / "n.conflist"
    path.write_text(json.dumps(good))
    single = tmp_path / "n.conf"
    single.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "loopback"}))
    assert nsbox.CNI(good) == nsbox.CNI(json.dumps(good)) == nsbox.CNI(path) == nsbox.CNI(str(single))
    # cniVersions: the newest nsbox executes
    assert nsbox.CNI({**good, "cniVersion": "9.9.9", "cniVersions": ["0.4.0", "1.0.0", "9.9.9"]}
                     ).conflist["cniVersion"] == "1.0.0"
    net = nsbox.CNI(good, ifname="lo", path=["/usr/lib/cni"], args={"FOO": "bar"})
    assert network_from_dict(net.to_dict()) == net
    assert nsbox.PodSpec.from_dict(nsbox.PodSpec(networks=(net,)).to_dict()).networks == (net,)
    # ports= need a plugin with the portMappings capability
    with pytest.raises(nsbox.ConfigError, match="portMappings"):
        nsbox.Pod(network=nsbox.CNI(good), ports={8080: 80})
    nsbox.Pod(network=nsbox.CNI({**good, "plugins": [{"type": "portmap", "capabilities": {"portMappings": True}}]}),
              ports={8080: 80})
    with pytest.raises(nsbox.ConfigError, match="args"):
        nsbox.CNI(good, args={"A": "b;c"})


def test_missing_plugin_is_an_error_before_anything_is_made(net):
    conf = net.bridge_conf()
    conf["plugins"].append({"type": "no-such-plugin"})
    with pytest.raises(nsbox.NetworkError, match="no-such-plugin.*not found") as e:
        nsbox.Pod(network=nsbox.CNI(conf)).start()
    assert e.value.errno == 2
    assert state_dirs() == [] and net.leases() == []


# ---- the real plugins ----------------------------------------------------------------------


def test_bridge_host_local_two_pods_ping_and_talk_tcp(net):
    cni = nsbox.CNI(net.bridge_conf())
    with nsbox.Pod(network=cni) as a, nsbox.Pod(network=cni) as b:
        for pod in (a, b):
            assert pod.address in [ipaddress.ip_interface(f"{h}/24") for h in net.subnet.hosts()]
            assert pod.address.ip != net.gateway
            res = pod.cni_result
            assert res["cniVersion"] == "1.0.0"
            assert [i["name"] for i in res["interfaces"]][0] == net.bridge
            assert res["interfaces"][-1]["name"] == "eth0" and res["interfaces"][-1]["sandbox"]
            assert ipaddress.ip_interface(res["ips"][0]["address"]) == pod.address
            assert pod.host_ifname in bridge_ports(net.bridge)
        assert a.address != b.address
        assert len(net.leases()) == 2
        r = a.run(["ping", "-c1", "-W2", str(b.address.ip)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        server = b.spawn([sys.executable, "-c", textwrap.dedent("""
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", 7000)); s.listen(); print("ready", flush=True)
            c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()
            """)], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline() == "ready\n"
        r = a.run([sys.executable, "-c", textwrap.dedent(f"""
            import socket
            c = socket.create_connection(("{b.address.ip}", 7000), timeout=5)
            c.sendall(b"hello"); print(c.recv(100).decode())
            """)], capture_output=True, text=True, timeout=10)
        assert r.stdout.strip() == "HELLO", r.stderr
        server.wait(5)
        server.stdout.close()
        ids = [a._net.primary.containerid, b._net.primary.containerid]
        assert sorted(state_dirs()) == sorted(ids)
        assert cni_rules(ids)  # ipMasq's rules, tagged with the container ids
        veths = [a.host_ifname, b.host_ifname]
    nsbox.net.settle()  # DEL runs in the background teardown
    assert bridge_ports(net.bridge) == []
    assert not any(link_exists(v) for v in veths)
    assert net.leases() == []
    assert cni_rules(ids) == []
    assert state_dirs() == []


def test_ptp(net):
    conf = {"cniVersion": "1.0.0", "name": net.name,
            "plugins": [{"type": "ptp", "ipMasq": False, "ipam": net.ipam()}]}
    with nsbox.Pod(network=nsbox.CNI(conf)) as pod:
        res = pod.cni_result
        assert len(res["interfaces"]) == 2 and "sandbox" not in res["interfaces"][0]
        assert pod.host_ifname == res["interfaces"][0]["name"]
        assert pod.address.network == net.subnet
        host_end = link_exists(pod.host_ifname)
        # ptp gives the host end the gateway address: the pod reaches the host
        r = pod.run(["ping", "-c1", "-W2", str(res["ips"][0]["gateway"])], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert host_end
        veth = pod.host_ifname
    nsbox.net.settle()
    assert not link_exists(veth)


def test_loopback_network_next_to_a_bridge(net):
    loopback = nsbox.CNI({"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]}, ifname="lo")
    with nsbox.Pod(network=[nsbox.CNI(net.bridge_conf()), loopback]) as pod:
        assert pod.address.network == net.subnet  # the first network is primary
        assert pod.addresses["lo"] is None  # (127.0.0.1 is not the pod's address)
        lo = pod._net.find("lo")
        assert isinstance(lo, CNIAttachment) and lo.result["interfaces"][0]["name"] == "lo"
        r = pod.run(["ping", "-c1", "-W2", "127.0.0.1"], capture_output=True)
        assert r.returncode == 0
        assert len(state_dirs()) == 2
    nsbox.net.settle()
    assert state_dirs() == []


def test_chained_portmap_publishes_the_pods_ports(net):
    cni = nsbox.CNI(net.bridge_conf(portmap=True))
    port = 18000 + net.n
    with nsbox.Pod(network=cni, ports={port: 80}) as pod:
        cid = pod._net.primary.containerid
        dnat = [line for line in iptables_rules().splitlines() if cid in line and "dnat" in line]
        assert dnat and f"--dports {port}" in dnat[0]
        server = pod.spawn([sys.executable, "-c", textwrap.dedent("""
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", 80)); s.listen(); print("ready", flush=True)
            c, _ = s.accept(); c.sendall(b"from the pod"); c.close()
            """)], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline() == "ready\n"
        # from the node, to the node's address on the bridge
        with socket.create_connection((str(net.gateway), port), timeout=5) as c:
            assert c.recv(100) == b"from the pod"
        server.wait(5)
        server.stdout.close()
        pod.cni_check()  # portmap's CHECK included
    nsbox.net.settle()
    assert cni_rules([cid]) == []


def test_cni_check_detects_a_removed_address(net):
    with nsbox.Pod(network=nsbox.CNI(net.bridge_conf(portmap=True))) as pod:
        pod.cni_check()
        pod.run(["ip", "addr", "del", str(pod.address), "dev", "eth0"], check=True)
        with pytest.raises(nsbox.CNIError) as e:
            pod.cni_check()
        assert e.value.plugin == "bridge" and e.value.command == "CHECK"
        assert str(pod.address.ip) in e.value.msg
        # Put it back: the bridge plugin's DEL finds its ipMasq rules through the
        # addresses on the pod's interface (plugins 1.1.1), so without it they would leak.
        pod.run(["ip", "addr", "add", str(pod.address), "dev", "eth0"], check=True)
        pod.run(["ip", "route", "add", "default", "via", str(net.gateway)], check=True)  # (went with it)
        pod.cni_check()
    with pytest.raises(nsbox.NotRunningError):
        pod.cni_check()
    with pytest.raises(nsbox.ConfigError, match="no CNI network"):
        with nsbox.Pod() as plain:
            plain.cni_check()


def test_disable_check(net):
    conf = {**net.bridge_conf(), "disableCheck": True}
    with nsbox.Pod(network=nsbox.CNI(conf)) as pod:
        pod.run(["ip", "link", "set", "eth0", "mtu", "1280"], check=True)
        pod.cni_check()  # not run: the conflist says so


def test_shape_is_refused(net):
    with nsbox.Pod(network=nsbox.CNI(net.bridge_conf())) as pod:
        with pytest.raises(nsbox.ConfigError, match="bandwidth"):
            pod.shape(delay="10ms")


# ---- a plugin of the test's own: records its calls, fails on demand ------------------------

RECORDER = """#!{python}
import json, os, sys
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
with open({log!r}, "a") as f:
    f.write(json.dumps({{"cmd": cmd, "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}},
                        "conf": conf}}) + "\\n")
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": conf["cniVersion"], "supportedVersions": ["0.4.0", "1.0.0"]}}))
elif cmd == "ADD":
    if conf.get("hang"):
        with open({log!r} + ".hanging", "w") as f:
            f.write(str(os.getpid()))
        import time
        time.sleep(60)
    if conf.get("fail"):
        print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 7, "msg": "refusing on purpose",
                          "details": "the test asked"}}))
        sys.exit(1)
    print(json.dumps(conf.get("prevResult") or {{"cniVersion": conf["cniVersion"]}}))
"""


@pytest.fixture
def recorder(tmp_path):
    d = tmp_path / "plugins"
    d.mkdir()
    log = tmp_path / "calls.jsonl"
    plugin = d / "recorder"
    plugin.write_text(RECORDER.format(python=sys.executable, log=str(log)))
    plugin.chmod(0o755)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return [str(d), PLUGINS], calls


def test_plugin_protocol_env_stdin_prev_result_runtime_config(net, recorder):
    path, calls = recorder
    conf = net.bridge_conf()
    conf["plugins"].append({"type": "recorder", "capabilities": {"portMappings": True, "bandwidth": True},
                            "custom": {"kept": 1}})
    with nsbox.Pod(network=nsbox.CNI(conf, path=path, args={"EXTRA": "1"}), ports={"9053/udp": 53},
                   name="web-0") as pod:
        cid = pod._net.primary.containerid
        pin = pod._net.primary.netns
        # the pin is a bind mount of the pod's network namespace
        assert os.stat(pin).st_ino == pod.inode("net")
        pod.cni_check()
        address, result = pod.address, pod.cni_result
    assert pod.address is None and pod.cni_result is None  # (stopped)
    nsbox.net.settle()
    seen = calls()
    assert [c["cmd"] for c in seen] == ["VERSION", "ADD", "CHECK", "DEL"]
    add = seen[1]
    env = add["env"]
    assert env["CNI_CONTAINERID"] == cid and env["CNI_IFNAME"] == "eth0"
    assert env["CNI_NETNS"] == pin and not env["CNI_NETNS"].startswith("/proc")
    assert env["CNI_PATH"] == ":".join(path)
    args = dict(kv.split("=", 1) for kv in env["CNI_ARGS"].split(";"))
    assert args["K8S_POD_NAME"] == "web-0" and args["IgnoreUnknown"] == "1" and args["EXTRA"] == "1"
    c = add["conf"]
    assert c["name"] == net.name and c["cniVersion"] == "1.0.0" and c["custom"] == {"kept": 1}
    assert "capabilities" not in c
    # only the capabilities the runtime has: portMappings, from the pod's ports=
    assert c["runtimeConfig"] == {"portMappings": [{"hostPort": 9053, "containerPort": 53, "protocol": "udp"}]}
    assert c["prevResult"]["ips"][0]["address"] == str(address)  # the bridge plugin's result
    assert result == c["prevResult"]  # (the recorder passes it on: the final result)
    for later in seen[2:]:  # CHECK and DEL get the final result of ADD
        assert later["conf"]["prevResult"] == result
        assert later["env"]["CNI_CONTAINERID"] == cid and later["env"]["CNI_NETNS"] == pin


def test_add_failing_halfway_deletes_every_plugin_in_reverse(net, recorder):
    path, calls = recorder
    conf = net.bridge_conf()
    conf["plugins"].append({"type": "recorder", "fail": True})
    with pytest.raises(nsbox.CNIError) as e:
        nsbox.Pod(network=nsbox.CNI(conf, path=path)).start()
    err = e.value
    assert isinstance(err, nsbox.NetworkError)
    assert (err.plugin, err.command, err.code, err.msg, err.details) == (
        "recorder", "ADD", 7, "refusing on purpose", "the test asked")
    assert "recorder" in str(err) and "refusing on purpose" in str(err)
    assert [c["cmd"] for c in calls()] == ["VERSION", "ADD", "DEL"]
    assert "prevResult" not in calls()[-1]["conf"]  # (no result: ADD failed)
    # the bridge plugin's DEL ran too: no lease, no veth, no state, no rule
    assert net.leases() == []
    assert bridge_ports(net.bridge) == []
    assert state_dirs() == []


def test_del_after_the_holder_died_and_idempotent(net):
    pod = nsbox.Pod(network=nsbox.CNI(net.bridge_conf(portmap=True)), ports={18500 + net.n: 80}).start()
    att = pod._net.primary
    record = att.to_record()
    veth = pod.host_ifname
    os.kill(pod.pid, signal.SIGKILL)
    pod.wait(timeout=5)  # (returns once the exit was handled: the teardown is under way)
    nsbox.net.settle()  # DEL ran through the pin
    assert not link_exists(veth)
    assert net.leases() == [] and state_dirs() == []
    assert cni_rules([att.containerid]) == []
    # DEL again, from the record, in this process: nothing left to do
    again = nsbox.net.Attachment.from_record(record)
    assert isinstance(again, CNIAttachment)
    again.detach()
    again.detach()
    pod.stop()


def test_persistent_pod_record_replays_del(net):
    cni = nsbox.CNI(net.bridge_conf())
    pod = nsbox.Pod(name="cnipersist", persist=True, network=cni).start()
    try:
        rec = json.loads((run_dir() / "pods" / "cnipersist" / "record.json").read_text())
        assert rec["network"][0]["kind"] == "cni" and rec["network"][0]["result"] == pod.cni_result
        same = nsbox.Pod.attach("cnipersist")
        assert same.address == pod.address and same.cni_result == pod.cni_result
        same.cni_check()
        same.stop()  # DEL from the record
        nsbox.net.settle()
        assert net.leases() == [] and state_dirs() == []
    finally:
        pod.stop()
        pod.remove()


CREATOR = """
import json, sys, time
import nsbox
pod = nsbox.Pod(network=nsbox.CNI(json.loads(sys.argv[1])), ports={{{port}: 80}}).start()
att = pod._net.primary
print(json.dumps({{"pid": pod.pid, "id": att.containerid, "veth": pod.host_ifname}}), flush=True)
time.sleep(60)
"""


def test_creator_killed_after_add_gc_runs_del(net):
    port = 18600 + net.n
    proc = subprocess.Popen([sys.executable, "-c", CREATOR.format(port=port),
                             json.dumps(net.bridge_conf(portmap=True))], stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        info = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    # the holder follows its creator; the pin keeps the namespace and the plugins' veth
    assert wait_until(lambda: not os.path.exists(f"/proc/{info['pid']}"), timeout=5)
    assert state_dirs() == [info["id"]]
    assert len(net.leases()) == 1 and link_exists(info['veth'])
    assert cni_rules([info["id"]])  # portmap's and ipMasq's rules: in iptables, not the creator's
    removed = nsbox.gc()
    assert any(info["id"] in line and "DEL" in line for line in removed), removed
    assert state_dirs() == [] and net.leases() == []
    assert not link_exists(info['veth'])
    assert cni_rules([info["id"]]) == []
    assert not any(info["id"] in line for line in nsbox.gc())  # once


def test_gc_leaves_running_pods_alone(net):
    with nsbox.Pod(network=nsbox.CNI(net.bridge_conf())) as pod:
        assert nsbox.gc() == [] or all("CNI" not in line for line in nsbox.gc())
        assert len(state_dirs()) == 1 and pod.cni_result is not None
        pod.cni_check()


def test_add_and_del_time(net, bridge):
    """ADD/DEL per pod with bridge + host-local, next to nsbox.Bridge (printed; -s shows it)."""
    cni = nsbox.CNI(net.bridge_conf())
    nsbox.Pod(network=cni).start().stop()  # (VERSION of each plugin: once per process)
    nsbox.net.settle()
    times: dict[str, list[float]] = {"cni": [], "bridge": []}
    stops: dict[str, list[float]] = {"cni": [], "bridge": []}
    for _ in range(5):
        for kind, network in (("cni", cni), ("bridge", bridge)):
            t0 = time.perf_counter()
            pod = nsbox.Pod(network=network).start()
            t1 = time.perf_counter()
            pod.stop()
            nsbox.net.settle()
            t2 = time.perf_counter()
            times[kind].append(t1 - t0)
            stops[kind].append(t2 - t1)
    med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
    meds = {k: sorted(v)[len(v) // 2] * 1000 for k, v in stops.items()}
    print(f"\nstart (ADD) median: CNI bridge+host-local {med['cni']:.1f} ms, nsbox.Bridge {med['bridge']:.1f} ms; "
          f"stop+settle (DEL): CNI {meds['cni']:.1f} ms, nsbox.Bridge {meds['bridge']:.1f} ms")
    assert med["cni"] < 2000


def test_pods_from_threads_then_stop_all(net):
    """host-local and the state directories under concurrency; stop_all's DEL is synchronous."""
    from concurrent.futures import ThreadPoolExecutor

    cni = nsbox.CNI(net.bridge_conf())
    with ThreadPoolExecutor(4) as ex:
        pods = list(ex.map(lambda _: nsbox.Pod(network=cni).start(), range(8)))
    try:
        assert len({p.address for p in pods}) == 8
        assert len(net.leases()) == 8 and len(state_dirs()) == 8
    finally:
        nsbox.stop_all(pods)
    assert net.leases() == [] and state_dirs() == []  # (no settle(): DEL ran before stop_all returned)
    assert bridge_ports(net.bridge) == []


HANGING_CREATOR = """
import json, sys
import nsbox
nsbox.Pod(network=nsbox.CNI(json.loads(sys.argv[1]), path=json.loads(sys.argv[2]))).start()
"""


def test_creator_killed_during_add_gc_runs_del(net, recorder, tmp_path):
    """SIGKILL while the last plugin's ADD runs: gc DELs every plugin from the state
    written before ADD (no result yet), and removes the pin."""
    path, calls = recorder
    conf = net.bridge_conf()
    conf["plugins"].append({"type": "recorder", "hang": True})
    proc = subprocess.Popen([sys.executable, "-c", HANGING_CREATOR, json.dumps(conf), json.dumps(path)], cwd="/")
    hanging = tmp_path / "calls.jsonl.hanging"
    try:
        assert wait_until(lambda: hanging.exists() and hanging.read_text(), timeout=10)
        assert len(net.leases()) == 1  # the bridge plugin's ADD is done
    finally:
        proc.kill()
        proc.wait()
        if hanging.exists():
            os.kill(int(hanging.read_text()), signal.SIGKILL)  # (the plugin, orphaned: not nsbox's)
    (cid,) = state_dirs()
    state = json.loads((run_dir() / "cni" / cid / "state.json").read_text())
    assert state["result"] is None
    holder = state["holder"][0]
    assert wait_until(lambda: not os.path.exists(f"/proc/{holder}"), timeout=5)
    removed = nsbox.gc()
    assert any(cid in line and "DEL" in line for line in removed), removed
    assert [c["cmd"] for c in calls()][-1] == "DEL" and "prevResult" not in calls()[-1]["conf"]
    assert net.leases() == [] and state_dirs() == []
    assert bridge_ports(net.bridge) == []
