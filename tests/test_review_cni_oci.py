"""Review of the CNI and OCI doors (issue 12): regressions for the defects found.

The CNI plugins change the network namespace they run in: every test runs
with its thread in a private "node" network namespace (conftest.cni_node).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import nsbox
from helpers import bridge_ports
from nsbox.oci import bundle_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "runc_in_pod.py"

pytestmark = pytest.mark.usefixtures("cni_node")


def _example():
    spec = importlib.util.spec_from_file_location("runc_in_pod", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- OCI -------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_a_container_joins_a_user_namespace_pod(runtime, tmp_path):
    """A pod with a user namespace: the container joins it (and the pod's
    other namespaces, which it owns) and runs as the pod's root."""
    if not shutil.which(runtime) or not os.path.exists("/bin/busybox"):
        pytest.skip(f"{runtime} or busybox-static is not installed")
    ex = _example()
    bundle = tmp_path / runtime
    ex.make_rootfs(str(bundle / "rootfs"))
    subprocess.run([runtime, "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    with nsbox.Pod(kinds=("user", "net", "ipc", "uts", "pid", "mnt"), hostname="userns-pod") as pod:
        cfg = bundle_config(pod, config)
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["sh", "-c", "echo host=$(hostname); cat /proc/self/uid_map"]
        # (the default mounts include cgroup and sysfs, which a user namespace's root cannot mount
        # without owning the cgroup namespace: keep the container simple)
        cfg["mounts"] = [m for m in cfg["mounts"] if m["type"] not in ("cgroup", "sysfs", "mqueue")]
        (bundle / "config.json").write_text(json.dumps(cfg))
        cid = f"nsbox-review-userns-{runtime}-{os.getpid()}"
        try:
            r = subprocess.run(ex.runtime_command(runtime, str(bundle), cid), capture_output=True, text=True,
                               timeout=60)
        finally:
            subprocess.run([runtime, "delete", "--force", cid], capture_output=True)
        assert r.returncode == 0, r.stderr
        assert "host=userns-pod" in r.stdout
        with open(f"/proc/{pod.pid}/uid_map") as f:
            assert r.stdout.split("host=userns-pod\n", 1)[1].split() == f.read().split()


# ---- CNI -------------------------------------------------------------------------------

import itertools  # noqa: E402

from test_cni import Net, cni_rules, recorder, state_dirs  # noqa: E402,F401 (recorder: test_cni's fixture)

_numbers = itertools.count(200)


@pytest.fixture
def net(tmp_path):
    n = Net(tmp_path, next(_numbers))
    yield n
    nsbox.net.settle()
    subprocess.run(["ip", "link", "del", n.bridge], capture_output=True)
    assert n.leases() == [], "host-local leases left"
    assert cni_rules(["nsbox-"]) == [], "iptables rules of CNI attachments left"
    assert state_dirs() == [], "CNI state directories left"


def test_plugins_of_a_nested_pod_are_spawned_without_python_between_fork_and_exec(net, monkeypatch):
    """A pod made from a thread inside another pod's network namespace, stopped
    from outside it: its plugins must run in the namespace ADD ran in, but
    without preexec_fn (Python code in the forked child of a threaded program
    can deadlock; subprocess's docs: 'NOT SAFE ... in the presence of threads')."""
    import nsbox.net.cni as cni

    seen = []
    real_run = subprocess.run

    def spy(*args, **kwargs):
        seen.append((os.environ.get("CNI_COMMAND"), kwargs.get("env", {}).get("CNI_COMMAND"),
                     kwargs.get("preexec_fn")))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(cni.subprocess, "run", spy)
    with nsbox.Pod() as outer:
        with nsbox.joined(outer, "net"):
            outer_netns = os.stat("/proc/thread-self/ns/net").st_ino
            inner = nsbox.Pod(network=nsbox.CNI(net.bridge_conf(ipMasq=False))).start()
        def ports_of_bridge():
            r = outer.run(["ip", "-o", "link", "show", "master", net.bridge], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            return [line.split(":")[1].strip().split("@")[0] for line in r.stdout.splitlines()]

        assert ports_of_bridge() == [inner.host_ifname]  # (the plugins ran in the outer pod)
        assert os.stat("/proc/thread-self/ns/net").st_ino != outer_netns
        inner.stop()  # DEL from this thread, outside the namespace the plugins ran in
        assert ports_of_bridge() == []  # DEL ran, in the outer pod's namespace
        assert net.leases() == [] and state_dirs() == []
    cmds = [c[1] for c in seen]
    assert cmds.count("DEL") == 1, cmds
    assert all(c[2] is None for c in seen), [c[1] for c in seen if c[2] is not None]


def test_a_pin_copied_into_a_pods_mount_namespace_goes_at_del(net):
    """A pod with a mount namespace of its own (private propagation) made while
    another pod's pin exists holds a copy of that pin: DEL must not leave the
    copy (it would keep the stopped pod's network namespace alive)."""
    a = nsbox.Pod(network=nsbox.CNI(net.bridge_conf())).start()
    cid = a._net.primary.containerid
    with nsbox.Pod(kinds=("net", "ipc", "uts", "pid", "mnt")) as b:
        with open(f"/proc/{b.pid}/mountinfo") as f:
            assert cid in f.read()  # (the copy)
        a.stop()
        nsbox.net.settle()
        with open(f"/proc/{b.pid}/mountinfo") as f:
            assert cid not in f.read()


def test_a_hanging_plugin_times_out_and_everything_is_deleted(net, recorder, monkeypatch):  # noqa: F811
    import errno

    import nsbox.net.cni as cni

    path, calls = recorder
    monkeypatch.setattr(cni, "PLUGIN_TIMEOUT", 1.0)
    conf = net.bridge_conf()
    conf["plugins"].append({"type": "recorder", "hang": True})
    with pytest.raises(nsbox.CNIError) as e:
        nsbox.Pod(network=nsbox.CNI(conf, path=path)).start()
    assert e.value.errno == errno.ETIMEDOUT and e.value.plugin == "recorder" and e.value.command == "ADD"
    assert [c["cmd"] for c in calls()] == ["VERSION", "ADD", "DEL"]
    assert net.leases() == [] and state_dirs() == []


@pytest.mark.parametrize("version", ["0.4.0", "0.3.1"])
def test_older_cni_versions_results_are_read(net, version):
    conf = {**net.bridge_conf(portmap=True), "cniVersion": version}
    with nsbox.Pod(network=nsbox.CNI(conf), ports={19000 + net.n: 80}) as pod:
        res = pod.cni_result
        assert res["cniVersion"] == version
        assert pod.address is not None and pod.address.network == net.subnet
        assert str(pod._net.primary.host_address.ip) == str(net.gateway)
        assert pod.host_ifname in bridge_ports(net.bridge)
        if version == "0.4.0":
            pod.cni_check()
        else:
            with pytest.raises(nsbox.ConfigError, match="CHECK needs"):
                pod.cni_check()


def test_run_dir_through_a_symlink(net, tmp_path, monkeypatch):
    """$NSBOX_RUN_DIR naming a path through a symlink (/var/run -> /run): the
    cni directory is bind-mounted once, not once per ADD (a second bind mount
    would hide the pins made before it: their DEL would run without the netns
    and their pins could not be removed)."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("NSBOX_RUN_DIR", str(tmp_path / "link" / "nsbox"))
    cni = nsbox.CNI(net.bridge_conf())
    a = nsbox.Pod(network=cni).start()
    b = nsbox.Pod(network=cni).start()
    try:
        with open("/proc/self/mountinfo") as f:
            cni_mounts = [line for line in f if line.split()[4] == str(real / "nsbox" / "cni")]
        assert len(cni_mounts) == 1, cni_mounts
        pin_a = a._net.primary.netns
        assert os.stat(pin_a).st_ino == a.inode("net")  # (still visible)
    finally:
        nsbox.stop_all([a, b])
    assert not (real / "nsbox" / "cni").exists()
    assert net.leases() == []


def test_persistent_pods_oci_namespaces_stay_valid_with_a_symlinked_run_dir(tmp_path, monkeypatch):
    """oci_namespaces() of a persistent pod are its pins: they must stay valid
    while it runs, also once a second persistent pod has started (its pins
    directory bind-mounted again would hide the first pod's pins)."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("NSBOX_RUN_DIR", str(tmp_path / "link" / "nsbox"))
    kinds = ("net", "ipc", "uts", "pid")
    a = nsbox.Pod(name="rev-oci-a", persist=True, kinds=kinds).start()
    try:
        b = nsbox.Pod(name="rev-oci-b", persist=True, kinds=kinds).start()
        try:
            for ns in a.oci_namespaces():
                kind = {v: k for k, v in nsbox.oci.OCI_TYPES.items()}[ns["type"]]
                assert os.stat(ns["path"]).st_ino == a.inode(kind), ns
        finally:
            b.remove(force=True)
    finally:
        a.remove(force=True)


def test_is_mount_point_reads_escaped_and_symlinked_paths(tmp_path):
    from nsbox import _syscalls
    from nsbox.net.rundir import is_mount_point

    d = tmp_path / "a dir\twith blanks"
    d.mkdir()
    (tmp_path / "via").symlink_to(d)
    assert not is_mount_point(d)
    _syscalls.bind_mount(str(d), str(d))
    try:
        assert is_mount_point(d) and is_mount_point(tmp_path / "via")
    finally:
        _syscalls.umount(str(d))


def test_persistent_pod_restart_is_a_new_attachment(net):
    pod = nsbox.Pod(name="rev-cni-restart", persist=True, network=nsbox.CNI(net.bridge_conf())).start()
    try:
        first = pod._net.primary.containerid
        pod.restart()
        nsbox.net.settle()
        second = pod._net.primary.containerid
        assert second != first and state_dirs() == [second] and len(net.leases()) == 1
        rec = json.loads((nsbox.net.rundir.run_dir() / "pods" / "rev-cni-restart" / "record.json").read_text())
        assert rec["network"][0]["containerid"] == second
        assert nsbox.Pod.attach("rev-cni-restart").cni_result == pod.cni_result
    finally:
        pod.remove(force=True)
        nsbox.net.settle()


def test_gc_reports_only_what_it_removed(net):
    """A state directory gc listed but that its owner removed before gc got to
    it (a pod stopped meanwhile) is not reported as removed by gc."""
    import nsbox.net.cni as cni

    pod = nsbox.Pod(network=nsbox.CNI(net.bridge_conf())).start()
    sdir = Path(pod._net.primary.state_dir)
    pod.stop()
    nsbox.net.settle()
    assert not sdir.exists()
    assert cni._sweep_one(sdir, cni._thread_netns_id()) is None  # (what sweep() does after its listing)
