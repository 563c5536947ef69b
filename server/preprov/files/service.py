"""Answering a request for a configuration file: the part shared by every transport.

A request goes through named stages, and the stage that refuses says why in
the event (docs/design.md §2): path check, template lookup, device identification,
inventory, rule, authentication, rendering. HTTP calls this today; TFTP will
call the same function.
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO

from .. import vendors
from ..events import DeviceEvent, FileRefused, FileServed, FileUploaded, Redirected
from ..ident import DeviceFacts, facts_from_user_agent, from_vendor
from ..macros import mac_colon, url_dir
from ..rules import Decision
from ..runtime import Runtime, base_url
from .templates import (
    STAT_INTERVAL,
    Entry,
    Resolved,
    TemplateError,
    UnsafePath,
    check_request_path,
)


# Not frozen, with slots: built for every request (a frozen dataclass's __init__
# costs three times as much); treated as values all the same.
@dataclass(slots=True)
class FileRequest:
    channel: str  # "http", "https", "tftp"
    client: str | None
    raw_path: str  # as received, still percent-encoded
    local: str | None = None  # the server address the request arrived on
    method: str = "GET"
    user_agent: str | None = None
    authorization: str | None = None
    if_none_match: str | None = None  # RFC 9110 §13.1.2
    range: str | None = None  # RFC 9110 §14.2, for the files streamed from disk
    body: bytes | None = None  # what a PUT uploads


@dataclass(slots=True)
class FileAnswer:
    status: int
    body: bytes
    event: DeviceEvent
    content_type: str = "text/plain"
    headers: list[tuple[str, str]] = field(default_factory=list)
    # a large raw file: its bytes offset..offset+length are read from disk as they
    # are sent, never held in memory (body is then empty)
    stream: Callable[[], BinaryIO] | None = None
    offset: int = 0
    length: int = 0
    # until when (time.monotonic()) the same request gets this same answer, as long as
    # the runtime and what the server knows of devices do not change (Answers); 0: never
    reusable_until: float = 0.0
    # the transport's encoding of it, kept with it when reused: (Date header's value,
    # (keep-alive, HTTP version, HEAD), the bytes)
    wire: tuple[bytes, tuple[bool, str, bool], bytes] | None = None


class Answers:
    """The answers of repeated requests, reused (a phone polling its file, a lab's
    script): the same request line, headers, source and local address get the answer
    fetch gave, with a fresh event, as long as nothing fetch decided on changed: the
    same runtime (a reload makes a new one), the same `version()` of what the server
    knows of devices (their facts, the addresses they hold, the registered ones), and
    the template not due for its next check on disk (fetch sets reusable_until: an
    edit is seen as soon as without reuse). Only plain 200 and 304 answers of files
    rendered or held in memory are reused: no refusal (its reason may be about time
    or counts), no streamed file, nothing behind authentication (nonces change).
    At most `size` answers and `max_bytes` (each counted twice: its body and its
    encoding on the wire), the oldest dropped first; a body over a 64th of that is
    not kept."""

    def __init__(
        self, version: Callable[[], object], size: int = 8192, max_bytes: int = 32 << 20
    ) -> None:
        self.version = version
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        # oldest first; an OrderedDict, as a plain dict's first key is found past the
        # slots its evictions emptied (measured: put a seventh of a first fetch)
        self._kept: OrderedDict[tuple[object, ...], tuple[FileAnswer, Runtime, object, int]] = (
            OrderedDict()
        )
        self.reused = 0

    def get(self, key: tuple[object, ...], rt: Runtime, now: float) -> FileAnswer | None:
        kept = self._kept.get(key)
        if kept is None:
            return None
        answer, was_rt, version, cost = kept
        if was_rt is rt and now < answer.reusable_until and version == self.version():
            self.reused += 1
            return answer
        del self._kept[key]
        self.bytes -= cost
        return None

    def put(self, key: tuple[object, ...], rt: Runtime, answer: FileAnswer) -> None:
        cost = 2 * len(answer.body) + 512
        if answer.reusable_until <= 0.0 or cost > self.max_bytes // 64:
            return
        old = self._kept.pop(key, None)
        if old is not None:
            self.bytes -= old[3]
        while self._kept and (len(self._kept) >= self.size
                              or self.bytes + cost > self.max_bytes):  # fmt: skip
            self.bytes -= self._kept.popitem(last=False)[1][3]
        self._kept[key] = (answer, rt, self.version(), cost)
        self.bytes += cost


def whole_body(answer: FileAnswer) -> bytes:
    """The bytes of an answer, read from disk when it is streamed (`preprov render`;
    TFTP reads a streamed answer block by block, tftp/transport.OpenFiles)."""
    if answer.stream is None:
        return answer.body
    with answer.stream() as f:
        f.seek(answer.offset)
        return f.read(answer.length)


def facts_from_path(resolved: Resolved, client: str | None = None) -> DeviceFacts:
    m = resolved.macros
    mac = m.get("MAC") or (m["mac"].upper() if m.get("mac") else None)
    return DeviceFacts(mac=mac, model=m.get("MODEL"), fwver=m.get("fwver"), ip=client)


def template_context(
    rt: Runtime, placeholders: dict[str, str], facts: DeviceFacts, decision: Decision | None
) -> dict[str, object]:
    """What a template sees: built-in variables, then the rule's, then the device's."""
    ctx: dict[str, object] = {
        "MAC": facts.mac or "",
        "mac": (facts.mac or "").lower(),
        "mac_colon": mac_colon(facts.mac) if facts.mac else "",
        "MODEL": facts.model or "",
        "model": facts.model or "",
        "fwver": facts.fwver or "",
        "vendor": facts.vendor or "",
        "server": placeholders["server"],
        "server6": placeholders.get("server6", ""),
        "http_port": placeholders["http_port"],
        "base_url": base_url(placeholders),
        "url": decision.url if decision else "",
        "url_dir": url_dir(decision.url) if decision else base_url(placeholders) + "/",
        "rule": decision.rule if decision else "",
    }
    device_vars = rt.variables.get(facts.mac, {}) if facts.mac else {}
    merged: dict[str, object] = {}
    if decision:
        merged.update(decision.variables)
    merged.update(device_vars)
    ctx.update(merged)
    ctx["vars"] = merged
    return ctx


def fetch(
    rt: Runtime,
    req: FileRequest,
    registered: Callable[[str], bool] = lambda _m: False,
    trusted: bool = False,
    holder: Callable[[str | None], str | None] = lambda _a: None,
) -> FileAnswer:
    """Answer one request. `trusted` skips the device binding and authentication (for
    `preprov render`); `holder` says which device holds the client's address."""
    path_for_event = req.raw_path.split("?", 1)[0]
    ua_facts = facts_from_user_agent(req.user_agent)  # what the device binding trusts
    # the phone as its User-Agent names it, and as its vendor's file names do
    # (`cfg000b82112233.xml`, `y000000000028.cfg`): even a refusal says who asked. Read
    # only when asked for: a template's own macros name the phone of a file served.
    asked: list[DeviceFacts] = []

    def said() -> DeviceFacts:
        if not asked:
            by_path = from_vendor(vendors.from_path(path_for_event))
            asked.append(ua_facts.merged(by_path).with_vendor_from_oui())
        return asked[0]

    def refuse(
        status: int,
        reason: str,
        facts: DeviceFacts | None = None,
        template: str | None = None,
        rule: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> FileAnswer:
        facts = facts or said()
        ev = FileRefused(
            channel=req.channel, client=req.client, mac=facts.mac, model=facts.model,
            fwver=facts.fwver, vendor=facts.vendor, path=path_for_event, status=status,
            reason=reason, template=template, rule=rule,
        )  # fmt: skip
        return FileAnswer(status, (reason + "\n").encode(), ev, headers=headers or [])

    # 1. path: only names indexed from the template directory are ever served
    try:
        rel = check_request_path(req.raw_path)
    except (UnsafePath, UnicodeDecodeError) as e:
        return refuse(400, f"refused path {path_for_event[:200]!r}: {e}")
    if req.method == "PUT" and not trusted:
        return _upload(rt, req, rel, said(), ua_facts, holder, refuse)
    if req.method not in ("GET", "HEAD"):
        return refuse(405, f"method {req.method} not allowed; phones fetch with GET")

    # 2. template lookup
    resolved = rt.templates.resolve(rel)
    if resolved is None:
        service = vendors.redirect_of(req.raw_path)
        # only that vendor's phones (its OUI or its User-Agent): `/<MAC>` is a plain name
        if (service is not None and req.method in ("GET", "HEAD")
                and service[0].name in (said().vendor,
                                        getattr(vendors.by_oui(service[1]), "name", ""))):
            return _redirect(rt, req, said(), *service, refuse)
        return refuse(404, f"no template matches /{rel}")
    entry = resolved.entry

    # 3. identification: the path names the file, the User-Agent the phone; a request
    # naming neither is the device's that holds the source address (its lease, its
    # SUBSCRIBE). What other channels said about it completes the rule's facts.
    facts = facts_from_path(resolved, req.client).merged(ua_facts)
    if facts.vendor is None and entry.vendor is not None:  # a file of a vendor's folder
        facts = replace(facts, vendor=entry.vendor)  # its key: named properly just below
    facts = facts.with_vendor_from_oui()
    if facts.mac is None and (held := holder(req.client)) is not None:
        facts = replace(facts, mac=held).with_vendor_from_oui()

    # 3b. a per-device file goes to that device only (its SIP password is in it)
    binding = rt.config.files.device_binding
    if not trusted and binding != "off" and facts.mac and entry.per_device:
        why = _binding_refused(binding, facts.mac, ua_facts.mac, req.client, holder(req.client))
        if why:
            return refuse(403, why, facts, entry.name)

    # 4. inventory
    known = facts.mac in rt.variables or registered(facts.mac) if facts.mac else True
    if not known and not rt.config.inventory.auto_add:
        reason = f"MAC {facts.mac} not in the inventory and auto-add is off"
        return refuse(404, reason, facts, entry.name)

    # 5. rule
    site = rt.site_for(req.local)
    # a phone that came over IPv6 is sent IPv6 URLs in its files
    ipv6 = req.local is not None and ":" in req.local
    placeholders, rules = site.family(ipv6)
    decision = rules.decide(facts)
    if decision is None:
        return refuse(403, rules.explain(facts), facts, entry.name)

    # 6. authentication, when the device has credentials of its own (variables file:
    # http_user, http_password) or the rule's URL carries user:password
    own = rt.variables.get(facts.mac, {}) if facts.mac else {}
    creds = decision.credentials
    if own.get("http_user") and own.get("http_password"):
        creds = (own["http_user"], own["http_password"])
    if creds is not None and not trusted:
        res = rt.auth.check(
            req.authorization, req.method, req.raw_path, creds[0], creds[1], decision.auth
        )
        if not res.ok:
            challenges = rt.auth.challenges(decision.auth, stale=res.stale)
            return refuse(
                401,
                f"authentication required by rule {decision.rule}: {res.reason}",
                facts,
                entry.name,
                decision.rule,
                [("WWW-Authenticate", c) for c in challenges],
            )

    # 7. a large raw file (firmware): streamed from disk, ranges served
    try:
        big = rt.templates.big_file(entry)
    except TemplateError as e:
        return refuse(500, f"template {e}", facts, entry.name, decision.rule)
    if big is not None:
        return _streamed(rt, req, entry, big, facts, decision.rule, path_for_event)

    # 8. rendering
    cache_key = (facts.mac, facts.model, facts.fwver, facts.vendor, decision.rule, site.interface,
                 ipv6)  # fmt: skip
    try:
        body = rt.templates.render(
            entry, lambda: template_context(rt, placeholders, facts, decision), cache_key
        )
    except TemplateError as e:
        return refuse(500, f"template {e}", facts, entry.name, decision.rule)
    ctype = "text/plain" if entry.panasonic else _content_type(entry.name, entry.raw)
    # The same bytes, the same tag: a phone that asks again with If-None-Match gets
    # a 304 and no body. Last-Modified: the template's edit or the configuration's
    # (re)load, whichever is later (a rendered file changes with either).
    etag = _etag(body)
    headers = [("ETag", etag), ("Last-Modified", _http_date(max(entry.mtime_ns / 1e9, rt.loaded)))]
    status = 304 if _matches(req.if_none_match, etag) else 200
    ev = FileServed(
        channel=req.channel, client=req.client, mac=facts.mac, model=facts.model,
        fwver=facts.fwver, vendor=facts.vendor, path=path_for_event, template=entry.name,
        rule=decision.rule, size=len(body) if status == 200 else 0, status=status,
    )  # fmt: skip
    # the same request gets the same answer until the template's next check on disk
    # (Answers), unless credentials were asked for
    until = 0.0 if creds is not None or trusted else entry.checked + STAT_INTERVAL
    return FileAnswer(status, body if status == 200 else b"", ev, ctype, headers,
                      reusable_until=until)  # fmt: skip


def _redirect(
    rt: Runtime, req: FileRequest, said: DeviceFacts, maker: vendors.Vendor, mac: str,
    refuse: Callable[..., FileAnswer],
) -> FileAnswer:  # fmt: skip
    """A phone asking its vendor's redirect service (AudioCodes: `GET /<MAC>`; a lab
    points the service's name at preprov) is sent, as that service does, a 302 to
    the folder of its rule's URL, where it then asks for its own files."""
    facts = replace(said, mac=mac, vendor=maker.name).with_vendor_from_oui()
    site = rt.site_for(req.local)
    decision = site.family(req.local is not None and ":" in req.local)[1].decide(facts)
    if decision is None:
        return refuse(404, site.rules.explain(facts), facts)
    where = url_dir(decision.url)
    ev = Redirected(
        channel=req.channel, client=req.client, mac=mac, model=facts.model, fwver=facts.fwver,
        vendor=facts.vendor, path=req.raw_path[:300], url=where, rule=decision.rule,
    )  # fmt: skip
    return FileAnswer(302, b"", ev, headers=[("Location", where)])


UPLOADS = "uploads"  # under the state directory: uploads/<MAC>/<file>


def _upload(
    rt: Runtime, req: FileRequest, rel: str, said: DeviceFacts, ua_facts: DeviceFacts,
    holder: Callable[[str | None], str | None], refuse: Callable[..., FileAnswer],
) -> FileAnswer:  # fmt: skip
    """A phone's PUT of its own log or settings (a Poly's `<mac>-boot.log`): kept as
    `uploads/<MAC>/<name>` in the state directory, the last one of each name (at
    most the HTTP body limit, 64 KiB). Only names a vendor's phones upload, naming
    the MAC, from that device (the device binding, as for its own files)."""
    leaf = rel.rsplit("/", 1)[-1]
    found = vendors.upload_of(leaf)
    if found is None:
        return refuse(405, f"PUT of /{rel} not allowed: phones upload only their own logs "
                      "and settings (e.g. <mac>-boot.log)")  # fmt: skip
    mac = found[1]
    facts = replace(said, mac=mac, vendor=said.vendor or found[0].name)
    binding = rt.config.files.device_binding
    if binding != "off":
        why = _binding_refused(binding, mac, ua_facts.mac, req.client, holder(req.client))
        if why:
            return refuse(403, why, facts)
    folder = Path(rt.config.server.state_dir) / UPLOADS / mac
    data = req.body or b""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        existed = (folder / leaf).exists()
        tmp = folder / f".{leaf}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / leaf)
    except OSError as e:
        return refuse(500, f"cannot store /{rel}: {e.strerror}", facts)
    ev = FileUploaded(
        channel=req.channel, client=req.client, mac=mac, model=facts.model, fwver=facts.fwver,
        vendor=facts.vendor, path="/" + rel, size=len(data), stored=f"{UPLOADS}/{mac}/{leaf}",
    )  # fmt: skip
    return FileAnswer(204 if existed else 201, b"", ev)


def _streamed(
    rt: Runtime, req: FileRequest, entry: Entry, big: tuple[int, int], facts: DeviceFacts,
    rule: str, path: str,
) -> FileAnswer:  # fmt: skip
    size, mtime_ns = big
    etag = f'"{size:x}-{mtime_ns:x}"'  # size and edit time: no hash of a large file
    headers = [("ETag", etag), ("Last-Modified", _http_date(mtime_ns / 1e9)),
               ("Accept-Ranges", "bytes")]  # fmt: skip
    ctype = _content_type(entry.name, True)
    start, length, status = 0, size, 200
    if _matches(req.if_none_match, etag):
        status, length = 304, 0
    elif req.range:
        span = _byte_range(req.range, size)
        if span is None:
            refused = FileRefused(channel=req.channel, client=req.client, mac=facts.mac,
                             model=facts.model, fwver=facts.fwver, vendor=facts.vendor,
                             path=path, status=416, reason=f"range {req.range!r} not in "
                             f"{size} bytes", template=entry.name, rule=rule)  # fmt: skip
            headers.append(("Content-Range", f"bytes */{size}"))
            return FileAnswer(416, b"", refused, ctype, headers)
        if span != (0, size):
            start, length, status = span[0], span[1] - span[0], 206
            headers.append(("Content-Range", f"bytes {start}-{span[1] - 1}/{size}"))
    ev = FileServed(
        channel=req.channel, client=req.client, mac=facts.mac, model=facts.model,
        fwver=facts.fwver, vendor=facts.vendor, path=path, template=entry.name, rule=rule,
        size=length, status=status,
    )  # fmt: skip
    opener = None if status == 304 else (lambda: rt.templates.open_raw(entry))
    return FileAnswer(status, b"", ev, ctype, headers, opener, start, length)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` as [start, end); the whole file for a
    header this server does not serve (several ranges, another unit: RFC 9110 lets
    it answer 200); None when it is not satisfiable (416)."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return (0, size)
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return (0, size)
    if not first:
        n = int(last)
        return (max(0, size - n), size) if n > 0 and size else None
    start = int(first)
    end = min(int(last) + 1, size) if last.isdigit() else size
    return (start, end) if start < size and start < end else None


# Both per request on the hot path, both cached (profiled: formatting the date cost
# more than the rest of the headers); a rendered file is the same bytes object
# each time (the render cache), whose hash Python keeps, so the lookup is cheap.
def _etag(body: bytes) -> str:
    # the cache keeps the bodies it was asked about: small ones only (16 MiB at most)
    return _small_etag(body) if len(body) <= 4096 else _tag_of(body)


@functools.lru_cache(maxsize=4096)
def _small_etag(body: bytes) -> str:
    return _tag_of(body)


def _tag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


@functools.lru_cache(maxsize=1024)
def _http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _binding_refused(
    binding: str, mac: str, ua_mac: str | None, client: str | None, holder: str | None
) -> str | None:
    by_ua, by_address = ua_mac == mac, holder == mac
    if (by_ua and by_address) or (binding == "lenient" and (by_ua or by_address)):
        return None
    ua = f"names {ua_mac}" if ua_mac else "names no MAC"
    held = f"is held by {holder}" if holder else "is held by no device this server knows"
    want = "and" if binding == "strict" else "or"
    return (f"{mac}'s own file: files.device_binding {binding} wants its User-Agent to name "
            f"{mac} {want} the request to come from an address it holds (by DHCP or SIP PnP); "
            f"the User-Agent {ua}, {client} {held}")  # fmt: skip


def _content_type(name: str, raw: bool) -> str:
    guessed, _ = mimetypes.guess_type(name)
    if guessed:
        return guessed
    return "application/octet-stream" if raw else "text/plain"
