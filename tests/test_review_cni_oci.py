"""Review of the CNI and OCI doors (issue 12): regressions for the defects found.

Run only through the isolated runner (/work/isotest.sh): the CNI plugins
change the network namespace they run in.
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
from nsbox.oci import bundle_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "runc_in_pod.py"


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
