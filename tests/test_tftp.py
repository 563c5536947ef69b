"""TFTP: the core with bytes; tftp-hpa against `preprov serve --interface` across namespaces."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from preprov.events import FileServed
from preprov.files.lint import lint
from preprov.lab import Lab
from preprov.safety import AllowList, RateLimiter
from preprov.tftp.core import (
    ACCESS_VIOLATION,
    ACK,
    DATA,
    OACK,
    RESEND_CREDIT_MAX,
    RESEND_REFILL,
    FileAnswer,
    NotARequest,
    ReadRequest,
    TftpError,
    TftpPolicy,
    TftpServer,
    Transfer,
    TransferSlots,
    netascii,
    parse_request,
)
from serverproc import start_server


def rrq(name: str, mode: str = "octet", **opts: str) -> bytes:
    body = name.encode() + b"\x00" + mode.encode() + b"\x00"
    for k, v in opts.items():
        body += k.encode() + b"\x00" + v.encode() + b"\x00"
    return struct.pack("!H", 1) + body


def ack(n: int) -> bytes:
    return struct.pack("!HH", ACK, n)


def test_requests_parsed_and_refused() -> None:
    r = parse_request(rrq("KX-HDV130.cfg", "OCTET", blksize="1468", tsize="0"))
    assert r == ReadRequest("KX-HDV130.cfg", "octet", {"blksize": "1468", "tsize": "0"})
    with pytest.raises(TftpError) as e:
        parse_request(struct.pack("!H", 2) + b"x\x00octet\x00")
    assert e.value.code == ACCESS_VIOLATION and "read-only" in e.value.message
    with pytest.raises(TftpError, match="mode 'mail'"):
        parse_request(rrq("x", "mail"))
    with pytest.raises(TftpError, match="NUL-terminated"):
        parse_request(struct.pack("!H", 1) + b"x\x00octet")
    with pytest.raises(NotARequest):
        parse_request(ack(3))


def test_blocks_of_512_then_a_short_one_and_resends() -> None:
    body = bytes(range(256)) * 5  # 1280 octets: 512, 512, 256
    t = Transfer(body, ReadRequest("f", "octet"), timeout=1.0, retries=2)
    first = t.start()
    assert first[:4] == struct.pack("!HH", DATA, 1) and len(first) == 4 + 512
    assert t.on_packet(ack(1))[4:] == body[512:1024]  # type: ignore[index]
    assert t.on_packet(ack(1)) is None  # a duplicate ACK is not answered
    assert t.on_timeout() == struct.pack("!HH", DATA, 2) + body[512:1024]
    last = t.on_packet(ack(2))
    assert last is not None and last[4:] == body[1024:] and not t.done
    assert t.on_packet(ack(3)) is None and t.done


def test_exact_multiple_ends_with_an_empty_block_and_give_up() -> None:
    t = Transfer(b"x" * 1024, ReadRequest("f", "octet"), retries=1)
    t.start()
    t.on_packet(ack(1))
    empty = t.on_packet(ack(2))
    assert empty == struct.pack("!HH", DATA, 3)  # RFC 1350: a block under 512 ends it
    assert t.on_timeout() == empty and t.on_timeout() is None and t.done


def test_option_negotiation() -> None:
    req = ReadRequest("f", "octet", {"blksize": "9000", "tsize": "0", "timeout": "3", "x": "1"})
    t = Transfer(b"y" * 3000, req, blksize_max=1468)
    oack = t.start()
    assert oack == struct.pack("!H", OACK) + b"blksize\x001468\x00tsize\x003000\x00timeout\x003\x00"
    first = t.on_packet(ack(0))
    assert first is not None and len(first) == 4 + 1468 and t.timeout == 3.0
    assert run_out(Transfer(b"z", ReadRequest("f", "netascii"))) == b"z"
    assert run_out(Transfer(b"a\nb", ReadRequest("f", "netascii"))) == b"a\r\nb"


class Counted:
    """A source that says how it was read, as a file read from disk would be."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)
        self.reads: list[int] = []
        self.closed = 0

    def read(self, offset: int, n: int) -> bytes:
        self.reads.append(n)
        return self.data[offset : offset + n]

    def close(self) -> None:
        self.closed += 1


