"""The HTTP file server as a phone and an operator meet it: a real process, curl, raw sockets."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import UA
from preprov.config import build_config
from preprov.events import FileServed
from preprov.files.lint import lint
from preprov.files.service import Answers, FileAnswer
from preprov.ident import DeviceFacts, Directory
from preprov.runtime import Runtime, build_runtime
from preprov.web.httpd import MAX_PENDING, FileServer, FileServerProtocol
from serverproc import ServerProc, start_server

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, check=False
    )


def status_of(*args: str) -> int:
    out = curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout
    return int(out or 0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProc]:
    sp = start_server(tmp_path)
    yield sp
    assert sp.stop() == 0


def test_curl_fetches_the_chain_and_the_inventory_records_the_phone(
    server: ServerProc, tmp_path: Path
) -> None:
    pre = curl("-A", UA, f"{server.base}/KX-HDV130.cfg")
    assert pre.returncode == 0
    assert lint(pre.stdout) == []
    assert (
        b'CFG_STANDARD_FILE_PATH="http://127.0.0.1:%d/Config{MAC}.cfg"\r\n' % server.port
        in pre.stdout
    )
    per = curl("-A", UA, "-i", f"{server.base}/Config0080F0C571EB.cfg").stdout
    head, _, body = per.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Type: text/plain" in head
    assert lint(body) == [] and b"\r\n" in body and b"\n" not in body.replace(b"\r\n", b"")
    other_ua = "Panasonic_KX-HDV130/01.000 (0080f0c571ec)"
    other = curl("-A", other_ua, f"{server.base}/Config0080F0C571EC.cfg").stdout
    assert other != body and b'SIP_AUTHID_1="0080f0c571ec"' in other
    # asked again with its tag: 304, no body
    tag = next(line.split(b": ", 1)[1] for line in head.split(b"\r\n") if line.startswith(b"ETag"))
    again = curl("-A", UA, "-i", "-H", f"If-None-Match: {tag.decode()}",
                 f"{server.base}/Config0080F0C571EB.cfg").stdout  # fmt: skip
    assert again.startswith(b"HTTP/1.1 304") and again.endswith(b"\r\n\r\n")
    assert b"Content-Length" not in again
    # without its User-Agent (and from no address it holds), no phone's own file
    stolen = curl("-i", f"{server.base}/Config0080F0C571EC.cfg").stdout
    assert stolen.startswith(b"HTTP/1.1 403") and b"SIP_PASS" not in stolen
    inv = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprov",
            "inventory",
            "--state-dir",
            str(server.state_dir),
            "--json",
        ],
        capture_output=True,
        check=True,
    )
    devices = {d["mac"]: d for d in json.loads(inv.stdout)}
    assert devices["0080F0C571EB"]["model"] == "KX-HDV130"
    assert devices["0080F0C571EB"]["fwver"] == "01.000"
    assert devices["0080F0C571EB"]["vendor"] == "Panasonic"
    assert devices["0080F0C571EB"]["last_event"] == "file.served"
    served = [e for e in server.events() if e["event"] == "file.served"]
    assert [(e["template"], e["status"]) for e in served] == [
        ("{MODEL}.cfg", 200), ("Config{MAC}.cfg", 200), ("Config{MAC}.cfg", 200),
        ("Config{MAC}.cfg", 304),
    ]  # fmt: skip


TRAVERSALS = [
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/%252e%252e/%252e%252e/etc/passwd",
    "/..%2f..%2fetc%2fpasswd",
    "//etc/passwd",
    "/..%5c..%5cetc%5cpasswd",
    "/./../etc/passwd",
    "/%c0%ae%c0%ae/etc/passwd",
    "/Config0080F0C571EB.cfg/../../../etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_gets_4xx_and_nothing_from_outside(server: ServerProc, path: str) -> None:
    r = curl("--path-as-is", "-i", f"{server.base}{path}")
    status = int(r.stdout.split(b" ", 2)[1])
    assert 400 <= status < 500, r.stdout[:200]
    assert b"root:" not in r.stdout
    # and the server keeps serving
    assert status_of("-A", UA, f"{server.base}/KX-HDV130.cfg") == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /KX-HDV130.cfg HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /" + b"A" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /KX-HDV130.cfg HTTP/1.1\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
    ],
)
def test_malformed_requests_get_an_answer_and_do_not_break_the_server(
    server: ServerProc, raw: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(raw)
        reply = b""
        try:
            while chunk := s.recv(65536):  # the server closes after its answer
                reply += chunk
        except ConnectionResetError:
            pass
    assert reply.startswith((b"HTTP/1.0 4", b"HTTP/1.1 4")), reply[:100]
    assert status_of("-A", UA, f"{server.base}/KX-HDV130.cfg") == 200
    ev = server.wait_event("request.malformed")
    assert ev["channel"] == "http" and ev["client"] == "127.0.0.1" and ev["reason"]


def test_head_and_other_methods(server: ServerProc) -> None:
    r = curl("-I", "-A", UA, f"{server.base}/KX-HDV130.cfg").stdout
    assert r.startswith(b"HTTP/1.1 200") and b"Content-Length: " in r
    assert status_of("-X", "DELETE", f"{server.base}/KX-HDV130.cfg") == 405


AUTH_CONFIG = """
rules:
  - name: secured
    match: {{ model: [KX-HDV430] }}
    url: http://lab:s3cret@${{server}}:${{http_port}}/{{MODEL}}.cfg
    auth: {auth}
  - name: open
    url: http://${{server}}:${{http_port}}/{{MODEL}}.cfg
