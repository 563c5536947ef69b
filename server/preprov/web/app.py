"""The HTTP listener phones fetch their configuration files from.

A thin adapter: it turns an HTTP request into a FileRequest, asks
files.service.fetch, emits the event, waits until the inventory has stored it
(group commit) and answers. It is aiohttp's low-level server (web.Server), not
a web.Application: every path is a template lookup, so a router has nothing
to do, and leaving it out is measured at 54k against 44k answers/s on one
core here (README, "Speed"). The dashboard and API get an Application of
their own on the administration listener.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..events import EventBus, InternalError, RequestMalformed
from ..files.service import FileRequest, fetch
from ..runtime import Runtime


def make_handler(
    runtime: Callable[[], Runtime],
    bus: EventBus,
    registered: Callable[[str], bool] = lambda _m: False,
    channel: str = "http",
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        rt = runtime()
        req = FileRequest(
            channel=channel,
            client=request.remote,
            raw_path=request.raw_path,
            local=_local_address(request),
            method=request.method,
            user_agent=request.headers.get("User-Agent"),
            authorization=request.headers.get("Authorization"),
        )
        answer = fetch(rt, req, registered)
        bus.emit(answer.event)
        # The answer leaves only once its event is stored: nothing served is
        # missing from the inventory after a kill -9.
        await bus.settled()
        # aiohttp leaves the body out of a HEAD answer and keeps its Content-Length
        resp = web.Response(
            status=answer.status, body=answer.body, content_type=answer.content_type
        )
        for k, v in answer.headers:
            resp.headers.add(k, v)
        return resp

    return handle


class ProtocolErrors(logging.Handler):
    """Turns aiohttp's reports of requests it could not parse into events.

    aiohttp answers a malformed request with 400 by itself and reports it
    only to its logger ("Error handling request from <peer>"); this handler
    is that logger's only sink, so each one is counted and logged as an event.
    """

    def __init__(self, bus: EventBus, channel: str = "http") -> None:
        super().__init__(logging.DEBUG)
        self.bus = bus
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        client = str(record.args[0]) if isinstance(record.args, tuple) and record.args else None
        if isinstance(exc, HttpProcessingError):
            reason = f"{type(exc).__name__}: {exc.message}".strip()
            self.bus.emit(
                RequestMalformed(channel=self.channel, client=client, reason=reason[:300])
            )
        elif exc is not None:
            self.bus.emit(InternalError(where=f"{self.channel} handler", reason=repr(exc)[:300]))


def protocol_logger(bus: EventBus, channel: str = "http") -> logging.Logger:
    log = logging.getLogger(f"preprov.{channel}.protocol")
    log.handlers[:] = [ProtocolErrors(bus, channel)]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log


def _local_address(request: web.BaseRequest) -> str | None:
    transport = request.transport
    sock = transport.get_extra_info("sockname") if transport is not None else None
    return str(sock[0]) if sock else None
