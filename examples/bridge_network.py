"""Three pods on one bridge, one of them behind a slow, lossy link.

- A bridge with IPAM hands out addresses; the pods ping each other.
- pod "c" sits behind a shaped link: 50 ms delay and 1 % loss each way where
  the kernel has netem, and a 2 Mbit/s rate cap everywhere (tbf).
- A published port: host port 18090 reaches pod "a"'s port 80.

Run it as root: `.venv/bin/python examples/bridge_network.py` (after `make test`
or `make demo` built the virtualenv).
"""
import subprocess
import sys
import textwrap
import time
import urllib.request

import nsbox

SERVER = textwrap.dedent(
    """
    import http.server, socketserver
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"hello from pod a")
        def log_message(self, *a):
            pass
    socketserver.TCPServer.allow_reuse_address = True
    s = socketserver.TCPServer(("0.0.0.0", 80), H); print("ready", flush=True); s.serve_forever()
    """
)


def rtt_ms(pod, target):
    out = pod.run(["ping", "-c", "5", "-i", "0.2", "-W", "2", target], capture_output=True, text=True).stdout
    try:
        return float(out.rsplit("=", 1)[1].split("/")[1])  # avg
    except IndexError:
        return float("nan")


def main():
    net = nsbox.Bridge("nsbdemo0", subnet="10.240.0.0/24")
    slow_kwargs = {"rate": "2mbit"}
    try:
        probe = nsbox.Bridge("nsbdemo0", subnet="10.240.0.0/24", delay="50ms", loss=1.0)
        with nsbox.Pod(network=probe):
            pass
        slow_kwargs.update(delay="50ms", loss=1.0)
    except nsbox.NetworkError as e:
        print(f"note: {e}\n      -> showing rate limiting only\n")
    slow = nsbox.Bridge("nsbdemo0", subnet="10.240.0.0/24", **slow_kwargs)
    try:
        with nsbox.Pod(network=net, hostname="a", ports={18090: 80}) as a, \
             nsbox.Pod(network=net, hostname="b") as b, \
             nsbox.Pod(network=slow, hostname="c") as c:
            print(f"bridge {net.name}, gateway {net.gateway}")
            for name, pod in (("a", a), ("b", b), ("c", c)):
                print(f"  pod {name}: {pod.address}  host side {pod.host_ifname}")
            print(f"  leases: {sorted(str(ip) for ip in net.leases())}")

            print("\nround trips (ping, average of 5):")
            print(f"  b -> a  {rtt_ms(b, str(a.address.ip)):7.2f} ms")
            print(f"  c -> a  {rtt_ms(c, str(a.address.ip)):7.2f} ms   (c's link: {slow_kwargs})")

            print("\nbulk transfer of 256 KiB:")
            for name, src in (("b", b), ("c", c)):
                sink = a.spawn([sys.executable, "-c",
                                f"import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                                f"s.bind(('{a.address.ip}', 7200)); s.listen(); print('ready', flush=True); c,_=s.accept()\n"
                                "while c.recv(65536): pass"], stdout=subprocess.PIPE, text=True)
                sink.stdout.readline()
                t = time.monotonic()
                src.run([sys.executable, "-c",
                         f"import socket; socket.create_connection(('{a.address.ip}', 7200)).sendall(b'x' * 262144)"],
                        check=True)
                sink.wait(timeout=60)
                sink.stdout.close()
                print(f"  {name} -> a  {time.monotonic() - t:6.2f} s")

            server = a.spawn([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
            server.stdout.readline()
            body = urllib.request.urlopen("http://127.0.0.1:18090/", timeout=5).read().decode()
            print(f"\nhost -> 127.0.0.1:18090 (published to pod a:80): {body!r}")
            server.stdout.close()
    finally:
        net.remove()
    print("\nall pods stopped, bridge removed")


if __name__ == "__main__":
    main()