def run_out(t: Transfer) -> bytes:
    """Acknowledge every block: the bytes the client receives."""
    got, pkt = bytearray(), t.start()
    while pkt is not None:
        if pkt[:2] == struct.pack("!H", DATA):
            got += pkt[4:]
        pkt = t.on_packet(ack(struct.unpack_from("!H", pkt, 2)[0] if pkt[:2] ==
                                struct.pack("!H", DATA) else 0))  # fmt: skip
    assert t.done and t.acked
    return bytes(got)


def test_a_source_is_read_block_by_block_never_whole() -> None:
    """A large file is read as its blocks go out (issue: fifty phones fetching one 30 MB
    firmware held fifty copies): no read larger than a block in octet mode, the bytes
    right, an exact multiple ended by an empty block, tsize offered."""
    data = bytes(range(256)) * 400  # 102,400 octets: 200 blocks of 512, then an empty one
    src = Counted(data)
    t = Transfer(src, ReadRequest("fw", "octet", {"tsize": "0"}))
    assert t.start() == struct.pack("!H", OACK) + b"tsize\x00102400\x00"
    assert run_out(t) == data and max(src.reads) == 512 and len(src.reads) == 201
    assert t.blocks == 201 and t.block == 201


def test_netascii_from_a_source_is_converted_chunk_by_chunk() -> None:
    """netascii from a file read as it goes: CRLF line ends whatever the file had, a CRLF
    split between two chunks read kept one CRLF; its size is not known ahead, so no tsize
    is offered (RFC 2347 lets a server leave an option out)."""
    from preprov.tftp.core import CHUNK

    data = b"a\nb\r\nc" + b"x" * (CHUNK - 7) + b"\r\nline\n" * 3000 + b"end\r"
    assert data[CHUNK - 1 : CHUNK + 1] == b"\r\n"  # the split the converter must join
    src = Counted(data)
    t = Transfer(src, ReadRequest("fw", "netascii", {"tsize": "0", "blksize": "1000"}))
    assert t.start() == struct.pack("!H", OACK) + b"blksize\x001000\x00"
    assert run_out(t) == netascii(data) and max(src.reads) <= CHUNK
    assert t.blocks is None


def test_server_core_closes_a_source_when_its_transfer_ends() -> None:
    """Done, given up, or made to give way: the file the transfer read is let go."""
    served = FileServed(channel="tftp", client="198.18.0.2", path="/fw", template="fw",
                        rule="default", size=1)  # fmt: skip
    sources: list[Counted] = []

    def answer(path: str, client: str) -> FileAnswer:
        sources.append(Counted(b"y" * 700))
        return FileAnswer(200, b"", served, sources[-1])

    s = TftpServer(TftpPolicy(allow=AllowList.build([], [], ["198.18.0.0/24"]), retries=1),
                   answer)  # fmt: skip
    tid = s.datagram_received(rrq("fw"), PHONE, 0.0).sends[0].via
    assert tid is not None and sources[0].closed == 0
    s.transfer_received(tid, ack(1), PHONE, 0.1)
    out = s.transfer_received(tid, ack(2), PHONE, 0.2)
    assert out.closed == [tid] and sources[0].closed == 1
    s.datagram_received(rrq("fw"), PHONE, 1.0)  # never acknowledged: given up
    s.timer_expired(2.0)
    out = s.timer_expired(3.0)
    assert out.closed and sources[1].closed == 1 and s.policy.slots.taken == 0


PHONE = ("198.18.0.2", 3000)


