"""One pod's network: the attachments of all its networks, the first one
primary (the pod's default route, its published ports, ``pod.address``).

:meth:`PodNetwork.attach` makes them all or none; :meth:`detach` undoes
them in reverse; :meth:`to_record` / :meth:`from_record` carry them to
another process (to tear down what a crashed creator left).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from ..errors import ConfigError
from .validate import Interface
from .attachment import Attachment
from .ipam import Owner
from .network import Network
from .shaping import Shaping

__all__ = ["PodNetwork"]


class PodNetwork:
    """Every host-side thing made for one pod's networks."""

    def __init__(self, attachments: Sequence[Attachment] = ()):
        self.attachments = list(attachments)

    @classmethod
    def attach(cls, networks: Sequence[Network], pod_netns_fd: int, holder_pid: int, *,
               ports: Sequence[tuple[str, int, int]] = (), pod_name: Optional[str] = None) -> "PodNetwork":
        """Attach each of ``networks`` to the pod (only the first gives it a
        default route); on failure, detach what was made and raise.  A CNI
        network is given the pod's ``ports`` (the primary only: its plugins
        publish them at ADD) and ``pod_name`` (for CNI_ARGS)."""
        from .cni import CNI

        made = cls()
        try:
            for i, net in enumerate(networks):
                if isinstance(net, CNI):
                    made.attachments.append(net.attach(pod_netns_fd, holder_pid, primary=i == 0,
                                                       ports=ports if i == 0 else (), pod_name=pod_name))
                else:
                    made.attachments.append(net.attach(pod_netns_fd, holder_pid, primary=i == 0))
        except BaseException:
            try:
                made.detach(background=False)  # (the pod's namespace is still alive)
            except Exception:
                pass  # the attach error is the one to report
            raise
        return made

    @property
    def primary(self) -> Optional[Attachment]:
        return self.attachments[0] if self.attachments else None

    def publish(self, owner: Owner, ports: list[tuple[str, int, int]], *, kernel_owned: bool = True) -> None:
        """Publish ``ports`` to the primary address (rules owned by it).
        ``kernel_owned`` (default): the rules vanish with this process, even
        if it is SIGKILLed; pass False for a pod that outlives it (a
        persistent pod), whose rules gc sweeps once its holder is dead."""
        if self.primary is None:
            raise ConfigError("ports= needs a network (network=nsbox.Bridge(...) or nsbox.Veth(...))")
        self.primary.publish(owner, ports, kernel_owned=kernel_owned)

    def find(self, ifname: Optional[str]) -> Attachment:
        """The attachment of the pod interface ``ifname`` (None: the primary)."""
        if not self.attachments:
            raise ConfigError("the pod has no network; create it with network=nsbox.Veth(...) or nsbox.Bridge(...)")
        if ifname is None:
            return self.attachments[0]
        for att in self.attachments:
            if att.ifname == ifname:
                return att
        raise ConfigError(f"the pod has no interface {ifname!r}; it has {', '.join(a.ifname for a in self.attachments)}")

    def shape(self, shaping: Shaping, pod_netns_fd: int, ifname: Optional[str] = None) -> None:
        self.find(ifname).shape(shaping, pod_netns_fd)

    @property
    def address(self) -> Optional[Interface]:
        return self.primary.address if self.primary is not None else None

    @property
    def addresses(self) -> dict[str, Optional[Interface]]:
        return {att.ifname: att.address for att in self.attachments}

    @property
    def host_ifname(self) -> Optional[str]:
        return self.primary.host_ifname if self.primary is not None else None

    def take(self) -> list[Attachment]:
        """Hand over the attachments (in teardown order) and forget them:
        the caller detaches them, e.g. many pods' at once with
        :func:`nsbox.net.detach_all`."""
        atts, self.attachments = self.attachments[::-1], []
        return atts

    def detach(self, background: bool = True) -> None:
        """Undo everything, in reverse; the first error is raised once all
        was tried.

        ``background`` (for a pod whose holder was reaped: its network
        namespace is gone or going): the links are left to the kernel, which
        deletes them with the namespace, and the rest is released once they
        are gone, by :mod:`nsbox.net.teardown`; :func:`nsbox.net.settle`
        waits for it.  Else everything is deleted before this returns."""
        errors = []
        for att in self.take():
            try:
                if background:
                    att.detach_later()
                else:
                    att.detach()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def to_record(self) -> list[dict[str, Any]]:
        return [att.to_record() for att in self.attachments]

    @classmethod
    def from_record(cls, record: Sequence[dict[str, Any]]) -> "PodNetwork":
        return cls([Attachment.from_record(r) for r in record])
