"""What the phone's DHCPv4 and DHCPv6 clients share: the message last sent is
sent again on a fixed schedule until an answer moves the exchange on, and the
exchange fails after the last attempt. Without I/O: the caller sends what is
returned and calls timer_expired at `deadline`."""

from __future__ import annotations

RETRIES = (1.0, 2.0, 4.0)  # seconds between attempts; then the channel fails


class Exchange:
    def __init__(self) -> None:
        self.state = "idle"
        self.deadline: float | None = None
        self._attempt = 0
        self._last = b""

    def _send(self, message: bytes, now: float) -> bytes:
        """A new message: the retransmission schedule starts again."""
        self._last = message
        self._attempt = 0
        self.deadline = now + RETRIES[0]
        return message

    def _finish(self, state: str) -> None:
        self.state = state
        self.deadline = None

    def timer_expired(self, now: float) -> bytes | None:
        """The message to resend, or None when the client gives up."""
        self._attempt += 1
        if self._attempt >= len(RETRIES):
            self._finish("failed")
            return None
        self.deadline = now + RETRIES[self._attempt]
        return self._last
