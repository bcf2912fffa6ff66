"""nsbox.sysctls: per-pod namespaced sysctls, checked before anything is made
and written in the pod's own namespaces only."""

import pytest

import nsbox
from nsbox.sysctls import check_sysctls, kinds_for, write_sysctls
from helpers import run_in_thread

ALL = ("net", "ipc", "uts", "pid")


def read_sysctl(path):
    with open(f"/proc/sys/{path}") as f:
        return f.read()


# ---- check_sysctls: normalisation ---------------------------------------------------


def test_normalises_names_and_values_and_sorts():
    got = check_sysctls(
        {
            "net/ipv4/ip_unprivileged_port_start": 0,
            "kernel.shmmni": "8192",
            "net.ipv4.ping_group_range": "0 2147483647",
            "fs/mqueue/msg_max": 20,
            "kernel.sem": "250\t32000\t32\t128",
        },
        ALL,
    )
    assert got == (
        ("fs.mqueue.msg_max", "20"),
        ("kernel.sem", "250\t32000\t32\t128"),
        ("kernel.shmmni", "8192"),
        ("net.ipv4.ip_unprivileged_port_start", "0"),
        ("net.ipv4.ping_group_range", "0 2147483647"),
    )


def test_empty_and_none_and_pairs():
    assert check_sysctls(None, ALL) == ()
    assert check_sysctls({}, ALL) == ()
    # a serialised spec may store them as [name, value] pairs
    assert check_sysctls([["net.ipv4.ip_forward", "1"], ("kernel.msgmax", 65536)], ALL) == (
        ("kernel.msgmax", "65536"),
        ("net.ipv4.ip_forward", "1"),
    )


def test_negative_int_value():
    assert check_sysctls({"kernel.msg_next_id": -1}, ("ipc",)) == (("kernel.msg_next_id", "-1"),)


def test_device_sysctls_of_devices_the_host_lacks():
    got = check_sysctls(
        {
            "net.ipv4.conf.eth0.forwarding": "1",
            "net.ipv6.conf.eth1.accept_ra": "0",
            "net.ipv4.neigh.eth0.retrans_time_ms": "500",
            "net.ipv6.neigh.lo.base_reachable_time_ms": "10000",
            "net.ipv4.conf.all.rp_filter": "2",
            "net.ipv4.conf.default.rp_filter": "2",
        },
        ("net",),
    )
    assert [name for name, _ in got] == [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
        "net.ipv4.conf.eth0.forwarding",
        "net.ipv4.neigh.eth0.retrans_time_ms",
        "net.ipv6.conf.eth1.accept_ra",
        "net.ipv6.neigh.lo.base_reachable_time_ms",
    ]


def test_device_name_with_a_dot_in_both_notations():
    # sysctl(8): dotted, the device's '.' is written '/'; slashed, the other way round
    dotted = check_sysctls({"net.ipv4.conf.eth0/100.rp_filter": "1"}, ("net",))
    slashed = check_sysctls({"net/ipv4/conf/eth0.100/rp_filter": "1"}, ("net",))
    assert dotted == slashed == (("net.ipv4.conf.eth0/100.rp_filter", "1"),)
    with pytest.raises(nsbox.ConfigError, match=r"net\.ipv4\.conf\.eth0/100\.rp_filter"):
        check_sysctls({"net.ipv4.conf.eth0/100.rp_filter": "1", "net/ipv4/conf/eth0.100/rp_filter": "1"}, ("net",))


def test_kinds_for():
    assert kinds_for("net.ipv4.ip_forward") == ("net",)
    assert kinds_for("net/ipv4/conf/eth0/forwarding") == ("net",)
    assert kinds_for("kernel.shmmax") == ("ipc",)
    assert kinds_for("kernel.sem") == ("ipc",)
    assert kinds_for("fs.mqueue.queues_max") == ("ipc",)
    for name in ("kernel.pid_max", "vm.swappiness", "net.core.netdev_max_backlog", "kernel.hostname"):
        with pytest.raises(nsbox.ConfigError, match=name.replace(".", r"\.")):
            kinds_for(name)


def test_checking_changes_nothing():
    before = read_sysctl("net/ipv4/ip_unprivileged_port_start"), read_sysctl("kernel/shmmni")
    check_sysctls({"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shmmni": "1"}, ALL)
    assert (read_sysctl("net/ipv4/ip_unprivileged_port_start"), read_sysctl("kernel/shmmni")) == before


# ---- check_sysctls: refusals ----------------------------------------------------------

