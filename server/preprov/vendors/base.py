"""What a vendor plugin is: how its phones are recognised, and what they need."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..macros import try_mac, url_dir


@dataclass(frozen=True)
class VendorFacts:
    """What one request says of the phone, as far as its vendor's dialect tells."""

    vendor: str
    model: str | None = None
    fwver: str | None = None
    mac: str | None = None  # 12 upper-case hex digits


def _oui(text: str) -> str:
    return text.replace(":", "").replace("-", "").upper()


@dataclass(frozen=True)
class Vendor:
    name: str  # as shown: "Yealink"
    key: str  # as configured: "yealink"
    ouis: frozenset[str]  # 6 upper-case hex digits
    pnp_names: frozenset[str] = frozenset()  # the PnP Event's vendor parameter, lower case
    # User-Agents: named groups model, fw, mac (each optional)
    user_agents: tuple[re.Pattern[str], ...] = ()
    # option 60 as text (NULs and other control bytes dropped): named group model
    vendor_classes: tuple[re.Pattern[str], ...] = ()
    # a binary option 60 of its own (Poly's RFC 3925 form): the model, "" when it is
    # this vendor's but names no model, None when it is not this vendor's
    vendor_class_parser: Callable[[bytes], str | None] | None = None
    # request paths that name the phone: named groups mac, model (each optional)
    paths: tuple[re.Pattern[str], ...] = ()
    # what the SIP PnP NOTIFY's body carries: the rule's URL as it is, its folder
    # (ending in /), or the server's root (scheme://host:port)
    notify: Literal["url", "folder", "root"] = "url"
    # how its phones ask the vendor's redirect service (path and query): named group mac
    redirect: re.Pattern[str] | None = None
    # files its phones PUT (logs, their own settings): named group mac
    uploads: tuple[re.Pattern[str], ...] = ()
    # its URL under a rule's url_base ({base} replaced); None: <base>/<key>/
    base_form: str | None = None
    # DHCPv4: the options its phones read the provisioning server from, each in its
    # form: url (the rule's URL), folder (up to its last /), base (the folder without
    # the /), file (the URL's file name), host (the server's name or address), ip (the
    # server's IPv4 address, 4 octets: option 150). Empty: the dhcp4.options settings.
    dhcp4: dict[int, Literal["url", "folder", "base", "file", "host", "ip"]] = field(
        default_factory=dict
    )
    # models named by a path's code (Yealink y0000000000NN.cfg: NN is a hardware id)
    path_models: dict[str, str] = field(default_factory=dict)

    def parse_user_agent(self, ua: str) -> VendorFacts | None:
        for rx in self.user_agents:
            m = rx.search(ua)
            if m:
                g = m.groupdict()
                return VendorFacts(self.name, g.get("model") or None, g.get("fw") or None,
                                   try_mac(g["mac"]) if g.get("mac") else None)  # fmt: skip
        return None

    def parse_vendor_class(self, raw: bytes) -> VendorFacts | None:
        if self.vendor_class_parser is not None:
            model = self.vendor_class_parser(raw)
            if model is not None:
                return VendorFacts(self.name, model or None)
        text = "".join(chr(b) for b in raw if 32 <= b < 127)
        for rx in self.vendor_classes:
            m = rx.search(text)
            if m:
                return VendorFacts(self.name, m.groupdict().get("model") or None)
        return None

    def parse_path(self, path: str) -> VendorFacts | None:
        leaf = path.rsplit("?", 1)[0]
        for rx in self.paths:
            m = rx.search(leaf)
            if m:
                g = m.groupdict()
                model = g.get("model") or None
                if g.get("code") is not None:
                    model = self.path_models.get(g["code"], model)
                mac = try_mac(g["mac"]) if g.get("mac") else None
                if mac == "000000000000":
                    mac = None  # Poly's and others' common file, not a device's
                return VendorFacts(self.name, model, None, mac)
        return None

    def redirect_of(self, raw_path: str) -> str | None:
        """The MAC of a request to this vendor's redirect service, or None."""
        m = self.redirect.fullmatch(raw_path) if self.redirect else None
        return try_mac(m.group("mac")) if m else None

    def upload_of(self, leaf: str) -> str | None:
        """The MAC of a file this vendor's phones upload with PUT, or None."""
        for rx in self.uploads:
            m = rx.fullmatch(leaf)
            if m:
                return try_mac(m.group("mac"))
        return None

    def url_for(self, base: str) -> str:
        """This vendor's phones' URL under a rule's url_base: its own folder, where the
        bundled templates keep its files (Panasonic overrides: <base>/{MODEL}.cfg)."""
        return f"{base.rstrip('/')}/{self.key}/" if self.base_form is None else \
            self.base_form.replace("{base}", base.rstrip("/"))  # fmt: skip

    def notify_url(self, url: str, form: str | None = None) -> str:
        """The rule's URL in the form this vendor's phones take from a NOTIFY (`form`:
        the configuration's, in place of the vendor's default)."""
        form = form or self.notify
        if form == "folder":
            return url_dir(url)
        if form == "root":
            m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/]+)", url)
            return m.group(1) if m else url
        return url


def vendor(name: str, key: str, ouis: str, **kw: object) -> Vendor:
    """A Vendor from a comma-separated OUI list, compiling its patterns."""
    for k in ("user_agents", "vendor_classes", "paths", "uploads"):
        if k in kw:
            kw[k] = tuple(re.compile(p) if isinstance(p, str) else p for p in kw[k])  # type: ignore[attr-defined]
    redirect = kw.get("redirect")
    if isinstance(redirect, str):
        kw["redirect"] = re.compile(redirect)
    if "pnp_names" in kw:
        kw["pnp_names"] = frozenset(n.lower() for n in kw["pnp_names"])  # type: ignore[attr-defined]
    return Vendor(name, key, frozenset(_oui(o.strip()) for o in ouis.split(",") if o.strip()), **kw)  # type: ignore[arg-type]
