"""A pod's /etc/hostname, /etc/hosts, /etc/resolv.conf (nsbox.podfiles) and
the cross-process registry of names on bridges (nsbox.net.names).  Files
only: no pods are started here (the owners are this process and a reaped
child)."""
import ipaddress
import json
import os
import stat
import subprocess
import sys

import pytest

from nsbox import _proc, podfiles
from nsbox.errors import ConfigError, NsboxError
from nsbox.net import names
from nsbox.podfiles import DNS, PodFiles, check_hosts, hostname_text, hosts_text, refresh_hosts, resolv_text
from helpers import run_python

BR = "nsbrnames0"


# ---- DNS ------------------------------------------------------------------------------


def test_dns_normalises_lists_to_canonical_tuples():
    dns = DNS(nameservers=["10.201.0.1", ipaddress.ip_address("FD00:0::53"), " 1.1.1.1 "],
              search=["pod.test", "Example.COM."], options=["ndots:2", "rotate"])
    assert dns.nameservers == ("10.201.0.1", "fd00::53", "1.1.1.1")
    assert dns.search == ("pod.test", "Example.COM")
    assert dns.options == ("ndots:2", "rotate")
    assert dns == DNS(("10.201.0.1", "fd00::53", "1.1.1.1"), ("pod.test", "Example.COM"), ("ndots:2", "rotate"))
    assert hash(dns) == hash(DNS(**{k: tuple(v) for k, v in dns.to_dict().items()}))
    assert DNS() == DNS([], [], []) and DNS().to_dict() == {"nameservers": [], "search": [], "options": []}
    assert DNS(nameservers=["fe80::1%eth0"]).nameservers == ("fe80::1%eth0",)  # glibc takes a scope


@pytest.mark.parametrize("dns", [
    DNS(),
    DNS(nameservers=["10.201.0.1"], search=["pod.test"], options=["ndots:2"]),
    DNS(nameservers=["10.0.0.1", "fd00::1", "fe80::1%eth0"], search=[f"d{i}.test" for i in range(32)],
        options=["rotate", "timeout:1", "attempts:5", "edns0", "single-request-reopen"]),
], ids=["empty", "issue", "full"])
def test_dns_round_trips_exactly(dns):
    d = json.loads(json.dumps(dns.to_dict()))
    again = DNS.from_dict(d)
    assert again == dns and again.to_dict() == dns.to_dict() == d
    assert type(again.nameservers) is tuple and type(again.search) is tuple and type(again.options) is tuple


BAD_DNS = [
    ({"nameservers": "10.0.0.1"}, "nameservers"),  # a str, not a list
    ({"nameservers": ["10.0.0.300"]}, "10.0.0.300"),
    ({"nameservers": [167772161]}, "167772161"),  # an int is not an address
    ({"nameservers": ["0.0.0.0"]}, "0.0.0.0"),
    ({"nameservers": ["ff02::1"]}, "ff02::1"),
    ({"nameservers": ["fd00::1", "FD00:0::1"]}, "twice"),
    ({"nameservers": ["10.0.0.01"]}, "10.0.0.01"),
    ({"nameservers": ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]}, "at most 3"),
    ({"search": "pod.test"}, "search"),
    ({"search": ["a..b"]}, "a..b"),
    ({"search": ["-a.test"]}, "-a.test"),
    ({"search": ["a b.test"]}, "a b.test"),
    ({"search": ["x" * 64 + ".test"]}, "x" * 64),
    ({"search": [("a" * 60 + ".") * 5 + "test"]}, "253"),
    ({"search": ["10.0.0.1"]}, "10.0.0.1"),
    ({"search": [""]}, "''"),
    ({"search": [None]}, "None"),
    ({"search": ["pod.test", "pod.test."]}, "twice"),
    ({"search": [f"d{i}.test" for i in range(33)]}, "at most 32"),
    ({"search": [f"{'a' * 60}.{'b' * 60}.{i:03}" for i in range(17)]}, "2048"),
    ({"options": "ndots:2"}, "options"),
    ({"options": ["nd ots:2"]}, "nd ots:2"),
    ({"options": ["ndots"]}, "ndots"),
    ({"options": ["ndots:x"]}, "ndots:x"),
    ({"options": ["rotate#"]}, "rotate#"),
    ({"options": [""]}, "''"),
    ({"options": [2]}, "2"),
    ({"options": ["ndots:1", "ndots:2"]}, "twice"),
]


