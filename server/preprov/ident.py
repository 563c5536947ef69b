"""Device facts, and extracting them from what a phone sends (docs/design.md §3).

Each channel has an extractor that yields DeviceFacts; facts from several
sources are merged, and the merged facts decide the rule (rules.py) and name
the device record (inventory).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import vendors
from .events import (
    Dhcp4Answered,
    Dhcp4Lease,
    Dhcp6Lease,
    Event,
    FileServed,
    PnpSubscribe,
)

NO_FACTS: DeviceFacts  # the empty facts, defined below the class

# Vendor names that say nothing about the phone (Snom, VTech: docs/protocol.md §3).
MEANINGLESS_VENDORS = {"", "oem", "unknown"}


# Not frozen, and slotted: several are built for every DHCP packet (0.8 µs frozen
# against 0.2 µs), and the directory keeps one per device. Treated as values all
# the same: nothing assigns to a field once built (the lru_cache and the directory
# share them).
@dataclass(slots=True)
class DeviceFacts:
    mac: str | None = None  # 12 upper-case hex digits
    model: str | None = None
    fwver: str | None = None
    vendor: str | None = None
    ip: str | None = None
    vendor_class: str | None = None  # DHCP option 60
    network: str | None = None  # the client's subnet, e.g. 198.18.0.0/24
    relay: str | None = None  # the relay agent's address (giaddr)

    @property
    def oui(self) -> str | None:
        return self.mac[:6] if self.mac else None

    def merged(self, other: DeviceFacts) -> DeviceFacts:
        """Facts of self, completed by those of other where self has none."""
        if other is NO_FACTS or other is self:
            return self  # the common case on a hot path: nothing known beside the request
        if ((self.mac or not other.mac) and (self.model or not other.model)
                and (self.fwver or not other.fwver) and (self.vendor or not other.vendor)
                and (self.ip or not other.ip) and (self.vendor_class or not other.vendor_class)
                and (self.network or not other.network) and (self.relay or not other.relay)):
            return self  # other adds nothing: no new object  # fmt: skip
        return DeviceFacts(
            mac=self.mac or other.mac,
            model=self.model or other.model,
            fwver=self.fwver or other.fwver,
            vendor=self.vendor or other.vendor,
            ip=self.ip or other.ip,
            vendor_class=self.vendor_class or other.vendor_class,
            network=self.network or other.network,
            relay=self.relay or other.relay,
        )

    def with_vendor_from_oui(self) -> DeviceFacts:
        """The vendor by its own name (a PnP `vendor="yealink"` is Yealink), or, when the
        request named none that means anything, by the MAC's OUI."""
        vendor = self.vendor
        known = vendors.by_name(vendor)
        if known is not None:
            vendor = known.name
        elif vendor is None or vendor.lower() in MEANINGLESS_VENDORS:
            by_oui = vendors.by_oui(self.mac)
            vendor = by_oui.name if by_oui else vendor
        if vendor == self.vendor:
            return self
        # built directly: dataclasses.replace costs several times as much, per packet
        return DeviceFacts(self.mac, self.model, self.fwver, vendor, self.ip, self.vendor_class,
                           self.network, self.relay)  # fmt: skip


def from_vendor(found: vendors.VendorFacts | None) -> DeviceFacts:
    if found is None:
        return DeviceFacts()
    return DeviceFacts(mac=found.mac, model=found.model, fwver=found.fwver, vendor=found.vendor)


def facts_from_user_agent(user_agent: str | None) -> DeviceFacts:
    """Vendor, model, firmware and MAC from a User-Agent, in each vendor's dialect
    (vendors/: `Panasonic_KX-UT113/01.133 (0080f0c8c381)`, `Yealink SIP-T46G ...`)."""
    # the cache holds what is looked at (vendors.MAX_USER_AGENT), not a 16 KiB header
    return _facts_from_user_agent(user_agent[: vendors.MAX_USER_AGENT] if user_agent else None)


@functools.lru_cache(maxsize=4096)  # a phone sends the same User-Agent every time
def _facts_from_user_agent(user_agent: str | None) -> DeviceFacts:
    return from_vendor(vendors.from_user_agent(user_agent))


NO_FACTS = DeviceFacts()


def told_by(kind: str, fields: Mapping[str, object]) -> DeviceFacts:
    """What one event (as stored, or as another server told it) tells of its device: a
    DHCP answer its option 60, relay and subnet; a SUBSCRIBE or a served file its model,
    firmware and vendor. A live event's are read from its attributes, the same fields
    (Directory._said, Directory._answered)."""

    def text(key: str) -> str | None:
        v = fields.get(key)
        return v if isinstance(v, str) and v else None

    if kind == "dhcp4.answered":
        return DeviceFacts(vendor_class=text("vendor_class"), relay=text("relay"),
                           network=text("network"))  # fmt: skip
    return DeviceFacts(model=text("model"), fwver=text("fwver"), vendor=text("vendor"))


