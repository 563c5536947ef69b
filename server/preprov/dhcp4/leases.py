"""DHCPv4 addresses: pools per subnet, reservations, offers held briefly, leases, expiry.

Pure state, no I/O: the server core changes it and turns every change of a
bound lease into a `dhcp4.lease` event, which the inventory stores before the
ACK leaves. At start the table is rebuilt from the stored leases, so after a
kill -9 no address is given to two clients.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

from ..offers import Offers

IPv4 = ipaddress.IPv4Address


@dataclass(slots=True)
class Lease:
    ip: IPv4
    client: str  # client identifier (option 61) in hex, else the MAC
    mac: str
    state: str  # offered | bound | released | declined | expired
    expires: float  # wall clock: leases outlive the process
    hostname: str | None = None


@dataclass
class Subnet:
    network: ipaddress.IPv4Network
    first: IPv4
    last: IPv4
    router: IPv4 | None = None
    dns: tuple[IPv4, ...] = ()
    exclude: frozenset[IPv4] = frozenset()  # the server's own addresses
    _cursor: int = field(default=0, repr=False)
    _full_scan: float = field(default=float("-inf"), repr=False)
    _used_up: float = field(default=float("-inf"), repr=False)  # when a look found nothing
    size: int = field(init=False, repr=False)
    label: str = field(init=False, repr=False)  # "198.18.0.0/24", computed once

    def __post_init__(self) -> None:
        self.size = int(self.last) - int(self.first) + 1
        self.label = str(self.network)

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, IPv4) and ip in self.network


def default_subnet(iface: ipaddress.IPv4Interface) -> Subnet:
    """Zero-config: the interface's subnet, its upper half as the pool (the lower half
    is left to hosts with static addresses), the server's address excluded."""
    net = iface.network
    hosts = net.num_addresses - 2
    if hosts < 4:
        first, last = net.network_address + 1, net.broadcast_address - 1
    else:
        first = net.network_address + net.num_addresses // 2
        last = net.broadcast_address - 1
    return Subnet(net, first, last, router=iface.ip, dns=(), exclude=frozenset({iface.ip}))


SCAN_MAX = 256  # addresses looked at for a DISCOVER before the oldest offer is taken
TAKEN_BACK_MAX = 4096


class NoAddress(Exception):
    pass