BAD = [
    # (sysctls, the name the message must contain, words it must contain)
    ({"kernel.pid_max": "1"}, "kernel.pid_max", "not namespaced"),
    ({"vm.swappiness": "10"}, "vm.swappiness", "not namespaced"),
    ({"fs.file-max": "1000"}, "fs.file-max", "not namespaced"),
    ({"kernel.randomize_va_space": "0"}, "kernel.randomize_va_space", "not namespaced"),
    ({"net.core.rmem_max": "1"}, "net.core.rmem_max", "not namespaced"),
    ({"net.core.netdev_max_backlog": "1"}, "net.core.netdev_max_backlog", "not namespaced"),
    ({"net.ipv4.tcp_mem": "1 2 3"}, "net.ipv4.tcp_mem", "not namespaced"),
    ({"net.ipv4.route.max_size": "1"}, "net.ipv4.route.max_size", "not namespaced"),
    ({"net.ipv4.neigh.default.gc_thresh3": "1"}, "net.ipv4.neigh.default.gc_thresh3", "not namespaced"),
    ({"net/ipv6/neigh/default/gc_thresh1": "1"}, "net/ipv6/neigh/default/gc_thresh1", "not namespaced"),
    ({"net.ipv4.neigh.default": "1"}, "net.ipv4.neigh.default", "not namespaced"),
    ({"user.max_user_namespaces": "0"}, "user.max_user_namespaces", "user namespace"),
    ({"kernel.hostname": "x"}, "kernel.hostname", "hostname="),
    ({"kernel.domainname": "x"}, "kernel.domainname", "domainname"),
    ({"net.ipv4.no_such_thing": "1"}, "net.ipv4.no_such_thing", "unknown"),
    ({"kernel.no_such_thing": "1"}, "kernel.no_such_thing", "unknown"),
    ({"fs.mqueue.no_such_thing": "1"}, "fs.mqueue.no_such_thing", "unknown"),
    ({"nosuch.thing": "1"}, "nosuch.thing", "unknown"),
    ({"net.ipv4.conf.eth0.no_such_key": "1"}, "net.ipv4.conf.eth0.no_such_key", "unknown"),
    ({"net.ipv4.neigh.eth0.gc_thresh1": "1"}, "net.ipv4.neigh.eth0.gc_thresh1", "unknown"),  # table-wide only
    ({"net.ipv4.neigh.all.retrans_time_ms": "1"}, "net.ipv4.neigh.all.retrans_time_ms", "no 'all'"),
    ({"net.ipv4.conf.all.mc_forwarding": "1"}, "net.ipv4.conf.all.mc_forwarding", "read-only"),
    ({"net.ipv4.tcp_available_congestion_control": "reno"}, "net.ipv4.tcp_available_congestion_control", "read-only"),
    ({"net.ipv4": "1"}, "net.ipv4", "directory"),
    ({"net.ipv4.conf.eth0.100.rp_filter": "1"}, "net.ipv4.conf.eth0.100.rp_filter", "eth0/100"),
    # syntax and path tricks
    ({"": "1"}, "''", "not a sysctl name"),
    ({"net": "1"}, "'net'", "not a sysctl name"),
    ({"net..ipv4.ip_forward": "1"}, "net..ipv4.ip_forward", "empty component"),
    ({".net.ipv4.ip_forward": "1"}, ".net.ipv4.ip_forward", "empty component"),
    ({"net.ipv4.ip_forward.": "1"}, "net.ipv4.ip_forward.", "empty component"),
    ({"/net/ipv4/ip_forward": "1"}, "/net/ipv4/ip_forward", "empty component"),
    ({"net/ipv4/../../kernel/pid_max": "1"}, "net/ipv4/../../kernel/pid_max", "not a valid component"),
    ({"net/ipv4/conf/../forwarding": "1"}, "net/ipv4/conf/../forwarding", "not a valid device name"),
    ({"net/ipv4/conf/./forwarding": "1"}, "net/ipv4/conf/./forwarding", "not a valid device name"),
    ({"net.ipv4/ip_forward": "1"}, "net.ipv4/ip_forward", "not a valid component"),
    ({"net.ipv4.ip_forward ": "1"}, "net.ipv4.ip_forward ", "not a valid component"),
    ({"net.ipv4.ip_*": "1"}, "net.ipv4.ip_*", "not a valid component"),
    ({"net.ipv4.ip\x00forward": "1"}, "net.ipv4.ip\\x00forward", "not a valid component"),
    ({"net.ipv4.conf.abcdefghijklmnop.forwarding": "1"}, "abcdefghijklmnop", "not a valid device name"),
    ({"net.ipv4.conf.a:b.forwarding": "1"}, "net.ipv4.conf.a:b.forwarding", "not a valid device name"),
    ({"net.ipv4.conf.a b.forwarding": "1"}, "net.ipv4.conf.a b.forwarding", "not a valid device name"),
    # duplicates
    ({"net.ipv4.ip_forward": "1", "net/ipv4/ip_forward": "1"}, "net.ipv4.ip_forward", "twice"),
    # values
    ({"net.ipv4.ip_forward": True}, "net.ipv4.ip_forward", "str or an int"),
    ({"net.ipv4.ip_forward": 1.0}, "net.ipv4.ip_forward", "str or an int"),
    ({"net.ipv4.ip_forward": None}, "net.ipv4.ip_forward", "str or an int"),
    ({"net.ipv4.ip_forward": b"1"}, "net.ipv4.ip_forward", "str or an int"),
    ({"net.ipv4.ip_forward": ""}, "net.ipv4.ip_forward", "empty"),
    ({"net.ipv4.ip_forward": "  "}, "net.ipv4.ip_forward", "empty"),
    ({"net.ipv4.ip_forward": "1\n"}, "net.ipv4.ip_forward", "newline"),
    ({"net.ipv4.ip_forward": "1\x00"}, "net.ipv4.ip_forward", "NUL"),
    ({"net.ipv4.ip_forward": "1\r"}, "net.ipv4.ip_forward", "control"),
    ({"net.ipv4.ip_forward": "1" * 5000}, "net.ipv4.ip_forward", "at most"),
    # names of another type
    ({1: "1"}, "1", "must be str"),
]


