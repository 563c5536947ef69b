"""The administration listener: REST API (JSON, with its OpenAPI document) and
Prometheus metrics, on an aiohttp Application of its own, separate from the
listener phones fetch files from and bound where `admin.listen` says.

Reading is open; changing anything needs `Authorization: Bearer <admin.token>`
(with no token configured, changes are refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ..events import Event, PnpNotifyAcked, is_refusal
from ..inventory.store import Reads, StoreUnavailable
from ..macros import MacError, normalize_mac
from .dashboard import (
    PAGE,
    ManifestError,
    Stream,
    batch_report,
    inventory_csv,
    parse_manifest,
    report_csv,
)

if TYPE_CHECKING:
    from ..server import Server

T = TypeVar("T")
READ_WAIT = 0.1  # seconds a read waits for the commit of what was answered before it
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Metrics:
    """The metrics, fed by the event bus like the log and the inventory."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter("preprov_events", "Events by kind and channel", ["kind", "channel"],
                              registry=self.registry)  # fmt: skip
        self.refusals = Counter("preprov_refusals", "Requests refused or ignored, by channel",
                                ["channel", "kind"], registry=self.registry)  # fmt: skip
        self.answer_seconds = Histogram(
            "preprov_answer_seconds", "From request to answer, per channel", ["channel"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
            registry=self.registry,
        )  # fmt: skip
        self.pnp_ack_seconds = Histogram(
            "preprov_pnp_notify_ack_seconds", "From the first NOTIFY to the phone's 200",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0), registry=self.registry,
        )  # fmt: skip
        self.devices = Gauge("preprov_devices", "Devices in the inventory by their last event",
                             ["last_event"], registry=self.registry)  # fmt: skip
        self.leases = Gauge("preprov_leases_in_use", "Bound leases", ["family"],
                            registry=self.registry)  # fmt: skip
        self.stale = Gauge("preprov_requests_stale", "Requests dropped unanswered since start: "
                           "still queued past the client's retransmission time, or shed past "
                           "capacity", ["channel"],
                           registry=self.registry)  # fmt: skip
        self.inventory_up = Gauge("preprov_inventory_up", "1 while the inventory's database "
                                  "answers; 0: no lease is answered", registry=self.registry)
        self.inventory_up.set(1)
        self.claims_lost = Gauge("preprov_lease_claims_lost", "Leases another server sharing the "
                                 "inventory bound first (answered with a NAK) since start",
                                 registry=self.registry)  # fmt: skip
        self.commit_lag = Gauge("preprov_inventory_commit_lag_seconds", "How long the oldest "
                                "group commit in flight has waited (0: none): the inventory's "
                                "writer falling behind", registry=self.registry)  # fmt: skip
        self.reused = Gauge("preprov_http_answers_reused", "HTTP answers of repeated requests "
                            "reused since start (files.service.Answers)",
                            registry=self.registry)  # fmt: skip
        self._children: dict[tuple[type, str], list[Callable[[], None]]] = {}

    def observer(self, channel: str) -> Callable[[float], None]:
        """What a transport calls with the seconds from a request to its answer."""
        return self.answer_seconds.labels(channel).observe

    def __call__(self, event: Event) -> None:
        # per (event type, channel), the counters' children, looked up once: labels()
        # takes a lock and builds a key each time, on the hot path of every request
        key = (type(event), getattr(event, "channel", ""))
        incs = self._children.get(key)
        if incs is None:
            kind, channel = event.kind, key[1] or ""
            incs = [self.events.labels(kind, channel).inc]
            if is_refusal(event):
                incs.append(self.refusals.labels(channel, kind).inc)
            self._children[key] = incs
        for inc in incs:
            inc()
        if isinstance(event, PnpNotifyAcked):
            self.pnp_ack_seconds.observe(event.ms / 1000)


def bearer_ok(request: web.Request, token: str | None) -> str | None:
    """None when the request may change things, else the reason it may not."""
    if not token:
        return "changes are refused: no admin.token is configured"
    got = request.headers.get("Authorization", "")
    # compared as bytes: compare_digest refuses str that is not ASCII (a 500 before)
    sent = got[7:].strip().encode("utf-8", "surrogateescape")
    if not got.startswith("Bearer ") or not hmac.compare_digest(sent, token.encode("utf-8")):
        return "changes need 'Authorization: Bearer <admin.token>'"
    return None


