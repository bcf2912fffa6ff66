"""Link shaping (like Mininet's TCLink, CNI bandwidth): one netem qdisc on
each end of a pod's link, set over rtnetlink.

``delay`` and ``jitter`` apply to each direction (a ping's round trip grows
by twice the delay, as with Mininet), ``loss`` is a percentage per
direction, ``rate`` caps each direction.
"""
from __future__ import annotations

import dataclasses
import errno
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, NetworkError
from . import messages as msg
from .link import link_index
from .rtnl import Request, Rtnl

__all__ = ["Shaping", "apply"]

_TIME = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s)\s*$")
_RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)\s*$", re.I)
_TIME_UNITS = {"us": 1, "ms": 1000, "s": 1_000_000}
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
               "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}
_MAX_RATE_BYTES = 2**32 - 1
_MAX_DELAY_US = 60_000_000  # one minute; netem's limit is far higher, sanity is not


def _usec(value: Any, what: str) -> int:
    """'50ms' / '100us' / '1.5s' / seconds as a number -> microseconds."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a duration like '50ms', not {value!r}")
    if isinstance(value, (int, float)):
        us = value * 1_000_000
    elif isinstance(value, str) and (m := _TIME.match(value)):
        us = float(m.group(1)) * _TIME_UNITS[m.group(2)]
    else:
        raise ConfigError(f"{what} must be a duration like '50ms', '200us' or '1s' (or seconds as a number), not {value!r}")
    if not 0 <= us <= _MAX_DELAY_US:
        raise ConfigError(f"{what} {value!r} is out of range (0 to 60s)")
    return int(round(us))


def _bits_per_second(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ConfigError(f"rate must be like '10mbit', not {value!r}")
    if isinstance(value, (int, float)):
        bps = float(value)
    elif isinstance(value, str) and (m := _RATE.match(value)):
        bps = float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]
    else:
        raise ConfigError(f"rate must be like '10mbit', '500kbit' or '1gbit' (or bits per second), not {value!r}")
    if not 8000 <= bps <= _MAX_RATE_BYTES * 8:
        raise ConfigError(f"rate {value!r} is out of range (8 kbit/s to 34 Gbit/s)")
    return int(bps)


@dataclass(frozen=True)
class Shaping:
    delay_us: int = 0
    jitter_us: int = 0
    loss: float = 0.0
    rate_bps: int = 0

    @classmethod
    def parse(cls, delay: Any = None, jitter: Any = None, loss: Any = None, rate: Any = None) -> "Shaping":
        d = _usec(delay, "delay")
        j = _usec(jitter, "jitter")
        if j and not d:
            raise ConfigError("jitter needs a delay (jitter varies the delay)")
        if j > d:
            raise ConfigError(f"jitter ({jitter}) must not exceed delay ({delay})")
        if loss is None:
            lo = 0.0
        elif isinstance(loss, bool) or not isinstance(loss, (int, float)) or not 0 <= loss <= 100:
            raise ConfigError(f"loss must be a percentage from 0 to 100, not {loss!r}")
        else:
            lo = float(loss)
        return cls(d, j, lo, _bits_per_second(rate))

    def __bool__(self) -> bool:
        return bool(self.delay_us or self.jitter_us or self.loss or self.rate_bps)

    @property
    def needs_netem(self) -> bool:
        return bool(self.delay_us or self.jitter_us or self.loss)

    def to_kwargs(self) -> dict[str, Any]:
        """The keywords (``delay=``, ...) that make this shaping again."""
        return {"delay": f"{self.delay_us}us" if self.delay_us else None,
                "jitter": f"{self.jitter_us}us" if self.jitter_us else None,
                "loss": self.loss or None, "rate": self.rate_bps or None}

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Shaping":
        return cls(int(record["delay_us"]), int(record["jitter_us"]), float(record["loss"]), int(record["rate_bps"]))

    def request(self, index: int, name: str) -> Request:
        """netem for delay/jitter/loss (with its own rate cap); tbf for a rate alone."""
        if self.needs_netem:
            from pyroute2.netlink.rtnl.tcmsg import sched_netem

            params: dict[str, Any] = {"delay": self.delay_us, "jitter": self.jitter_us, "loss": self.loss}
            if self.rate_bps:
                params["rate"] = self.rate_bps // 8  # netem wants bytes per second
            return msg.qdisc(index, name, "netem", sched_netem.get_parameters(params))
        from pyroute2.netlink.rtnl.tcmsg import sched_tbf

        rate = self.rate_bps // 8
        burst = max(rate // 100, 2 * 1514)  # >= rate/HZ and two full frames; <= ~3 s of rate
        return msg.qdisc(index, name, "tbf", sched_tbf.get_parameters({"rate": rate, "burst": burst, "latency": 50_000}))


def apply(rtnl: Rtnl, ifname: str, shaping: Shaping) -> None:
    """Replace the shaping of ``ifname`` in ``rtnl``'s namespace (an empty
    ``shaping`` removes it)."""
    index = link_index(rtnl, ifname)
    if index is None:
        raise NetworkError(errno.ENODEV, f"interface {ifname} does not exist (is the pod running?)")
    reqs = [msg.qdisc_del(index, ifname)]
    if shaping:
        reqs.append(shaping.request(index, ifname))
    errors = rtnl.run(reqs)
    if errors[0] is not None and errors[0].errno not in (errno.ENOENT, errno.EINVAL):
        raise errors[0]
    if len(errors) > 1 and errors[1] is not None:
        err = errors[1]
        if err.errno == errno.ENOENT and shaping.needs_netem:
            raise NetworkError(
                errno.EOPNOTSUPP,
                f"setting a netem qdisc on {ifname}: this kernel has no netem (CONFIG_NET_SCH_NETEM), so delay, jitter "
                "and loss cannot be emulated; rate limiting alone (tbf) still works",
            )
        raise err
