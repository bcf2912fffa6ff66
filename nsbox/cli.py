"""The ``nsbox`` command (also ``python -m nsbox``): unshare, nsenter and
``ip netns`` in one tool, over the library.

::

    nsbox run [POD OPTIONS] [-t] -- CMD ...     an ephemeral pod around one command
    nsbox create NAME [POD OPTIONS]             a persistent pod
    nsbox exec [-t] NAME -- CMD ...             a command in a persistent pod
    nsbox ls [--json] / inspect NAME / stop NAME... / restart NAME... / rm [--force] NAME...
    nsbox gc                                    remove what dead pods left
    nsbox join [--kinds K,...] [-t] PID -- CMD  a command in any process's namespaces

The commands that run a program (``run``, ``exec``, ``join``) behave like
tini and nsenter: stdio and the terminal pass through, SIGINT, SIGTERM,
SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to the program, and the
exit status is the program's (128+N when signal N killed it; 127 when it
was not found, 126 when it could not be executed; 125 when nsbox itself
failed).  Reference: docs/cli.md.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
from collections.abc import Sequence
from typing import Any, Callable, NoReturn, Optional

__all__ = ["main"]

# Exit statuses of nsbox itself (the programs' own pass through).
EXIT_FAILURE = 1  # a management command failed
EXIT_USAGE = 2  # the command line is wrong
EXIT_NSBOX = 125  # run/exec/join: nsbox failed before or around the program (docker/podman use 125 too)
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

# Signals forwarded to the program; SIGCHLD and SIGWINCH are handled.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
HANDLED = FORWARDED + (signal.SIGCHLD, signal.SIGWINCH)
SI_KERNEL = 0x80  # si_code of a signal the kernel sent: for these, the terminal's (^C, ^\, hangup)
STOP_TIMEOUT = 2.0  # run: what the program left in the pod gets SIGTERM, then SIGKILL after this

log = logging.getLogger("nsbox")


class UsageError(Exception):
    """The command line is wrong: exit 2."""


class Failure(Exception):
    """nsbox failed; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