"""


@pytest.mark.parametrize("auth", ["any", "digest", "basic"])
def test_basic_and_digest_with_curl(tmp_path: Path, auth: str) -> None:
    cfg = tmp_path / "auth.yaml"
    cfg.write_text(AUTH_CONFIG.format(auth=auth))
    sp = start_server(tmp_path, "--config", str(cfg))
    try:
        url = f"{sp.base}/KX-HDV430.cfg"
        ua = "Panasonic_KX-HDV430/02.000 (0080f0000430)"
        r = curl("-i", "-A", ua, url).stdout
        assert r.startswith(b"HTTP/1.1 401")
        assert (b"WWW-Authenticate: Digest" in r) == (auth in ("any", "digest"))
        assert (b"WWW-Authenticate: Basic" in r) == (auth in ("any", "basic"))
        digest = status_of("--digest", "-u", "lab:s3cret", "-A", ua, url)
        basic = status_of("--basic", "-u", "lab:s3cret", "-A", ua, url)
        assert digest == (200 if auth in ("any", "digest") else 401)
        assert basic == (200 if auth in ("any", "basic") else 401)
        assert status_of("--digest", "-u", "lab:wrong", "-A", ua, url) == 401
        assert status_of("--basic", "-u", "lab:wrong", "-A", ua, url) == 401
        if auth != "basic":
            # the Authorization curl sent, sent again: a replayed nonce count is refused
            sent = curl("-v", "-o", "/dev/null", "--digest", "-u", "lab:s3cret", "-A", ua, url)
            header = next(
                line.removeprefix("> ").strip()
                for line in sent.stderr.decode().splitlines()
                if line.startswith("> Authorization: Digest")
            )
            assert status_of("-H", header, "-A", ua, url) == 401
            assert any(
                "replayed" in str(e.get("reason")) for e in sp.events()
                if e["event"] == "file.refused"
            )  # fmt: skip
        # other phones are not asked for credentials
        assert status_of("-A", UA, f"{sp.base}/KX-HDV130.cfg") == 200
        refused = [e for e in sp.events() if e["event"] == "file.refused"]
        assert any("wrong user or password for 'lab'" in str(e["reason"]) for e in refused)
    finally:
        assert sp.stop() == 0


def test_sighup_reloads_and_a_bad_config_keeps_the_old_one(tmp_path: Path) -> None:
    from preprov.config import BUNDLED_TEMPLATES

    for folder in ("a", "b"):  # the rules' URLs must lead to templates (serve checks)
        shutil.copytree(BUNDLED_TEMPLATES, tmp_path / "t" / folder)
    files = f"files:\n  templates: {tmp_path / 't'}\n"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        files + "rules:\n  - name: first\n    url: http://${server}:${http_port}/a/{MODEL}.cfg\n"
    )
    sp = start_server(tmp_path, "--config", str(cfg))
    try:
        body = curl("-A", UA, f"{sp.base}/a/KX-HDV130.cfg").stdout
        assert f"http://127.0.0.1:{sp.port}/a/Config{{MAC}}.cfg".encode() in body
        cfg.write_text(
            files
            + "rules:\n  - name: second\n    url: http://${server}:${http_port}/b/{MODEL}.cfg\n"
        )
        sp.proc.send_signal(signal.SIGHUP)
        sp.wait_event("config.reloaded")
        body = curl("-A", UA, f"{sp.base}/b/KX-HDV130.cfg").stdout
        assert f"http://127.0.0.1:{sp.port}/b/Config{{MAC}}.cfg".encode() in body
        cfg.write_text("rules:\n  - name: third\n    url: gopher://nope\n")
        sp.proc.send_signal(signal.SIGHUP)
        rejected = sp.wait_event("config.rejected")
        assert "rules[0].url: bad URL: scheme 'gopher'" in str(rejected["reason"])
        body = curl("-A", UA, f"{sp.base}/b/KX-HDV130.cfg").stdout
        assert b"/b/Config{MAC}.cfg" in body
    finally:
        assert sp.stop() == 0


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return reply


def test_pipelined_requests_are_answered_in_order(server: ServerProc) -> None:
    reqs = b"".join(
        f"GET /Config0080F0C571{i:02X}.cfg HTTP/1.1\r\nHost: x\r\n"
        f"User-Agent: Panasonic_KX-HDV130/01.000 (0080f0c571{i:02x})\r\n\r\n".encode()
        for i in range(5)
    )
    reqs += b"GET /ConfigCommon.cfg HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = raw_exchange(server.port, reqs)
    assert reply.count(b"HTTP/1.1 200 OK\r\n") == 6
    macs = [reply.find(f'"0080f0c571{i:02x}"'.encode()) for i in range(5)]
    assert all(m > 0 for m in macs) and macs == sorted(macs)
    assert reply.rstrip().endswith(b'SIP_PRXY_ADDR_1="127.0.0.1"')


def test_http_1_0_and_limits(server: ServerProc) -> None:
    reply = raw_exchange(server.port, b"GET /ConfigCommon.cfg HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n") and b"Connection: close\r\n" in reply
    big = b"GET /ConfigCommon.cfg HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw_exchange(server.port, big).startswith(b"HTTP/1.1 431 ")
    body = b"POST /x HTTP/1.1\r\nContent-Length: 70000\r\n\r\n" + b"b" * 70000
    assert raw_exchange(server.port, body).startswith(b"HTTP/1.1 413 ")
    reasons = [e["reason"] for e in server.events() if e["event"] == "request.malformed"]
    assert any("over 16384 bytes" in str(r) for r in reasons)


def test_slowloris_and_connection_caps(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("http:\n  head_timeout: 1\n  max_connections_per_source: 4\n")
    sp = start_server(tmp_path, "--config", str(cfg))
    try:
        # a head sent a byte at a time never completes: 408 and closed
        slow = socket.create_connection(("127.0.0.1", sp.port), timeout=10)
        slow.sendall(b"GET /ConfigCommon.cfg HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):
            time.sleep(0.2)
            slow.sendall(b"X")  # still sending, never done
        got = b""
        while chunk := slow.recv(4096):
            got += chunk
        slow.close()
        assert got.startswith(b"HTTP/1.1 408") and b"http.head_timeout" in got
        # four connections from one address are held; the fifth is refused
        held = [socket.create_connection(("127.0.0.1", sp.port), timeout=5) for _ in range(4)]
        fifth = raw_exchange(sp.port, b"GET /ConfigCommon.cfg HTTP/1.1\r\nHost: x\r\n\r\n")
        assert fifth.startswith(b"HTTP/1.1 503") and b"connections open from 127.0.0.1" in fifth
        for s in held:
            s.close()
        ok = raw_exchange(sp.port, b"GET /ConfigCommon.cfg HTTP/1.0\r\n\r\n")
        assert ok.startswith(b"HTTP/1.0 200")  # released when they close
    finally:
        assert sp.stop() == 0


class _HeldBus:
    """A bus whose commits never come: answers pile up as a slow inventory would."""

    def __init__(self) -> None:
        self.waiting: list[object] = []

    def emit(self, event: object) -> None:
        pass

    def after_settled(self, callback: object) -> None:
        self.waiting.append(callback)


class _Transport:
    def __init__(self) -> None:
        self.paused = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        pass


def test_pipelined_answers_are_bounded(make_runtime: Callable[..., Runtime]) -> None:
    rt = make_runtime()
    bus = _HeldBus()
    proto = FileServerProtocol(lambda: rt, bus, lambda _m: False, set())  # type: ignore[arg-type]
    t = _Transport()
    proto.connection_made(t)  # type: ignore[arg-type]
    proto.data_received(b"GET /ConfigCommon.cfg HTTP/1.1\r\nHost: x\r\n\r\n" * (MAX_PENDING + 10))
    assert t.paused and len(bus.waiting) == MAX_PENDING + 10  # what was read already is kept
    for cb in bus.waiting:
        cb(None)  # type: ignore[operator]
    assert not t.paused and len(t.written) == MAX_PENDING + 10


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_firmware_is_streamed_with_ranges(tmp_path: Path, templates: Path) -> None:
    """A 30 MB raw file to 20 phones at once: the bytes are right and the server's memory
    grows by no more than its sockets' buffers; ranges, HEAD and 304 as RFC 9110 says."""
    blob = os.urandom(1 << 20) * 30
    (templates / "firmware-{MODEL}.bin").write_bytes(blob)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"files:\n  templates: {templates}\n")
    sp = start_server(tmp_path, "--config", str(cfg))
    try:
        url = f"{sp.base}/firmware-KX-HDV130.bin"
        before = rss_kib(sp.proc.pid)
        outs = [tmp_path / f"fw{i}" for i in range(20)]
        procs = [subprocess.Popen(["curl", "-sS", "--max-time", "60", "--limit-rate", "20M",
                                   "-o", str(o), url]) for o in outs]  # fmt: skip
        peak = before
        while any(p.poll() is None for p in procs):
            peak = max(peak, rss_kib(sp.proc.pid))
            time.sleep(0.02)
        assert all(p.returncode == 0 for p in procs)
        digest = hashlib.sha256(blob).hexdigest()
        assert all(hashlib.sha256(o.read_bytes()).hexdigest() == digest for o in outs)
        print(f"RSS grew {peak - before} KiB while 20 phones fetched 30 MB each")
        assert peak - before < 16 * 1024, f"RSS grew {peak - before} KiB for 20 x 30 MB"
        head = curl("-sI", url).stdout
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 31457280" in head
        assert b"Accept-Ranges: bytes" in head
        part = curl("-i", "-r", "1000-1999", url).stdout
        h, _, body = part.partition(b"\r\n\r\n")
        assert h.startswith(b"HTTP/1.1 206") and b"Content-Range: bytes 1000-1999/31457280" in h
        assert body == blob[1000:2000]
        assert curl("-i", "-r", "-10", url).stdout.endswith(blob[-10:])
        assert status_of("-r", "40000000-", url) == 416
        tag = next(x.split(b": ", 1)[1] for x in head.split(b"\r\n") if x.startswith(b"ETag"))
        assert status_of("-H", f"If-None-Match: {tag.decode()}", url) == 304
    finally:
        assert sp.stop() == 0


