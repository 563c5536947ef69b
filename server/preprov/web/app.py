"""The aiohttp application phones fetch their configuration files from.

A thin adapter: it turns an HTTP request into a FileRequest, asks
files.service.fetch, emits the event, waits until the inventory has stored it
(group commit) and answers.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..events import EventBus
from ..files.service import FileRequest, fetch
from ..runtime import Runtime


def make_app(
    runtime: Callable[[], Runtime],
    bus: EventBus,
    registered: Callable[[str], bool] = lambda _m: False,
    channel: str = "http",
) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        rt = runtime()
        req = FileRequest(
            channel=channel,
            client=request.remote,
            raw_path=request.raw_path,
            method=request.method,
            user_agent=request.headers.get("User-Agent"),
            authorization=request.headers.get("Authorization"),
        )
        answer = fetch(rt, req, registered)
        bus.emit(answer.event)
        # The answer leaves only once its event is stored: nothing served is
        # missing from the inventory after a kill -9.
        await bus.settled()
        resp = web.Response(
            status=answer.status,
            body=answer.body if request.method != "HEAD" else None,
            content_type=answer.content_type,
        )
        if request.method == "HEAD":
            resp.content_length = len(answer.body)
        for k, v in answer.headers:
            resp.headers.add(k, v)
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