# ---- the parser ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations (--hostn for --hostname): _command_start must know
        # which words are option values, to find where the program starts.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """One line, exit 2 (argparse prints the usage too)."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=min(100, shutil.get_terminal_size().columns))


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error, and nsbox's debug log")

    parser = _Parser(
        prog="nsbox", formatter_class=_Formatter, parents=[common],
        description="Pod-like Linux namespace sandboxes: unshare, nsenter and ip netns in one tool.",
        epilog=_examples(
            "nsbox run --hostname web -- hostname",
            "nsbox run --bridge nsbr0 --subnet 10.201.0.0/24 --publish 8080:80 -- python3 -m http.server 80",
            "nsbox create web --veth 10.200.0.2/24,10.200.0.1/24 --volume /data",
            "nsbox exec -t web -- bash",
            "nsbox ls; nsbox inspect web; nsbox rm --force web",
            "nsbox join 1234 --kinds net,uts -- ip addr",
        ) + "\nExit status of run, exec and join: the program's (128+N when killed by signal N, 127: not\n"
        "found, 126: not executable, 125: nsbox failed).  Other commands: 0, or 1; 2: usage error.\n"
        "Reference: docs/cli.md",
    )
    parser.add_argument("--version", action="version", version=f"nsbox {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help: str, description: str, examples: Sequence[str]) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description, epilog=_examples(*examples),
                              formatter_class=_Formatter, parents=[common])

    p = command(
        "run", "run a command in an ephemeral pod",
        "Run CMD in a new pod and remove the pod when CMD ends (also when it is killed).\n"
        "stdin, stdout, stderr and the terminal pass through; SIGINT, SIGTERM, SIGHUP, SIGQUIT,\n"
        "SIGUSR1 and SIGUSR2 are forwarded to CMD; the exit status is CMD's (128+N when signal N\n"
        "killed it, 127: not found, 126: not executable, 125: the pod could not be made).\n"
        "Processes CMD leaves running in the pod get SIGTERM, then SIGKILL 2 s later.",
        ["nsbox run -- ip addr                              # only lo, in its own namespaces",
         "nsbox run --hostname web-0 --kinds uts,pid -- sh -c 'hostname; echo $$'",
         "nsbox run --veth 10.200.0.2/24,10.200.0.1/24 --delay 20ms -- ping -c1 10.200.0.1",
         "nsbox run --bridge nsbr0 --subnet 10.201.0.0/24 --publish 8080:80 -- python3 -m http.server 80",
         "nsbox run --volume /data --volume /scratch:memory:64Mi -- df -h /data /scratch",
         "nsbox run --host-path /srv/app:/app:ro --cwd /app -- ls"],
    )
    _pod_options(p, name_help="a name for the pod (it is not persistent; used in messages)")
    _program_options(p, terminal=True)

    p = command(
        "create", "create a persistent pod",
        "Create and start a persistent pod: it outlives this command, is listed by 'nsbox ls',\n"
        "reached by 'nsbox exec', and its namespaces are pinned under /run/nsbox/pods/NAME/ns/\n"
        "(for nsenter --net=...).  Prints the name.",
        ["nsbox create web --hostname web --veth 10.200.0.2/24,10.200.0.1/24",
         "nsbox create db --bridge nsbr0 --subnet 10.201.0.0/24 --publish 5432:5432 --volume /var/lib/db"],
    )
    p.add_argument("name", metavar="NAME", help="the pod's name: 1-63 letters, digits, '.', '_', '-'")
    _pod_options(p, name_help=None)

    p = command(
        "exec", "run a command in a persistent pod",
        "Run CMD in the namespaces of the running pod NAME, as 'run' does (signals forwarded,\n"
        "CMD's exit status).  -t gives CMD a new terminal (a pty), for an interactive shell.",
        ["nsbox exec web -- ip addr", "nsbox exec -t web -- bash", "nsbox exec --kinds net web -- ss -ltn"],
    )
    p.add_argument("name", metavar="NAME", help="the pod")
    p.add_argument("--kinds", metavar="K,...", help="join only these of the pod's namespaces (default: all)")
    _program_options(p, terminal=True)

    p = command(
        "ls", "list the persistent pods",
        "List the persistent pods on this machine (ephemeral pods of 'nsbox run' and of programs\n"
        "are not recorded anywhere, so they are not listed).",
        ["nsbox ls", "nsbox ls --json | jq -r '.[] | select(.state == \"running\") | .name'"],
    )
    p.add_argument("--json", action="store_true", help="a JSON array, for programs (see docs/cli.md)")

    p = command("inspect", "show a persistent pod as JSON",
                "Print a JSON object: the pod's spec, status, pins, addresses and volumes (docs/cli.md).",
                ["nsbox inspect web", "nsbox inspect web | jq -r .pins.net"])
    p.add_argument("name", metavar="NAME")

    p = command("stop", "stop persistent pods",
                "Stop the pods (members get SIGTERM, SIGKILL after --timeout); their records stay\n"
                "(state 'stopped') until 'nsbox rm'; 'nsbox restart' starts them again.  Stopping a\n"
                "stopped pod does nothing.",
                ["nsbox stop web", "nsbox stop --timeout 0 web db"])
    p.add_argument("names", metavar="NAME", nargs="+")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="grace period before SIGKILL (default: 10)")

    p = command("restart", "restart persistent pods",
                "Make a new sandbox for each pod from its spec (a running pod is stopped first; its\n"
                "processes do not survive; its volumes do).  Also starts a stopped pod.",
                ["nsbox restart web"])
    p.add_argument("names", metavar="NAME", nargs="+")

    p = command("rm", "remove persistent pods",
                "Remove the pods' names, records, pins and volumes.  A pod that does not exist is not an\n"
                "error.  A running pod is refused unless --force (then it is stopped first).",
                ["nsbox rm web", "nsbox rm --force web db"])
    p.add_argument("names", metavar="NAME", nargs="+")
    p.add_argument("-f", "--force", action="store_true", help="stop running pods first")

    command("gc", "remove what dead pods left",
            "Remove what pods whose holder or creator died left behind: pins, host links, IPAM leases,\n"
            "port rules, volumes, records of starts that never finished.  Prints one line per thing\n"
            "removed.  Safe at any time: it never touches a running pod.",
            ["nsbox gc"])

    p = command(
        "join", "run a command in the namespaces of any process",
        "Run CMD in the namespaces of process PID, like nsenter --target PID: all its\n"
        "namespaces that differ from ours (as nsenter --all), or --kinds.  Signals and exit\n"
        "status as for 'run'.",
        ["nsbox join 1234 -- ip addr", "nsbox join --kinds net,uts 1234 -- hostname",
         "nsbox join \"$(nsbox inspect web | jq .pid)\" --kinds net -- ss -ltn"],
    )
    p.add_argument("pid", metavar="PID", type=_positive_int, help="the process whose namespaces to join")
    p.add_argument("--kinds", metavar="K,...", help="namespaces to join: user mnt pid net ipc uts cgroup")
    _program_options(p, terminal=True)
    return parser


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) + "\n"


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def _pod_options(p: argparse.ArgumentParser, name_help: Optional[str]) -> None:
    if name_help is not None:
        p.add_argument("--name", metavar="NAME", help=name_help)
    p.add_argument("--hostname", metavar="HOST", help="the pod's host name (needs uts)")
    p.add_argument("--kinds", metavar="K,...",
                   help="namespaces: any of user mnt pid net ipc uts cgroup (default: net,ipc,uts,pid; "
                        "mnt is added by the volume and /etc options)")
    net = p.add_argument_group("network (one of --veth, --bridge; default: only lo)")
    net.add_argument("--veth", metavar="POD_CIDR[,HOST_CIDR]",
                     help="a veth pair to the host: the pod's address, and the host end's (the pod's gateway)")
    net.add_argument("--bridge", metavar="NAME", help="a port on bridge NAME (made if needed), address from its IPAM")
    net.add_argument("--subnet", metavar="CIDR", help="the bridge's subnet (with --bridge)")
    net.add_argument("--ip", metavar="ADDR", help="with --bridge: this address instead of the next free one")
    net.add_argument("--publish", "-p", action="append", default=[], metavar="HOST:POD[/udp]",
                     help="publish pod port POD on host port HOST (repeatable)")
    net.add_argument("--rate", metavar="RATE", help="shape the pod's link: a rate like 10mbit")
    net.add_argument("--delay", metavar="TIME", help="shape the pod's link: a delay like 20ms")
    net.add_argument("--jitter", metavar="TIME", help="shape the pod's link: jitter of the delay, like 5ms")
    net.add_argument("--loss", metavar="PERCENT", help="shape the pod's link: packet loss, like 1%%")
    fs = p.add_argument_group("volumes and /etc files (they imply the mnt kind)")
    fs.add_argument("--volume", "-v", action="append", default=[], metavar="PATH[:memory[:SIZE]]",
                    help="an empty directory at PATH, shared by the pod's processes and removed with the pod; "
                         "':memory' makes it a tmpfs, of SIZE (64Mi) at most (repeatable)")
    fs.add_argument("--host-path", action="append", default=[], metavar="HOST:PATH[:ro]",
                    help="bind-mount the host's HOST at PATH, read-only with ':ro' (repeatable)")
    fs.add_argument("--add-host", action="append", default=[], metavar="NAME=ADDR",
                    help="an extra /etc/hosts line (repeatable)")
    fs.add_argument("--dns", action="append", default=None, metavar="ADDR",
                    help="a name server of the pod's /etc/resolv.conf (repeatable; default: the host's, "
                         "without loopback servers)")
    fs.add_argument("--dns-search", action="append", default=None, metavar="DOMAIN", help="a search domain (repeatable)")
    fs.add_argument("--dns-option", action="append", default=None, metavar="OPT", help="a resolver option, like ndots:2")
    p.add_argument("--sysctl", action="append", default=[], metavar="NAME=VALUE",
                   help="a namespaced sysctl (net.*, kernel.shm*, ...) (repeatable)")