def test_an_edit_that_does_not_compile_is_kept_out(tmp_path: Path) -> None:
    """Phones keep the last good version, and a template.rejected event says why."""
    import time

    t = tmp_path / "t"
    t.mkdir()
    (t / "hello.txt").write_text("hello {{ MODEL }}\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"files:\n  templates: {t}\nrules:\n  - name: hello\n"
                   "    url: http://${server}:${http_port}/hello.txt\n")
    sp = start_server(tmp_path, "--config", str(cfg))
    try:
        assert curl("-A", UA, f"{sp.base}/hello.txt").stdout == b"hello KX-HDV130\n"
        time.sleep(0.05)
        (t / "hello.txt").write_text("hello {{ MODEL\n")
        time.sleep(1.2)  # edits are picked up within a second
        r = curl("-A", UA, "-w", "%{http_code}", f"{sp.base}/hello.txt")
        assert r.stdout == b"hello KX-HDV130\n200"
        ev = sp.wait_event("template.rejected")
        assert "hello.txt:1: template syntax" in str(ev["reason"])
        assert "the last good version is" in str(ev["reason"])
    finally:
        assert sp.stop() == 0


class _Bus:
    """A bus whose commits come at once, keeping what was emitted."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def emit(self, event: object) -> None:
        self.events.append(event)

    def after_settled(self, callback: Callable[[BaseException | None], None]) -> None:
        callback(None)


def test_a_repeated_request_reuses_its_answer_until_what_it_depends_on_changes(
    tmp_path: Path,
) -> None:
    """The answers' reuse (files.service.Answers): the same bytes and a fresh event for
    each request; a new answer once the device's facts, the runtime or the template
    change; never a refusal's or an authenticated one."""
    t = tmp_path / "t"
    t.mkdir()
    (t / "hello-{MODEL}.txt").write_text("rule {{ rule }}\n")
    (t / "secret-{MODEL}.txt").write_text("secret {{ rule }}\n")

    def runtime(**extra: Any) -> Runtime:
        rules = [{"name": "lab", "url": "http://198.18.0.9/hello-{MODEL}.txt",
                  "match": {"vendor_class": ["LAB"]}},
                 {"name": "rest", "url": "http://198.18.0.1/hello-{MODEL}.txt"}]  # fmt: skip
        data = {"files": {"templates": str(t)}, "server": {"address": "198.18.0.1"},
                "rules": rules, **extra}  # fmt: skip
        rt = build_runtime(build_config(data), None, secret=b"k" * 32)
        for site in rt.sites:
            site.rules.known = site.rules6.known = directory.known
        return rt

    directory = Directory()
    rt = runtime()
    bus = _Bus()
    server = FileServer(lambda: rt, bus, lambda _m: False,  # type: ignore[arg-type]
                        version=lambda: directory.version)  # fmt: skip
    answers = server.answers
    assert answers is not None

    def get(path: str, ua: str = UA, extra: str = "") -> bytes:
        proto = FileServerProtocol(lambda: rt, bus, lambda _m: False, set(),  # type: ignore[arg-type]
                                   answers=answers)  # fmt: skip
        tr = _Transport()
        proto.connection_made(tr)  # type: ignore[arg-type]
        proto.data_received(f"GET {path} HTTP/1.1\r\nUser-Agent: {ua}\r\n{extra}\r\n".encode())
        return b"".join(tr.written)

    first = get("/hello-KX-HDV130.txt")
    again = get("/hello-KX-HDV130.txt")
    assert first.endswith(b"\r\n\r\nrule rest\n") and again == first
    assert answers.reused == 1
    one, two = bus.events[-2:]
    assert one.fields() == two.fields() and one.kind == two.kind == "file.served"
    assert two.ts > one.ts  # each request is an event of its own, with its own time
    # the device's DHCP request told its option 60: the next answer follows the lab rule
    directory.learn("0080F0C571EB", DeviceFacts(vendor_class="LAB phone"))
    assert get("/hello-KX-HDV130.txt").endswith(b"\r\n\r\nrule lab\n")
    assert answers.reused == 1
    assert get("/hello-KX-HDV130.txt").endswith(b"\r\n\r\nrule lab\n")
    assert answers.reused == 2
    # another User-Agent is another request: its own answer
    other = "Panasonic_KX-HDV130/01.000 (0080f0c571ec)"
    assert get("/hello-KX-HDV130.txt", other).endswith(b"\r\n\r\nrule rest\n")
    # a reload (a new runtime) and a template edited on disk: answered afresh
    rt = runtime()
    assert get("/hello-KX-HDV130.txt").endswith(b"\r\n\r\nrule lab\n")
    assert answers.reused == 2
    (t / "hello-{MODEL}.txt").write_text("edited {{ rule }}\n")
    time.sleep(1.1)  # the template's next check on disk is due (templates.STAT_INTERVAL)
    assert get("/hello-KX-HDV130.txt").endswith(b"\r\n\r\nedited lab\n")
    # refusals are answered afresh each time (404: no such template)
    for _ in range(2):
        assert get("/nothing.txt").startswith(b"HTTP/1.1 404")
    # behind credentials: never reused (a digest nonce is the server's to renew)
    rt = runtime(rules=[{"name": "auth", "url": "http://u:p@198.18.0.1/secret-{MODEL}.txt"}])
    basic = "Authorization: Basic " + base64.b64encode(b"u:p").decode() + "\r\n"
    before = answers.reused
    for _ in range(2):
        assert get("/secret-KX-HDV130.txt", extra=basic).endswith(b"secret auth\n")
        assert get("/secret-KX-HDV130.txt").startswith(b"HTTP/1.1 401")
    assert answers.reused == before


