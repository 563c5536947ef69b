"""The simulated phone's boot flow, without I/O (docs/design.md §1).

It does what docs/protocol.md §1-§3 and §6 say a Panasonic phone does: multicast a
SUBSCRIBE for ua-profile, resend it on the T1 schedule, wait at most 5 s for
the NOTIFY, answer it 200, expand the macros in the URL, fetch the
pre-provisioning file, follow CFG_STANDARD_FILE_PATH, CFG_PRODUCT_FILE_PATH
and CFG_MASTER_FILE_PATH in that order (the first occurrence of a parameter
wins), and report. The driver feeds it datagrams, timer expiries and the
results of the HTTP fetches it asks for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sipmessage import URI, Request, Response

from ..datagrams import Send
from ..files.lint import lint, lint_vendor, parse
from ..macros import UrlError, expand_macros, parse_url, url_dir
from ..sip import message as sipm
from .dhcp4 import SERVER as DHCP_SERVER
from .dhcp4 import Dhcp4Client, Lease, choose_url
from .dhcp6 import SERVERS as DHCP6_SERVERS
from .dhcp6 import Dhcp6Client
from .personas import Persona, persona_for

PNP_GROUP = ("224.0.1.75", 5060)
PNP_WINDOW = 5.0  # "waits a maximum of 5 seconds for a response" (KX-UTG200 guide §2.2.1)
T1 = 0.5
CHAIN = ("CFG_STANDARD_FILE_PATH", "CFG_PRODUCT_FILE_PATH", "CFG_MASTER_FILE_PATH")

# What each channel is called in the report, in the phone's order (docs/protocol.md §1).
CHANNELS_BY_MODE = {
    "ipv4": ["sip-pnp", "dhcpv4-option-160", "dhcpv4-option-159", "dhcpv4-option-66"],
    "ipv6": ["dhcpv6-option-17"],
    "dual": ["sip-pnp", "dhcpv4-option-160", "dhcpv4-option-159", "dhcpv4-option-66",
             "dhcpv6-option-17"],
}  # fmt: skip


@dataclass(frozen=True)
class PhoneProfile:
    mac: str  # 12 upper-case hex digits
    model: str = "KX-HDV130"
    fwver: str = "01.000"
    ip: str | None = None  # None: the interface has no address, DHCPv4 gives one
    ip6: str | None = None  # a global or ULA IPv6 address; None: DHCPv6 gives one
    sip_port: int = 5060
    ip_mode: str = "ipv4"
    channels: frozenset[str] = frozenset(
        {"sip-pnp", "dhcpv4-option-160", "dhcpv4-option-159", "dhcpv4-option-66",
         "dhcpv4-option-114", "dhcpv6-option-17"}
    )  # fmt: skip
    vendor: str = "panasonic"  # another vendor's key: its persona (phone/personas.py)

    @property
    def persona(self) -> Persona | None:
        return persona_for(self.vendor) if self.vendor != "panasonic" else None

    @property
    def user_agent(self) -> str:
        if self.persona is not None:
            return self.persona.fill(self.persona.user_agent, self.mac, self.model, self.fwver)
        return f"Panasonic_{self.model}/{self.fwver} ({self.mac.lower()})"


@dataclass(frozen=True)
class Fetch:
    url: str


@dataclass
class Actions:
    sends: list[Send] = field(default_factory=list)
    fetches: list[Fetch] = field(default_factory=list)
    configure: str | None = None  # an address for the interface, e.g. 198.18.0.130/24


@dataclass
class FileResult:
    url: str
    parameter: str | None  # which CFG_*_FILE_PATH named it; None for the first file
    status: int | None
    size: int = 0
    error: str | None = None
    lint_errors: list[str] = field(default_factory=list)
    ms: float = 0.0
    required: bool = True  # a file the phone may miss (a Yealink's <mac>.boot) is not


@dataclass
class Report:
    mac: str
    model: str
    fwver: str
    ip_mode: str
    ip: str | None = None
    ip6: str | None = None
    provisioned: bool = False
    channel: str | None = None
    url: str | None = None
    reason: str | None = None
    files: list[FileResult] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    channels_tried: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class PhoneCore:
    def __init__(self, profile: PhoneProfile, rng: random.Random | None = None) -> None:
        self.p = profile
        self.rng = rng or random.Random()
        self.report = Report(profile.mac, profile.model, profile.fwver, profile.ip_mode)
        self.done = False
        self._t0 = 0.0
        self._phase = "idle"
        persona = profile.persona
        if persona is not None:  # its own order: SIP PnP if it has it, then its options
            self._queue = (["sip-pnp"] if persona.pnp_user is not None else []) + [
                f"dhcpv4-option-{c}" for c in persona.reads]  # fmt: skip
        else:
            self._queue = list(CHANNELS_BY_MODE[profile.ip_mode])
        self._timer: float | None = None
        # PnP state
        self._subscribe = b""
        self._call_id = ""
        self._pnp_deadline = 0.0
        self._interval = T1
        self._got_200 = False
        # fetch state: (URL, the parameter that named it, required)
        self._pending: list[tuple[str, str | None, bool]] = []
        self._fetching: tuple[str, str | None, float, bool] | None = None
        # DHCPv4 state
        self.ip = profile.ip
        self.report.ip = profile.ip
        self.report.ip6 = profile.ip6
        self._dhcp: Dhcp4Client | None = None
        self._dhcp_for = ""  # "address" at boot, or "options" for the DHCPv4 channels
        self._dhcp_lease: Lease | None = None
        self.ip6 = profile.ip6
        self._dhcp6: Dhcp6Client | None = None

    # -- driver calls ------------------------------------------------------------

    def start(self, now: float) -> Actions:
        self._t0 = now
        self._step(now, "boot", ip=self.p.ip, mode=self.p.ip_mode)
        if self.ip is None and self.p.ip_mode in ("ipv4", "dual"):
            # no address yet: the phone's first DHCPv4 exchange gives one (and options)
            return self._start_dhcp(now, "address")
        return self._next_channel(now)

    def next_timer(self) -> float | None:
        if self.done:
            return None
        if self._phase == "dhcp" and self._dhcp is not None:
            return self._dhcp.deadline
        if self._phase == "dhcp6" and self._dhcp6 is not None:
            return self._dhcp6.deadline
        return self._timer

    def timer_expired(self, now: float) -> Actions:
        if self.done:
            return Actions()
        if self._phase == "dhcp" and self._dhcp is not None:
            if self._dhcp.deadline is None or now < self._dhcp.deadline:
                return Actions()
            again = self._dhcp.timer_expired(now)
            if again is not None:
                self._step(now, "dhcpv4.resent")
                return Actions(sends=[Send(again, DHCP_SERVER)])
            return self._dhcp_failed(now)
        if self._phase == "dhcp6" and self._dhcp6 is not None:
            if self._dhcp6.deadline is None or now < self._dhcp6.deadline:
                return Actions()
            again6 = self._dhcp6.timer_expired(now)
            if again6 is not None:
                self._step(now, "dhcpv6.resent")
                return Actions(sends=[Send(again6, DHCP6_SERVERS)])
            self._dhcp6 = None
            self._step(now, "dhcpv6.gave-up", reason="no DHCPv6 server answered")
            self.report.channels_tried["dhcpv6-option-17"] = "no DHCPv6 server answered"
            return self._next_channel(now)
        if self._timer is None or now < self._timer:
            return Actions()
        if self._phase == "pnp":
            if now >= self._pnp_deadline:
                why = "no NOTIFY within 5 s" if self._got_200 else "no answer within 5 s"
                self._step(now, "pnp.gave-up", reason=why)
                self.report.channels_tried["sip-pnp"] = why
                return self._next_channel(now)
            self._interval = min(self._interval * 2, 4.0)
            self._timer = min(now + self._interval, self._pnp_deadline)
            self._step(now, "pnp.subscribe-resent")
            return Actions(sends=[Send(self._subscribe, PNP_GROUP)])
        return Actions()

    def datagram_received(self, data: bytes, source: tuple[str, int], now: float) -> Actions:
        if source[1] == DHCP_SERVER[1]:
            return self._dhcp_received(data, source, now)
        if source[1] == DHCP6_SERVERS[1]:
            return self._dhcp6_received(data, source, now)
        if not self._call_id:
            return Actions()
        try:
            msg = sipm.parse(data)
        except sipm.NotSip:
            return Actions()
        if (msg.headers.get("Call-ID") or "") != self._call_id:
            return Actions()
        if isinstance(msg, Response):
            if msg.code == 200 and not self._got_200:
                self._got_200 = True
                self._step(now, "pnp.200", server=source[0])
            return Actions()
        if msg.method != "NOTIFY":
            return Actions()
        ok = _ok_for(msg)
        if self._phase != "pnp":  # a retransmitted NOTIFY: our 200 was lost
            return Actions(sends=[Send(ok, source)])
        url = _url_of(msg)
        if url is None:
            self._step(now, "pnp.notify-without-url")
            return Actions(sends=[Send(ok, source)])
        self._step(now, "pnp.notify", server=source[0], url=url)
        self.report.channels_tried["sip-pnp"] = "gave the URL"
        actions = Actions(sends=[Send(ok, source)])
        self._got_url(now, "sip-pnp", url, actions)
        return actions

    def fetch_done(
        self, url: str, status: int | None, body: bytes, error: str | None, now: float
    ) -> Actions:
        if self._fetching is None or self._fetching[0] != url:
            return Actions()
        _, parameter, started, required = self._fetching
        self._fetching = None
        if error is None and status is not None and status >= 400:
            # the server's own words: preprov's refusals say why in the body
            said = body[:300].decode("utf-8", "replace").strip().splitlines()
            error = f"HTTP {status}: {said[0]}" if said else f"HTTP {status}"
        r = FileResult(url, parameter, status, len(body), error, ms=_ms(now - started),
                       required=required)  # fmt: skip
        self.report.files.append(r)
        persona = self.p.persona
        if persona is not None:
            if status == 200:
                r.lint_errors = [f.render("") for f in lint_vendor(persona.key, body)
                                 if f.severity == "error"]  # fmt: skip
                folder = url_dir(url)
                for name in persona.follow(body):  # Poly's CONFIG_FILES, Cisco's Profile_Rule
                    name = name.replace("$MA", self.p.mac.lower())
                    self._pending.append((name if "://" in name else folder + name, url, True))
            self._step(now, "fetched", url=url, status=status, size=len(body), error=error)
            return self._fetch_next(now)
        if status == 200:
            r.lint_errors = [f.render("") for f in lint(body) if f.severity == "error"]
            settings = parse(body)
            for k, v in settings.items():
                self.report.settings.setdefault(k, v)  # the first occurrence wins
            if parameter is None:  # the pre-provisioning file names the others
                for name in CHAIN:
                    if settings.get(name):
                        self._pending.append((self._expand(settings[name]), name, True))
        self._step(now, "fetched", url=url, status=status, size=len(body), error=error)
        return self._fetch_next(now)

    def give_up(self, now: float, reason: str) -> None:
        if not self.done:
            self._finish(now, False, reason)

    # -- internals ---------------------------------------------------------------

    def _next_channel(self, now: float) -> Actions:
        while self._queue:
            ch = self._queue.pop(0)
            if ch not in self.p.channels:
                self.report.channels_tried[ch] = "switched off"
                continue
            if ch == "sip-pnp":
                if self.ip is None:
                    self.report.channels_tried[ch] = "no IPv4 address"
                    continue
                return self._start_pnp(now)
            if ch.startswith("dhcpv4-"):
                if self._dhcp_lease is None:
                    self._queue.insert(0, ch)
                    return self._start_dhcp(now, "options")
                actions = self._use_dhcp_options(now)
                if actions is not None:
                    return actions
                continue
            if ch == "dhcpv6-option-17":
                return self._start_dhcp6(now)
        tried = "; ".join(f"{k}: {v}" for k, v in self.report.channels_tried.items())
        return self._finish(now, False, f"no channel gave a URL ({tried})")

    # -- DHCPv4 ------------------------------------------------------------------

    def _start_dhcp(self, now: float, purpose: str) -> Actions:
        self._phase = "dhcp"
        self._dhcp_for = purpose
        persona = self.p.persona
        if persona is None:
            self._dhcp = Dhcp4Client(self.p.mac, self.rng, ciaddr=self.ip)
        else:  # its own option 60 and request list
            sixty = persona.vendor_class(self.p.model) if persona.vendor_class else None
            self._dhcp = Dhcp4Client(self.p.mac, self.rng, ciaddr=self.ip, prl=persona.prl,
                                     vendor_class=sixty)  # fmt: skip
        first = self._dhcp.start(now)
        what = "DHCPINFORM" if self.ip else "DHCPDISCOVER"
        self._step(now, f"dhcpv4.{what.lower()[4:]}-sent")
        return Actions(sends=[Send(first, DHCP_SERVER)])

    def _dhcp_received(self, data: bytes, source: tuple[str, int], now: float) -> Actions:
        if self._phase != "dhcp" or self._dhcp is None:
            return Actions()
        send, lease = self._dhcp.datagram_received(data, now)
        if send is not None:
            self._step(now, "dhcpv4.offer", server=source[0])
            return Actions(sends=[Send(send, DHCP_SERVER)])
        if lease is None:
            return Actions()
        self._dhcp_lease = lease
        self._step(now, "dhcpv4.ack", server=lease.server, ip=str(lease.ip) if lease.ip else None,
                   options=sorted(c for c in lease.options if c in (66, 67, 159, 160)))  # fmt: skip
        actions = Actions()
        if lease.ip is not None and self.ip is None:
            self.ip = str(lease.ip.ip)
            self.report.ip = self.ip
            actions.configure = str(lease.ip)
        nxt = self._next_channel(now)
        nxt.configure = actions.configure
        return nxt

    def _start_dhcp6(self, now: float) -> Actions:
        self._phase = "dhcp6"
        stateless = self.ip6 is not None
        self._dhcp6 = Dhcp6Client(self.p.mac, self.rng, stateless)
        first = self._dhcp6.start(now)
        self._step(now, "dhcpv6.information-request-sent" if stateless else "dhcpv6.solicit-sent")
        return Actions(sends=[Send(first, DHCP6_SERVERS)])

    def _dhcp6_received(self, data: bytes, source: tuple[str, int], now: float) -> Actions:
        if self._phase != "dhcp6" or self._dhcp6 is None:
            return Actions()
        send, answer = self._dhcp6.datagram_received(data, source[0], now)
        if send is not None:
            self._step(now, "dhcpv6.advertise", server=source[0])
            return Actions(sends=[Send(send, DHCP6_SERVERS)])
        if answer is None:
            return Actions()
        self._step(now, "dhcpv6.reply", server=source[0],
                   ip=str(answer.address) if answer.address else None, url=answer.url)  # fmt: skip
        actions = Actions()
        if answer.address is not None and self.ip6 is None:
            self.ip6 = str(answer.address)
            self.report.ip6 = self.ip6
            # /64: the server's prefix is on-link (a real phone learns that from RAs)
            actions.configure = f"{answer.address}/64"
        if answer.url is None:
            self.report.channels_tried["dhcpv6-option-17"] = (
                "option 17 (or its URL) not in the answer"
            )
            nxt = self._next_channel(now)
            nxt.configure = actions.configure
            return nxt
        self.report.channels_tried["dhcpv6-option-17"] = "gave the URL"
        self._got_url(now, "dhcpv6-option-17", answer.url, actions)
        return actions

    def _dhcp_failed(self, now: float) -> Actions:
        self._dhcp = None
        why = "no DHCPv4 server answered"
        self._step(now, "dhcpv4.gave-up", reason=why)
        if self._dhcp_for == "address":
            self._dhcp_lease = Lease(None, "", None, {})  # no options either
            self.report.channels_tried["dhcpv4"] = why + " (so no address)"
        for ch in CHANNELS_BY_MODE["ipv4"]:
            if ch.startswith("dhcpv4-") and ch in self._queue:
                self._queue.remove(ch)
                self.report.channels_tried[ch] = why
        return self._next_channel(now)

    def _use_dhcp_options(self, now: float) -> Actions | None:
        """Take the URL from the DHCPv4 answer: 160, then 159, then 66."""
        assert self._dhcp_lease is not None
        own = {f"dhcpv4-option-{c}" for c in self.p.persona.reads} if self.p.persona else set()
        enabled = {c for c in self._queue if c.startswith("dhcpv4-")} | {
            c for c in CHANNELS_BY_MODE["ipv4"] if c.startswith("dhcpv4-") and c in self.p.channels
        } | own
        enabled &= set(self.p.channels)
        persona = self.p.persona
        chosen = (choose_url(self._dhcp_lease.options, enabled) if persona is None
                  else _read_options(self._dhcp_lease.options, persona.reads, enabled))  # fmt: skip
        for ch in [c for c in self._queue if c.startswith("dhcpv4-")]:
            self._queue.remove(ch)
        for code in persona.reads if persona is not None else (160, 159, 66):
            ch = f"dhcpv4-option-{code}"
            if ch not in self.p.channels:
                self.report.channels_tried[ch] = "switched off"
            elif chosen and chosen[0] == ch:
                self.report.channels_tried[ch] = "gave the URL"
                break
            else:
                self.report.channels_tried[ch] = f"option {code} not in the answer"
        if chosen is None:
            return None
        actions = Actions()
        self._got_url(now, chosen[0], chosen[1], actions)
        return actions

    def _start_pnp(self, now: float) -> Actions:
        self._phase = "pnp"
        self._call_id = f"{self.rng.getrandbits(48):012x}@{self.p.ip}"
        self._subscribe = _subscribe(self.p, self._call_id, self.rng)
        self._pnp_deadline = now + PNP_WINDOW
        self._interval = T1
        self._timer = now + T1
        self._step(now, "pnp.subscribe-sent", to=f"{PNP_GROUP[0]}:{PNP_GROUP[1]}")
        return Actions(sends=[Send(self._subscribe, PNP_GROUP)])

    def _got_url(self, now: float, channel: str, url: str, actions: Actions) -> None:
        self._phase = "fetch"
        self._timer = None
        self.report.channel = channel
        self.report.url = url
        first = self._expand(url)
        try:
            parse_url(first)
        except UrlError as e:
            done = self._finish(now, False, f"the URL from {channel} is not usable: {e}")
            actions.sends += done.sends
            return
        persona = self.p.persona
        if persona is not None and first.endswith("/"):  # a folder: its own files in it
            for name, required in persona.files:
                leaf = persona.fill(name, self.p.mac, self.p.model, self.p.fwver)
                self._pending.append((first + leaf, None, required))
        else:
            self._pending.append((first, None, True))
        nxt = self._fetch_next(now)
        actions.fetches += nxt.fetches

    def _expand(self, url: str) -> str:
        return expand_macros(url, self.p.mac, self.p.model, self.p.fwver)

    def _fetch_next(self, now: float) -> Actions:
        if self._pending:
            url, parameter, required = self._pending.pop(0)
            if url.split("://", 1)[0].lower() not in ("http", "https", "tftp"):
                self.report.files.append(
                    FileResult(url, parameter, None, error="the simulated phone fetches over "
                               "HTTP(S) and TFTP only in this version")
                )  # fmt: skip
                return self._fetch_next(now)
            self._fetching = (url, parameter, now, required)
            return Actions(fetches=[Fetch(url)])
        bad = [f for f in self.report.files if f.required and (f.status != 200 or f.lint_errors)]
        if not self.report.files:
            return self._finish(now, False, "nothing was fetched")
        if bad:
            f = bad[0]
            what = f.error or (f"HTTP {f.status}" if f.status != 200 else "; ".join(f.lint_errors))
            return self._finish(now, False, f"{f.url}: {what}")
        return self._finish(now, True, None)

    def _finish(self, now: float, ok: bool, reason: str | None) -> Actions:
        self.done = True
        self._phase = "done"
        self._timer = None
        self.report.provisioned = ok
        self.report.reason = reason
        self._step(now, "provisioned" if ok else "failed", reason=reason)
        return Actions()

    def _step(self, now: float, name: str, **fields: Any) -> None:
        entry = {"t_ms": _ms(now - self._t0), "step": name}
        entry.update({k: v for k, v in fields.items() if v is not None})
        self.report.steps.append(entry)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _read_options(
    options: dict[int, bytes], reads: tuple[int, ...], enabled: set[str]
) -> tuple[str, str] | None:
    """Another vendor's phone: the first of its options, in its order, that carries a URL;
    a URL without a file is a folder (it asks for its own files there)."""
    for code in reads:
        value = options.get(code, b"").decode("utf-8", "replace").strip().strip("\x00")
        if f"dhcpv4-option-{code}" in enabled and "://" in value:
            path = value.split("://", 1)[1]
            folder = "/" not in path or not path.rsplit("/", 1)[1]  # nothing after the last /
            return f"dhcpv4-option-{code}", value.rstrip("/") + "/" if folder else value
    return None


def _subscribe(p: PhoneProfile, call_id: str, rng: random.Random) -> bytes:
    """A SUBSCRIBE in the phone's dialect (docs/protocol.md §3): a Panasonic's
    vender="Panasonic" and MAC%3a<MAC>; another vendor's as its persona says (a Yealink
    MAC<hex>, a Grandstream MAC%3A<HEX>, an AudioCodes no MAC at all)."""
    persona = p.persona
    if persona is None:
        user = f"MAC%3a{p.mac}"
        event = (f'ua-profile;profile-type="device";vender="Panasonic";model="{p.model}";'
                 f'version="{p.fwver}"')  # fmt: skip
    else:
        user = persona.fill(persona.pnp_user or "", p.mac, p.model, p.fwver)
        event = (f'ua-profile;profile-type="application";model="{p.model}";version="{p.fwver}"'
                 if not user else f'ua-profile;profile-type="device";vendor="{persona.pnp_vendor}";'
                 f'model="{p.model}";version="{p.fwver}"')  # fmt: skip
    if not user:  # AudioCodes: sip:224.0.1.75:5060, From a number, not a MAC
        r = Request("SUBSCRIBE", URI.parse(f"sip:{PNP_GROUP[0]}:{PNP_GROUP[1]}"))
        sender = f"<sip:00000001@{p.ip}:{p.sip_port}>"
        to = f"<sip:{PNP_GROUP[0]}:{PNP_GROUP[1]}>"
    else:
        r = Request("SUBSCRIBE", URI.parse(f"sip:{user}@{PNP_GROUP[0]}"))
        sender = to = f"<sip:{user}@{PNP_GROUP[0]}>"
    r.headers.set(
        "Via", f"SIP/2.0/UDP {p.ip}:{p.sip_port};branch=z9hG4bK{rng.getrandbits(64):016x};rport"
    )
    r.headers.set("Max-Forwards", "70")
    r.headers.set("From", f"{sender};tag={rng.getrandbits(32):08x}")
    r.headers.set("To", to)
    r.headers.set("Call-ID", call_id)
    r.headers.set("CSeq", "1 SUBSCRIBE")
    r.headers.set("Event", event)
    r.headers.set("Expires", "0")
    r.headers.set("Accept", "application/url")
    r.headers.set("Contact", f"<sip:{p.ip}:{p.sip_port}>")
    sip_ua = persona.sip_user_agent if persona is not None else None
    r.headers.set("User-Agent", persona.fill(sip_ua, p.mac, p.model, p.fwver)
                  if persona is not None and sip_ua else p.user_agent)  # fmt: skip
    r.headers.set("Content-Length", "0")
    # sipmessage writes the Request-URI's escape as %3A; the phone writes %3a
    line, rest = bytes(r).split(b"\r\n", 1)
    return line.replace(b"MAC%3A", b"MAC%3a") + b"\r\n" + rest


def _ok_for(n: Request) -> bytes:
    r = Response(200, "OK")
    for h in ("Via", "From", "To", "Call-ID", "CSeq"):
        values = n.headers.getlist(h)
        if values:
            r.headers.setlist(h, list(values))
    r.headers.set("Content-Length", "0")
    return bytes(r)


def _url_of(n: Request) -> str | None:
    ctype = (n.headers.get("Content-Type") or "").strip()
    if ctype.lower().startswith("application/url"):
        text = n.body.decode("utf-8", "replace").strip()
        return text or None
    if ctype.lower().startswith("message/external-body"):
        for part in ctype.split(";"):
            k, _, v = part.strip().partition("=")
            if k.lower() == "url":
                return v.strip('"') or None
    return None