def _program_options(p: argparse.ArgumentParser, terminal: bool) -> None:
    if terminal:
        p.add_argument("-t", "--tty", action="store_true",
                       help="give CMD a new terminal (a pty; ours in raw mode meanwhile)")
    p.add_argument("--cwd", "-w", metavar="DIR", help="CMD's working directory (in the pod's view)")
    p.add_argument("cmd", nargs="*", metavar="CMD", help="the program and its arguments, after --")


# ---- building a pod from options -------------------------------------------------------


def _spec(args: argparse.Namespace) -> Any:
    """The PodSpec the options describe; UsageError for a wrong one."""
    from . import DNS, Bridge, EmptyDir, HostPath, PodSpec, Veth
    from .errors import ConfigError, UnsupportedError

    kinds = _kinds(args.kinds) if args.kinds is not None else ["net", "ipc", "uts", "pid"]
    shaping = {k: getattr(args, k) for k in ("rate", "delay", "jitter", "loss") if getattr(args, k) is not None}
    if "loss" in shaping:
        shaping["loss"] = _loss(shaping["loss"])
    try:
        network: Any = None
        if args.veth and args.bridge:
            raise UsageError("--veth and --bridge exclude each other")
        if args.veth:
            if args.subnet or args.ip:
                raise UsageError("--subnet and --ip go with --bridge, not --veth")
            parts = args.veth.split(",")
            if len(parts) > 2 or not all(parts):
                raise UsageError(f"--veth takes POD_CIDR or POD_CIDR,HOST_CIDR, not {args.veth!r}")
            network = Veth(parts[0], parts[1] if len(parts) == 2 else None, **shaping)
        elif args.bridge:
            if not args.subnet:
                raise UsageError("--bridge needs --subnet CIDR")
            network = Bridge(args.bridge, args.subnet, address=args.ip, **shaping)
        elif args.subnet or args.ip:
            raise UsageError("--subnet and --ip need --bridge NAME")
        elif shaping:
            raise UsageError("--rate, --delay, --jitter and --loss shape the pod's link: they need --veth or --bridge")
        if args.publish and network is None:
            raise UsageError("--publish needs a network (--veth or --bridge)")
        ports = dict(_publish(p) for p in args.publish)
        if len(ports) != len(args.publish):
            raise UsageError("a host port is published twice")
        volumes: dict[str, Any] = {}
        for v in args.volume:
            path, medium, size = (v.split(":", 2) + ["", ""])[:3]
            if medium not in ("", "memory") or (size and not medium):
                raise UsageError(f"--volume takes PATH, PATH:memory or PATH:memory:SIZE, not {v!r}")
            _add(volumes, path, EmptyDir(medium=medium, size_limit=size or None), "--volume")
        for v in args.host_path:
            parts = v.split(":")
            ro = len(parts) == 3 and parts[2] == "ro"
            if len(parts) not in (2, 3) or (len(parts) == 3 and not ro) or not all(parts[:2]):
                raise UsageError(f"--host-path takes HOST:PATH or HOST:PATH:ro, not {v!r}")
            _add(volumes, parts[1], HostPath(parts[0], read_only=ro), "--host-path")
        hosts = _pairs(args.add_host, "--add-host", "NAME=ADDR")
        dns = None
        if args.dns is not None or args.dns_search is not None or args.dns_option is not None:
            dns = DNS(nameservers=args.dns or (), search=args.dns_search or (), options=args.dns_option or ())
        sysctls = _pairs(args.sysctl, "--sysctl", "NAME=VALUE")
        if (volumes or hosts or dns is not None) and "mnt" not in kinds:
            kinds.append("mnt")  # implied: volumes and /etc files live in the pod's mount namespace
        return PodSpec.from_args(kinds, hostname=args.hostname, network=network, ports=ports or None,
                                 volumes=volumes or None, hosts=hosts or None, dns=dns, sysctls=sysctls or None)
    except (ConfigError, UnsupportedError) as e:
        raise UsageError(str(e)) from None