@pytest.mark.parametrize("kwargs,says", BAD_DNS, ids=[repr(k)[:60] for k, _ in BAD_DNS])
def test_each_bad_dns_setting_is_a_config_error_naming_it(kwargs, says):
    with pytest.raises(ConfigError) as e:
        DNS(**kwargs)
    field = next(iter(kwargs))
    assert "DNS" in str(e.value) and (field in str(e.value) or field.rstrip("s") in str(e.value))
    assert says in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, NsboxError)


@pytest.mark.parametrize("data,says", [
    (["10.0.0.1"], "mapping"),
    ({"nameserver": ["10.0.0.1"]}, "nameserver"),
    ({"nameservers": "10.0.0.1"}, "nameservers"),
    ({"nameservers": [1]}, "1"),
])
def test_bad_dns_dicts_are_config_errors(data, says):
    with pytest.raises(ConfigError, match=says):
        DNS.from_dict(data)


# ---- hosts= ----------------------------------------------------------------------------


def test_check_hosts_normalises_and_sorts():
    got = check_hosts({"db.test": "10.201.0.9", "cache": ipaddress.ip_address("FD00::0009"), "a_b.test": "10.0.0.1"})
    assert got == (("a_b.test", "10.0.0.1"), ("cache", "fd00::9"), ("db.test", "10.201.0.9"))
    assert check_hosts(None) == () and check_hosts({}) == ()


@pytest.mark.parametrize("hosts,says", [
    ([("db.test", "10.0.0.9")], "mapping"),
    ("db.test=10.0.0.9", "mapping"),
    ({"10.0.0.9": ["db.test", "db"]}, "one address"),
    ({"db test": "10.0.0.9"}, "db test"),
    ({"db#1": "10.0.0.9"}, "db#1"),
    ({"": "10.0.0.9"}, "''"),
    ({"db.": "10.0.0.9"}, "db."),
    ({"-db": "10.0.0.9"}, "-db"),
    ({"x" * 254: "10.0.0.9"}, "253"),
    ({"10.0.0.8": "10.0.0.9"}, "address, not a name"),
    ({1: "10.0.0.9"}, "int"),
    ({"db": "10.0.0.999"}, "10.0.0.999"),
    ({"db": 167772169}, "int"),
    ({"db": None}, "NoneType"),
    ({"db": "fe80::1%eth0"}, "scope"),
])
def test_each_bad_hosts_entry_is_a_config_error(hosts, says):
    with pytest.raises(ConfigError) as e:
        check_hosts(hosts)
    assert "hosts" in str(e.value) and says in str(e.value)


# ---- rendering -------------------------------------------------------------------------

LOCALHOST = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


def test_hostname_text():
    assert hostname_text("web-0") == "web-0\n"
    with pytest.raises(ConfigError):
        hostname_text("web 0")


def test_hosts_text_golden():
    text = hosts_text(
        "web-0", ["10.201.0.2/24", "fd00::2"],
        check_hosts({"db.test": "10.201.0.9", "db": "10.201.0.9", "api.test": "10.201.0.8"}),
        [("api-0", "10.201.0.3"), ("web-0", "10.201.0.2"), ("api-0.alias", "10.201.0.3"), ("v6", "fd00::3"),
         ("also-me", "fd00::2"), ("cache-0", "10.201.0.10")],
    )
    assert text.splitlines(keepends=True)[0].startswith("# /etc/hosts of pod web-0, generated by nsbox")
    assert text.split("\n", 1)[1] == (
        LOCALHOST
        + "10.201.0.2\tweb-0\n"
        "fd00::2\tweb-0\n"
        "\n# Entries added by hosts=.\n"
        "10.201.0.8\tapi.test\n"
        "10.201.0.9\tdb\tdb.test\n"
        "\n# Other pods on the same bridge(s).\n"
        "10.201.0.3\tapi-0\tapi-0.alias\n"
        "10.201.0.10\tcache-0\n"  # address order, not text order
        "fd00::3\tv6\n"
    )


