"""The DHCPv6 server core: no sockets, no clock (docs/design.md §1), on codec.py.

RFC 8415: SOLICIT and ADVERTISE (or REPLY at once with Rapid Commit), REQUEST,
RENEW, REBIND, RELEASE, DECLINE, CONFIRM, INFORMATION-REQUEST answered
statelessly; IA_NA addresses from pools; status codes NoAddrsAvail, NoBinding
and NotOnLink; RELAY-FORW unwrapped (nested too) and the answer wrapped in
RELAY-REPL with the Interface-Id echoed. Option 17 carries the provisioning URL
from the rules under a configurable enterprise number and sub-option
(docs/protocol.md §5: PEN 258, sub-option 1 by default).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections import deque
from dataclasses import dataclass, field

from ..datagrams import Addr, Output, Send
from ..events import (
    DeviceFields,
    Dhcp6Answered,
    Dhcp6Ignored,
    Dhcp6Lease,
    Dhcp6Unprovisioned,
    RequestIgnored,
    RequestMalformed,
)
from ..ident import DeviceFacts
from ..offers import Offers
from ..rules import RuleSet
from ..safety import AllowList, RateLimiter
from . import codec as c

CHANNEL = "dhcpv6"
IPv6 = ipaddress.IPv6Address
UNSPECIFIED = IPv6("::")
MAX_RELAY_DEPTH = 8


@dataclass(slots=True)
class Binding:
    ip: IPv6
    client: str  # DUID hex + "/" + IAID
    mac: str | None
    state: str  # offered | bound | released | declined
    expires: float


@dataclass
class Pool6:
    prefix: ipaddress.IPv6Network
    first: IPv6
    last: IPv6
    exclude: frozenset[IPv6] = frozenset()
    cursor: int = 0
    full_scan: float = float("-inf")  # when the whole pool was last walked
    # addresses given back (offers expired, released), tried before any walk: in a
    # nearly full pool the walk from the cursor crosses bound addresses only
    freed: deque[IPv6] = field(default_factory=deque, compare=False, repr=False)

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1


def default_pool(iface: ipaddress.IPv6Interface) -> Pool6:
    """Zero-config: the interface's prefix, ::1000 to ::ffff of it, the server excluded."""
    net = iface.network
    base = int(net.network_address)
    return Pool6(net, IPv6(base + 0x1000), IPv6(base + 0xFFFF), frozenset({iface.ip}))


def text(ip: IPv6) -> str:
    """The address as str() writes it (RFC 5952), by the C library: str() of an
    IPv6Address took a fifteenth of the event loop's time under DHCPv6 load. The
    C library writes ::a.b.c.d and ::ffff:a.b.c.d dotted, str() does not: those two
    /96 (never a pool's) go to str()."""
    if int(ip) >> 32 in (0, 0xFFFF):
        return str(ip)
    return socket.inet_ntop(socket.AF_INET6, ip.packed)


_RELAY_FORW = bytes((c.RELAY_FORW,))  # a relayed message's first octet
SCAN_MAX = 256  # addresses looked at for a SOLICIT before the oldest offer is taken
FRESH_MAX = 16  # addresses never given looked at before one given back is reused