def _kinds(text: str) -> list[str]:
    from .errors import KindError
    from .kinds import parse_kinds

    names = [k.strip() for k in text.split(",") if k.strip()]
    if not names:
        raise UsageError("--kinds needs at least one namespace kind, like net,uts")
    try:
        return list(parse_kinds(names))
    except KindError as e:
        raise UsageError(str(e)) from None


def _loss(text: str) -> float:
    try:
        return float(text.removesuffix("%"))
    except ValueError:
        raise UsageError(f"--loss takes a percentage like 1% or 0.5, not {text!r}") from None


def _publish(text: str) -> tuple[str, str]:
    spec, _, proto = text.partition("/")
    host, sep, pod = spec.partition(":")
    if not sep or not host or not pod or (proto and proto.lower() not in ("tcp", "udp")):
        raise UsageError(f"--publish takes HOST_PORT:POD_PORT[/tcp|/udp], like 8080:80, not {text!r}")
    return (f"{host}/{proto.lower()}" if proto else host), pod


def _pairs(items: Sequence[str], option: str, form: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} takes {form}, not {item!r}")
        _add(out, key, value, option)
    return out


def _add(mapping: dict[str, Any], key: str, value: Any, option: str) -> None:
    if key in mapping:
        raise UsageError(f"{option}: {key!r} is given twice")
    mapping[key] = value


def _command(args: argparse.Namespace) -> list[str]:
    cmd = list(args.cmd)
    if not cmd:
        raise UsageError(f"no command given (put it after --: nsbox {args.command} ... -- CMD ...)")
    return cmd


# ---- running a program ---------------------------------------------------------------


