"""structlog set-up, and the log's subscription to the event bus."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from .events import Event

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


def setup_logging(fmt: str = "console", level: str = "info", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library; send theirs to the same stream.
    logging.basicConfig(stream=out, level=max(_LEVELS[level], logging.WARNING), force=True)


class LogSink:
    """Renders every event on the bus as one log line."""

    def __init__(self) -> None:
        self.log = structlog.get_logger("preprov")

    def __call__(self, event: Event) -> None:
        fields = {k: v for k, v in event.fields().items() if v is not None and v != ()}
        getattr(self.log, event.level)(event.kind, **fields)
