"""What a simulated phone of each vendor does differently (docs/vendors.md): its SIP PnP
dialect, the DHCPv4 options it asks for and reads in its order, its option 60 and
User-Agent, and the files it asks for under the URL it was given. Panasonic's flow
(the CFG_*_FILE_PATH chain) is the core's own; the others start from here."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Persona:
    key: str  # the vendor key (vendors/)
    oui: str  # for the MACs of simulated phones (demo, storm)
    model: str  # the default model
    fwver: str
    user_agent: str  # {model} {fw} {mac} {MAC} {mac_colon} filled in
    sip_user_agent: str | None = None  # its SUBSCRIBE's, when not the HTTP one
    # SIP PnP: the Request-URI's user part ({MAC}/{mac}), the Event's vendor parameter;
    # None: the vendor has no PnP
    pnp_user: str | None = None
    pnp_vendor: str | None = None
    sip_port: int = 5060
    # DHCPv4: option 60 (None: none sent), the options asked for (55), the provisioning
    # options read, in the phone's order
    vendor_class: Callable[[str], bytes] | None = None  # of the model
    prl: bytes = bytes([1, 3, 6, 15, 42, 66, 67])
    reads: tuple[int, ...] = (66,)
    # the files asked for under a folder URL: (name, required); {mac} {MAC} {model}
    # {psn} filled in
    files: tuple[tuple[str, bool], ...] = ()
    # what a fetched file sends the phone on to (Poly's CONFIG_FILES, Cisco's Profile_Rule)
    follow: Callable[[bytes], list[str]] = field(default=lambda _b: [])

    def fill(self, text: str, mac: str, model: str, fw: str) -> str:
        colon = ":".join(mac[i : i + 2] for i in range(0, 12, 2)).lower()
        psn = model.removeprefix("CP-")
        return (text.replace("{model}", model).replace("{fw}", fw).replace("{MAC}", mac)
                .replace("{mac}", mac.lower()).replace("{mac_colon}", colon)
                .replace("{psn}", psn))  # fmt: skip


def _poly_follow(body: bytes) -> list[str]:
    m = re.search(rb'CONFIG_FILES="([^"]*)"', body)
    return [n.strip() for n in m.group(1).decode().split(",") if n.strip()] if m else []


def _cisco_follow(body: bytes) -> list[str]:
    m = re.search(rb"<Profile_Rule[^>]*>([^<]+)</Profile_Rule>", body)
    return [m.group(1).decode().strip()] if m else []


POLY60 = (13885).to_bytes(4, "big")


def _poly_vendor_class(model: str) -> bytes:
    tlv = b"\x01\x07Polycom" + bytes([2, len(model)]) + model.encode() + b"\xff"
    return POLY60 + bytes([len(tlv)]) + tlv


PERSONAS: dict[str, Persona] = {
    p.key: p
    for p in (
        Persona("yealink", "805EC0", "T46S", "66.86.0.15", "Yealink SIP-{model} {fw} {mac_colon}",
                pnp_user="MAC{mac}", pnp_vendor="Yealink", sip_port=5059,
                vendor_class=lambda _m: b"yealink", reads=(66,),
                files=(("{mac}.boot", False), ("y000000000000.boot", False), ("{mac}.cfg", True))),
        Persona("poly", "0004F2", "VVX_500", "5.9.7.4477",
                "FileTransport PolycomVVX-{model}-UA/{fw} Type/Application",
                vendor_class=_poly_vendor_class, reads=(66,), files=(("{mac}.cfg", True),),
                follow=_poly_follow),
        Persona("cisco", "D0EC35", "CP-8851-3PCC", "11.3.1", "Cisco-{model}/{fw} ({mac})",
                vendor_class=lambda m: b"Cisco Systems, Inc. IP Phone " + m.encode() + b"\0",
                prl=bytes([1, 3, 6, 15, 42, 66, 150, 159, 160]),
                reads=(66, 160, 159), files=(("{psn}.xml", True),), follow=_cisco_follow),
        Persona("grandstream", "000B82", "GXP2135", "1.0.7.97",
                "Grandstream Model HW {model} SW {fw} DevId {mac}",
                pnp_user="MAC%3A{MAC}", pnp_vendor="Grandstream", sip_port=5080,
                reads=(66, 160), prl=bytes([1, 3, 6, 15, 42, 66, 160]),
                files=(("cfg{mac}.xml", True),)),
        Persona("snom", "000413", "snomD785", "10.1.33.33",
                "Mozilla/4.0 (compatible; {model}-SIP {fw} 2010.12 {MAC} SXM:0 UXM:0)",
                pnp_user="MAC%3a{MAC}", pnp_vendor="snom", reads=(66,),
                files=(("{model}.htm", False), ("{model}-{MAC}.htm", True))),
        Persona("fanvil", "0C383E", "X4", "2.10.2.6887", "Fanvil {model} {fw} {mac}",
                pnp_user="MAC={mac}", pnp_vendor="Fanvil", reads=(66,),
                files=(("{mac}.cfg", True),)),
        Persona("gigaset", "7C2F80", "N870 IP PRO", "83.V2.11.0", "Gigaset {model}/{fw};{MAC}",
                pnp_user="MAC%3a{MAC}", pnp_vendor="Gigaset",
                vendor_class=lambda m: b"Gigaset_" + m.replace(" ", "_").encode(),
                prl=bytes([1, 3, 6, 15, 42, 66, 114]),
                reads=(114, 66), files=(("{MAC}.xml", True),)),
        Persona("audiocodes", "00908F", "440HD", "2.2.8.61",
                "AUDC-IPPhone/{fw} ({model}G-Rev0; {MAC})",
                sip_user_agent="AUDC-IPPhone/{fw}",  # no MAC in its SUBSCRIBE at all
                pnp_user="", prl=bytes([1, 3, 6, 15, 42, 66, 67, 160]), reads=(160, 66),
                files=(("{mac}.cfg", True),)),
    )
}  # fmt: skip


def persona_for(key: str) -> Persona | None:
    return PERSONAS.get(key)