class Leases6:
    def __init__(self, pools: list[Pool6]) -> None:
        self.pools = pools
        self.by_ip: dict[IPv6, Binding] = {}
        self.by_client: dict[str, Binding] = {}
        self.offers: Offers[IPv6, Binding] = Offers()

    def load(self, bindings: list[Binding]) -> None:
        for b in bindings:
            self.by_ip[b.ip] = b
            if b.state == "bound":
                self.by_client[b.client] = b

    def pool_of(self, ip: IPv6) -> Pool6 | None:
        return next((p for p in self.pools if ip in p.prefix), None)

    def free(self, ip: IPv6, client: str, pool: Pool6, now: float) -> bool:
        if not (pool.first <= ip <= pool.last) or ip in pool.exclude:
            return False
        b = self.by_ip.get(ip)
        return b is None or (b.client == client and b.state != "declined") or b.expires <= now

    def current(self, client: str, now: float) -> Binding | None:
        b = self.by_client.get(client)
        return b if b is not None and b.expires > now and b.state in ("offered", "bound") else None

    def allocate(
        self, client: str, mac: str | None, pool: Pool6, hint: IPv6 | None, now: float, hold: float
    ) -> Binding | None:
        b = self.current(client, now)
        if b is not None and b.ip in pool.prefix:
            return b
        for ip in self.offers.expire(now, self.by_ip, self.by_client):
            self._freed(ip)
        if hint is not None and self.free(hint, client, pool, now):
            return self._put(Binding(hint, client, mac, "offered", now + hold))
        # addresses never given first, from the cursor; a few only before those given
        # back, then at most SCAN_MAX, the whole pool once a second
        b = self._walk(client, mac, pool, now, hold, min(pool.size, FRESH_MAX))
        if b is not None:
            return b
        while pool.freed:
            ip = pool.freed.popleft()
            if self.free(ip, client, pool, now):
                return self._put(Binding(ip, client, mac, "offered", now + hold))
        whole = now - pool.full_scan >= 1.0
        if whole:
            pool.full_scan = now
        window = pool.size if whole else min(pool.size, SCAN_MAX)
        b = self._walk(client, mac, pool, now, hold, window)
        if b is not None:
            return b
        taken = self.offers.take_back(client, lambda ip: ip in pool.prefix, self.by_client)
        if taken is not None:
            return self._put(Binding(taken[0], client, mac, "offered", now + hold))
        return None

    def _walk(
        self, client: str, mac: str | None, pool: Pool6, now: float, hold: float, window: int
    ) -> Binding | None:
        """The first free address of `window` from the cursor, offered. Nothing free
        there: the next walk starts past it (measured: in a nearly full pool every
        SOLICIT walked the same bound addresses, then took back another client's
        offer, and at twice its rate the server answered 59-63 % of it)."""
        for step in range(window):
            i = (pool.cursor + step) % pool.size
            ip = IPv6(int(pool.first) + i)
            if self.free(ip, client, pool, now):
                pool.cursor = (i + 1) % pool.size
                return self._put(Binding(ip, client, mac, "offered", now + hold))
        pool.cursor = (pool.cursor + window) % pool.size
        return None

    def _put(self, b: Binding) -> Binding:
        self.offers.note(b.ip, b)
        old = self.by_ip.get(b.ip)
        if old is not None and old is not b and self.by_client.get(old.client) is old:
            del self.by_client[old.client]  # the address changed hands
        self.by_ip[b.ip] = b
        if b.state in ("offered", "bound"):
            self.by_client[b.client] = b
        elif self.by_client.get(b.client) is b:
            del self.by_client[b.client]
        return b

    def learn(self, ip: IPv6, client: str, mac: str | None, state: str, expires: float) -> None:
        """A binding another server sharing the inventory committed (its notification,
        or a claim it won against ours)."""
        self._put(Binding(ip, client, mac, state, expires))

    def bind(self, b: Binding, now: float, valid: float) -> Binding:
        b.state = "bound"
        b.expires = now + valid
        return self._put(b)

    def end(self, client: str, ip: IPv6, state: str, until: float) -> Binding | None:
        b = self.by_ip.get(ip)
        if b is None or b.client != client:
            return None
        b.state = state
        b.expires = until
        if state == "released":
            self._freed(ip)
        return self._put(b)

    def _freed(self, ip: IPv6) -> None:
        pool = self.pool_of(ip)
        if pool is not None and len(pool.freed) < pool.size:  # each address once, mostly
            pool.freed.append(ip)


@dataclass
class Dhcp6Policy:
    duid: bytes  # the server's DUID
    rules: RuleSet  # with ${server} the IPv6 address
    local: Pool6 | None
    enterprise: int = 258
    suboption: int = 1
    always_send: bool = False
    preferred: int = 3600
    valid: int = 7200
    rapid_commit: bool = True
    offer_hold: float = 30.0
    allow: AllowList = field(default_factory=AllowList)
    dry_run: bool = False
    # per source address, before anything is parsed (relayed messages, which all
    # come from their relay, are not limited): a client sends a handful of
    # messages a boot, a flood from a few addresses is cut to this
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(200, 50))


