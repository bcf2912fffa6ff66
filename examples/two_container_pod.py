"""A two-container pod, the way Kubernetes builds one with a pause container.

- The holder (nsbox-init) is PID 1 and owns the pod's namespaces.
- "server" listens on 127.0.0.1:9000 and creates a SysV message queue.
- "client" talks to it over the pod's own localhost, sees the same queue and
  the same hostname; the host sees neither.
- Both share a pod volume (an emptyDir): the server writes a file, the
  client reads it; the host finds it where `pod.volume_path()` says.
- The pod has its own /etc/hostname and /etc/hosts; the host's are unchanged.
- A member leaves orphans behind; `ps` shows the holder reaped them.

Run it as root: `make demo`.
"""
import subprocess
import sys
import textwrap
import time

import nsbox

SERVER = textwrap.dedent(
    """
    import socket, subprocess
    subprocess.run(["ipcmk", "-Q"], check=True, stdout=subprocess.DEVNULL)  # a SysV message queue
    open("/shared/server.txt", "w").write("written by the server\\n")  # the pod's volume
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 9000)); s.listen()
    print("server: listening on 127.0.0.1:9000", flush=True)
    while True:
        c, _ = s.accept()
        c.sendall(b"hello from " + socket.gethostname().encode() + b", I am PID " + str(__import__("os").getpid()).encode())
        c.close()
    """
)

CLIENT = textwrap.dedent(
    """
    import socket
    c = socket.create_connection(("127.0.0.1", 9000))
    print("client: server says:", c.recv(100).decode())
    """
)


def section(title):
    print(f"\n== {title} ==")


def main():
    # mnt + mount_proc (the default with mnt and pid) gives `ps` a /proc of the pod's own.
    with nsbox.Pod(kinds=("net", "ipc", "uts", "pid", "mnt"), hostname="demo-pod",
                   volumes={"/shared": nsbox.EmptyDir(medium="memory", size_limit="16Mi")}) as pod:
        section("the pod")
        print(f"{pod!r}")
        print(f"holder: host PID {pod.pid}; namespaces: " + ", ".join(f"{k}:[{pod.inode(k)}]" for k in pod.kinds))

        section("container 1: server")
        server = pod.spawn([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        print(server.stdout.readline().rstrip())

        section("container 2: client, over the pod's localhost")
        pod.run([sys.executable, "-c", CLIENT], check=True)
        print("host: connecting to 127.0.0.1:9000 from outside the pod ...", end=" ")
        r = subprocess.run([sys.executable, "-c", CLIENT], capture_output=True, text=True)
        print("refused, as it should be" if r.returncode else "unexpectedly reached it!")

        section("shared SysV IPC and hostname")
        r = pod.run(["sh", "-c", "echo \"client: hostname is $(hostname)\"; ipcs -q | grep -c '^0x' | "
                     "xargs echo client: message queues visible:"], capture_output=True, text=True, check=True)
        print(r.stdout, end="")
        host_queues = subprocess.run(["ipcs", "-q"], capture_output=True, text=True).stdout.count("\n0x")
        print(f"host: hostname is {subprocess.run(['hostname'], capture_output=True, text=True).stdout.strip()}, "
              f"message queues visible: {host_queues}")

        section("a shared volume and the pod's own /etc files")
        r = pod.run(["sh", "-c", "echo \"client: /shared/server.txt says: $(cat /shared/server.txt)\"; "
                     "echo \"client: /etc/hostname says $(cat /etc/hostname); /etc/hosts has: "
                     "$(grep -v ^# /etc/hosts | grep demo-pod)\""], capture_output=True, text=True, check=True)
        print(r.stdout, end="")
        volume = pod.volume_path("/shared")
        print(f"host: the volume is {volume} (a tmpfs of 16 MiB): {(volume / 'server.txt').read_text()!r}")

        section("orphans are reaped by PID 1")
        pod.run(["sh", "-c", "for i in 1 2 3 4 5; do sleep 0.2 & done; exit 0"])  # parent exits: 5 orphans
        ps = ["ps", "-eo", "pid,ppid,stat,comm"]
        print("right after their parent exited:")
        print(textwrap.indent(pod.run(ps, capture_output=True, text=True).stdout, "  "), end="")
        time.sleep(0.5)
        print("half a second later (the orphans exited; no zombie 'Z' is left):")
        out = pod.run(ps, capture_output=True, text=True).stdout
        print(textwrap.indent(out, "  "), end="")
        zombies = [line for line in out.splitlines()[1:] if line.split()[2].startswith("Z")]

        section("stop")
        rc = pod.stop()
        print(f"pod stopped (holder exit status {rc}); server exited with {server.wait()} (SIGTERM)")
        server.stdout.close()
    print(f"host: the volume went with the pod: {volume} exists: {volume.exists()}")
    if zombies:
        sys.exit("zombies were left: " + ", ".join(zombies))


if __name__ == "__main__":
    main()
