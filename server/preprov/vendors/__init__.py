"""The vendors preprov knows: one module each, registered in one table (VENDORS).

A vendor plugin (vendors.base.Vendor) says how its phones are recognised on each
channel (OUIs, the SIP PnP `vendor` parameter, DHCP option 60, the HTTP User-Agent,
the MAC in a request path) and how they want the SIP PnP NOTIFY's URL. The protocol
cores never name a vendor: identification (ident.py) and the PnP responder ask
this table.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from ..macros import try_mac
from .audiocodes import AUDIOCODES
from .base import Vendor, VendorFacts
from .cisco import CISCO
from .fanvil import FANVIL
from .gigaset import GIGASET
from .grandstream import GRANDSTREAM
from .panasonic import PANASONIC
from .poly import POLY
from .snom import SNOM
from .yealink import YEALINK

VENDORS: tuple[Vendor, ...] = (
    PANASONIC, YEALINK, POLY, CISCO, GRANDSTREAM, SNOM, FANVIL, GIGASET, AUDIOCODES,
)  # fmt: skip

T = TypeVar("T")
_MAC_IN_PATH = re.compile(r"(?<![0-9A-Fa-f])([0-9A-Fa-f]{12})(?![0-9A-Fa-f])")
_BY_OUI = {oui: v for v in VENDORS for oui in v.ouis}
_BY_NAME = {n: v for v in VENDORS for n in (v.name.lower(), v.key, *v.pnp_names)}


@functools.lru_cache(maxsize=256)  # a handful of names, asked for every request
def by_name(name: str | None) -> Vendor | None:
    """The vendor a name stands for: its own name, key, or what its phones send in the
    SIP PnP `vendor` parameter ("yealink", "Grandstream", "snom", "PLANET")."""
    return _BY_NAME.get(name.strip().lower()) if name else None


def by_oui(mac: str | None) -> Vendor | None:
    return _BY_OUI.get(mac[:6]) if mac else None


def _first(ask: Callable[[Vendor], T | None]) -> tuple[Vendor, T] | None:
    """The first vendor whose plugin recognises something, with what it found."""
    for v in VENDORS:
        found = ask(v)
        if found is not None:
            return v, found
    return None


# A phone's User-Agent is well under this; looking at no more keeps every vendor's
# pattern linear in practice (measured: a crafted 8,000-character one cost up to
# 730 ms in one of them, a 256-character one 0.3 ms).
MAX_USER_AGENT = 256


def from_user_agent(user_agent: str | None) -> VendorFacts | None:
    """Vendor, model, firmware and MAC from an HTTP (or SIP) User-Agent, or None."""
    ua = user_agent[:MAX_USER_AGENT] if user_agent else None
    hit = _first(lambda v: v.parse_user_agent(ua)) if ua else None
    return hit[1] if hit else None


@functools.lru_cache(maxsize=1024)  # a lab's phones send a few dozen distinct ones
def from_vendor_class(raw: bytes | None) -> VendorFacts | None:
    """Vendor and model from DHCP option 60 (binary for Poly, NUL-terminated for Cisco)."""
    hit = _first(lambda v: v.parse_vendor_class(raw)) if raw else None
    return hit[1] if hit else None


def redirect_of(raw_path: str) -> tuple[Vendor, str] | None:
    """The vendor and MAC of a request to a vendor's redirect service that preprov
    answers itself (AudioCodes: `GET /<MAC>`), or None."""
    return _first(lambda v: v.redirect_of(raw_path))


def upload_of(leaf: str) -> tuple[Vendor, str] | None:
    """The vendor and MAC of a file a phone may upload with PUT (a Poly's
    `<mac>-boot.log`), or None."""
    return _first(lambda v: v.upload_of(leaf))


def notify_form(vendor: str | None, url: str, settings: Mapping[str, str] | None = None) -> str:
    """The rule's URL as a SIP PnP NOTIFY carries it for this vendor's phones
    (`settings`: a form per vendor key, from the configuration's `vendors`)."""
    v = by_name(vendor)
    return v.notify_url(url, (settings or {}).get(v.key)) if v else url


def from_path(path: str) -> VendorFacts | None:
    """Vendor and MAC (or model) from a request path a vendor's phones ask for:
    `y000000000028.cfg`, `cfg000b82112233.xml`, `0004f2000001-boot.log`, ..."""
    path = path[-MAX_USER_AGENT:]  # the end names the file; no phone's path is longer
    hit = _first(lambda v: v.parse_path(path))
    if hit is not None:
        return hit[1]
    # a MAC alone (`<mac>.cfg`, `<MAC>.xml`): its vendor by the OUI
    m = _MAC_IN_PATH.search(path.rsplit("/", 1)[-1])
    mac = try_mac(m.group(1)) if m else None
    maker = by_oui(mac)
    return VendorFacts(maker.name, None, None, mac) if maker and mac else None


__all__ = ["PANASONIC", "VENDORS", "Vendor", "VendorFacts", "by_name", "by_oui", "from_path",
           "from_user_agent", "from_vendor_class", "notify_form", "redirect_of", "upload_of"]  # fmt: skip
