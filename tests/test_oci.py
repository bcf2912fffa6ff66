"""The OCI door: pod.oci_namespaces() and real runc/crun containers that join a pod."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nsbox
from nsbox.oci import OCI_TYPES, bundle_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "runc_in_pod.py"
KINDS = ("net", "ipc", "uts", "pid", "mnt")


def test_oci_namespaces_name_every_namespace_the_pod_owns():
    with nsbox.Pod(kinds=("net", "ipc", "uts", "pid", "mnt", "cgroup")) as pod:
        got = pod.oci_namespaces()
        assert [ns["type"] for ns in got] == [OCI_TYPES[k] for k in pod.kinds]
        assert {ns["type"] for ns in got} == {"mount", "cgroup", "pid", "network", "ipc", "uts"}
        for ns in got:
            kind = {v: k for k, v in OCI_TYPES.items()}[ns["type"]]
            assert os.stat(ns["path"]).st_ino == pod.inode(kind)
        assert [ns["type"] for ns in pod.oci_namespaces(exclude=("mnt", "cgroup"))] == ["pid", "network", "ipc", "uts"]
        with pytest.raises(nsbox.ConfigError, match="unknown kind"):
            pod.oci_namespaces(exclude=("mount",))
    with pytest.raises(nsbox.NotRunningError):
        pod.oci_namespaces()


def test_a_persistent_pods_namespaces_are_its_pins():
    pod = nsbox.Pod(name="nsbt-oci", persist=True, kinds=KINDS).start()
    try:
        got = {ns["type"]: ns["path"] for ns in pod.oci_namespaces()}
        pins = pod.status().pins
        assert got["network"] == pins["net"] and got["uts"] == pins["uts"]
        assert got["mount"] == f"/proc/{pod.pid}/ns/mnt"  # (mount namespaces are not pinned)
    finally:
        pod.remove(force=True)


def test_bundle_config_joins_the_pod_and_drops_the_hostname(tmp_path):
    config = {"hostname": "runc", "linux": {"namespaces": [{"type": t} for t in
                                                          ("pid", "network", "ipc", "uts", "mount", "cgroup")]},
              "mounts": []}
    with nsbox.Pod(kinds=KINDS, volumes={"/data": nsbox.EmptyDir()}) as pod:
        cfg = bundle_config(pod, config, volumes={"/data": "/srv"})
        assert "hostname" not in cfg and config["hostname"] == "runc"  # (a copy)
        types = [ns["type"] for ns in cfg["linux"]["namespaces"]]
        assert sorted(types) == ["cgroup", "ipc", "mount", "network", "pid", "uts"]
        joined = {ns["type"] for ns in cfg["linux"]["namespaces"] if "path" in ns}
        assert joined == {"pid", "network", "ipc", "uts"}  # its own mount (and cgroup) namespace
        assert cfg["mounts"] == [{"destination": "/srv", "type": "bind", "source": str(pod.volume_path("/data")),
                                  "options": ["rbind", "rw"]}]
    with pytest.raises(nsbox.ConfigError, match="linux"):
        with nsbox.Pod() as pod:
            bundle_config(pod, {})


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_a_container_joins_the_pod(runtime):
    if not shutil.which(runtime) or not os.path.exists("/bin/busybox"):
        pytest.skip(f"{runtime} or busybox-static is not installed (make install installs them)")
    r = subprocess.run([sys.executable, str(EXAMPLE), runtime], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "  hostname: oci-pod\n" in out  # the pod's UTS namespace; the spec's hostname was dropped
    assert "  localhost:9000 says: hello from the pod's localhost\n" in out  # its network namespace
    assert "nsbox-init" in out.split("  pid 1: ")[1].splitlines()[0]  # its PID namespace: the holder is PID 1
    assert "  sysv shm segments: 1\n" in out  # its IPC namespace: the segment another member made
    assert "  volume: written by the host into the pod's volume\n" in out
    assert "host: the container wrote into the pod's volume: written by the container" in out
