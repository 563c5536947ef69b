"""SIP message glue for SIP PnP: parsing with sipmessage, the facts a SUBSCRIBE
carries, and the 200 OK and NOTIFY the server sends (docs/protocol.md §3)."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass

from sipmessage import URI, Address, Message, Request, Response

from ..ident import DeviceFacts, facts_from_user_agent
from ..macros import try_mac

# MAC%3a<hex>, MAC%3A<hex>, MAC:<hex>, MAC<hex> (Yealink), MAC=<hex> (Fanvil OEM).
# sipmessage has already percent-decoded the user part, so %3a arrives as ':'.
_MAC = re.compile(r"MAC(?:%3[aA]|:|=)?([0-9A-Fa-f]{12})(?![0-9A-Fa-f])")

# Event parameters: `;name="quoted"` or `;name=token`. Written here because
# sipmessage has no Event accessor and its Parameters keeps the quotes.
_PARAM = re.compile(r';\s*([A-Za-z0-9_.!%*+`\'~-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;\s]*))?')


class NotSip(ValueError):
    pass


def parse(data: bytes) -> Request | Response:
    """sipmessage's parser, after the tolerances phones need; raises NotSip."""
    if b"\r\n\r\n" not in data and b"\n\n" in data:
        head, _, body = data.partition(b"\n\n")
        data = head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n\r\n" + body
    try:
        return Message.parse(data)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise NotSip(f"not a SIP message: {e}") from None


@dataclass(frozen=True)
class EventHeader:
    package: str
    params: dict[str, str]

    @classmethod
    def parse(cls, value: str | None) -> EventHeader | None:
        if not value:
            return None
        package, _, rest = value.partition(";")
        params = {}
        for m in _PARAM.finditer(";" + rest if rest else ""):
            v = m.group(2) or ""
            if v.startswith('"') and v.endswith('"') and len(v) >= 2:
                v = v[1:-1].replace('\\"', '"')
            params[m.group(1).lower()] = v
        return cls(package.strip().lower(), params)

    @property
    def vendor(self) -> str | None:
        # Panasonic spells it `vender` (docs/protocol.md §3)
        return self.params.get("vendor") or self.params.get("vender") or None


def mac_of(msg: Request) -> str | None:
    """The MAC in the Request-URI's user part, else in the From URI's."""
    candidates = [_user(msg.uri)]
    with contextlib.suppress(ValueError, KeyError, IndexError):
        candidates.append(_user(msg.from_address.uri))
    for text in candidates:
        m = _MAC.search(text)
        if m:
            return try_mac(m.group(1))
    return None


def _user(uri: URI) -> str:
    user = uri.user or ""
    return f"{user}:{uri.password}" if uri.password else user


def facts_of(msg: Request, event: EventHeader, source_ip: str) -> DeviceFacts:
    """The MAC from the Request-URI (or From), vendor, model and firmware from the
    Event header, completed by the SIP User-Agent in its vendor's dialect (AudioCodes
    sends no vendor parameter, only `AUDC-IPPhone/2.2.2`)."""
    model = event.params.get("model") or None
    if model and model.lower() in ("oem", "unknown"):
        model = None  # Snom, VTech: the Event cannot name the model
    vendor = event.vendor
    if vendor and vendor.lower() in ("oem", "unknown"):
        vendor = None
    return DeviceFacts(
        mac=mac_of(msg),
        model=model,
        fwver=event.params.get("version") or None,
        vendor=vendor,
        ip=source_ip,
    ).merged(facts_from_user_agent(msg.headers.get("User-Agent"))).with_vendor_from_oui()


def accepts_url(msg: Request) -> bool:
    """No Accept header, or one that allows application/url (RFC 6080)."""
    values = msg.headers.getlist("Accept")
    if not values:
        return True
    for v in values:
        for item in v.split(","):
            t = item.split(";", 1)[0].strip().lower()
            if t in ("application/url", "application/*", "*/*", "message/external-body"):
                return True
    return False


def top_branch(msg: Message) -> str:
    via = msg.headers.get("Via") or ""
    m = re.search(r";\s*branch=([^;,\s]+)", via)
    return m.group(1) if m else ""


