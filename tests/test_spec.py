"""PodSpec: the pod's configuration as immutable, validated, serialisable
data; and the typed C<->Python contract it is started through."""
import dataclasses
import errno
import json

import pytest

import nsbox
from nsbox import PodSpec
from nsbox._syscalls import Stage
from nsbox.errors import Failure, failure_error

SPECS = [
    PodSpec(),
    PodSpec.from_args(("net", "uts"), hostname="web-0"),
    PodSpec.from_args(("user", "mnt", "pid", "net"), uid_map="0 100000 65536", gid_map=[(0, 100000, 65536)]),
    PodSpec.from_args(network=[nsbox.Veth("10.242.1.2/24", "10.242.1.1/24", rate="10mbit"),
                               nsbox.Bridge("nsbspec0", "10.242.2.0/24", ifname="eth1")],
                      ports={8080: 80, "5353/udp": 53}),
    PodSpec.from_args(network=nsbox.Veth("fd00:242::2/64", "fd00:242::1/64")),
]


@pytest.mark.parametrize("spec", SPECS, ids=range(len(SPECS)))
def test_json_round_trip_is_exact(spec):
    text = spec.to_json()
    json.loads(text)  # plain JSON
    again = PodSpec.from_json(text)
    assert again == spec
    assert again.to_json() == text


def test_a_spec_is_normalised_and_immutable():
    spec = PodSpec.from_args(["uts", "net", "net"], hostname="h")
    assert spec.kinds == ("net", "uts") and spec.mount_proc is False and spec.networks == () and spec.ports == ()
    assert PodSpec.from_args(("mnt", "pid")).mount_proc is True
    user = PodSpec.from_args(("user",))
    assert user.uid_map and user.uid_map.endswith("\n")  # the default map, filled in: a restart gets the same
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hostname = "other"  # type: ignore[misc]


def test_pod_holds_its_spec():
    spec = PodSpec.from_args(hostname="from-spec")
    with nsbox.Pod.from_spec(spec) as pod:
        assert pod.spec is spec and pod.hostname == "from-spec"
        assert pod.run(["hostname"], capture_output=True, text=True).stdout == "from-spec\n"
    assert nsbox.Pod(hostname="from-spec").spec == spec
    with pytest.raises(nsbox.ConfigError):
        nsbox.Pod.from_spec({"hostname": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [
    {"kinds": ["net"], "unknown": 1},
    {"format": 2},
    {"kinds": ["time"]},
    {"hostname": "x", "kinds": ["net"]},  # hostname needs uts
    {"networks": [{"type": "veth", "address": "10.242.3.2/24", "host_address": "10.242.4.1/24"}]},
])
def test_bad_records_are_refused_with_nsbox_errors(data):
    with pytest.raises(nsbox.NsboxError):
        PodSpec.from_dict(data)


def test_every_native_stage_has_an_error_for_every_operation():
    # The stages are read from the C enum; the table must cover each of them.
    assert Stage(0).name == "NONE" and Stage["EXEC"] > Stage["CLONE"]
    for stage in Stage:
        for op in ("start", "spawn"):
            for err in (errno.EPERM, errno.ENOENT, errno.ESRCH, errno.ENOMEM, errno.EMFILE):
                e = failure_error(Failure(op, stage.name, err, target="<pod>", kinds=("net",)))
                assert isinstance(e, OSError) and e.errno in (err, errno.ESRCH), (op, stage, err, e)


def test_clone_flags_come_from_the_kernel_headers():
    # The kernel ABI values, read from lib (constants.cdef), not copied by hand.
    assert nsbox.KINDS == {"user": 0x10000000, "mnt": 0x00020000, "pid": 0x20000000, "net": 0x40000000,
                           "ipc": 0x08000000, "uts": 0x04000000, "cgroup": 0x02000000, "time": 0x00000080}
