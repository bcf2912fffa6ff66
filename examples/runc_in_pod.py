"""OCI containers inside an nsbox pod, the way containerd and CRI-O run them
next to a pause container.

- The pod (holder = PID 1) has a member, "server", listening on
  127.0.0.1:9000, and a SysV shared-memory segment made by another member.
- A container is started with runc, and one with crun, from a busybox root
  filesystem; their config.json joins the pod's network, IPC, UTS and PID
  namespaces (`pod.oci_namespaces()`), and binds the pod's volume.
- Inside the container: the pod's hostname, the server over localhost, the
  holder as PID 1, the pod's SysV segment, the volume's file.

Run it as root: `python3 examples/runc_in_pod.py [runc|crun ...]`.  Needs
runc and/or crun and busybox-static (`make install` installs them).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import nsbox
from nsbox.oci import bundle_config

BUSYBOX = "/bin/busybox"

SERVER = textwrap.dedent(
    """
    import socket
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 9000)); s.listen()
    print("ready", flush=True)
    while True:
        c, _ = s.accept(); c.sendall(b"hello from the pod's localhost\\n"); c.close()
    """
)

# What the container checks; each line "name: value".
CHECK = (
    'echo "hostname: $(hostname)"; '
    'echo "pid 1: $(tr "\\0" " " < /proc/1/cmdline)"; '
    'echo "localhost:9000 says: $(nc 127.0.0.1 9000 < /dev/null)"; '
    'echo "sysv shm segments: $(tail -n +2 /proc/sysvipc/shm | wc -l)"; '
    'echo "volume: $(cat /data/from-pod.txt)"; '
    'echo "written by the container" > /data/from-container.txt'
)


def make_rootfs(path: str) -> None:
    """A tiny root: a static busybox and its applets."""
    bin_dir = os.path.join(path, "bin")
    os.makedirs(bin_dir)
    shutil.copy2(BUSYBOX, os.path.join(bin_dir, "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(bin_dir, applet))  # (relative: valid inside the container)
    for d in ("proc", "sys", "dev", "tmp", "data", "etc"):
        os.makedirs(os.path.join(path, d), exist_ok=True)


def runtime_command(runtime: str, bundle: str, cid: str) -> list[str]:
    cmd = [runtime, "run", "--bundle", bundle, cid]
    if runtime == "crun" and _hybrid_cgroups():
        # crun 1.8 refuses a hybrid layout (v1 controllers plus a cgroup2
        # mount at /sys/fs/cgroup/unified): run it where that mount is gone.
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'umount /sys/fs/cgroup/unified && exec "$@"', "sh", *cmd]
    return cmd


def _hybrid_cgroups() -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == "/sys/fs/cgroup/unified" for line in f)


def run_container(pod: nsbox.Pod, runtime: str, workdir: str) -> dict[str, str]:
    """Start one container in the pod with ``runtime``; return its report."""
    bundle = os.path.join(workdir, runtime)
    make_rootfs(os.path.join(bundle, "rootfs"))
    subprocess.run([runtime, "spec"], cwd=bundle, check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    config = bundle_config(pod, config, volumes={"/data": "/data"})
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sh", "-c", CHECK]
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    cid = f"nsbox-example-{runtime}-{os.getpid()}"
    try:
        r = subprocess.run(runtime_command(runtime, bundle, cid), capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run([runtime, "delete", "--force", cid], capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"{runtime} failed ({r.returncode}): {r.stderr.strip()}")
    return dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)


def main(runtimes: list[str]) -> int:
    missing = [p for p in [*runtimes, BUSYBOX] if not shutil.which(p)]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install runc crun busybox-static)", file=sys.stderr)
        return 1
    workdir = tempfile.mkdtemp(prefix="nsbox-oci-")
    try:
        with nsbox.Pod(kinds=("net", "ipc", "uts", "pid", "mnt"), hostname="oci-pod",
                       volumes={"/data": nsbox.EmptyDir()}) as pod:
            server = pod.spawn([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
            assert server.stdout is not None
            server.stdout.readline()
            pod.run(["ipcmk", "-M", "4096"], check=True, stdout=subprocess.DEVNULL)  # a SysV segment
            (pod.volume_path("/data") / "from-pod.txt").write_text("written by the host into the pod's volume\n")
            print(f"pod: {pod!r}; its namespaces for config.json:")
            for ns in pod.oci_namespaces():
                print(f"  {ns}")
            reports = {}
            for runtime in runtimes:
                print(f"\n== a {runtime} container in the pod ==")
                reports[runtime] = run_container(pod, runtime, workdir)
                for key, value in reports[runtime].items():
                    print(f"  {key}: {value}")
            print("\nhost: the container wrote into the pod's volume:",
                  (pod.volume_path("/data") / "from-container.txt").read_text().strip())
            server.terminate()
            server.wait()
            server.stdout.close()
        ok = all(r.get("hostname") == "oci-pod" and "nsbox-init" in r.get("pid 1", "") for r in reports.values())
        return 0 if ok else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["runc", "crun"]))