def tftp_server(**kw: object) -> TftpServer:
    served = FileServed(channel="tftp", client="198.18.0.2", path="/f", template="f",
                        rule="default", size=1)  # fmt: skip

    def answer(path: str, client: str) -> FileAnswer:
        if path == "/f":
            return FileAnswer(200, b"x" * 1000, served)
        return FileAnswer(404, b"no template matches\n", served)

    kw.setdefault("allow", AllowList.build([], [], ["198.18.0.0/24"]))
    return TftpServer(TftpPolicy(**kw), answer)  # type: ignore[arg-type]


def test_server_core_runs_a_transfer_from_a_socket_of_its_own() -> None:
    s = tftp_server()
    out = s.datagram_received(rrq("f"), PHONE, 0.0)
    (first,) = out.sends
    assert first.via is not None and first.addr == PHONE and first.data[:4] == b"\x00\x03\x00\x01"
    tid = first.via
    out = s.transfer_received(tid, ack(1), PHONE, 0.1)
    assert out.sends[0].data[:4] == b"\x00\x03\x00\x02" and out.sends[0].via == tid
    out = s.transfer_received(tid, ack(2), PHONE, 0.2)  # the last block (1000 = 512 + 488)
    assert out.closed == [tid] and isinstance(out.events[0], FileServed)
    assert s.policy.slots.taken == 0 and s.next_timer() is None
    # a file that is not there: an error from the request port, no transfer
    out = s.datagram_received(rrq("nope"), PHONE, 0.3)
    assert out.sends[0].via is None and out.sends[0].data[:4] == b"\x00\x05\x00\x01"


def test_server_core_answers_only_its_segment_within_rates_and_caps() -> None:
    s = tftp_server(limiter=RateLimiter(3, 1), slots=TransferSlots(5), max_per_source=2)
    out = s.datagram_received(rrq("f"), ("203.0.113.9", 69), 0.0)
    assert out.sends == [] and "not in the allowed subnets" in out.events[0].reason  # type: ignore[attr-defined]
    # per source: two transfers at once, the third is told the server is busy
    assert s.datagram_received(rrq("f"), PHONE, 0.0).sends[0].via is not None
    assert s.datagram_received(rrq("f"), PHONE, 0.0).sends[0].via is not None
    busy = s.datagram_received(rrq("f"), PHONE, 0.0)
    assert busy.sends[0].via is None and "tftp.max_transfers_per_source" in busy.events[0].reason  # type: ignore[attr-defined]
    # over its rate: silence, one event a second at most
    assert s.datagram_received(rrq("f"), PHONE, 0.0).sends == []
    # all sources together: at most 5 transfers
    for i in range(3, 10):
        s.datagram_received(rrq("f"), (f"198.18.0.{i}", 69), 0.0)
    assert s.policy.slots.taken == 5
    # once they stall (no ACK in time), a new request takes the place of the oldest
    s.timer_expired(1.5)
    out = s.datagram_received(rrq("f"), ("198.18.0.77", 69), 1.6)
    assert out.sends[-1].via is not None and len(out.closed) == 1
    assert "gave way to a new request" in out.events[0].reason  # type: ignore[attr-defined]
    # every transfer ends (given up) and frees its slot and socket
    closed = []
    while (t := s.next_timer()) is not None:
        closed += s.timer_expired(t).closed
    assert len(closed) == 5 and s.policy.slots.taken == 0 and s.live == {}


def test_server_core_spoofed_requests_draw_bounded_resends() -> None:
    s = tftp_server(slots=TransferSlots(10_000), limiter=RateLimiter(10**9, 10**9))
    received = sent = 0
    for i in range(20_000):
        t = i / 1000
        data = rrq("f")
        received += len(data)
        sent += sum(
            len(x.data) for x in s.datagram_received(data, (f"198.18.0.{i % 250}", i), t).sends
        )
        while (w := s.next_timer()) is not None and w <= t:
            sent += sum(len(x.data) for x in s.timer_expired(w).sends)
    while (w := s.next_timer()) is not None:
        sent += sum(len(x.data) for x in s.timer_expired(w).sends)
    # the first block of each, and resends paid for by what came in (unbounded: 6 blocks each)
    assert s.resends_skipped > 0
    assert sent <= 20_000 * 516 + received + RESEND_CREDIT_MAX + RESEND_REFILL * 30