@pytest.mark.parametrize("sysctls,name,words", BAD, ids=[repr(b[0])[:60] for b in BAD])
def test_refused_with_a_message_naming_the_sysctl(sysctls, name, words):
    with pytest.raises(nsbox.ConfigError) as info:
        check_sysctls(sysctls, ALL)
    message = str(info.value)
    assert name in message, message
    assert words in message, message


@pytest.mark.parametrize("sysctls", ["net.ipv4.ip_forward=1", 42, ["net.ipv4.ip_forward"], [("a", "b", "c")]])
def test_refuses_what_is_not_a_mapping(sysctls):
    with pytest.raises(nsbox.ConfigError, match="mapping"):
        check_sysctls(sysctls, ALL)


@pytest.mark.parametrize(
    "name,kinds,missing",
    [
        ("net.ipv4.ip_unprivileged_port_start", ("ipc", "uts", "pid"), "'net'"),
        ("net.ipv4.conf.eth0.forwarding", ("ipc",), "'net'"),
        ("kernel.shmmni", ("net", "uts", "pid"), "'ipc'"),
        ("kernel.sem", ("net",), "'ipc'"),
        ("fs.mqueue.queues_max", ("net",), "'ipc'"),
    ],
)
def test_needs_the_kind(name, kinds, missing):
    with pytest.raises(nsbox.ConfigError) as info:
        check_sysctls({name: "1"}, kinds)
    assert name in str(info.value) and f"no {missing} kind" in str(info.value)


def test_the_answer_does_not_depend_on_the_callers_network_namespace():
    # The test process may be in the initial netns or not (isotest.sh runs it
    # in a private one): from inside a fresh pod's netns the answers are the same.
    names = [
        "net.ipv4.ip_unprivileged_port_start", "net.core.somaxconn", "net.ipv4.conf.eth0.forwarding",
        "net.ipv4.neigh.eth0.retrans_time_ms", "net.core.rmem_max", "net.core.bpf_jit_enable",
        "net.ipv4.neigh.default.gc_thresh1", "net.nf_conntrack_max", "net.ipv4.route.gc_timeout",
        "net.ipv4.tcp_allowed_congestion_control", "net.ipv4.no_such_thing", "kernel.shmmni",
    ]

    def answers():
        out = {}
        for name in names:
            try:
                out[name] = check_sysctls({name: "1"}, ALL)
            except nsbox.ConfigError as e:
                out[name] = str(e)
        return out

    here = answers()
    with nsbox.Pod(kinds=("net",)) as pod:

        def inside():
            with nsbox.joined(pod, "net"):
                return answers()

        assert run_in_thread(inside) == here
    assert not isinstance(here["net.core.rmem_max"], tuple)
    assert not isinstance(here["net.ipv4.neigh.default.gc_thresh1"], tuple)
    assert isinstance(here["net.ipv4.conf.eth0.forwarding"], tuple)


# ---- write_sysctls in a real pod ------------------------------------------------------


