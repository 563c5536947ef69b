"""The event spine (docs/design.md §4): every protocol step is one typed event.

The log, the inventory and (later) the dashboard and metrics subscribe to the
one bus, so they can never disagree. Protocol cores return events; the asyncio
layer emits them here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypedDict

if TYPE_CHECKING:
    from .ident import DeviceFacts


# Not frozen: an event is built for every request and packet, and a frozen
# dataclass's __init__ costs five times as much (a DHCP answer's event: 3.3 against
# 0.7 µs). Treated as values all the same: nothing assigns to an event's field once
# it is emitted (fields() and again() rely on it).
@dataclass(kw_only=True)
class Event:
    kind: ClassVar[str] = "event"
    level: ClassVar[str] = "info"
    ts: float = field(default_factory=time.time)

    def fields(self) -> dict[str, Any]:
        """The event's fields but its time, computed once (the log and the inventory
        both ask): treat the dict as read-only."""
        cached: dict[str, Any] | None = self.__dict__.get("_fields")
        if cached is None:
            cached = self.__dict__.copy()  # the dataclass fields, in their order
            del cached["ts"]
            self.__dict__["_fields"] = cached
        return cached

    def again(self) -> Event:
        """The same event, happening now (a repeated request's answer, reused): a copy
        of its fields with a new time, sharing the computed fields() dict."""
        copy = object.__new__(type(self))
        d = copy.__dict__
        d.update(self.__dict__)
        d["ts"] = time.time()
        return copy


@dataclass(kw_only=True)
class DeviceEvent(Event):
    """An event about one device; the inventory files it under the MAC."""

    channel: str
    client: str | None = None  # the peer's address
    mac: str | None = None
    model: str | None = None
    fwver: str | None = None
    vendor: str | None = None


class DeviceFields(TypedDict):
    """The DeviceEvent fields, to pass as keywords to any device event."""

    channel: str
    client: str | None
    mac: str | None
    model: str | None
    fwver: str | None
    vendor: str | None


def device_fields(channel: str, facts: DeviceFacts, client: str | None) -> DeviceFields:
    return {
        "channel": channel,
        "client": client,
        "mac": facts.mac,
        "model": facts.model,
        "fwver": facts.fwver,
        "vendor": facts.vendor,
    }


@dataclass(kw_only=True)
class FileServed(DeviceEvent):
    kind: ClassVar[str] = "file.served"
    path: str
    template: str
    rule: str | None
    size: int
    status: int = 200


@dataclass(kw_only=True)
class Redirected(DeviceEvent):
    """A phone asked its vendor's redirect service (answered by preprov): sent the URL."""

    kind: ClassVar[str] = "redirect.answered"
    path: str
    url: str
    rule: str


@dataclass(kw_only=True)
class FileUploaded(DeviceEvent):
    """A file a phone PUT (a Poly's boot log), kept under the state directory."""

    kind: ClassVar[str] = "file.uploaded"
    path: str
    size: int
    stored: str  # where, relative to the state directory


@dataclass(kw_only=True)
class FileRefused(DeviceEvent):
    kind: ClassVar[str] = "file.refused"
    level: ClassVar[str] = "warning"
    path: str
    status: int
    reason: str
    template: str | None = None
    rule: str | None = None


@dataclass(kw_only=True)
class PnpSubscribe(DeviceEvent):
    """A SUBSCRIBE for ua-profile arrived (docs/protocol.md §3)."""

    kind: ClassVar[str] = "pnp.subscribe"
    call_id: str
    profile_type: str | None = None
    retransmission: bool = False
    note: str | None = None  # how the device was found, when not by the MAC it sent


@dataclass(kw_only=True)
class PnpAnswered(DeviceEvent):
    """200 OK sent to the SUBSCRIBE."""

    kind: ClassVar[str] = "pnp.answered"
    call_id: str


@dataclass(kw_only=True)
class PnpNotifySent(DeviceEvent):
    kind: ClassVar[str] = "pnp.notify-sent"
    call_id: str
    url: str
    rule: str
    to: str


@dataclass(kw_only=True)
class PnpNotifyAcked(DeviceEvent):
    kind: ClassVar[str] = "pnp.notify-acked"
    call_id: str
    status: int
    transmissions: int
    ms: float  # from the first NOTIFY to its answer


@dataclass(kw_only=True)
class PnpNotifyTimedOut(DeviceEvent):
    kind: ClassVar[str] = "pnp.notify-timeout"
    level: ClassVar[str] = "warning"
    call_id: str
    transmissions: int
    reason: str = "no answer to the NOTIFY before Timer F (RFC 3261 §17.1.2)"


@dataclass(kw_only=True)
class PnpIgnored(DeviceEvent):
    """A SIP message that got no answer, and why."""

    kind: ClassVar[str] = "pnp.ignored"
    level: ClassVar[str] = "warning"
    reason: str
    suppressed: int = 0  # like refusals from the same source not logged one by one
    no_rule: bool = False  # a SUBSCRIBE that passed every check but found no rule


@dataclass(kw_only=True)
class Dhcp4Answered(DeviceEvent):
    """An OFFER, ACK or NAK sent (or, in dry-run, that would have been)."""

    kind: ClassVar[str] = "dhcp4.answered"
    message: str  # DHCPOFFER | DHCPACK | DHCPNAK
    request: str  # the client's message type
    xid: str
    ip: str | None = None
    to: str = ""
    options: tuple[int, ...] = ()  # the option codes sent
    url: str | None = None  # the provisioning URL of the rule
    rule: str | None = None
    note: str | None = None
    dry_run: bool = False
    vendor_class: str | None = None  # option 60, as the client sent it
    relay: str | None = None  # giaddr
    network: str | None = None  # the subnet the address came from


@dataclass(kw_only=True)
class Dhcp4Nak(DeviceEvent):
    kind: ClassVar[str] = "dhcp4.nak"
    level: ClassVar[str] = "warning"
    request: str
    xid: str
    ip: str | None
    reason: str


@dataclass(kw_only=True)
class Dhcp4Lease(DeviceEvent):
    """A lease changed; the inventory stores it before the answer leaves."""

    kind: ClassVar[str] = "dhcp4.lease"
    ip: str
    client_id: str
    state: str  # bound | released | declined | expired
    expires: float
    hostname: str | None = None


@dataclass(kw_only=True)
class Dhcp4Unprovisioned(DeviceEvent):
    """An OFFER or ACK that carries no provisioning URL: no rule matched, or the client
    asked for none of the options. The device's last error, a refusal in the metrics."""

    kind: ClassVar[str] = "dhcp4.no-url"
    level: ClassVar[str] = "warning"
    message: str
    reason: str


@dataclass(kw_only=True)
class Dhcp4Ignored(DeviceEvent):
    """Not for this server (another one was selected, a reply, ...): no answer."""

    kind: ClassVar[str] = "dhcp4.ignored"
    reason: str
    request: str | None = None


@dataclass(kw_only=True)
class Dhcp4Refused(DeviceEvent):
    """For this server, but not answered: allow-list, no address, no subnet, too big."""

    kind: ClassVar[str] = "dhcp4.refused"
    level: ClassVar[str] = "warning"
    reason: str
    request: str | None = None


@dataclass(kw_only=True)
class Dhcp6Unprovisioned(DeviceEvent):
    """An ADVERTISE or REPLY without option 17: no rule matched, or not in the ORO."""

    kind: ClassVar[str] = "dhcp6.no-url"
    level: ClassVar[str] = "warning"
    message: str
    reason: str


@dataclass(kw_only=True)
class Dhcp6Answered(DeviceEvent):
    """An ADVERTISE or REPLY sent (or, in dry-run, that would have been)."""

    kind: ClassVar[str] = "dhcp6.answered"
    message: str
    request: str
    xid: str
    ips: tuple[str, ...] = ()
    to: str = ""
    options: tuple[int, ...] = ()
    url: str | None = None
    rule: str | None = None
    status: str | None = None  # a status code other than Success, with its reason
    note: str | None = None
    relayed: int = 0  # relay hops
    dry_run: bool = False


@dataclass(kw_only=True)
class Dhcp6Lease(DeviceEvent):
    """A DHCPv6 binding changed; stored before the REPLY leaves."""

    kind: ClassVar[str] = "dhcp6.lease"
    ip: str
    client_id: str  # DUID and IAID, hex
    state: str
    expires: float
    hostname: str | None = None


@dataclass(kw_only=True)
class Dhcp6Ignored(DeviceEvent):
    kind: ClassVar[str] = "dhcp6.ignored"
    reason: str
    request: str | None = None


@dataclass(kw_only=True)
class RequestMalformed(Event):
    """Bytes that did not parse as a request of the channel's protocol."""

    kind: ClassVar[str] = "request.malformed"
    level: ClassVar[str] = "warning"
    channel: str
    client: str | None
    reason: str


@dataclass(kw_only=True)
class RequestIgnored(Event):
    """A request not answered, or refused before it was read, and why: a source not
    allowed, over its rate, a cap reached."""

    kind: ClassVar[str] = "request.ignored"
    level: ClassVar[str] = "warning"
    channel: str
    client: str | None
    reason: str


@dataclass(kw_only=True)
class ServerStarted(Event):
    kind: ClassVar[str] = "server.started"
    services: tuple[str, ...]
    listening: tuple[str, ...]
    server_address: str | None
    templates: str
    state_dir: str
    config: str | None
    notes: tuple[str, ...] = ()


@dataclass(kw_only=True)
class ServerStopping(Event):
    kind: ClassVar[str] = "server.stopping"
    signal: str


@dataclass(kw_only=True)
class ConfigReloaded(Event):
    kind: ClassVar[str] = "config.reloaded"
    config: str | None
    notes: tuple[str, ...] = ()


@dataclass(kw_only=True)
class TemplateRejected(Event):
    """An edited template that does not compile: the last good version stays served."""

    kind: ClassVar[str] = "template.rejected"
    level: ClassVar[str] = "error"
    reason: str


@dataclass(kw_only=True)
class InventoryUnavailable(Event):
    """The inventory takes no commit (a shared database away, SQLite's writer process
    failing): no lease is answered, files and PnP are, their events wait in memory."""

    kind: ClassVar[str] = "inventory.unavailable"
    level: ClassVar[str] = "error"
    reason: str


@dataclass(kw_only=True)
class InventoryRecovered(Event):
    kind: ClassVar[str] = "inventory.recovered"
    reason: str


@dataclass(kw_only=True)
class ConfigRejected(Event):
    kind: ClassVar[str] = "config.rejected"
    level: ClassVar[str] = "error"
    config: str | None
    reason: str


@dataclass(kw_only=True)
class InternalError(Event):
    kind: ClassVar[str] = "internal.error"
    level: ClassVar[str] = "error"
    where: str
    reason: str


def is_refusal(event: Event) -> bool:
    """Something not answered or refused (a warning, or an ignored, refused or
    malformed request): what a hostile or broken peer can make as much of as it
    likes, so the log caps it, the inventory samples it and it creates no device."""
    return event.level != "info" or event.kind.endswith((".ignored", ".refused", ".malformed"))


Subscriber = Callable[[Event], None]


class ClaimsLost(Exception):
    """What a durable sink tells a caller whose events claim leases: committed, but
    these addresses were claimed by another server sharing the inventory first."""

    def __init__(self, ips: frozenset[str]) -> None:
        super().__init__(f"claimed by another server first: {', '.join(sorted(ips))}")
        self.ips = ips


class DurableSink(Protocol):
    def __call__(self, event: Event) -> None: ...

    def settled(self) -> Awaitable[None]:
        """Resolves once every event received so far is stored."""
        ...

    def after_commit(
        self, callback: Callable[[BaseException | None], None], claims: bool = False
    ) -> None:
        """Calls back once every event received so far is stored (or failed to be);
        `claims`: the caller's events claim leases (see inventory.store.Recorder)."""
        ...


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._durable: list[DurableSink] = []
        self.errors = 0

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    def subscribe_durable(self, sink: DurableSink) -> None:
        self._subscribers.append(sink)
        self._durable.append(sink)

    def emit(self, event: Event) -> None:
        for fn in self._subscribers:
            try:
                fn(event)
            except Exception:  # a broken subscriber must not break the protocol
                self.errors += 1
                logging.getLogger("preprov").exception("subscriber %r failed on %s", fn, event.kind)

    async def settled(self) -> None:
        for sink in self._durable:
            await sink.settled()

    def lag(self) -> float:
        """Seconds the durable sinks' oldest commit in flight has taken (0: none, or
        sinks that commit on the loop and so never fall behind it)."""
        return max((getattr(sink, "lag", lambda: 0.0)() for sink in self._durable), default=0.0)

    def after_settled(
        self, callback: Callable[[BaseException | None], None], claims: bool = False
    ) -> None:
        """Call back once every durable sink has stored what it received so far."""
        if len(self._durable) == 1:
            self._durable[0].after_commit(callback, claims)
            return
        sinks = list(self._durable)

        def step(error: BaseException | None) -> None:
            if error is not None or not sinks:
                callback(error)
            else:
                sinks.pop(0).after_commit(step, claims)

        step(None)