def test_tftp_hpa_fetches_the_zero_config_file(lab: Lab, tmp_path: Path) -> None:
    if shutil.which("tftp") is None:
        pytest.skip("tftp-hpa is not installed")
    srv = lab.host("srv")
    phone = lab.host("phone")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080)
    try:
        got = tmp_path / "KX-HDV130.cfg"
        r = subprocess.run(
            [*phone.prefix(), "tftp", "-m", "binary", str(srv.ipv4.ip), "-c", "get",
             "KX-HDV130.cfg", str(got)], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0 and got.exists(), r.stdout + r.stderr
        body = got.read_bytes()
        assert lint(body) == [] and b"CFG_STANDARD_FILE_PATH" in body
        # netascii: the client turns the CRLF lines back into its own line ends
        text = tmp_path / "KX-HDV130.txt"
        subprocess.run([*phone.prefix(), "tftp", "-m", "netascii", str(srv.ipv4.ip), "-c", "get",
                        "KX-HDV130.cfg", str(text)], capture_output=True, timeout=30, check=True)  # fmt: skip
        assert text.read_bytes() == body.replace(b"\r\n", b"\n")
        r = subprocess.run(
            [*phone.prefix(), "tftp", str(srv.ipv4.ip), "-c", "get", "../../etc/passwd",
             str(tmp_path / "x")], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert (
            "Error code 2" in r.stdout + r.stderr and b"root:" not in (tmp_path / "x").read_bytes()
        )
        # the event comes with the last ACK, which may arrive after the client exits
        served = sp.wait_event("file.served")
        assert (served["channel"], served["path"]) == ("tftp", "/KX-HDV130.cfg")
        # over IPv6: the same file, with IPv6 URLs in it
        got6 = tmp_path / "KX-HDV130.v6"
        r = subprocess.run(
            [*phone.prefix(), "tftp", "-6", "-m", "binary", str(srv.ipv6.ip), "-c", "get",
             "KX-HDV130.cfg", str(got6)], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0 and got6.exists(), r.stdout + r.stderr
        assert f"[{srv.ipv6.ip}]".encode() in got6.read_bytes() and lint(got6.read_bytes()) == []
    finally:
        assert sp.stop() == 0


def test_simulated_phone_fetches_over_tftp(lab: Lab, tmp_path: Path) -> None:
    """A rule URL of tftp://: the phone learns it over SIP PnP and reads the
    pre-provisioning file over TFTP (IPv4), then the files it names (over TFTP
    too, as the template follows the rule URL's scheme); a file
    the server does not have is a 404 to the phone, one outside its folder a 403."""
    import json
    import sys

    srv = lab.host("srv")
    phone = lab.host("phone")
    cfg = tmp_path / "tftp.yaml"
    cfg.write_text("rules:\n  - name: over-tftp\n    url: tftp://${server}/{MODEL}.cfg\n")
    sp = start_server(tmp_path, "--config", str(cfg), "--interface", "eth0", netns=srv.ns,
                      port=8080)  # fmt: skip

    def boot(mac: str, model: str) -> tuple[int, dict[str, object]]:
        r = subprocess.run(
            [*phone.prefix(), sys.executable, "-m", "preprov", "phone", "--interface", "eth0",
             "--mac", mac, "--model", model, "--json"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return r.returncode, json.loads(r.stdout)

    def read(name: str, host: str = str(srv.ipv4.ip)) -> str:
        code = ("import asyncio; from preprov.phone.tftp import tftp_get; "
                f"print(asyncio.run(tftp_get('{host}', 69, '{name}')))")  # fmt: skip
        return subprocess.run([*phone.prefix(), sys.executable, "-c", code], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()  # fmt: skip

    try:
        code, report = boot("0080F0C571EB", "KX-HDV130")
        missing, outside = read("nothing.txt"), read("../../etc/passwd")
        over_ipv6 = read("KX-HDV130.cfg", str(srv.ipv6.ip))
    finally:
        assert sp.stop() == 0
    files = report["files"]
    assert isinstance(files, list)
    assert code == 0, json.dumps(report)
    assert files[0]["url"] == f"tftp://{srv.ipv4.ip}/KX-HDV130.cfg" and files[0]["status"] == 200
    assert len(files) == 4 and all(f["status"] == 200 for f in files)
    assert all(str(f["url"]).startswith("tftp://") for f in files)
    served = [(e["channel"], e["path"]) for e in sp.events() if e.get("event") == "file.served"]
    assert ("tftp", "/KX-HDV130.cfg") in served and ("tftp", "/Config0080F0C571EB.cfg") in served
    assert (missing, outside) == ("(404, b'')", "(403, b'')")
    assert over_ipv6.startswith("(200, b'# Panasonic") and f"[{srv.ipv6.ip}]" in over_ipv6


def test_phone_tftp_read_core_with_bytes() -> None:
    from preprov.phone.tftp import TftpFailed, TftpRead

    srv, other = ("198.18.0.1", 40000), ("198.18.0.9", 40001)
    r = TftpRead("KX-HDV130.cfg", retries=1)
    assert r.start() == b"\x00\x01KX-HDV130.cfg\x00octet\x00blksize\x001468\x00"
    assert r.on_timeout() == r.start()  # the request again
    assert r.on_packet(b"\x00\x06blksize\x004\x00", srv) == (b"\x00\x04\x00\x00", srv)  # OACK
    assert r.on_packet(b"\x00\x05\x00\x05x\x00", other) is not None  # another TID: refused
    assert r.on_packet(b"\x00\x03\x00\x01abcd", srv) == (b"\x00\x04\x00\x01", srv)
    assert r.on_packet(b"\x00\x03\x00\x01abcd", srv) == (b"\x00\x04\x00\x01", srv)  # duplicate
    assert r.result is None
    assert r.on_packet(b"\x00\x03\x00\x02ef", srv) == (b"\x00\x04\x00\x02", srv)
    assert r.result == (200, b"abcdef")
    missing = TftpRead("x")
    assert missing.on_packet(b"\x00\x05\x00\x01not found\x00", srv) is None
    assert missing.result == (404, b"")
    with pytest.raises(TftpFailed):
        TftpRead("x").on_packet(b"\x00\x05\x00\x04illegal\x00", srv)
    late = TftpRead("x", retries=1)
    late.on_timeout()
    with pytest.raises(TimeoutError):
        late.on_timeout()


def test_a_flood_of_read_requests_from_many_sources_leaves_descriptors_bounded(
    lab: Lab, tmp_path: Path
) -> None:
    """100 addresses of the segment each send 40 read requests and never answer, to a
    server limited to 1,024 descriptors; a phone fetches meanwhile, over TFTP and HTTP."""
    if shutil.which("tftp") is None or shutil.which("prlimit") is None:
        pytest.skip("tftp-hpa or prlimit is not installed")
    srv, flooder, phone = lab.host("srv"), lab.host("flood"), lab.host("phone")
    net = srv.ipv4.network
    sources = [str(net[200 - i]) for i in range(100)]
    for a in sources:
        flooder.exec("ip", "addr", "add", f"{a}/{net.prefixlen}", "dev", "eth0")
    sp = start_server(tmp_path, "--interface", "eth0", netns=srv.ns, port=8080,
                      wrap=["prlimit", "--nofile=1024:1024", "--"])  # fmt: skip
    try:
        code = (
            "import socket, sys\n"
            "socks = []\n"
            "for a in sys.argv[2:]:\n"
            "    for _ in range(40):\n"
            "        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "        s.bind((a, 0)); socks.append(s)\n"
            "        s.sendto(b'\\x00\\x01KX-HDV130.cfg\\x00octet\\x00', (sys.argv[1], 69))\n"
            "print(len(socks))\n"
        )
        flood = subprocess.run([*flooder.prefix(), sys.executable, "-c", code, str(srv.ipv4.ip),
                                *sources], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert flood.stdout.strip() == "4000", flood.stderr
        fds = len(list(Path(f"/proc/{sp.proc.pid}/fd").iterdir()))
        got = tmp_path / "got.cfg"
        r = subprocess.run([*phone.prefix(), "tftp", "-m", "binary", str(srv.ipv4.ip), "-c",
                            "get", "KX-HDV130.cfg", str(got)], capture_output=True, text=True,
                           timeout=30)  # fmt: skip
        assert r.returncode == 0 and lint(got.read_bytes()) == [], r.stdout + r.stderr
        http = subprocess.run([*phone.prefix(), "curl", "-sS", "--max-time", "5",
                               f"http://{srv.ipv4.ip}:8080/KX-HDV130.cfg"], capture_output=True)  # fmt: skip
        assert http.returncode == 0 and lint(http.stdout) == []
        print(f"descriptors during the flood: {fds}")
        assert fds < 256 + 64, f"{fds} descriptors open during the flood"
        ignored = [e for e in sp.events() if e.get("event") == "request.ignored"]
        assert ignored and sp.proc.poll() is None
    finally:
        assert sp.stop() == 0


def test_at_the_cap_the_source_holding_most_gives_way_at_once() -> None:
    s = tftp_server(slots=TransferSlots(8), max_per_source=8, limiter=RateLimiter(100, 100))
    flooder = ("198.18.0.66", 69)
    for _ in range(8):
        assert s.datagram_received(rrq("f"), flooder, 0.0).sends[0].via is not None
    out = s.datagram_received(rrq("f"), PHONE, 0.01)  # no transfer has stalled yet
    assert out.sends[-1].via is not None and len(out.closed) == 1
    assert s.per_source == {"198.18.0.66": 7, "198.18.0.2": 1}


def test_tftp_hpa_fetches_a_large_firmware_read_from_disk(
    lab: Lab, tmp_path: Path, templates: Path
) -> None:
    """Six tftp-hpa clients fetch an 8 MB firmware at once: the bytes are right, the file
    is opened once for all six (a descriptor per file, not per transfer), and the
    server's memory grows by much less than the six copies it held before (48 MB)."""
    import hashlib
    import os
    import time

    from test_http import rss_kib

    if shutil.which("tftp") is None:
        pytest.skip("tftp-hpa is not installed")
    blob = os.urandom(1 << 20) * 8
    fw = templates / "firmware-{MODEL}.bin"
    fw.write_bytes(blob)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"files:\n  templates: {templates}\n")
    srv, phone = lab.host("srv"), lab.host("phone")
    sp = start_server(tmp_path, "--config", str(cfg), "--interface", "eth0", netns=srv.ns,
                      port=8080)  # fmt: skip
    try:
        before = rss_kib(sp.proc.pid)
        outs = [tmp_path / f"fw{i}" for i in range(6)]
        procs = [subprocess.Popen([*phone.prefix(), "tftp", "-m", "binary", str(srv.ipv4.ip),
                                   "-c", "get", "firmware-KX-HDV130.bin", str(o)])
                 for o in outs]  # fmt: skip
        peak, opened = before, 0
        fd_dir = Path(f"/proc/{sp.proc.pid}/fd")
        while any(p.poll() is None for p in procs):
            peak = max(peak, rss_kib(sp.proc.pid))
            links = []
            for fd in fd_dir.iterdir():
                try:
                    links.append(os.readlink(fd))
                except OSError:
                    continue  # closed meanwhile
            opened = max(opened, sum(1 for x in links if x == str(fw.resolve())))
            time.sleep(0.05)
        assert all(p.wait(timeout=120) == 0 for p in procs)
        digest = hashlib.sha256(blob).hexdigest()
        assert all(hashlib.sha256(o.read_bytes()).hexdigest() == digest for o in outs)
        print(f"RSS grew {peak - before} KiB while 6 clients fetched 8 MB each over TFTP")
        assert opened == 1, f"the firmware was open {opened} times at once"
        assert peak - before < 12 * 1024, f"RSS grew {peak - before} KiB for 6 x 8 MB"
    finally:
        assert sp.stop() == 0


def test_a_source_that_shrinks_ends_its_transfer() -> None:
    """A file cut short on disk while it is sent (an edit): the transfer ends with what
    there was, in either mode, instead of waiting for bytes that never come."""
    from preprov.tftp.core import CHUNK

    data = b"z\n" * (CHUNK // 2) + b"tail\r"  # a CR last: no LF will follow it
    for mode in ("octet", "netascii"):
        src = Counted(data)
        src.size = 3 * len(data)  # what the file's size said when the transfer began
        got = run_out(Transfer(src, ReadRequest("fw", mode)))
        assert got == (data if mode == "octet" else netascii(data)), mode


def test_large_files_opened_once_for_their_transfers_and_refused_when_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenFiles: one descriptor per file whatever the number of transfers reading it,
    closed with the last of them; a file that cannot be opened once fetch found it (removed
    or swapped since) is refused with a reason, not an internal error."""
    import os

    from preprov.events import EventBus, FileRefused
    from preprov.files import service
    from preprov.tftp import transport

    blob = bytes(range(256)) * 8
    path = tmp_path / "fw.bin"
    path.write_bytes(blob)
    opened: list[object] = []

    def opener() -> object:
        f = open(path, "rb")  # noqa: SIM115 (OpenFiles closes it)
        opened.append(f)
        return f

    files = transport.OpenFiles()
    a = files.share(opener, 100, 1000)  # type: ignore[arg-type]
    b = files.share(opener, 100, 1000)  # type: ignore[arg-type]
    assert len(files) == 1 and opened[1].closed  # type: ignore[attr-defined]  # the same file
    assert a.read(0, 10) == blob[100:110] and b.read(990, 64) == blob[1090:1100]
    a.close()
    a.close()  # twice: counted once
    assert not opened[0].closed  # type: ignore[attr-defined]
    edited = tmp_path / "fw.new"  # an edit as editors and copies make it: a new file
    edited.write_bytes(blob[::-1])
    os.replace(edited, path)  # read by new transfers; those under way keep the old one
    c = files.share(opener, 0, 16)  # type: ignore[arg-type]
    assert len(files) == 2 and c.read(0, 16) == blob[::-1][:16] and b.read(0, 4) == blob[100:104]
    b.close()
    c.close()
    assert opened[0].closed and opened[2].closed and len(files) == 0  # type: ignore[attr-defined]

    served = FileServed(channel="tftp", client="198.18.0.2", mac="0080F0C571EB", path="/fw.bin",
                        template="fw.bin", rule="default", size=len(blob))  # fmt: skip

    def gone() -> object:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(transport, "fetch", lambda *a, **k: service.FileAnswer(
        200, b"", served, "application/octet-stream", [("ETag", '"1"')], gone, 0, len(blob)))  # type: ignore[arg-type]  # fmt: skip
    ep = transport.TftpEndpoint(None, "198.18.0.1", lambda: None, EventBus(),  # type: ignore[arg-type]
                                lambda mac: False, TftpPolicy())  # fmt: skip
    answer = ep._answer("/fw.bin", "198.18.0.2")
    assert answer.status == 404 and answer.source is None and b"cannot be opened" in answer.body
    assert isinstance(answer.event, FileRefused) and answer.event.mac == "0080F0C571EB"
    assert len(ep.files) == 0