def test_written_in_the_pods_namespaces_only():
    wanted = {
        "net.ipv4.ip_unprivileged_port_start": "0",
        "net.ipv4.ip_local_port_range": "20000 30000",
        "net.ipv4.conf.lo.forwarding": "1",
        "net.ipv6.conf.all.disable_ipv6": "1",
        "kernel.shmmni": "1234",
        "kernel.msgmax": "12345",
        "kernel.msg_next_id": "100",  # stat says 0444; writable with CAP_CHECKPOINT_RESTORE/CAP_SYS_ADMIN
        "kernel.sem": "250 32000 32 200",
        "fs.mqueue.msg_max": "17",
    }
    items = check_sysctls(wanted, ALL)
    paths = [name.replace(".", "/") for name in wanted]
    host_before = {p: read_sysctl(p) for p in paths}
    with nsbox.Pod(kinds=ALL) as pod:

        def inside():
            with nsbox.joined(pod, ("net", "ipc")):
                write_sysctls(items)

        run_in_thread(inside)
        for name, value in wanted.items():
            r = pod.run(["cat", "/proc/sys/" + name.replace(".", "/")], capture_output=True, text=True, check=True)
            assert r.stdout.split() == value.split(), name
        assert {p: read_sysctl(p) for p in paths} == host_before
    assert {p: read_sysctl(p) for p in paths} == host_before


def test_device_with_a_dot_in_its_name():
    with nsbox.Pod(kinds=("net",)) as pod:
        pod.run(["ip", "link", "add", "v0.5", "type", "veth", "peer", "name", "v1"], check=True)
        items = check_sysctls({"net/ipv4/conf/v0.5/forwarding": "1", "net.ipv4.conf.v1.forwarding": "1"}, ("net",))
        assert items[0] == ("net.ipv4.conf.v0/5.forwarding", "1")

        def inside():
            with nsbox.joined(pod, "net"):
                write_sysctls(items)

        run_in_thread(inside)
        for dev in ("v0.5", "v1"):
            r = pod.run(["cat", f"/proc/sys/net/ipv4/conf/{dev}/forwarding"], capture_output=True, text=True, check=True)
            assert r.stdout == "1\n"


@pytest.mark.parametrize(
    "item,cls,words",
    [
        (("net.ipv4.ip_forward", "7x"), nsbox.ConfigError, "the kernel refused the value"),
        (("net.ipv4.ip_unprivileged_port_start", "99999"), nsbox.ConfigError, "the kernel refused the value"),
        (("kernel.shm_rmid_forced", "5"), nsbox.ConfigError, "the kernel refused the value"),
        (("net.ipv4.tcp_congestion_control", "no_such_algorithm"), nsbox.ConfigError, "does not exist"),
        (("net.ipv4.conf.eth9.forwarding", "1"), nsbox.ConfigError, "the pod has no device 'eth9'"),
        (("net.ipv4.conf.all.mc_forwarding", "1"), nsbox.PrivilegeError, "read-only"),
    ],
)
def test_write_errors_name_the_sysctl_its_value_and_the_reason(item, cls, words):
    with nsbox.Pod(kinds=("net", "ipc")) as pod:

        def inside():
            with nsbox.joined(pod, ("net", "ipc")):
                write_sysctls([item])

        with pytest.raises(cls) as info:
            run_in_thread(inside)
    message = str(info.value)
    assert item[0] in message and repr(item[1]) in message and words in message, message
    assert isinstance(info.value, nsbox.NsboxError)


def test_earlier_sysctls_are_written_before_a_refused_one():
    with nsbox.Pod(kinds=("net",)) as pod:

        def inside():
            with nsbox.joined(pod, "net"):
                write_sysctls([("net.ipv4.ip_unprivileged_port_start", "80"), ("net.ipv4.ip_forward", "bad")])

        with pytest.raises(nsbox.ConfigError, match="ip_forward"):
            run_in_thread(inside)
        r = pod.run(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"], capture_output=True, text=True)
        assert r.stdout == "80\n"


@pytest.mark.parametrize("name", ["kernel/../../../etc/passwd", "net.ipv4.conf.../forwarding", "net..ipv4", "x"])
def test_write_refuses_a_name_that_is_not_a_sysctl_before_opening_anything(name):
    with pytest.raises(nsbox.ConfigError):
        write_sysctls([(name, "1")])


def test_write_refuses_a_value_that_is_not_text():
    with pytest.raises(nsbox.ConfigError, match="net.ipv4.ip_forward"):
        write_sysctls([("net.ipv4.ip_forward", 1)])  # type: ignore[list-item]