def notify_target(msg: Request, source: tuple[str, int]) -> tuple[tuple[str, int], str | None]:
    """Where the NOTIFY goes: the SUBSCRIBE's Contact when it names the very address the
    SUBSCRIBE came from, else the source address and port (so a forged Contact cannot
    aim the server at a third party). Returns the target and a note when it overrode."""
    raw = msg.headers.get("Contact")
    if not raw:
        return source, None
    try:
        uri = Address.parse(raw).uri
        host = uri.host.strip("[]")
        same = ipaddress.ip_address(host) == ipaddress.ip_address(source[0].split("%", 1)[0])
    except ValueError:
        return source, f"Contact {raw[:80]!r} is not an IP address; NOTIFY sent to the source"
    if not same:
        return (
            source,
            f"Contact host {host} is not the source {source[0]}; NOTIFY sent to the source",
        )
    return (source[0], uri.port or 5060), None


def _uri_text(header: str) -> str:
    """The URI of a From/To header as the phone wrote it (sipmessage would re-encode it)."""
    Address.parse(header)  # raises ValueError on a malformed header
    m = re.search(r"<([^>]*)>", header)
    return m.group(1) if m else header.split(";", 1)[0].strip()


def _via_with_received(via: str, source: tuple[str, int]) -> str:
    """RFC 3581: fill `rport` with the source port and add `received`."""
    first, sep, rest = via.partition(",")
    if re.search(r";\s*rport(?=[;,\s]|$)", first):
        first = re.sub(r";\s*rport(?==|[;\s]|$)(=\d*)?", f";rport={source[1]}", first, count=1)
        if ";received=" not in first:
            first += f";received={source[0]}"
    return first + sep + rest


def build_ok(msg: Request, source: tuple[str, int], to_tag: str, contact: str) -> bytes:
    r = Response(200, "OK")
    vias = msg.headers.getlist("Via")
    if vias:
        r.headers.setlist("Via", [_via_with_received(vias[0], source), *vias[1:]])
    r.headers.set("From", msg.headers.get("From") or "")
    to = msg.headers.get("To") or ""
    r.headers.set("To", to if ";tag=" in to else f"{to};tag={to_tag}")
    r.headers.set("Call-ID", msg.headers.get("Call-ID") or "")
    r.headers.set("CSeq", msg.headers.get("CSeq") or "")
    r.headers.set("Contact", f"<{contact}>")
    r.headers.set("Expires", "0")
    r.headers.set("Content-Length", "0")
    return bytes(r)


def build_notify(
    msg: Request,
    target: tuple[str, int],
    local: tuple[str, int],
    to_tag: str,
    branch: str,
    url: str,
    body_kind: str = "url",
) -> bytes:
    host = f"[{target[0]}]" if ":" in target[0] else target[0]
    me = f"[{local[0]}]" if ":" in local[0] else local[0]
    n = Request("NOTIFY", URI.parse(f"sip:{host}:{target[1]}"))
    n.headers.set("Via", f"SIP/2.0/UDP {me}:{local[1]};branch={branch};rport")
    n.headers.set("Max-Forwards", "70")
    n.headers.set("From", f"<{_uri_text(msg.headers.get('To') or '')}>;tag={to_tag}")
    n.headers.set("To", msg.headers.get("From") or "")
    n.headers.set("Call-ID", msg.headers.get("Call-ID") or "")
    n.headers.set("CSeq", "1 NOTIFY")
    n.headers.set("Contact", f"<sip:{me}:{local[1]}>")
    n.headers.set("Event", msg.headers.get("Event") or "ua-profile")
    n.headers.set("Subscription-State", "terminated;reason=timeout")
    if body_kind == "external-body":
        # Some responders send the URL this way (docs/protocol.md §3)
        n.headers.set("Content-Type", f'message/external-body; access-type=URL; URL="{url}"')
        body = b""
    else:
        n.headers.set("Content-Type", "application/url")
        body = url.encode()
    n.headers.set("Content-Length", str(len(body)))
    n.body = body
    return bytes(n)