def host_allowed(host: str | None, names: Sequence[str]) -> bool:
    """DNS rebinding: a page from elsewhere that makes its own name resolve to this
    listener's address still sends its own name as Host. Only an IP address,
    localhost or a name listed in admin.names may be the Host."""
    if not host:
        return False
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]").lower()
    if name in ("localhost", *(n.lower() for n in names)):
        return True
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


def make_admin_app(server: Server, metrics: Metrics, stream: Stream) -> web.Application:
    def store() -> Any:
        assert server.store is not None
        return server.store

    def guarded(handler: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            why = bearer_ok(request, server.current().config.admin.token)
            if why:
                return web.json_response({"error": why}, status=401 if "Bearer" in why else 403)
            return await handler(request)

        return wrapper

    async def read(query: Callable[[Reads], T]) -> T:
        """A query in the reader's thread, once what was answered before it is committed
        (an answer may leave before its event's commit: see inventory.writer), or after
        READ_WAIT at most (a commit held up, by a WAL checkpoint say): then as it is."""
        with contextlib.suppress(Exception):  # a failed or slow commit: read what there is
            await asyncio.wait_for(server.bus.settled(), READ_WAIT)
        return cast(T, await store().read(query))

    async def read_json(query: Callable[[Reads], Any], headers: dict[str, str] | None = None,
                        status: int = 200) -> web.Response:  # fmt: skip
        """A query and its JSON encoding, both in the reader's thread."""
        body = await read(lambda r: orjson.dumps(query(r), default=str))
        return web.Response(body=body, status=status, content_type="application/json",
                            headers=headers)  # fmt: skip

    async def devices(request: web.Request) -> web.Response:
        limit, after = _limit(request, 1000), request.query.get("after", "")
        rows = await read(lambda r: [d.__dict__ for d in r.devices(after, limit)])
        headers = _next_link(request, rows[-1]["mac"]) if len(rows) == limit else {}
        return web.Response(body=orjson.dumps(rows), content_type="application/json",
                            headers=headers)  # fmt: skip

    async def device(request: web.Request) -> web.Response:
        try:
            mac = normalize_mac(request.match_info["mac"])
        except MacError as e:
            return web.json_response({"error": str(e)}, status=400)
        d = await read(lambda r: r.device(mac))
        if d is None:
            return web.json_response({"error": f"{mac} is not in the inventory"}, status=404)
        return web.json_response(d.__dict__)

    async def device_events(request: web.Request) -> web.Response:
        try:
            mac = normalize_mac(request.match_info["mac"])
        except MacError as e:
            return web.json_response({"error": str(e)}, status=400)
        limit, before = _limit(request), _int(request, "before")
        return await read_json(lambda r: r.events(mac, limit, before))

    async def events(request: web.Request) -> web.Response:
        limit, before = _limit(request), _int(request, "before")
        return await read_json(lambda r: r.events(None, limit, before))

    async def leases(request: web.Request) -> web.Response:
        limit, after = _limit(request, 1000), request.query.get("after", "")
        rows = await read(lambda r: r.leases(after, limit))
        headers = _next_link(request, rows[-1]["ip"]) if len(rows) == limit else {}
        return web.Response(body=orjson.dumps(rows), content_type="application/json",
                            headers=headers)  # fmt: skip

    async def reload(_: web.Request) -> web.Response:
        problems = server.reload()
        if problems:
            return web.json_response({"reloaded": False, "problems": problems}, status=422)
        return web.json_response({"reloaded": True})

    async def health(_: web.Request) -> web.Response:
        """For container health checks and load balancers: the services that run. While a
        shared inventory's database is away the server still serves files and PnP (200),
        but says "degraded" and why: it answers no lease meanwhile."""
        down = server.recorder.down if server.recorder is not None else None
        return web.json_response({"status": "degraded" if down else "ok",
                                  "services": list(server.services),
                                  "server": server.name,
                                  "inventory": str(down) if down else "up",
                                  "uptime": round(time.time() - server.started, 1)})  # fmt: skip

    async def register(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            macs = [normalize_mac(m) for m in body["macs"]]
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"error": f'expected {{"macs": [...]}}: {e}'}, status=400)
        assert server.recorder is not None
        for m in macs:
            server.recorder.register(m)
        return web.json_response({"registered": macs})

    aggregates: dict[str, tuple[float, Any]] = {}

    async def aggregate(name: str, query: Callable[[Reads], Any]) -> Any:
        """A count over the whole inventory, at most once per AGGREGATE_TTL: the reader
        shares the server's core, and pollers at any rate must not take it."""
        now = time.monotonic()
        hit = aggregates.get(name)
        if hit is None or now - hit[0] > AGGREGATE_TTL:
            hit = aggregates[name] = (now, await read(query))
        return hit[1]

    async def metrics_view(_: web.Request) -> web.Response:
        now = time.time()
        with contextlib.suppress(StoreUnavailable):  # the counters still answer
            counts, in_use = await aggregate(
                "metrics", lambda r: (r.device_counts(), r.leases_in_use(now))
            )
            metrics.devices.clear()
            for last_event, n in counts.items():
                metrics.devices.labels(last_event).set(n)
            for family, n in in_use.items():
                metrics.leases.labels(family).set(n)
        if server.recorder is not None:
            metrics.claims_lost.set(server.recorder.claims_lost)
            metrics.commit_lag.set(server.recorder.lag())
        for channel, endpoints in (("dhcpv4", server.dhcp4), ("dhcpv6", server.dhcp6),
                                   ("sip-pnp", server.pnp)):  # fmt: skip
            metrics.stale.labels(channel).set(sum(ep.stale for ep in endpoints))
        if server.http is not None and server.http.answers is not None:
            metrics.reused.set(server.http.answers.reused)
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})  # fmt: skip

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def summary(_: web.Request) -> web.Response:
        st = store()
        rec = server.recorder

        stages = await aggregate("stages", lambda r: r.stage_counts())
        by_server = await aggregate("servers", lambda r: r.server_counts())
        body = {
            "server": server.name, "backend": type(st).__name__,
            "inventory_up": rec is not None and rec.down is None,
            "devices": sum(stages.values()), "stages": stages, "devices_by_server": by_server,
            "inventory": await aggregate("size", lambda r: r.size()),
            "events_pruned": st.pruned, "devices_forgotten": st.forgotten,
            "refusals_not_stored": dict(rec.unsampled) if rec else {},
            "events_dropped_while_unavailable": rec.dropped if rec else 0,
            "lease_claims_lost": rec.claims_lost if rec else 0,
            "inventory_commit_lag_seconds": round(rec.lag(), 4) if rec else 0.0,
        }  # fmt: skip
        return web.json_response(body)

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=PAGE.read_bytes(), content_type="text/html")

    async def status_view(request: web.Request) -> web.Response:
        """Each device's stages: by MAC a page at a time (?after=, ?limit=), or those
        changed since a cursor (?since=; X-Cursor says the cursor to ask with next);
        ?server=: only those a given server last heard from (a shared inventory)."""
        limit, after, since = (
            _limit(request, 1000),
            request.query.get("after", ""),
            _int(request, "since"),
        )
        only = request.query.get("server") or None

        def query(r: Reads) -> tuple[int, list[dict[str, Any]]]:
            return r.cursor(), r.status(after, limit, since or 0, server=only)

        cursor, rows = await read(query)
        headers = {"X-Cursor": str(cursor)}
        if len(rows) == limit and not since:
            headers |= _next_link(request, rows[-1]["mac"])
        return web.Response(body=orjson.dumps(rows), content_type="application/json",
                            headers=headers)  # fmt: skip

    async def stream_view(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})  # fmt: skip
        await resp.prepare(request)
        q = stream.open()
        try:
            await resp.write(b": connected\n\n")
            while True:
                try:
                    line = await asyncio.wait_for(q.get(), 15)
                    if not line:
                        break  # the server is stopping
                    await resp.write(f"data: {line}\n\n".encode())
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            stream.close(q)
        return resp

    async def add_batch(request: web.Request) -> web.Response:
        text = await request.text()
        name = request.query.get("name") or f"batch {time.strftime('%Y-%m-%d %H:%M')}"
        try:
            macs, extra, duplicates = parse_manifest(text)
        except ManifestError as e:
            return web.json_response({"error": str(e)}, status=400)
        bid = store().add_batch(name, macs, time.time(), extra)
        return web.json_response({"id": bid, "name": name, "expected": len(macs),
                                  "duplicates": duplicates})  # fmt: skip

    def report_of(r: Reads, b: dict[str, Any]) -> dict[str, Any]:
        return batch_report(b["name"], b["macs"], r.status(macs=b["macs"]), b["created"],
                            b["extra"]) | {"id": b["id"]}  # fmt: skip

    async def batches_view(_: web.Request) -> web.Response:
        return await read_json(lambda r: [
            {k: v for k, v in report_of(r, b).items() if k != "devices"} for b in r.batches()
        ])  # fmt: skip

    def batch_id(request: web.Request) -> int | None:
        try:
            return int(request.match_info["id"])
        except ValueError:
            return None

    async def change_batch(request: web.Request) -> web.Response:
        bid = batch_id(request)
        try:
            name = str((await request.json())["name"]).strip()
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"name": "..."}'}, status=400)
        if bid is None or not name or not store().rename_batch(bid, name):
            return web.json_response({"error": f"no batch {request.match_info['id']}"},
                                     status=404 if name else 400)  # fmt: skip
        return web.json_response({"id": bid, "name": name})

    async def delete_batch(request: web.Request) -> web.Response:
        bid = batch_id(request)
        if bid is None or not store().delete_batch(bid):
            return web.json_response({"error": f"no batch {request.match_info['id']}"}, status=404)
        return web.json_response({"deleted": bid})

    async def forget_device(request: web.Request) -> web.Response:
        try:
            mac = normalize_mac(request.match_info["mac"])
        except MacError as e:
            return web.json_response({"error": str(e)}, status=400)
        if not store().forget_device(mac):
            return web.json_response({"error": f"no device {mac}"}, status=404)
        return web.json_response({"forgotten": mac})

    async def inventory_export(_: web.Request) -> web.Response:
        rows = await read(lambda r: r.status())
        return web.Response(text=inventory_csv(rows), content_type="text/csv",
                            headers={"Content-Disposition":
                                     'attachment; filename="inventory.csv"'})  # fmt: skip

    async def batch_view(request: web.Request) -> web.StreamResponse:
        raw = request.match_info["id"]
        fmt = "csv" if raw.endswith(".csv") else "json"
        bid = raw.removesuffix(".csv").removesuffix(".json")

        def query(r: Reads) -> dict[str, Any] | None:
            b = next((b for b in r.batches() if str(b["id"]) == bid), None)
            return None if b is None else report_of(r, b)

        report = await read(query)
        if report is None:
            return web.json_response({"error": f"no batch {bid}"}, status=404)
        if fmt == "csv":
            return web.Response(
                text=report_csv(report),
                content_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="batch-{bid}.csv"'},
            )
        return web.json_response(report)

    async def ca_certificate(_: web.Request) -> web.StreamResponse:
        path = Path(server.current().config.server.state_dir) / "ca.crt"
        if not path.exists():
            return web.json_response({"error": "HTTPS is off: no lab CA"}, status=404)
        return web.Response(
            body=path.read_bytes(),
            content_type="application/x-x509-ca-cert",
            headers={"Content-Disposition": 'attachment; filename="preprov-lab-ca.crt"'},
        )

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        names = server.current().config.admin.names
        if not host_allowed(request.headers.get("Host"), names):
            why = f"Host {request.headers.get('Host')!r} is not this listener (admin.names)"
            return web.json_response({"error": why}, status=421)
        try:
            return await handler(request)
        except StoreUnavailable as e:  # the shared database is away: say so, and retry later
            return web.json_response({"error": str(e)}, status=503, headers={"Retry-After": "1"})

    app = web.Application(middlewares=[check_host])
    app.router.add_get("/", page)
    app.router.add_get("/api/status", status_view)
    app.router.add_get("/api/summary", summary)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/stream", stream_view)
    app.router.add_get("/api/batches", batches_view)
    app.router.add_post("/api/batches", guarded(add_batch))
    app.router.add_get("/api/batches/{id}", batch_view)
    app.router.add_patch("/api/batches/{id}", guarded(change_batch))
    app.router.add_delete("/api/batches/{id}", guarded(delete_batch))
    app.router.add_delete("/api/devices/{mac}", guarded(forget_device))
    app.router.add_get("/api/status.csv", inventory_export)
    app.router.add_get("/api/devices", devices)
    app.router.add_get("/api/devices/{mac}", device)
    app.router.add_get("/api/devices/{mac}/events", device_events)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/leases", leases)
    app.router.add_post("/api/reload", guarded(reload))
    app.router.add_post("/api/devices", guarded(register))
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/api/ca.crt", ca_certificate)
    app.router.add_get("/metrics", metrics_view)
    return app