class LeaseTable:
    def __init__(self, subnets: list[Subnet], reservations: dict[str, IPv4] | None = None) -> None:
        self.subnets = subnets
        self.reservations = dict(reservations or {})  # MAC -> address
        self.reserved = {ip: mac for mac, ip in self.reservations.items()}
        self.by_ip: dict[IPv4, Lease] = {}
        self.by_client: dict[str, Lease] = {}
        self.offers: Offers[IPv4, Lease] = Offers()
        # offers taken back for another DISCOVER, (address, client), the latest few:
        # their client's REQUEST still wins
        self.taken_back: OrderedDict[tuple[IPv4, str], None] = OrderedDict()

    # -- loading -----------------------------------------------------------------

    def load(self, leases: list[Lease]) -> None:
        for lease in leases:
            self._put(lease)

    def _put(self, lease: Lease) -> None:
        self.offers.note(lease.ip, lease)
        old = self.by_ip.get(lease.ip)
        if old is not None and self.by_client.get(old.client) is old:
            del self.by_client[old.client]
        self.by_ip[lease.ip] = lease
        if lease.state in ("offered", "bound"):
            prior = self.by_client.get(lease.client)
            if prior is not None and prior is not lease and prior.ip != lease.ip:
                # one binding per client: the older one is given up
                prior.state = "released"
            self.by_client[lease.client] = lease

    # -- questions ---------------------------------------------------------------

    def subnet_of(self, ip: IPv4) -> Subnet | None:
        for s in self.subnets:
            if ip in s.network:
                return s
        return None

    def current(self, client: str, now: float) -> Lease | None:
        lease = self.by_client.get(client)
        if lease is None or lease.expires <= now or lease.state not in ("offered", "bound"):
            return None
        return lease

    def claimable(self, ip: IPv4, client: str, mac: str, subnet: Subnet, now: float) -> bool:
        """May a REQUEST in SELECTING bind `ip` to this client: it was offered to this
        client, and is still offered (perhaps since to another, when a used-up pool
        took it back: RFC 2131 leaves an unrequested offer to the server, and the
        client it was offered to first wins). An address never offered to this
        client is not bound by a REQUEST alone: blind REQUESTs from made-up MACs
        would fill the pool."""
        lease = self.by_ip.get(ip)
        if lease is None or lease.state != "offered":
            return False
        if lease.client != client and (ip, client) not in self.taken_back:
            return False
        owner = self.reserved.get(ip)
        in_pool = subnet.first <= ip <= subnet.last or self.reservations.get(mac) == ip
        return in_pool and (owner is None or owner == mac) and ip not in subnet.exclude

    def free(self, ip: IPv4, client: str, mac: str, subnet: Subnet, now: float) -> bool:
        """May `ip` go to this client?"""
        in_pool = subnet.first <= ip <= subnet.last
        if ip not in subnet.network or ip in subnet.exclude:
            return False
        if not in_pool and self.reservations.get(mac) != ip:
            return False
        owner = self.reserved.get(ip)
        if owner is not None and owner != mac:
            return False
        lease = self.by_ip.get(ip)
        if lease is None or lease.client == client:
            return lease is None or lease.state != "declined" or lease.expires <= now
        return lease.expires <= now or lease.state in ("released", "expired")

    # -- changes -----------------------------------------------------------------

    def offer(
        self, client: str, mac: str, subnet: Subnet, requested: IPv4 | None, now: float,
        hold: float,
    ) -> Lease:  # fmt: skip
        """The address to offer: the client's current one, its reservation, the one
        it asks for, or the next free one of the pool."""
        lease = self.current(client, now)
        if lease is not None and lease.ip in subnet.network:
            if lease.state == "offered":
                lease.expires = max(lease.expires, now + hold)
            return lease
        for candidate in (self.reservations.get(mac), requested):
            if candidate is not None and self.free(candidate, client, mac, subnet, now):
                return self._hold(candidate, client, mac, now, hold)
        ip = self._next_free(client, mac, subnet, now)
        return self._hold(ip, client, mac, now, hold)

    def _hold(self, ip: IPv4, client: str, mac: str, now: float, hold: float) -> Lease:
        self.offers.expire(now, self.by_ip, self.by_client)
        lease = Lease(ip, client, mac, "offered", now + hold)
        self._put(lease)
        return lease

    def _next_free(self, client: str, mac: str, subnet: Subnet, now: float) -> IPv4:
        # A look at the pool from the cursor, then the oldest offer. Once a look found
        # nothing, the next second's DISCOVERs go straight to the oldest offer, and
        # the pool is walked whole again a second later (profiled: walking a used-up
        # pool for every DISCOVER of a flood took a third of the server's time).
        if now - subnet._used_up >= 1.0:
            base = int(subnet.first)
            for step in range(subnet.size if subnet.size <= SCAN_MAX or now - subnet._full_scan
                              >= 1.0 else SCAN_MAX):  # fmt: skip
                i = (subnet._cursor + step) % subnet.size
                ip = IPv4(base + i)
                if self.free(ip, client, mac, subnet, now) and ip not in self.reserved:
                    subnet._cursor = (i + 1) % subnet.size
                    return ip
            if subnet.size > SCAN_MAX:
                subnet._full_scan = now
            subnet._used_up = now
        taken = self.offers.take_back(
            client, lambda ip: ip in subnet.network and ip not in self.reserved, self.by_client
        )
        if taken is not None:
            ip, lease = taken
            self.taken_back[(ip, lease.client)] = None
            if len(self.taken_back) > TAKEN_BACK_MAX:
                self.taken_back.popitem(last=False)
            return ip
        raise NoAddress(f"no free address in {subnet.first}-{subnet.last}")

    def bind(
        self, client: str, mac: str, ip: IPv4, now: float, lease_time: float,
        hostname: str | None = None,
    ) -> Lease:  # fmt: skip
        lease = Lease(ip, client, mac, "bound", now + lease_time, hostname)
        self._put(lease)
        return lease

    def learn(self, ip: IPv4, client: str, mac: str, state: str, expires: float) -> None:
        """A lease change another server sharing the inventory committed (its
        notification, or a claim it won against ours)."""
        held = self.by_ip.get(ip)
        if held is not None and held.client == client and held.state == state:
            held.expires = expires
            return
        self._put(Lease(ip, client, mac, state, expires))

    def release(self, client: str, mac: str, ip: IPv4, now: float) -> Lease | None:
        """Only the holder (client identifier and chaddr) may release a lease."""
        lease = self.by_ip.get(ip)
        if lease is None or lease.client != client or lease.mac != mac or lease.state != "bound":
            return None
        lease.state = "released"
        lease.expires = now
        self.by_client.pop(client, None)
        return lease

    def decline(self, client: str, mac: str, ip: IPv4, now: float, quarantine: float) -> Lease:
        """The client found the address in use: nobody gets it for `quarantine` seconds."""
        lease = Lease(ip, client, mac, "declined", now + quarantine)
        self._put(lease)
        self.by_client.pop(client, None)
        return lease

    def bound_count(self, now: float) -> int:
        return sum(1 for x in self.by_ip.values() if x.state == "bound" and x.expires > now)
