"""Start `preprov serve` as a user would, as a separate process, and stop it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProc:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    state_dir: Path
    host: str = "127.0.0.1"
    _offset: int = field(default=0)

    @property
    def admin(self) -> str:
        """The administration listener's base URL, from the server.started event."""
        for item in self.wait_event("server.started")["listening"]:  # type: ignore[union-attr]
            if str(item).startswith("admin "):
                return str(item).split()[1].removesuffix("/api/")
        raise AssertionError("no admin listener")

    @property
    def base(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}"

    def events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_event(self, kind: str, count: int = 1, timeout: float = 10.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == kind]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited {self.proc.returncode}:\n{self.log.read_text()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event within {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(
    tmp: Path,
    *args: str,
    port: int | None = None,
    netns: str | None = None,
    host: str = "127.0.0.1",
    wrap: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> ServerProc:
    """`wrap`: a command that runs the server, e.g. prlimit with its limits; `env`: variables
    added to the environment."""
    port = port or free_port()
    state = tmp / "state"
    log = tmp / f"server-{port}.log"
    cmd = [
        sys.executable,
        "-m",
        "preprov",
        "serve",
        "--http-port",
        str(port),
        "--admin-port",
        "0",
        "--state-dir",
        str(state),
        "--log-format",
        "json",
        # the tests read every event from the log: a line per event is debug
        *([] if "--log-level" in args else ["--log-level", "debug"]),
        *args,
    ]
    cmd = [*wrap, *cmd]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ) | (env or {}))
    sp = ServerProc(proc, log, port, state, host)
    sp.wait_event("server.started")
    return sp