AGGREGATE_TTL = 2.0  # seconds


def _limit(request: web.Request, default: int = 100) -> int:
    try:
        return max(1, min(int(request.query.get("limit", str(default))), 10000))
    except ValueError:
        return default


def _int(request: web.Request, name: str) -> int | None:
    try:
        return int(request.query[name]) if name in request.query else None
    except ValueError:
        return None


def _next_link(request: web.Request, after: str) -> dict[str, str]:
    """RFC 8288: where the next page is (keyset pagination on the sort key)."""
    url = request.rel_url.update_query({"after": after})
    return {"Link": f'<{url}>; rel="next"'}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(more: dict[str, Any] | None = None, /, **props: str) -> dict[str, Any]:
    """An object schema: properties by type name, and those in more as given."""
    return {"type": "object", "properties": {k: {"type": t} for k, t in props.items()}
            | (more or {})}  # fmt: skip


def _op(summary: str, ok: str, schema: dict[str, Any] | None = None, *, guarded: bool = False,
        params: tuple[tuple[str, str, str], ...] = (), errors: dict[str, str] | None = None,
        ctype: str = "application/json") -> dict[str, Any]:  # fmt: skip
    """One operation: its 200 answer (with a schema when JSON), parameters as (name, in,
    type), and the error answers; guarded ones need the bearer token."""
    answer: dict[str, Any] = {"description": ok}
    if schema is not None:
        answer["content"] = {ctype: {"schema": schema}}
    op: dict[str, Any] = {"summary": summary, "responses": {"200": answer}}
    for code, why in (errors or {}).items():
        op["responses"][code] = {"description": why, "content": {"application/json": {
            "schema": _ref("Error")}}}  # fmt: skip
    if guarded:
        op["security"] = [{"token": []}]
        op["responses"]["401"] = {"description": "no or wrong token (or none configured)"}
    if params:
        op["parameters"] = [{"name": n, "in": where, "required": where == "path",
                             "schema": {"type": t}} for n, where, t in params]  # fmt: skip
    return op