def test_hosts_text_without_address_extra_or_peers():
    text = hosts_text("solo", [], (), [])
    assert text.split("\n", 1)[1] == LOCALHOST + "127.0.1.1\tsolo\n"
    assert "Other pods" not in hosts_text("solo", ["10.0.0.2"], (), [("solo", "10.0.0.2")])  # only itself


def test_hosts_text_refuses_what_hosts_cannot_hold():
    with pytest.raises(ConfigError, match="hostname"):
        hosts_text("web#0", [], (), [])
    with pytest.raises(ConfigError, match="peers"):
        hosts_text("web-0", [], (), [("api 0", "10.0.0.3")])
    with pytest.raises(ConfigError, match="peers"):
        hosts_text("web-0", [], (), [("api-0", "10.0.0.300")])
    with pytest.raises(ConfigError, match="pairs"):
        hosts_text("web-0", [], (), ["api-0"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="pod address"):
        hosts_text("web-0", ["10.0.0.2/33"], (), [])


def test_resolv_text_of_dns_settings_is_exactly_them():
    dns = DNS(nameservers=["10.201.0.1", "fd00::1"], search=["pod.test", "test"], options=["ndots:2", "rotate"])
    assert resolv_text(dns).split("\n", 1)[1] == (
        "nameserver 10.201.0.1\nnameserver fd00::1\nsearch pod.test test\noptions ndots:2 rotate\n"
    )
    assert resolv_text(DNS()).count("\n") == 1  # only the header: no nameserver at all
    with pytest.raises(ConfigError, match="nsbox.DNS"):
        resolv_text({"nameservers": ["10.0.0.1"]})  # type: ignore[arg-type]


@pytest.fixture
def host_resolv(tmp_path, monkeypatch):
    """Point the host's resolv.conf files at temporary ones (written by the test)."""
    host, resolved = tmp_path / "resolv.conf", tmp_path / "resolved.conf"
    monkeypatch.setattr(podfiles, "HOST_RESOLV_CONF", host)
    monkeypatch.setattr(podfiles, "SYSTEMD_RESOLV_CONF", resolved)
    return host, resolved


def body(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_default_resolv_is_the_hosts_without_loopback_nameservers(host_resolv):
    host, resolved = host_resolv
    host.write_text(
        "# Generated by NetworkManager\n"
        "domain corp.test\n"
        "nameserver 127.0.0.53\n"
        "nameserver 10.1.0.2\n"
        "nameserver ::1\n"
        "nameserver 127.1.2.3\n"
        "  nameserver fd00::53  \n"
        "; a comment\n"
        "search corp.test lab.test\n"
        "options edns0 trust-ad\n"
    )
    resolved.write_text("nameserver 192.0.2.1\n")  # not used: the host has reachable ones
    text = resolv_text(None)
    assert body(text) == [
        "nameserver 10.1.0.2", "nameserver fd00::53",
        "domain corp.test", "search corp.test lab.test", "options edns0 trust-ad",
    ]
    assert "127.0.0.53, ::1, 127.1.2.3" in text.splitlines()[0]


def test_default_resolv_falls_back_to_systemd_resolveds_servers(host_resolv):
    host, resolved = host_resolv
    host.write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n")
    resolved.write_text("# resolved\nnameserver 192.0.2.1\nnameserver 127.0.0.1\nnameserver 2001:db8::1\nsearch lan\n")
    text = resolv_text(None)
    assert body(text) == ["nameserver 192.0.2.1", "nameserver 2001:db8::1", "options edns0 trust-ad", "search lan"]
    assert str(resolved) in text.splitlines()[0]


def test_default_resolv_with_no_reachable_nameserver_says_so(host_resolv):
    host, resolved = host_resolv
    host.write_text("nameserver 127.0.0.53\n")  # and no systemd-resolved file
    text = resolv_text(None)
    assert body(text) == [] and "dns=nsbox.DNS" in text
    host.unlink()  # no host file at all
    assert body(resolv_text(None)) == []
    resolved.write_text("nameserver 127.0.0.53\n")  # only loopback there too
    assert body(resolv_text(None)) == []


def test_the_default_resolv_only_reads_the_host_file(host_resolv):
    host, _ = host_resolv
    host.write_text("nameserver 127.0.0.53\nnameserver 10.1.0.2\n")
    before = (host.read_text(), host.stat().st_mtime_ns)
    resolv_text(None)
    assert (host.read_text(), host.stat().st_mtime_ns) == before


# ---- PodFiles ---------------------------------------------------------------------------


def write(dir, hostname="web-0", addresses=("10.201.0.2",), bridges=(BR,), extra=(), dns=None):
    return PodFiles.write(dir, hostname=hostname, addresses=list(addresses), bridges=list(bridges),
                          extra=list(extra), dns=dns)


def test_pod_files_are_written_with_mode_0644(tmp_path):
    old = os.umask(0o077)
    try:
        files = write(tmp_path / "pod", extra=check_hosts({"db.test": "10.201.0.9"}),
                      dns=DNS(nameservers=["10.201.0.1"], search=["pod.test"], options=["ndots:2"]))
    finally:
        os.umask(old)
    assert files.paths == {"/etc/hostname": tmp_path / "pod/hostname", "/etc/hosts": tmp_path / "pod/hosts",
                           "/etc/resolv.conf": tmp_path / "pod/resolv.conf"}
    for path in files.paths.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert files.paths["/etc/hostname"].read_text() == "web-0\n"
    assert "10.201.0.2\tweb-0\n" in files.paths["/etc/hosts"].read_text()
    assert "10.201.0.9\tdb.test\n" in files.paths["/etc/hosts"].read_text()
    assert body(files.paths["/etc/resolv.conf"].read_text()) == ["nameserver 10.201.0.1", "search pod.test",
                                                                "options ndots:2"]
    assert sorted(p.name for p in (tmp_path / "pod").iterdir()) == ["hostname", "hosts", "hosts.json", "resolv.conf"]


def test_pod_files_refuse_bad_input_before_writing_anything(tmp_path):
    with pytest.raises(ConfigError):
        write(tmp_path / "pod", hostname="web 0")
    with pytest.raises(ConfigError):
        write(tmp_path / "pod", addresses=["10.0.0.300"])
    with pytest.raises(ConfigError):
        write(tmp_path / "pod", extra=[("db", "nope")])
    assert not (tmp_path / "pod").exists()


def test_refresh_rewrites_hosts_in_place(tmp_path):
    files = write(tmp_path / "pod")
    hosts = files.paths["/etc/hosts"]
    ino = hosts.stat().st_ino
    refresh_hosts(files.dir, [(f"peer-{i}", f"10.201.1.{i}") for i in range(1, 200)])
    long = hosts.read_text()
    assert hosts.stat().st_ino == ino and "10.201.1.199\tpeer-199\n" in long
    refresh_hosts(files.dir, [("peer-1", "10.201.1.1")])  # shorter: the old tail is cut
    assert hosts.stat().st_ino == ino
    assert hosts.read_text() == hosts_text("web-0", ["10.201.0.2"], (), [("peer-1", "10.201.1.1")])
    write(tmp_path / "pod", hostname="web-1")  # written again: in place too
    assert hosts.stat().st_ino == ino and "web-1" in hosts.read_text()


def test_refresh_is_seen_through_a_bind_mount(tmp_path):
    files = write(tmp_path / "pod")
    target = tmp_path / "etc-hosts"
    target.write_text("the pod's own /etc/hosts\n")
    subprocess.run(["mount", "--bind", str(files.paths["/etc/hosts"]), str(target)], check=True)
    try:
        refresh_hosts(files.dir, [("api-0", "10.201.0.3")])
        assert target.read_text() == files.paths["/etc/hosts"].read_text()
        assert "10.201.0.3\tapi-0\n" in target.read_text()
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_refresh_of_a_vanished_pod_is_nothing(tmp_path):
    refresh_hosts(tmp_path / "gone", [("api-0", "10.201.0.3")])
    files = write(tmp_path / "pod")
    (files.dir / "hosts").unlink()
    refresh_hosts(files.dir, [("api-0", "10.201.0.3")])
    assert not (files.dir / "hosts").exists()  # not created again


# ---- names: who is on which bridge -----------------------------------------------------


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A state directory of the test's own; nothing may be left in it."""
    root = tmp_path / "run"
    monkeypatch.setenv("NSBOX_RUN_DIR", str(root))
    yield root
    left = sorted(str(p) for p in root.rglob("*")) if root.exists() else []
    assert left == [], f"left in the run dir: {left}"


ME = _proc.owner(os.getpid())


@pytest.fixture
def dead():
    """The owner of a process that has exited and been reaped."""
    p = subprocess.Popen(["sleep", "60"])
    owner = _proc.owner(p.pid)
    p.kill()
    p.wait()
    assert owner is not None and _proc.owner(owner[0]) != owner
    return owner


def hosts_of(files: PodFiles) -> str:
    return files.paths["/etc/hosts"].read_text()


def peer_lines(files: PodFiles) -> list[str]:
    text = hosts_of(files)
    return text.split("# Other pods on the same bridge(s).\n", 1)[1].splitlines() if "Other pods" in text else []


def test_pods_on_a_bridge_see_each_other_and_stopped_ones_go(run, tmp_path):
    web = write(tmp_path / "web", "web-0", ["10.201.0.2"])
    api = write(tmp_path / "api", "api-0", ["10.201.0.3"])
    inodes = {f: f.paths["/etc/hosts"].stat().st_ino for f in (web, api)}
    names.join(BR, "10.201.0.2/24", "web-0", ME, web.dir)
    assert peer_lines(web) == [] and names.peers(BR) == [("web-0", "10.201.0.2")]
    names.join(BR, "10.201.0.3", "api-0", ME, api.dir)
    assert peer_lines(web) == ["10.201.0.3\tapi-0"] and peer_lines(api) == ["10.201.0.2\tweb-0"]
    assert names.peers(BR) == [("api-0", "10.201.0.3"), ("web-0", "10.201.0.2")]
    data = json.loads((run / "names" / f"{BR}.json").read_text())
    assert data["10.201.0.3"] == {"hostname": "api-0", "owner": list(ME), "files": str(api.dir)}
    names.leave(BR, "10.201.0.3", (ME[0], ME[1] + 1))  # not its owner: nothing
    assert peer_lines(web) == ["10.201.0.3\tapi-0"]
    names.leave(BR, "10.201.0.3", ME)
    assert peer_lines(web) == [] and names.peers(BR) == [("web-0", "10.201.0.2")]
    names.leave(BR, "10.201.0.3", ME)  # idempotent
    assert {f: f.paths["/etc/hosts"].stat().st_ino for f in (web, api)} == inodes
    names.leave(BR, "10.201.0.2", ME)
    assert not (run / "names").exists() and names.peers(BR) == []


def test_a_pod_without_hostname_is_not_a_peer_and_rewrites_only_its_own_file(run, tmp_path):
    web = write(tmp_path / "web", "web-0", ["10.201.0.2"])
    anon = write(tmp_path / "anon", "anon", ["10.201.0.4"])
    names.join(BR, "10.201.0.2", "web-0", ME, web.dir)
    before = web.paths["/etc/hosts"].stat().st_mtime_ns, hosts_of(web)
    names.join(BR, "10.201.0.4", None, ME, anon.dir)
    names.join(BR, "10.201.0.5", None, ME, None)  # no mount namespace: no files at all
    assert peer_lines(anon) == ["10.201.0.2\tweb-0"]
    assert (web.paths["/etc/hosts"].stat().st_mtime_ns, hosts_of(web)) == before
    assert names.peers(BR) == [("web-0", "10.201.0.2")]
    for address in ("10.201.0.2", "10.201.0.4", "10.201.0.5"):
        names.leave(BR, address, ME)


def test_an_entry_of_a_dead_owner_is_replaced_by_address(run, tmp_path, dead):
    web = write(tmp_path / "web", "web-0", ["10.201.0.2"])
    names.join(BR, "10.201.0.2", "web-0", ME, web.dir)
    names.join(BR, "10.201.0.3", "ghost", dead, None)
    assert peer_lines(web) == ["10.201.0.3\tghost"]
    names.join(BR, "10.201.0.3", "api-0", ME, None)  # the address leased again
    assert peer_lines(web) == ["10.201.0.3\tapi-0"]
    names.leave(BR, "10.201.0.3", dead)  # the dead owner's late leave removes nothing
    assert peer_lines(web) == ["10.201.0.3\tapi-0"]
    names.join(BR, "10.201.0.3", None, ME, None)  # registered again without a name: no longer a peer
    assert peer_lines(web) == []
    names.leave(BR, "10.201.0.3", ME)
    names.leave(BR, "10.201.0.2", ME)


def test_sweep_drops_dead_owners_and_refreshes(run, tmp_path, dead):
    web = write(tmp_path / "web", "web-0", ["10.201.0.2"])
    names.join(BR, "10.201.0.2", "web-0", ME, web.dir)
    names.join(BR, "10.201.0.3", "ghost", dead, tmp_path / "ghost-files-gone")
    names.join("nsbrnames1", "10.202.0.3", None, dead, None)
    assert peer_lines(web) == ["10.201.0.3\tghost"]
    removed = names.sweep()
    assert sorted(removed) == sorted([
        f"name ghost at 10.201.0.3 on bridge {BR} (holder {dead[0]} is gone)",
        f"name (no hostname) at 10.202.0.3 on bridge nsbrnames1 (holder {dead[0]} is gone)",
    ])
    assert peer_lines(web) == [] and names.peers(BR) == [("web-0", "10.201.0.2")]
    assert not (run / "names" / "nsbrnames1.json").exists()
    assert names.sweep() == []
    names.leave(BR, "10.201.0.2", ME)
    assert names.sweep() == []


def test_a_pod_on_two_bridges_sees_the_peers_of_both(run, tmp_path):
    both = write(tmp_path / "both", "both", ["10.201.0.2", "10.202.0.2"], bridges=[BR, "nsbrnames1"])
    one = write(tmp_path / "one", "one", ["10.201.0.3"])
    two = write(tmp_path / "two", "two", ["10.202.0.3"], bridges=["nsbrnames1"])
    names.join(BR, "10.201.0.2", "both", ME, both.dir)
    names.join("nsbrnames1", "10.202.0.2", "both", ME, both.dir)
    names.join(BR, "10.201.0.3", "one", ME, one.dir)
    names.join("nsbrnames1", "10.202.0.3", "two", ME, two.dir)
    assert peer_lines(both) == ["10.201.0.3\tone", "10.202.0.3\ttwo"]  # its own two addresses left out
    assert peer_lines(one) == ["10.201.0.2\tboth"]
    assert peer_lines(two) == ["10.202.0.2\tboth"]
    names.leave(BR, "10.201.0.3", ME)
    assert peer_lines(both) == ["10.202.0.3\ttwo"]
    for bridge, address in ((BR, "10.201.0.2"), ("nsbrnames1", "10.202.0.2"), ("nsbrnames1", "10.202.0.3")):
        names.leave(bridge, address, ME)


def test_bad_names_arguments_are_config_errors(run, tmp_path):
    with pytest.raises(ConfigError):
        names.join("../etc", "10.201.0.2", "web-0", ME, None)
    with pytest.raises(ConfigError):
        names.join(BR, "10.201.0.300", "web-0", ME, None)
    with pytest.raises(ConfigError):
        names.join(BR, "10.201.0.2", "web 0", ME, None)
    assert not run.exists() or list(run.rglob("*")) == []


JOINER = """
import os, sys
from pathlib import Path
from nsbox import _proc
from nsbox.net import names
me = _proc.owner(os.getpid())
owner = tuple(int(x) for x in sys.argv[1].split(","))
for i in range(int(sys.argv[3]), int(sys.argv[4])):
    names.join(sys.argv[2], f"10.201.0.{i}", f"pod-{i}", owner, None)
"""


def test_joins_from_other_processes_at_once_are_all_seen(run, tmp_path):
    web = write(tmp_path / "web", "web-0", ["10.201.0.2"])
    names.join(BR, "10.201.0.2", "web-0", ME, web.dir)
    owner = ",".join(map(str, ME))
    procs = [subprocess.Popen([sys.executable, "-c", JOINER, owner, BR, str(10 + 20 * k), str(30 + 20 * k)], cwd="/")
             for k in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    assert peer_lines(web) == [f"10.201.0.{i}\tpod-{i}" for i in range(10, 90)]
    r = run_python(f"from nsbox.net import names; names.leave({BR!r}, '10.201.0.10', ({ME[0]}, {ME[1]}))")
    assert r.returncode == 0, r.stderr
    assert "10.201.0.10\t" not in hosts_of(web)
    for i in [2, *range(11, 90)]:
        names.leave(BR, f"10.201.0.{i}", ME)