class Directory:
    """One device, one record of what its own traffic said, whatever the channel
    (docs/design.md §3). A subscriber of the event bus, it keeps:

    - per MAC, the facts each channel saw: model, firmware and vendor from a SIP
      PnP SUBSCRIBE or a served file's User-Agent; option 60, the relay and the
      subnet from a DHCP request it answered. `known(mac)` gives them, so a rule on
      option 60 decides the same for that phone's HTTP fetch, which carries no
      option 60 (rules.RuleSet.decide merges them under the request's own facts);
    - which device holds an address: its DHCPv4 or DHCPv6 lease, the DHCPINFORM of
      a phone with a static address, the source of its SIP PnP SUBSCRIBE.
      `holder(address)` finds a device from a request that names no MAC.

    A request path naming a MAC, or a refused request, teaches nothing here: anybody
    can send those. At most `max_entries` of each, the least recently told go first."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._by_address: OrderedDict[str, str] = OrderedDict()
        self._facts: OrderedDict[str, DeviceFacts] = OrderedDict()
        self.version = 0  # counts the changes of what known() and holder() answer
        self._told: dict[type, Callable[[Any], None]] = {
            Dhcp4Lease: self._lease, Dhcp6Lease: self._lease, PnpSubscribe: self._said,
            FileServed: self._said, Dhcp4Answered: self._answered,
        }  # fmt: skip

    def __call__(self, event: Event) -> None:
        # by the event's exact type (none derives from these), looked up once: every
        # event of the bus comes here
        told = self._told.get(type(event))
        if told is not None:
            told(event)

    def _lease(self, event: Dhcp4Lease | Dhcp6Lease) -> None:
        if event.state == "bound" and event.mac:
            self.bind(event.ip, event.mac)
        elif self._by_address.get(event.ip) == event.mac:
            del self._by_address[event.ip]
            self.version += 1

    def _said(self, event: PnpSubscribe | FileServed) -> None:
        """Model, firmware and vendor; a SUBSCRIBE's source address."""
        mac = event.mac
        if not mac:
            return
        known = self._facts.get(mac)
        if (known is not None and event.model in (None, known.model)
                and event.fwver in (None, known.fwver) and event.vendor in (None, known.vendor)):
            self._facts.move_to_end(mac)  # what it says on every request: nothing new
        else:
            self.learn(mac, DeviceFacts(model=event.model or None, fwver=event.fwver or None,
                                        vendor=event.vendor or None))  # fmt: skip
        if event.client and isinstance(event, PnpSubscribe):
            self.bind(event.client, mac)

    def _answered(self, event: Dhcp4Answered) -> None:
        """Option 60, the relay and the subnet; a DHCPINFORM's source address."""
        mac = event.mac
        if not mac:
            return
        known = self._facts.get(mac)
        if (known is not None and event.vendor_class in (None, "", known.vendor_class)
                and event.relay in (None, "", known.relay)
                and event.network in (None, "", known.network)):  # fmt: skip
            self._facts.move_to_end(mac)
        else:
            self.learn(mac, DeviceFacts(vendor_class=event.vendor_class or None,
                                        relay=event.relay or None,
                                        network=event.network or None))  # fmt: skip
        if event.client and event.request == "DHCPINFORM":
            self.bind(event.client, mac)

    def remember(self, history: list[tuple[str, str, dict[str, object]]]) -> int:
        """Learn again from stored events, newest first (after a restart), each device's
        latest facts of each kind, without overwriting what live traffic told since.
        Returns how many devices it learned."""
        found: dict[str, DeviceFacts] = {}
        for mac, kind, data in history:
            told = told_by(kind, data)
            old = found.get(mac)
            found[mac] = told if old is None else old.merged(told)  # the newer wins
        learned = 0
        for mac, facts in reversed(found.items()):  # the oldest first: the newest end up last
            if mac not in self._facts:
                self.learn(mac, facts)
                learned += 1
        return learned

    def told_elsewhere(self, told: list[tuple[str, str, dict[str, object]]]) -> None:
        """What devices told another server sharing the inventory, oldest first: learnt
        as if this server had heard it (its facts; the address of a SUBSCRIBE or an
        INFORM)."""
        for mac, kind, data in told:
            self.learn(mac, told_by(kind, data))
            client = data.get("client")
            if isinstance(client, str) and client and (
                kind == "pnp.subscribe"
                or (kind == "dhcp4.answered" and data.get("request") == "DHCPINFORM")
            ):
                self.bind(client, mac)

    def learn(self, mac: str, facts: DeviceFacts) -> None:
        """What the device said last wins; what it did not say now is kept."""
        old = self._facts.get(mac)
        new = facts if old is None else facts.merged(old)
        if new != old:  # mostly it is what the device said before: no new record
            self._facts[mac] = new
            self.version += 1
        self._facts.move_to_end(mac)
        if len(self._facts) > self.max_entries:
            self._facts.popitem(last=False)

    def known(self, mac: str | None) -> DeviceFacts:
        return self._facts.get(mac, NO_FACTS) if mac else NO_FACTS

    def bind(self, address: str, mac: str) -> None:
        if self._by_address.get(address) != mac:
            self._by_address[address] = mac
            self.version += 1
        self._by_address.move_to_end(address)
        if len(self._by_address) > self.max_entries:
            self._by_address.popitem(last=False)

    def holder(self, address: str | None) -> str | None:
        return self._by_address.get(address.split("%", 1)[0]) if address else None