def test_the_reused_answers_are_bounded_in_count_and_bytes(
    make_runtime: Callable[..., Runtime],
) -> None:
    rt = make_runtime()
    answers = Answers(lambda: 0, size=10, max_bytes=64 * 4096)

    def answer(n: int) -> FileAnswer:
        ev = FileServed(channel="http", path="/x", template="x", rule="d", size=n)
        return FileAnswer(200, b"x" * n, ev, reusable_until=float("inf"))

    for i in range(100):
        answers.put(("small", i), rt, answer(100))
    assert len(answers._kept) == 10 and answers.get(("small", 99), rt, 0.0) is not None
    assert answers.get(("small", 0), rt, 0.0) is None  # the oldest went first
    answers = Answers(lambda: 0, size=1000, max_bytes=64 * 4096)
    for i in range(100):
        answers.put(("big", i), rt, answer(1500))
    assert 0 < len(answers._kept) < 100 and answers.bytes <= answers.max_bytes
    assert answers.bytes == sum(c for *_, c in answers._kept.values())
    answers.put(("huge",), rt, answer(8000))  # over a 64th of the budget: not kept
    assert answers.get(("huge",), rt, 0.0) is None


def open_files_limit(pid: int) -> tuple[int, int]:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines()
                if x.startswith("Max open files"))  # fmt: skip
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_the_descriptor_limit_is_raised_to_what_the_caps_hold(tmp_path: Path) -> None:
    """A soft limit of 1,024 (a systemd service's default) is below the server's own caps
    (4,096 HTTP connections, 256 TFTP transfers): past it connections would fail with
    EMFILE while the caps say there is room. The server raises its soft limit as far as
    the hard limit allows, and says so at start when the hard limit is below its caps."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed")
    wanted = 4096 + 2 * 256 + 1024  # http.max_connections, 2 x tftp.max_transfers, spare
    (tmp_path / "a").mkdir()
    sp = start_server(tmp_path / "a", wrap=["prlimit", "--nofile=1024:16384", "--"])
    try:
        started = sp.wait_event("server.started")
        assert open_files_limit(sp.proc.pid) == (wanted, 16384)
        assert not any("descriptors" in str(n) for n in started.get("notes") or [])
    finally:
        assert sp.stop() == 0
    (tmp_path / "b").mkdir()
    sp = start_server(tmp_path / "b", wrap=["prlimit", "--nofile=1024:2048", "--"])
    try:
        started = sp.wait_event("server.started")
        assert open_files_limit(sp.proc.pid) == (2048, 2048)
        notes = [str(n) for n in started.get("notes") or []]
        assert any(f"the hard limit is 2048, below the {wanted}" in n for n in notes), notes
        assert curl("-s", "-o", "/dev/null", "-w", "%{http_code}",
                    f"{sp.base}/KX-HDV130.cfg").stdout == b"200"  # fmt: skip
    finally:
        assert sp.stop() == 0