def _list(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


_PAGE = (("limit", "query", "integer"), ("after", "query", "string"))
_DEVICE = dict(mac="string", model="string", fwver="string", vendor="string", ipv4="string",
               ipv6="string", first_seen="number", last_seen="number", last_event="string",
               last_error="string", server="string")  # fmt: skip
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "preprov administration API", "version": "1"},
    "components": {
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Device": _obj(**_DEVICE),
            "Status": _obj(**_DEVICE, pnp="string", dhcp="string", files="string",
                           stage="string", changed="integer"),
            "Event": _obj(id="integer", ts="number", mac="string", kind="string")
            | {"additionalProperties": True},
            "Lease": _obj(ip="string", client_id="string", mac="string", state="string",
                          expires="number", hostname="string", server="string"),
            "Batch": _obj({"missing": {"type": "array", "items": _obj(
                mac="string", stage="string", reason="string")}}, id="integer", name="string",
                expected="integer", provisioned="integer"),
            "Problem": _obj(file="string", line="integer", key="string", reason="string"),
            "Error": _obj(error="string"),
        },
    },
    "paths": {
        "/": {"get": _op("The dashboard (HTML)", "page")},
        "/api/health": {"get": _op("Liveness: the services that run", "running",
                                   _obj({"services": {"type": "array", "items": {
                                       "type": "string"}}}, status="string", uptime="number"))},
        "/api/summary": {"get": _op("Counts by stage, the inventory's size, what was pruned",
                                    "counts", {"type": "object"})},
        "/api/devices": {
            "get": _op("Devices seen, by MAC, a page at a time (Link: rel=next)", "page",
                       _list("Device"), params=_PAGE),
            "post": _op("Register MACs (served with auto-add off): {\"macs\": [...]}",
                        "registered", guarded=True, errors={"400": "not MACs"}),
        },
        "/api/devices/{mac}": {
            "get": _op("One device", "device", _ref("Device"),
                       params=(("mac", "path", "string"),),
                       errors={"400": "not a MAC", "404": "unknown"}),
            "delete": _op("Forget a device and its events (its leases stay)", "forgotten",
                          _obj(forgotten="string"), guarded=True,
                          params=(("mac", "path", "string"),),
                          errors={"400": "not a MAC", "404": "unknown"}),
        },
        "/api/devices/{mac}/events": {"get": _op(
            "A device's timeline, newest first", "events", _list("Event"),
            params=(("mac", "path", "string"), ("limit", "query", "integer"),
                    ("before", "query", "integer")), errors={"400": "not a MAC"})},
        "/api/events": {"get": _op("The latest events, newest first", "events", _list("Event"),
                                   params=(("limit", "query", "integer"),
                                           ("before", "query", "integer")))},
        "/api/leases": {"get": _op("DHCPv4 and DHCPv6 leases by address (Link: rel=next)",
                                   "page", _list("Lease"), params=_PAGE)},
        "/api/reload": {"post": _op(
            "Reload the configuration (as SIGHUP); refused: the old one is kept", "reloaded",
            _obj(reloaded="boolean"), guarded=True,
            errors={"422": "refused: {reloaded: false, problems: [Problem]}"})},
        "/api/status": {"get": _op(
            "Each device's stage per channel (the dashboard); ?since= a cursor (X-Cursor)",
            "list", _list("Status"), params=(*_PAGE, ("since", "query", "integer"),
                                             ("server", "query", "string")))},
        "/api/stream": {"get": _op("Server-sent events: one per device event", "stream",
                                   {"type": "string"}, ctype="text/event-stream")},
        "/api/batches": {
            "get": _op("Batches with N of M provisioned and what is missing", "list",
                       _list("Batch")),
            "post": _op("Upload a manifest: CSV with a mac column anywhere (other columns "
                        "kept), a MAC per line, or JSON; ?name=", "created",
                        _obj({"duplicates": {"type": "array", "items": {"type": "string"}}},
                             id="integer", name="string", expected="integer"), guarded=True,
                        params=(("name", "query", "string"),), errors={"400": "not MACs"}),
        },
        "/api/batches/{id}": {
            "get": _op("A batch's report; {id}.csv for CSV", "report", _ref("Batch"),
                       params=(("id", "path", "string"),), errors={"404": "unknown"}),
            "patch": _op('Rename a batch: {"name": "..."}', "renamed", _obj(id="integer",
                         name="string"), guarded=True, params=(("id", "path", "string"),),
                         errors={"400": "no name", "404": "unknown"}),
            "delete": _op("Delete a batch (not its devices)", "deleted", _obj(deleted="integer"),
                          guarded=True, params=(("id", "path", "string"),),
                          errors={"404": "unknown"}),
        },
        "/api/status.csv": {"get": _op(
            "Every device on its current boot, as CSV (the batch report's columns)", "CSV",
            {"type": "string"}, ctype="text/csv")},
        "/api/openapi.json": {"get": _op("This document", "OpenAPI 3", {"type": "object"})},
        "/api/ca.crt": {"get": _op("The lab CA certificate phones must trust for HTTPS",
                                   "certificate", {"type": "string"},
                                   ctype="application/x-x509-ca-cert",
                                   errors={"404": "HTTPS is off: no lab CA"})},
        "/metrics": {"get": _op("Prometheus metrics", "text", {"type": "string"},
                                ctype="text/plain")},
    },
}  # fmt: skip