def mac_of_duid(duid: bytes) -> str | None:
    """The link-layer address in a DUID-LLT (type 1) or DUID-LL (type 3) of Ethernet."""
    if len(duid) >= 14 and duid[:4] == b"\x00\x01\x00\x01":
        return duid[8:14].hex().upper()
    if len(duid) >= 10 and duid[:4] == b"\x00\x03\x00\x01":
        return duid[4:10].hex().upper()
    return None


@functools.lru_cache(maxsize=1024)
def _option17(enterprise: int, suboption: int, url: str) -> bytes:
    """Option 17's value carrying a rule's URL: the same bytes for every phone of it."""
    return c.vendor_opts(enterprise, [(suboption, url.encode())])


class Dhcp6Server:
    def __init__(self, policy: Dhcp6Policy, leases: Leases6) -> None:
        self.policy = policy
        self.leases = leases

    def datagram_received(self, data: bytes, source: Addr, now: float) -> Output:
        out = Output()
        client = source[0].split("%")[0]
        limiter = self.policy.limiter
        if data[:1] != _RELAY_FORW and not limiter.allow(client, now):
            suppressed = limiter.report(client, now)
            if suppressed is not None:
                out.events.append(
                    RequestIgnored(channel=CHANNEL, client=client, reason=f"rate limit: more "
                                   f"than {limiter.burst:g} at once or {limiter.rate:g}/s from "
                                   f"{client} ({suppressed} more not reported)")
                )  # fmt: skip
            return out
        try:
            self._receive(data, source, client, now, out)
        except c.CodecError as e:
            out.events.append(RequestMalformed(channel=CHANNEL, client=source[0], reason=str(e)))
        return out

    def _receive(self, data: bytes, source: Addr, client: str, now: float, out: Output) -> None:
        """`client`: the source's address without its zone."""
        msg = c.decode(data)
        relays: list[c.Relay] = []
        while isinstance(msg, c.Relay):
            if msg.msg_type != c.RELAY_FORW or len(relays) >= MAX_RELAY_DEPTH:
                return  # a RELAY-REPL, or a loop
            relays.append(msg)
            inner = msg.get(c.RELAY_MSG)
            if inner is None:
                raise c.CodecError("RELAY-FORW without a relay message")
            msg = c.decode(inner)
        if msg.msg_type in (c.ADVERTISE, c.REPLY, c.RECONFIGURE):
            return  # another server's answer
        duid = msg.get(c.CLIENTID)
        facts = DeviceFacts(mac=mac_of_duid(duid) if duid else None).with_vendor_from_oui()
        dev: DeviceFields = {
            "channel": CHANNEL, "client": client, "mac": facts.mac,
            "model": None, "fwver": None, "vendor": facts.vendor,
        }  # fmt: skip
        name = c.NAMES[msg.msg_type]
        why = self.policy.allow.why_not(facts.mac, client)
        if why:
            out.events.append(Dhcp6Ignored(**dev, reason=why, request=name))
            return
        # the link: the innermost relay's link-address, else this interface
        link = next((r.link_address for r in reversed(relays) if r.link_address != UNSPECIFIED),
                    None) if relays else None  # fmt: skip
        pool = self.leases.pool_of(link) if link else self.policy.local
        # where the answer goes, for its event: the request's source
        to = f"[{source[0]}]:{source[1]}"
        reply = self._answer(msg, duid, facts, dev, pool, now, out, to, len(relays))
        if reply is None:
            return
        wire = c.encode(reply)
        for r in reversed(relays):  # innermost first, outermost last (RFC 8415 §19.3)
            opts: c.Options = []
            iface_id = r.get(c.INTERFACE_ID)
            if iface_id is not None:
                opts.append((c.INTERFACE_ID, iface_id))
            opts.append((c.RELAY_MSG, wire))
            wire = c.encode(c.Relay(c.RELAY_REPL, r.hop_count, r.link_address, r.peer_address,
                                    opts))  # fmt: skip
        if not self.policy.dry_run:
            out.sends.append(Send(wire, source))
        if any(isinstance(ev, Dhcp6Lease) and ev.state == "bound" for ev in out.events):
            out.if_lost = lambda ips: self._lost(ips, dev)

    def _lost(self, ips: frozenset[str], dev: DeviceFields) -> Output:
        """Another server sharing the inventory bound these addresses first: they are its
        client's now; ours gets no REPLY and asks again, then is given others."""
        out = Output()
        for ip in ips:
            held = self.leases.by_ip.get(IPv6(ip))
            if held is not None:
                self.leases.learn(held.ip, f"(another server) {ip}", None, "bound", held.expires)
            out.events.append(Dhcp6Ignored(
                **dev, request="REQUEST",
                reason=f"{ip} was bound by another server first: not answered"))  # fmt: skip
        return out

    # -- answers -------------------------------------------------------------------

    def _answer(
        self, msg: c.Message, duid: bytes | None, facts: DeviceFacts, dev: DeviceFields,
        pool: Pool6 | None, now: float, out: Output, to: str = "", relayed: int = 0,
    ) -> c.Message | None:  # fmt: skip
        p = self.policy
        t = msg.msg_type
        name = c.NAMES[t]
        server_id = msg.get(c.SERVERID)
        if t != c.INFORMATION_REQUEST and duid is None:
            out.events.append(
                Dhcp6Ignored(**dev, reason=f"{name} without a client DUID", request=name)
            )
            return None
        if t in (c.SOLICIT, c.REBIND, c.CONFIRM) and server_id is not None:
            out.events.append(
                Dhcp6Ignored(**dev, reason=f"{name} with a server DUID", request=name)
            )
            return None
        if t in (c.REQUEST, c.RENEW, c.RELEASE, c.DECLINE) and server_id != p.duid:
            out.events.append(
                Dhcp6Ignored(**dev, reason=f"{name} for another server", request=name)
            )
            return None
        if t == c.INFORMATION_REQUEST and server_id is not None and server_id != p.duid:
            out.events.append(
                Dhcp6Ignored(**dev, reason=f"{name} for another server", request=name)
            )
            return None
        reply_type = c.REPLY
        options: c.Options = [(c.SERVERID, p.duid)]
        if duid is not None:
            options.append((c.CLIENTID, duid))
        ips: list[str] = []
        status: str | None = None
        ias = [c.IaNa.decode(v) for v in msg.all(c.IA_NA)]
        duid_hex = duid.hex() if duid else ""
        if t == c.SOLICIT:
            rapid = msg.get(c.RAPID_COMMIT) is not None and p.rapid_commit
            if not rapid:
                reply_type = c.ADVERTISE
            for ia in ias:
                options.append((c.IA_NA, self._lease_ia(ia, duid_hex, facts, pool, now, rapid,
                                                         out, ips).encode()))  # fmt: skip
            if rapid:
                options.append((c.RAPID_COMMIT, b""))
        elif t == c.REQUEST:
            for ia in ias:
                options.append((c.IA_NA, self._lease_ia(ia, duid_hex, facts, pool, now, True,
                                                         out, ips).encode()))  # fmt: skip
        elif t in (c.RENEW, c.REBIND):
            for ia in ias:
                client = f"{duid_hex}/{ia.iaid}"
                b = self.leases.current(client, now)
                if b is None or b.state != "bound":
                    ia_out = c.IaNa(ia.iaid, 0, 0, status=(c.NO_BINDING, "no binding for this IA"))
                    status = "NoBinding"
                else:
                    self.leases.bind(b, now, p.valid)
                    ip = text(b.ip)
                    out.events.append(self._lease_event(dev, b, ip))
                    ips.append(ip)
                    ia_out = self._ia(ia.iaid, b.ip)
                options.append((c.IA_NA, ia_out.encode()))
        elif t in (c.RELEASE, c.DECLINE):
            state = "released" if t == c.RELEASE else "declined"
            until = now if t == c.RELEASE else now + 3600
            for ia in ias:
                for a in ia.addresses:
                    b = self.leases.end(f"{duid_hex}/{ia.iaid}", a.address, state, until)
                    if b is not None:
                        out.events.append(self._lease_event(dev, b))
                    else:  # only the binding's DUID and IAID may end it
                        out.events.append(
                            Dhcp6Ignored(**dev, request=name, reason=f"{name} of {a.address}: "
                                         f"no binding of it for this DUID and IAID {ia.iaid}")
                        )  # fmt: skip
            options.append((c.STATUS_CODE, c.encode_status(c.SUCCESS, f"{name} done")))
        elif t == c.CONFIRM:
            addrs = [a.address for ia in ias for a in ia.addresses]
            on_link = pool is not None and all(a in pool.prefix for a in addrs)
            if not addrs:
                return None  # nothing to confirm: no answer (RFC 8415 §18.3.3)
            if on_link:
                options.append((c.STATUS_CODE, c.encode_status(c.SUCCESS, "on link")))
            else:
                options.append((c.STATUS_CODE, c.encode_status(c.NOT_ON_LINK, "not on this link")))
                status = "NotOnLink"
        # option 17 and the rule, for every answer but RELEASE/DECLINE
        oro = c.decode_oro(msg.get(c.ORO) or b"")
        url = rule = note = None
        if t not in (c.RELEASE, c.DECLINE):
            decision = p.rules.decide(facts)
            if decision is None:
                note = p.rules.explain(facts)
            elif c.VENDOR_OPTS in oro or p.always_send:
                options.append((c.VENDOR_OPTS, _option17(p.enterprise, p.suboption,
                                                         decision.url)))  # fmt: skip
                url, rule = decision.url, decision.rule
            else:
                note = "the client's ORO does not ask for option 17"
        if any(ia.status for ia in ias) and status is None:
            status = "NoAddrsAvail" if t in (c.SOLICIT, c.REQUEST) else status
        out.events.append(
            Dhcp6Answered(
                **dev, message=c.NAMES[reply_type], request=name,
                xid=f"{msg.transaction_id:06x}", ips=tuple(ips),
                options=tuple([code for code, _ in options]), url=url, rule=rule,
                status=status, note=note, dry_run=p.dry_run, to=to, relayed=relayed,
            )
        )  # fmt: skip
        if note is not None and reply_type in (c.ADVERTISE, c.REPLY):
            out.events.append(Dhcp6Unprovisioned(**dev, message=c.NAMES[reply_type], reason=note))
        return c.Message(reply_type, msg.transaction_id, options)

    def _lease_ia(
        self, ia: c.IaNa, duid_hex: str, facts: DeviceFacts, pool: Pool6 | None, now: float,
        commit: bool, out: Output, ips: list[str],
    ) -> c.IaNa:  # fmt: skip
        p = self.policy
        client = f"{duid_hex}/{ia.iaid}"
        hint = ia.addresses[0].address if ia.addresses else None
        if pool is None:
            return c.IaNa(ia.iaid, 0, 0, status=(c.NO_ADDRS_AVAIL, "no pool for this link"))
        if hint is not None and hint not in pool.prefix:
            hint = None
        b = self.leases.allocate(client, facts.mac, pool, hint, now, p.offer_hold)
        if b is None:
            return c.IaNa(ia.iaid, 0, 0, status=(c.NO_ADDRS_AVAIL, "the pool is exhausted"))
        ip = text(b.ip)
        if commit:
            self.leases.bind(b, now, p.valid)
            dev: DeviceFields = {
                "channel": CHANNEL, "client": ip, "mac": facts.mac, "model": None,
                "fwver": None, "vendor": facts.vendor,
            }  # fmt: skip
            out.events.append(self._lease_event(dev, b, ip))
        ips.append(ip)
        return self._ia(ia.iaid, b.ip)

    def _ia(self, iaid: int, ip: IPv6) -> c.IaNa:
        p = self.policy
        return c.IaNa(iaid, p.preferred // 2, p.preferred * 4 // 5,
                      [c.IaAddress(ip, p.preferred, p.valid)])  # fmt: skip

    @staticmethod
    def _lease_event(dev: DeviceFields, b: Binding, ip: str | None = None) -> Dhcp6Lease:
        """`ip`: the binding's address as text, where the caller has it."""
        fields = dict(dev)
        fields["client"] = ip = ip or text(b.ip)
        return Dhcp6Lease(**fields, ip=ip, client_id=b.client, state=b.state,  # type: ignore[arg-type]
                          expires=b.expires)  # fmt: skip
