"""The log at its default level: a summary per channel, warnings capped, no raw control bytes."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence

from preprov.events import Event, FileRefused, FileServed, RequestMalformed, ServerStopping
from preprov.log import WARN_BURST, LogSink, flush_logs, setup_logging


def served(i: int) -> FileServed:
    return FileServed(channel="http", client="198.18.0.2", mac=f"0080F0{i:06X}", path="/x.cfg",
                      template="x.cfg", rule="default", size=10)  # fmt: skip


def run_sink(
    level: str, events: Sequence[Event], times: Sequence[float] = ()
) -> list[dict[str, object]]:
    out = io.BytesIO()
    text = io.TextIOWrapper(out, encoding="utf-8", write_through=True)

    async def go() -> None:
        setup_logging("json", level, stream=text)
        sink = LogSink("json", level)
        for ev in events:
            sink(ev)
        for t in times:
            sink.observe("http", t)
        sink.close()

    asyncio.run(go())
    flush_logs()
    return [json.loads(x) for x in out.getvalue().decode().splitlines()]


def test_default_level_summarises_per_packet_events() -> None:
    got = run_sink("info", [served(i) for i in range(500)] + [ServerStopping(signal="SIGTERM")],
                   [0.001] * 98 + [0.050, 0.100])  # fmt: skip
    kinds = [x["event"] for x in got]
    assert "file.served" not in kinds  # not a line per request
    assert "server.stopping" in kinds  # about the server: always a line
    traffic = [x for x in got if x["event"] == "traffic"]
    assert len(traffic) == 1
    t = traffic[0]
    assert (t["channel"], t["answered"], t["refused"], t["events"]) == ("http", 500, 0, 500)
    assert t["p99_ms"] == 100.0


def test_debug_logs_every_event() -> None:
    got = run_sink("debug", [served(i) for i in range(50)])
    assert sum(1 for x in got if x["event"] == "file.served") == 50
    assert not [x for x in got if x["event"] == "traffic"]


def test_warnings_are_capped_and_counted() -> None:
    flood = [RequestMalformed(channel="dhcpv4", client="198.18.0.9", reason="short")] * 1000
    got = run_sink("info", flood)
    assert sum(1 for x in got if x["event"] == "request.malformed") == WARN_BURST
    (t,) = [x for x in got if x["event"] == "traffic"]
    assert (t["refused"], t["suppressed"]) == (1000, 1000 - WARN_BURST)


def test_warning_level_has_no_summary() -> None:
    got = run_sink("warning", [served(1), FileRefused(channel="http", client="198.18.0.2",
                                                      path="/y", status=404, reason="no")])  # fmt: skip
    assert [x["event"] for x in got] == ["file.refused"]


def test_console_escapes_control_bytes() -> None:
    out = io.StringIO()

    async def go() -> None:
        setup_logging("console", "info", stream=out)
        sink = LogSink("console", "info")
        sink(RequestMalformed(channel="sip-pnp", client="198.18.0.9",
                              reason="bad\x1b[2J\r\nFAKE line\x07"))  # fmt: skip
        sink(FileRefused(channel="http", client="198.18.0.9", path="/a\x1b]0;x\x07b", status=404,
                         reason="no"))  # fmt: skip
        sink.close()

    asyncio.run(go())
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "x1b[2J" in text and "FAKE line" in text and "/a" in text and "x1b]0;x" in text
    assert text.count("\n") == 4  # two warnings and two summaries (a channel each)
