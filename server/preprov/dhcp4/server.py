"""The DHCPv4 server core: no sockets, no clock (docs/design.md §1), on codec.py.

`datagram_received(data, source, now)` returns the datagrams to send and the
events. A request goes through named stages (docs/design.md §2), and the stage that
decides says so in an event: decode, identify, allow-list, subnet (the
interface's, or the relay's by giaddr), message type, address, options, size.

Provisioning options come from the same rules as everything else (docs/protocol.md
§4): 160 and 159 carry the rule URL's folder as plain ASCII (not their IANA
meanings), 66 the whole URL, its folder or its host, 67 its file name. They
are sent when the client's parameter request list asks for them, or always
when configured.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from socket import inet_ntoa

from .. import vendors
from ..config import Dhcp4Options
from ..datagrams import Addr, Output, Send
from ..events import (
    DeviceFields,
    Dhcp4Answered,
    Dhcp4Ignored,
    Dhcp4Lease,
    Dhcp4Nak,
    Dhcp4Refused,
    Dhcp4Unprovisioned,
    RequestMalformed,
    device_fields,
)
from ..ident import DeviceFacts
from ..macros import url_dir
from ..rules import Decision, RuleSet
from ..safety import AllowList
from .codec import (
    BOOTREPLY,
    BOOTREQUEST,
    BROADCAST_FLAG,
    ZERO4,
    CodecError,
    Overflow,
    Packet,
    assemble,
    encode_options,
)
from .codec import decode as decode_packet
from .codec import encode as encode_packet
from .leases import IPv4, Lease, LeaseTable, NoAddress, Subnet

CHANNEL = "dhcpv4"
SERVER_PORT = 67
CLIENT_PORT = 68
BROADCAST = "255.255.255.255"
BLOCKS_MAX = 4096  # answers' option blocks kept (per subnet, rule, vendor, asked list)


class DHCPMessageType(IntEnum):
    """Option 53 (RFC 2132 §9.6)."""

    DHCPDISCOVER = 1
    DHCPOFFER = 2
    DHCPREQUEST = 3
    DHCPDECLINE = 4
    DHCPACK = 5
    DHCPNAK = 6
    DHCPRELEASE = 7
    DHCPINFORM = 8


# the types as plain names: an enum member's attribute and its .name go through
# descriptors, seven times per packet on the hot path
OFFER, ACK, NAK = DHCPMessageType.DHCPOFFER, DHCPMessageType.DHCPACK, DHCPMessageType.DHCPNAK
NAMES = {t: t.name for t in DHCPMessageType}

# option codes (RFC 2132)
MASK, ROUTER, DNS, HOSTNAME, REQUESTED_IP, LEASE_TIME = 1, 3, 6, 12, 50, 51
MSG_TYPE, SERVER_ID, PRL, MAX_SIZE, T1, T2, VENDOR_CLASS, CLIENT_ID = 53, 54, 55, 57, 58, 59, 60, 61
RELAY_INFO = 82


@dataclass
class Dhcp4Policy:
    server_ip: IPv4
    rules: RuleSet
    local: Subnet | None  # the interface's own subnet, for clients that are not relayed
    options: Dhcp4Options = field(default_factory=Dhcp4Options)
    lease_time: int = 3600
    offer_hold: float = 30.0
    quarantine: float = 3600.0
    allow: AllowList = field(default_factory=AllowList)
    dry_run: bool = False
    # per vendor key: the options and forms that replace the vendor's defaults (config vendors)
    vendor_forms: Mapping[str, Mapping[int, str]] = field(default_factory=dict)


def panasonic_forms(opts: Dhcp4Options) -> dict[int, str]:
    """The options a Panasonic reads and their forms, from dhcp4.options (docs/protocol.md
    §4): 160 and 159 the folder without a file (`http://h:8080` or `http://h:8080/pana`,
    the phone appends `/<option 67>` or `/{MODEL}.cfg`), 66 as set, 67 the file."""
    forms: dict[int, str] = {}
    if opts.option160:
        forms[160] = "base"
    if opts.option159:
        forms[159] = "base"
    if opts.option66 != "off":
        forms[66] = opts.option66
    if opts.option67:
        forms[67] = "file"
    return forms


def provisioning_options(decision: Decision, forms: Mapping[int, str]) -> dict[int, bytes]:
    """The provisioning options of a rule's URL, each in the form the phone reads
    (vendors.base.Vendor.dhcp4; a Panasonic's: panasonic_forms)."""
    url = decision.url
    folder = url_dir(url)
    host = decision.parsed.host
    out: dict[int, bytes] = {}
    for code, form in forms.items():
        if form == "url":
            out[code] = (url if decision.parsed.filename else folder).encode()
        elif form == "folder":
            out[code] = folder.encode()
        elif form == "base":
            out[code] = folder.rstrip("/").encode()
        elif form == "file" and decision.parsed.filename:
            out[code] = decision.parsed.filename.encode()
        elif form == "host":
            out[code] = host.encode()
        elif form == "ip":
            with contextlib.suppress(ValueError):
                out[code] = IPv4(host).packed  # a name has no place in option 150
    return out


class Dhcp4Server:
    def __init__(self, policy: Dhcp4Policy, leases: LeaseTable) -> None:
        self.leases = leases
        self.policy = policy
        self._handlers = {
            DHCPMessageType.DHCPDISCOVER: self._discover,
            DHCPMessageType.DHCPREQUEST: self._request,
            DHCPMessageType.DHCPDECLINE: self._decline,
            DHCPMessageType.DHCPRELEASE: self._release,
            DHCPMessageType.DHCPINFORM: self._inform,
        }

    @property
    def policy(self) -> Dhcp4Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Dhcp4Policy) -> None:
        self._policy = policy
        # an answer's options but option 82, encoded (_reply)
        self._blocks: dict[
            tuple[object, ...], tuple[Subnet, bytes, tuple[int, ...], str | None]
        ] = {}

    def datagram_received(self, data: bytes, source: Addr, now: float) -> Output:
        out = Output()
        self._receive(data, source, now, out)
        return out

    # -- stages ----------------------------------------------------------------

    def _receive(self, data: bytes, source: Addr, now: float, out: Output) -> None:
        p = self.policy
        # 1. decode
        try:
            req = decode_packet(data)
        except CodecError as e:
            out.events.append(
                RequestMalformed(channel=CHANNEL, client=source[0], reason=str(e)[:300])
            )
            return
        if req.op != BOOTREQUEST:
            return  # a reply from another server on the segment
        mtype = _msg_type(req)
        if mtype is None:
            out.events.append(
                RequestMalformed(
                    channel=CHANNEL,
                    client=source[0],
                    reason="BOOTREQUEST without a message type: BOOTP is not served",
                )
            )
            return
        # 2. identify
        mac = req.chaddr[:6].hex().upper() if len(req.chaddr) >= 6 else None
        if mac is None:
            out.events.append(
                RequestMalformed(channel=CHANNEL, client=source[0], reason="no chaddr")
            )
            return
        cid_raw = raw_option(req, CLIENT_ID)
        client = cid_raw.hex() if cid_raw else mac
        vclass = _text(req, VENDOR_CLASS)
        giaddr = IPv4(req.giaddr) if req.giaddr != ZERO4 else None
        giaddr_s = inet_ntoa(req.giaddr) if giaddr else None
        # the subnet: the relay's, chosen by giaddr, or the interface's own (stage 4)
        subnet = self.leases.subnet_of(giaddr) if giaddr else p.local
        # option 60 in its vendor's form (binary for Poly, NUL-terminated for Cisco)
        said = vendors.from_vendor_class(raw_option(req, VENDOR_CLASS))
        facts = DeviceFacts(mac, said.model if said else None, None,
                            said.vendor if said else None, None, vclass,
                            subnet.label if subnet else None, giaddr_s)  # fmt: skip
        facts = facts.with_vendor_from_oui()
        name = NAMES[mtype]
        dev = _dev(facts, inet_ntoa(req.ciaddr) if req.ciaddr != ZERO4 else None)
        # 3. allow-list (for a lab sharing its segment with another DHCP server)
        why = p.allow.why_not(mac, giaddr_s or source[0])
        if why:
            out.events.append(Dhcp4Refused(**dev, reason=why, request=name))
            return
        # 4. a subnet to answer from
        if subnet is None:
            where = f"relay {giaddr}" if giaddr else "this interface"
            out.events.append(
                Dhcp4Refused(**dev, reason=f"no subnet configured for {where}", request=name)
            )
            return
        # 5. the message
        handler = self._handlers.get(mtype)
        if handler is None:
            out.events.append(
                Dhcp4Ignored(**dev, reason=f"{name} is not for a server", request=name)
            )
            return
        handler(req, facts, client, subnet, now, out)

    def _discover(
        self,
        req: Packet,
        facts: DeviceFacts,
        client: str,
        subnet: Subnet,
        now: float,
        out: Output,
    ) -> None:
        requested = _ip_option(req, REQUESTED_IP)
        try:
            lease = self.leases.offer(
                client, facts.mac or "", subnet, requested, now, self.policy.offer_hold
            )
        except NoAddress as e:
            out.events.append(
                Dhcp4Refused(**_dev(facts, None), reason=str(e), request="DHCPDISCOVER")
            )
            return
        self._reply(req, facts, subnet, OFFER, lease.ip, now, out)

    def _request(
        self,
        req: Packet,
        facts: DeviceFacts,
        client: str,
        subnet: Subnet,
        now: float,
        out: Output,
    ) -> None:
        p = self.policy
        server_id = _ip_option(req, SERVER_ID)
        requested = _ip_option(req, REQUESTED_IP)
        ciaddr = IPv4(req.ciaddr) if req.ciaddr != ZERO4 else None
        mac = facts.mac or ""
        current = self.leases.current(client, now)
        if server_id is not None:
            # SELECTING (RFC 2131 §4.3.2)
            if server_id != p.server_ip:
                if current is not None and current.state == "offered":
                    current.expires = now  # our offer was not taken
                out.events.append(
                    Dhcp4Ignored(
                        **_dev(facts, None),
                        request="DHCPREQUEST",
                        reason=f"the client selected server {server_id}",
                    )
                )
                return
            ip = requested or ciaddr
            mine = current is not None and current.ip == ip
            if ip is None or not (mine or self.leases.claimable(ip, client, mac, subnet, now)):
                offered = current.ip if current else None
                self._nak(req, facts, ip, f"requested {ip}, offered {offered}", out)
                return
        else:
            # INIT-REBOOT (option 50), or RENEWING / REBINDING (ciaddr)
            ip = requested if ciaddr is None else ciaddr
            if ip is None:
                self._nak(req, facts, None, "REQUEST names no address", out)
                return
            if ip not in subnet.network:
                self._nak(req, facts, ip, f"{ip} is not on {subnet.network}", out)
                return
            if current is not None and current.ip != ip:
                self._nak(req, facts, ip, f"the client's lease is {current.ip}, not {ip}", out)
                return
            if current is None:
                held = self.leases.by_ip.get(ip)
                if (
                    held is not None
                    and held.client != client
                    and (not self.leases.free(ip, client, mac, subnet, now))
                ):
                    self._nak(req, facts, ip, f"{ip} is leased to another client", out)
                    return
                if held is None or held.client != client:
                    # RFC 2131 §4.3.2: with no record of the client, remain silent
                    out.events.append(
                        Dhcp4Ignored(**_dev(facts, None), request="DHCPREQUEST",
                                     reason=f"no record of this client's lease of {ip}")
                    )  # fmt: skip
                    return
                if not self.leases.free(ip, client, mac, subnet, now):
                    self._nak(req, facts, ip, f"{ip} is not free (declined)", out)
                    return
        lease = self.leases.bind(client, mac, ip, now, p.lease_time, _text(req, HOSTNAME))
        out.events.append(_lease_event(facts, lease, client))
        self._reply(req, facts, subnet, ACK, lease.ip, now, out)
        out.if_lost = lambda ips: self._lost(req, facts, lease)

    def _lost(self, req: Packet, facts: DeviceFacts, lease: Lease) -> Output:
        """Another server sharing the inventory bound this address first (its REQUEST
        was committed before ours): it is that server's client's now, ours is told NAK
        and starts again with a DISCOVER (RFC 2131 §3.1, step 4)."""
        self.leases.learn(lease.ip, f"(another server) {lease.ip}", "", "bound", lease.expires)
        out = Output()
        self._nak(req, facts, lease.ip, f"{lease.ip} was bound by another server first", out)
        return out

    def _decline(
        self,
        req: Packet,
        facts: DeviceFacts,
        client: str,
        subnet: Subnet,
        now: float,
        out: Output,
    ) -> None:
        ip = _ip_option(req, REQUESTED_IP)
        if _ip_option(req, SERVER_ID) != self.policy.server_ip or ip is None:
            out.events.append(
                Dhcp4Ignored(
                    **_dev(facts, None),
                    request="DHCPDECLINE",
                    reason="DECLINE for another server or no address",
                )
            )
            return
        held = self.leases.by_ip.get(ip)
        if (
            held is None
            or held.client != client
            or held.mac != facts.mac
            or (held.state not in ("offered", "bound") or held.expires <= now)
        ):
            # RFC 2131 §4.3.3: a client declines the address it was given; anybody
            # else's DECLINE would take a working phone's address away
            out.events.append(
                Dhcp4Refused(**_dev(facts, None), request="DHCPDECLINE",
                             reason=f"DECLINE of {ip}, which this client does not hold")
            )  # fmt: skip
            return
        lease = self.leases.decline(client, facts.mac or "", ip, now, self.policy.quarantine)
        out.events.append(_lease_event(facts, lease, client))

    def _release(
        self,
        req: Packet,
        facts: DeviceFacts,
        client: str,
        subnet: Subnet,
        now: float,
        out: Output,
    ) -> None:
        lease = self.leases.release(client, facts.mac or "", IPv4(req.ciaddr), now)
        if lease is None:
            out.events.append(
                Dhcp4Ignored(
                    **_dev(facts, str(IPv4(req.ciaddr))),
                    request="DHCPRELEASE",
                    reason=f"no lease of {IPv4(req.ciaddr)} for this client",
                )
            )
            return
        out.events.append(_lease_event(facts, lease, client))

    def _inform(
        self,
        req: Packet,
        facts: DeviceFacts,
        client: str,
        subnet: Subnet,
        now: float,
        out: Output,
    ) -> None:
        # options, and no lease (RFC 2131 §4.3.5)
        self._reply(req, facts, subnet, ACK, None, now, out)

    # -- answers ---------------------------------------------------------------

    def _reply(
        self,
        req: Packet,
        facts: DeviceFacts,
        subnet: Subnet,
        mtype: DHCPMessageType,
        ip: IPv4 | None,
        now: float,
        out: Output,
    ) -> None:
        p = self.policy
        inform = ip is None
        ip_s = inet_ntoa(ip.packed if ip else req.ciaddr)
        facts = DeviceFacts(
            facts.mac,
            facts.model,
            facts.fwver,
            facts.vendor,
            ip_s,
            facts.vendor_class,
            facts.network,
            facts.relay,
        )
        prl_raw = raw_option(req, PRL) or b""
        decision = p.rules.decide(facts)
        maker = vendors.by_name(facts.vendor) if decision is not None else None
        # the answer's options but the client's own (option 82): the same for every
        # client of a subnet, rule and vendor asking for the same list, encoded once
        # (the subnet by identity: its addresses hash slowly; kept to rule out a reused id)
        key = (mtype, inform, id(subnet), decision.rule if decision else None,
               maker.key if maker else "", prl_raw)  # fmt: skip
        block = self._blocks.get(key)
        if block is None or block[0] is not subnet:
            block = (subnet, *self._options(subnet, mtype, inform, decision, maker, set(prl_raw)))
            if len(self._blocks) >= BLOCKS_MAX:  # a flood of made-up lists: start again
                self._blocks.clear()
            self._blocks[key] = block
        _, options, codes, note = block
        if decision is None:
            note = p.rules.explain(facts)
        relay_info = raw_option(req, RELAY_INFO)
        if relay_info is not None and req.giaddr != ZERO4:
            options += encode_options({RELAY_INFO: relay_info})  # echoed: RFC 3046 §2.2
            codes = tuple(sorted((*codes, RELAY_INFO)))
        max_size = 576
        raw = raw_option(req, MAX_SIZE)
        if raw is not None and len(raw) == 2:
            max_size = max(576, int.from_bytes(raw, "big"))
        name = _msg_type(req)
        rep = Packet(
            op=BOOTREPLY,
            htype=req.htype,
            xid=req.xid,
            flags=req.flags,
            ciaddr=req.ciaddr,
            yiaddr=ip.packed if ip else ZERO4,
            siaddr=p.server_ip.packed,
            giaddr=req.giaddr,
            chaddr=req.chaddr,
        )
        try:
            wire = assemble(rep, options, max_size)
        except Overflow as e:
            out.events.append(
                Dhcp4Refused(
                    **_dev(facts, ip_s if ip else None),
                    request=NAMES[name] if name else None,
                    reason=f"the {NAMES[mtype]} does not fit in {max_size} octets: {e}",
                )
            )
            return
        dest = self._destination(req, nak=False)
        if not p.dry_run:
            out.sends.append(Send(wire, dest))
        out.events.append(
            Dhcp4Answered(
                **_dev(facts, ip_s),
                message=NAMES[mtype],
                request=NAMES[name] if name else "?",
                xid=f"{req.xid:08x}",
                ip=ip_s if ip else None,
                to=f"{dest[0]}:{dest[1]}",
                options=codes,
                url=decision.url if decision else None,
                rule=decision.rule if decision else None,
                note=note,
                dry_run=p.dry_run,
                vendor_class=facts.vendor_class,
                relay=facts.relay,
                network=facts.network,
            )
        )
        if note is not None:
            out.events.append(Dhcp4Unprovisioned(**_dev(facts, ip_s), message=NAMES[mtype],
                                                 reason=note))  # fmt: skip

    def _options(
        self, subnet: Subnet, mtype: DHCPMessageType, inform: bool, decision: Decision | None,
        maker: vendors.Vendor | None, prl: set[int],
    ) -> tuple[bytes, tuple[int, ...], str | None]:  # fmt: skip
        """An answer's options, encoded; their codes; why a phone of the rule's gets no
        provisioning option (None: it does, or no rule matched)."""
        p = self.policy
        o: dict[int, bytes] = {MSG_TYPE: bytes((mtype,)), SERVER_ID: p.server_ip.packed}
        if not inform:
            o[LEASE_TIME] = p.lease_time.to_bytes(4, "big")
            o[T1] = (p.lease_time // 2).to_bytes(4, "big")
            o[T2] = (p.lease_time * 7 // 8).to_bytes(4, "big")
        o[MASK] = subnet.network.netmask.packed
        if subnet.router is not None:
            o[ROUTER] = subnet.router.packed
        if subnet.dns:
            o[DNS] = b"".join(d.packed for d in subnet.dns)
        note = None
        if decision is not None:
            # the options in the form the phone's vendor reads (Panasonic: dhcp4.options)
            forms: Mapping[int, str] = (
                p.vendor_forms.get(maker.key, maker.dhcp4) if maker is not None else {}
            ) or panasonic_forms(p.options)
            values = provisioning_options(decision, forms)
            codes = tuple(forms)
            wanted = prl | set(p.options.always_send)
            for code in codes:
                if code in values and code in wanted:
                    o[code] = values[code]
            if codes and not any(code in o for code in codes):
                # none sent: the client asked for none and dhcp4.options.always_send
                # names none (an answer with an always-sent URL is no warning)
                asked = ", ".join(str(c) for c in sorted(codes))
                note = f"the client asked for none of options {asked}"
        return encode_options(o), tuple(sorted(o)), note

    def _nak(
        self, req: Packet, facts: DeviceFacts, ip: IPv4 | None, reason: str, out: Output
    ) -> None:
        nak = {
            MSG_TYPE: bytes((NAK,)),
            SERVER_ID: self.policy.server_ip.packed,
            56: reason.encode()[:250],  # option 56: message
        }
        rep = Packet(
            op=BOOTREPLY,
            htype=req.htype,
            xid=req.xid,
            flags=req.flags | BROADCAST_FLAG if req.giaddr != ZERO4 else req.flags,
            giaddr=req.giaddr,
            chaddr=req.chaddr,
            options=nak,
        )
        if not self.policy.dry_run:
            out.sends.append(Send(encode_packet(rep), self._destination(req, nak=True)))
        out.events.append(
            Dhcp4Nak(
                **_dev(facts, None),
                request="DHCPREQUEST",
                xid=f"{req.xid:08x}",
                ip=str(ip) if ip else None,
                reason=reason,
            )
        )

    @staticmethod
    def _destination(req: Packet, nak: bool) -> Addr:
        """RFC 2131 §4.1. To a client without an address the reply is broadcast: unicast
        to yiaddr would need an ARP entry the kernel does not have (the RFC allows it)."""
        if req.giaddr != ZERO4:
            return (inet_ntoa(req.giaddr), SERVER_PORT)
        if not nak and req.ciaddr != ZERO4:
            return (inet_ntoa(req.ciaddr), CLIENT_PORT)
        return (BROADCAST, CLIENT_PORT)


def raw_option(req: Packet, code: int) -> bytes | None:
    return req.options.get(code)


# option 53's value to its type: a dict lookup (calling the enum costs a microsecond)
_TYPES: dict[bytes, DHCPMessageType] = {bytes((t,)): t for t in DHCPMessageType}


def _msg_type(req: Packet) -> DHCPMessageType | None:
    return _TYPES.get(req.options.get(MSG_TYPE, b""))


def _ip_option(req: Packet, code: int) -> IPv4 | None:
    raw = raw_option(req, code)
    return ipaddress.IPv4Address(raw) if raw is not None and len(raw) == 4 else None


def _text(req: Packet, code: int) -> str | None:
    raw = raw_option(req, code)
    if not raw:
        return None
    return raw.decode("utf-8", "replace").strip("\x00") or None


def _dev(facts: DeviceFacts, client: str | None) -> DeviceFields:
    return device_fields(CHANNEL, facts, client)


def _lease_event(facts: DeviceFacts, lease: Lease, client: str) -> Dhcp4Lease:
    return Dhcp4Lease(
        **_dev(facts, inet_ntoa(lease.ip.packed)),
        ip=inet_ntoa(lease.ip.packed),
        client_id=client,
        state=lease.state,
        expires=lease.expires,
        hostname=lease.hostname,
    )