def _block_signals() -> None:
    """First thing in run/exec/join, before nsbox starts any thread (threads
    inherit the mask: none of them may take these signals); they are then
    taken one by one with sigtimedwait.  Programs nsbox starts begin with an
    empty mask and default dispositions (nsbox/_native/spawn.c)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


def _pending_exit_signal() -> Optional[int]:
    """A forwarded signal that came before there was a program to forward
    it to (while the pod was being made): the command ends there."""
    pending = signal.sigpending() & set(FORWARDED)
    for sig in pending:
        signal.sigtimedwait([sig], 0)
    return int(min(pending)) if pending else None


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class _Terminal:
    """``-t``: a new pty for the program, relayed to our stdio by a thread
    (ours in raw mode meanwhile, restored always); SIGWINCH copies our size."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.stdin = sys.stdin.fileno()
        self.stdout = sys.stdout.fileno()
        self._saved: Optional[list] = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread: Optional[threading.Thread] = None
        self._proc: Optional[subprocess.Popen] = None
        self.resize()

    def _our_tty(self) -> Optional[int]:
        for fd in (self.stdin, self.stdout, sys.stderr.fileno()):
            if os.isatty(fd):
                return fd
        return None

    def resize(self) -> None:
        import fcntl

        fd = self._our_tty()
        if fd is not None:
            size = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def start(self, proc: subprocess.Popen) -> None:
        self._proc = proc
        os.close(self.slave)  # (the program has it: EIO on the master once it and its children are gone)
        self.slave = -1
        if os.isatty(self.stdin):
            self._saved = termios.tcgetattr(self.stdin)
            tty.setraw(self.stdin)
        os.set_blocking(self.master, False)
        self._thread = threading.Thread(target=self._relay, name="nsbox-tty", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        to_pod = b""
        reading = True
        stopping = False
        output_gone = False
        while True:
            rlist = [self.master] + ([self.stdin] if reading and not to_pod and not stopping else [])
            rlist += [] if stopping else [self._stop_r]
            wlist = [self.master] if to_pod and not stopping else []
            try:
                r, w, _ = select.select(rlist, wlist, [], 0.1 if stopping else None)
            except InterruptedError:  # pragma: no cover - signals are blocked in this thread
                continue
            if self._stop_r in r:
                stopping = True  # the program has exited: what it wrote, then stop
            if self.master in r:
                try:
                    data: Optional[bytes] = os.read(self.master, 65536)
                except BlockingIOError:
                    data = None
                except OSError:  # EIO: no process has the terminal any more
                    return
                if data == b"":
                    return
                if data and not output_gone and not _write_all(self.stdout, data):
                    # Our stdout's reader went away (``nsbox run -t -- yes | head``):
                    # the program would have got SIGPIPE writing to it directly.
                    # (Its further output is read and dropped.)
                    output_gone = True
                    if self._proc is not None:
                        self._proc.send_signal(signal.SIGPIPE)
            elif stopping:
                return  # nothing more within 0.1 s (a background process may keep the terminal)
            if self.stdin in r:
                try:
                    data = os.read(self.stdin, 65536)
                except OSError:
                    data = b""
                if not data:
                    reading = False
                    to_pod = bytes([termios.tcgetattr(self.master)[6][termios.VEOF][0]])  # EOF, as typed
                else:
                    to_pod = data
            if self.master in w:
                try:
                    n = os.write(self.master, to_pod)
                    to_pod = to_pod[n:]
                except BlockingIOError:
                    pass
                except OSError:
                    return

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(5)
        if self._saved is not None:
            termios.tcsetattr(self.stdin, termios.TCSADRAIN, self._saved)
            self._saved = None
        for fd in (self.master, self.slave, self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = self._stop_r = self._stop_w = -1


def _write_all(fd: int, data: bytes) -> bool:
    """Write ``data``; False if ``fd`` is gone (a closed pipe: EPIPE)."""
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            select.select([], [fd], [])
        except OSError:
            return False
    return True


def _run_program(spawn: Callable[..., subprocess.Popen], cmd: list[str], args: argparse.Namespace) -> int:
    """Start ``cmd`` with ``spawn`` (Popen's keywords), forward signals,
    return the exit status.  Signals are blocked already."""
    term = _Terminal() if getattr(args, "tty", False) else None
    try:
        kwargs: dict[str, Any] = {"cwd": args.cwd}
        argv = cmd
        if term is not None:
            kwargs.update(stdin=term.slave, stdout=term.slave, stderr=term.slave)
            argv = ["setsid", "--ctty", "--", *cmd]  # (see _start: the pty becomes its controlling terminal)
        try:
            proc = _start(spawn, argv, cmd, kwargs)
        except FileNotFoundError as e:
            _exec_failed(e, cmd, args)
            raise Failure(f"failed to execute {cmd[0]}: {os.strerror(errno.ENOENT)}", EXIT_NOT_FOUND) from None
        except OSError as e:
            _exec_failed(e, cmd, args)
            raise Failure(f"failed to execute {cmd[0]}: {e.strerror or e}", EXIT_CANNOT_EXECUTE) from None
        if term is not None:
            term.start(proc)
        with proc:
            returncode = _wait(proc, forward_terminal=term is not None, on_winch=term.resize if term else None)
    finally:
        if term is not None:
            term.close()
    return _exit_status(returncode)


def _start(spawn: Callable[..., subprocess.Popen], argv: list[str], cmd: list[str], kwargs: dict[str, Any]) -> subprocess.Popen:
    """``-t`` makes the pty the program's controlling terminal with util-linux
    setsid(1) (--ctty: setsid() and TIOCSCTTY, then exec: the same PID), so
    that ^C and job control work in it.  Without setsid in the pod's view the
    program runs in a session of its own without a controlling terminal."""
    if argv is cmd:
        return spawn(argv, **kwargs)
    try:
        return spawn(argv, **kwargs)
    except FileNotFoundError as e:
        if e.filename != "setsid":
            raise
    print("nsbox: warning: setsid(1) is not found in the pod: the terminal is not the program's controlling "
          "terminal (no job control; ^C is not turned into SIGINT)", file=sys.stderr)
    return spawn(cmd, start_new_session=True, **kwargs)


def _exec_failed(e: OSError, cmd: list[str], args: argparse.Namespace) -> None:
    """Raise a Failure unless ``e`` is the program's exec failing (a missing
    --cwd raises FileNotFoundError too, naming the directory)."""
    if args.cwd is not None and e.filename == args.cwd and e.filename != cmd[0]:
        raise Failure(f"cannot change directory to {args.cwd}: {e.strerror or e}", EXIT_NSBOX) from None
    if e.filename not in (cmd[0], "setsid"):
        raise e


def _wait(proc: subprocess.Popen, *, forward_terminal: bool, on_winch: Optional[Callable[[], None]]) -> int:
    """Wait for ``proc``, forwarding the signals we get (tini's loop).  A
    signal the terminal sent (SI_KERNEL) already reached the program, which is
    in our foreground process group -- unless it has a terminal of its own."""
    while True:
        returncode = proc.poll()
        if returncode is not None:
            return returncode
        info = signal.sigtimedwait(HANDLED, 1.0)  # (the timeout: belt and braces; SIGCHLD wakes us)
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if info.si_signo == signal.SIGWINCH:
            if on_winch is not None:
                on_winch()
            continue
        if info.si_code == SI_KERNEL and not forward_terminal:
            continue
        proc.send_signal(info.si_signo)


# ---- the commands ------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .pod import Pod

    cmd = _command(args)
    spec = _spec(args)
    if args.name is not None:
        _check_name(args.name)
    _block_signals()
    pod = Pod.from_spec(spec, name=args.name)
    try:
        pod.start()
    except Exception as e:
        raise Failure(f"the pod could not be made: {_message(e)}", EXIT_NSBOX) from e
    try:
        sig = _pending_exit_signal()
        if sig is not None:
            return 128 + sig
        return _run_program(pod.spawn, cmd, args)
    finally:
        pod.stop(timeout=STOP_TIMEOUT)


def cmd_create(args: argparse.Namespace) -> int:
    from .pod import Pod

    spec = _spec(args)
    _check_name(args.name)
    Pod.from_spec(spec, name=args.name, persist=True).start()
    print(args.name)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = _command(args)
    kinds = _kinds(args.kinds) if args.kinds is not None else None
    _check_name(args.name)
    _block_signals()
    pod = _attach(args.name, EXIT_NSBOX)
    if not pod.alive:
        busy = _in_progress(args.name)
        if busy is not None:
            raise Failure(f"pod {args.name!r} is not running yet: it is {busy}; try again once it is done", EXIT_NSBOX)
        raise Failure(f"pod {args.name!r} is not running ({pod.status().state}); start it with 'nsbox restart {args.name}'",
                      EXIT_NSBOX)
    extra = [k for k in kinds or () if k not in pod.kinds]
    if extra:
        raise UsageError(f"pod {args.name!r} has no {', '.join(extra)} namespace; its kinds are {','.join(pod.kinds)}")

    def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen:
        return pod.spawn(argv, kinds=kinds, **kwargs)

    return _run_program(spawn, cmd, args)


def cmd_join(args: argparse.Namespace) -> int:
    from . import _syscalls
    from .kinds import flags_of
    from .spawn import PodProcess

    cmd = _command(args)
    kinds = tuple(_kinds(args.kinds)) if args.kinds is not None else None
    _block_signals()
    try:
        pidfd = _syscalls.pidfd_open(args.pid)
    except ProcessLookupError:
        raise Failure(f"no process with PID {args.pid}", EXIT_NSBOX) from None
    try:
        if kinds is None:
            kinds = _different_kinds(args.pid)
            if not kinds:
                raise Failure(f"PID {args.pid} has the same namespaces as nsbox; name some with --kinds", EXIT_NSBOX)
        join = kinds

        def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen:
            return PodProcess(argv, _join_pidfd=pidfd, _join_flags=flags_of(join), _desc=f"PID {args.pid}",
                              _joins_user="user" in join, **kwargs)

        return _run_program(spawn, cmd, args)
    finally:
        os.close(pidfd)


def _different_kinds(pid: int) -> tuple[str, ...]:
    """The kinds whose namespace of ``pid`` is not ours (nsenter --all)."""
    out = []
    for kind in ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup"):
        try:
            theirs = os.stat(f"/proc/{pid}/ns/{kind}")
            ours = os.stat(f"/proc/self/ns/{kind}")
        except FileNotFoundError:
            continue  # (a kernel without that kind)
        except ProcessLookupError:
            raise Failure(f"no process with PID {pid}", EXIT_NSBOX) from None
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            out.append(kind)
    return tuple(out)


def cmd_ls(args: argparse.Namespace) -> int:
    rows = [_summary(rec, status) for rec, status in _records()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    now = time.time()
    table = [("NAME", "STATUS", "PID", "ADDRESS", "AGE")]
    for row in rows:
        table.append((row["name"], row["state"], str(row["pid"] or "-"), row["address"] or "-",
                      _age(now - row["created_at"])))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .podfs import PodFS, storage_key
    from .spec import PodSpec

    _check_name(args.name)
    found = {rec.name: (rec, status) for rec, status in _records()}.get(args.name)
    if found is None:
        raise Failure(f"no persistent pod named {args.name!r} (nsbox ls lists them)")
    rec, status = found
    spec = PodSpec.from_dict(rec.spec)
    fs = PodFS(spec, storage_key(rec.name, True))
    out = _summary(rec, status)
    out.update(
        start_time=status.start_time,
        spec=spec.to_dict(),
        pins=dict(status.pins),
        inodes=dict(status.inodes),
        host_links={a["ifname"]: a["host_ifname"] for a in rec.network} if status.running else {},
        volumes={path: str(fs.volume_path(path)) for path, _ in spec.volumes},
    )
    print(json.dumps(out, indent=2))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    if args.timeout < 0:
        raise UsageError(f"--timeout must be >= 0, not {args.timeout}")
    for name in _names(args.names):
        pod = _attach(name)
        busy = _in_progress(name)
        if busy is not None and busy.startswith("starting") and not pod.alive:
            # (Pod.attach sees no sandbox yet: stop() would do nothing, and the pod would then run.)
            raise Failure(f"pod {name!r} is {busy}; try again once it is done")
        pod.stop(timeout=args.timeout)
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    for name in _names(args.names):
        _attach(name).restart()
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from .errors import ConfigError, NotRunningError
    from .persist import Persistence
    from .pod import Pod

    failed = False
    for name in _names(args.names):
        try:
            Persistence.load(name)
        except NotRunningError:
            continue  # nothing of that name: removed already
        try:
            Pod.attach(name).remove(force=args.force)
        except NotRunningError:
            continue  # removed meanwhile
        except ConfigError as e:
            message = _message(e)
            if "is running" in message and not args.force:
                message = f"pod {name!r} is running; stop it first, or use --force"
            print(f"nsbox: {message}", file=sys.stderr)
            failed = True
    return EXIT_FAILURE if failed else 0


def cmd_gc(args: argparse.Namespace) -> int:
    from .cleanup import gc

    for line in gc():
        print(line)
    return 0


# ---- helpers of the management commands ---------------------------------------------------


def _check_name(name: str) -> None:
    from .errors import ConfigError
    from .records import check_name

    try:
        check_name(name)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _names(names: Sequence[str]) -> list[str]:
    for name in names:
        _check_name(name)
    return list(dict.fromkeys(names))


def _attach(name: str, code: int = EXIT_FAILURE) -> Any:
    from .errors import NotRunningError
    from .pod import Pod

    try:
        return Pod.attach(name)
    except NotRunningError:
        raise Failure(f"no persistent pod named {name!r} (nsbox ls lists them)", code) from None


def _in_progress(name: str) -> Optional[str]:
    """"starting (by PID N)" or "stopping (by PID N)" while another live
    process starts or stops the persistent pod ``name``; else None."""
    from .errors import NotRunningError
    from .persist import Persistence

    try:
        rec = Persistence.load(name)
    except NotRunningError:
        return None
    if rec.state in ("starting", "stopping") and rec.creator_alive():
        return f"{rec.state} (by PID {rec.creator and rec.creator[0]})"
    return None


def _records() -> list[tuple[Any, Any]]:
    """``(record, status)`` of every persistent pod, by name."""
    from .net.rundir import locked
    from .persist import pods, readable_records

    statuses = {s.name: s for s in pods()}
    with locked():
        records = readable_records()
    return sorted(((r, statuses[r.name]) for r in records if r.name in statuses), key=lambda rs: rs[0].name)


def _summary(rec: Any, status: Any) -> dict[str, Any]:
    """One pod, as ``ls --json`` shows it (docs/cli.md)."""
    addresses = {a["ifname"]: a["address"] for a in rec.network} if status.running else {}
    return {
        "name": rec.name,
        "state": status.state,
        "pid": status.pid,
        "address": next(iter(addresses.values()), None),
        "addresses": addresses,
        "created_at": rec.created_at,
        "restarts": status.restarts,
        "returncode": status.returncode,
        "exited_at": status.exited_at,
    }


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _message(e: BaseException) -> str:
    """An exception as one line: an OSError without its "[Errno N]"."""
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror
        if e.filename is not None and str(e.filename) not in text:
            text = f"{e.filename}: {text}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "create": cmd_create, "exec": cmd_exec, "ls": cmd_ls, "inspect": cmd_inspect,
    "stop": cmd_stop, "restart": cmd_restart, "rm": cmd_rm, "gc": cmd_gc, "join": cmd_join,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``nsbox`` command; returns the exit status."""
    try:
        args = _parse(_parser(), list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # (^C while starting up: no traceback)
        return 128 + signal.SIGINT
    logging.basicConfig(format="nsbox: %(levelname)s: %(message)s", level=logging.DEBUG if _debug(args) else logging.WARNING)
    runs_program = args.command in ("run", "exec", "join")
    try:
        return _COMMANDS[args.command](args)
    except UsageError as e:
        _report(args, e, f"nsbox {args.command}: {e} (see 'nsbox {args.command} --help')")
        return EXIT_USAGE
    except Failure as e:
        _report(args, e, f"nsbox: {e}")
        return e.code
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BrokenPipeError:
        # The reader went away (``nsbox inspect x | head``): quietly, as the
        # usual tools do; and no second error when Python flushes stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as e:
        _report(args, e, f"nsbox: {_message(e)}")
        return EXIT_NSBOX if runs_program else EXIT_FAILURE


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The command of run/exec/join is what follows ``--``, so that options
    may also come after NAME or PID (``nsbox join PID --kinds net -- CMD``);
    without ``--`` it starts at the first word that is not an option or the
    NAME/PID (``nsbox run --hostname h sh -c 'echo x'``), as in nsenter."""
    i = _command_start(parser, argv)
    if i is None:
        return parser.parse_args(argv)
    args = parser.parse_args(argv[:i])
    args.cmd = argv[i + 1:] if argv[i] == "--" else argv[i:]
    return args


def _command_start(parser: argparse.ArgumentParser, argv: list[str]) -> Optional[int]:
    """Where the program of run/exec/join starts in ``argv`` (at a ``--``, or
    at its first word), or None."""
    sub: Optional[argparse.ArgumentParser] = None
    positionals = 0
    takes_value: dict[str, bool] = {}
    skip = False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word == "--":
            return i if sub is not None else None
        if word.startswith("-") and word != "-":
            skip = _takes_next_word(word, takes_value)
            continue
        if sub is None:
            if word not in ("run", "exec", "join"):
                return None
            sub = _subparser(parser, word)
            positionals = 0 if word == "run" else 1
            takes_value = {opt: action.nargs != 0 for opt, action in sub._option_string_actions.items()}
        elif positionals:
            positionals -= 1
        else:
            return i
    return None


def _takes_next_word(word: str, takes_value: dict[str, bool]) -> bool:
    """Whether the option word ``word`` takes the next word as its value
    (``--cwd DIR``, ``-w DIR``, ``-tw DIR``; not ``--cwd=DIR`` nor ``-wDIR``)."""
    if word in takes_value:
        return takes_value[word]
    if word.startswith("--") or "=" in word[:2]:
        return False
    for j in range(1, len(word)):  # combined short options: -tw DIR
        value = takes_value.get("-" + word[j])
        if value is None:
            return False
        if value:
            return j == len(word) - 1  # the value is the rest of the word, or the next word
    return False


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError("no subcommands")  # pragma: no cover


def _debug(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False))  # (SUPPRESS: set only when given, before or after the command)


def _report(args: argparse.Namespace, e: BaseException, line: str) -> None:
    if _debug(args):
        import traceback

        traceback.print_exception(e)
    print(line, file=sys.stderr)
