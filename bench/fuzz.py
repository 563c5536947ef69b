"""Coverage-guided fuzzing (atheris, libFuzzer) of every parser and protocol core.

Each target feeds the fuzzer's bytes to one core or parser the way the network
would, starting from a seed corpus of valid messages; any exception that is not
the parser's own "this is not a valid X" is a crash, and the cores catch
nothing (the adapters hold the last-resort catch), so a crash here is a bug.

    ./run bench fuzz [--runs 1000000] [--target NAME ...]

prints, per target, the inputs run, the time and the crashes (0 wanted);
a crashing input is kept in bench/results/fuzz-crash-<target>-*.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("pnp", "dhcp4", "dhcp6", "tftp", "http", "path", "url")


def seeds(target: str) -> list[bytes]:
    """Valid messages to start from: the fuzzer mutates them."""
    if target == "pnp":
        return [
            b"SUBSCRIBE sip:MAC%3a0080F0C571EB@224.0.1.75 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 198.18.0.2:5060;branch=z9hG4bK1;rport\r\n"
            b"From: <sip:MAC%3a0080F0C571EB@224.0.1.75>;tag=1\r\nTo: <sip:x@224.0.1.75>\r\n"
            b"Call-ID: abc@198.18.0.2\r\nCSeq: 1 SUBSCRIBE\r\n"
            b'Event: ua-profile;profile-type="device";vender="Panasonic";model="KX-HDV130";'
            b'version="01.000"\r\nExpires: 0\r\nAccept: application/url\r\n'
            b"Contact: <sip:198.18.0.2:5060>\r\nContent-Length: 0\r\n\r\n",
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.18.0.1:5060;branch=z9hG4bK2\r\n"
            b"Call-ID: abc\r\nCSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n",
        ]
    if target == "dhcp4":
        from pydhcp.packet import DHCPMessage, DHCPMessageType, DHCPOpcode

        out = []
        for t, extra in ((DHCPMessageType.DHCPDISCOVER, {}),
                         (DHCPMessageType.DHCPREQUEST, {54: bytes([198, 18, 0, 1]),
                                                         50: bytes([198, 18, 0, 130])}),
                         (DHCPMessageType.DHCPINFORM, {})):  # fmt: skip
            m = DHCPMessage(DHCPOpcode.BOOTREQUEST, chaddr=bytes.fromhex("0080f0c571eb"))
            m.options[53] = t
            m.options[55] = bytes([1, 3, 6, 66, 67, 159, 160])
            for k, v in extra.items():
                m.options[k] = v  # type: ignore[assignment]
            out.append(m.encode())
        return out
    if target == "dhcp6":
        from scapy.layers.dhcp6 import (
            DUID_LL,
            DHCP6_RelayForward,
            DHCP6_Solicit,
            DHCP6OptClientId,
            DHCP6OptElapsedTime,
            DHCP6OptIA_NA,
            DHCP6OptOptReq,
            DHCP6OptRelayMsg,
        )

        client = DHCP6OptClientId(duid=DUID_LL(lladdr="00:80:f0:c5:71:eb"))
        sol = (DHCP6_Solicit(trid=1) / client / DHCP6OptElapsedTime() / DHCP6OptIA_NA(iaid=1)
               / DHCP6OptOptReq(reqopts=[17, 23]))  # fmt: skip
        relay = DHCP6_RelayForward(linkaddr="fd00::1", peeraddr="fe80::1") / DHCP6OptRelayMsg(
            message=sol
        )
        return [bytes(sol), bytes(relay)]
    if target == "tftp":
        return [b"\x00\x01KX-HDV130.cfg\x00octet\x00blksize\x001468\x00tsize\x000\x00",
                b"\x00\x04\x00\x01", b"\x00\x05\x00\x01x\x00"]  # fmt: skip
    if target == "http":
        return [b"GET /Config0080F0C571EB.cfg HTTP/1.1\r\nHost: x\r\n"
                b"User-Agent: Panasonic_KX-HDV130/01.000 (0080f0c571eb)\r\n"
                b'Authorization: Digest username="a", nonce="b", uri="/"\r\n\r\n']  # fmt: skip
    if target == "path":
        return [b"/Config0080F0C571EB.cfg", b"/%2e%2e/x", b"/a/b/KX-HDV130.cfg"]
    return [b"http://user:pw@198.18.0.1:8080/{MODEL}.cfg", b"tftp://[fd00::1]/{mac}.cfg"]


def make_target(target: str):  # type: ignore[no-untyped-def]
    """The function the fuzzer calls with each input."""
    from preprov.config import Rule
    from preprov.rules import RuleSet

    placeholders = {"server": "198.18.0.1", "http_port": "8080"}
    rules = RuleSet([Rule(name="d", url="http://${server}:${http_port}/{MODEL}.cfg")],
                    placeholders)  # fmt: skip
    if target == "pnp":
        from preprov.safety import RateLimiter
        from preprov.sip.pnp import PnpPolicy, PnpResponder

        # no rate limit: every input reaches the parser
        policy = PnpPolicy(rules=rules, limiter=RateLimiter(10**9, 10**9),
                           answers=RateLimiter(10**9, 10**9, 1))  # fmt: skip
        r = PnpResponder(("198.18.0.1", 5060), policy)
        clock = [0.0]

        def pnp(data: bytes) -> None:
            clock[0] += 0.01
            r.datagram_received(data, ("198.18.0.2", 5060), clock[0])
            if (t := r.next_timer()) is not None and t <= clock[0]:
                r.timer_expired(clock[0])

        return pnp
    if target == "dhcp4":
        import ipaddress

        from preprov.dhcp4.leases import LeaseTable, default_subnet
        from preprov.dhcp4.server import Dhcp4Policy, Dhcp4Server

        iface = ipaddress.IPv4Interface("198.18.0.1/24")
        sub = default_subnet(iface)
        s = Dhcp4Server(Dhcp4Policy(server_ip=iface.ip, rules=rules, local=sub), LeaseTable([sub]))
        return lambda data: s.datagram_received(data, ("0.0.0.0", 68), 1e6)
    if target == "dhcp6":
        import ipaddress

        from preprov.dhcp6.server import Dhcp6Policy, Dhcp6Server, Leases6, default_pool

        leases = Leases6([default_pool(ipaddress.IPv6Interface("fd00::1/64"))])
        s6 = Dhcp6Server(Dhcp6Policy(duid=b"\x00\x04" + b"u" * 16, rules=rules,
                                     local=leases.pools[0]), leases)  # fmt: skip
        return lambda data: s6.datagram_received(data, ("fe80::2", 546), 1e6)
    if target == "tftp":
        from preprov.events import FileServed
        from preprov.safety import RateLimiter
        from preprov.tftp.core import FileAnswer, TftpPolicy, TftpServer, TransferSlots

        ev = FileServed(channel="tftp", client="x", path="/f", template="f", rule="d", size=1)
        policy = TftpPolicy(limiter=RateLimiter(10**9, 10**9), slots=TransferSlots(10**9),
                            max_per_source=10**9)  # fmt: skip
        t = TftpServer(policy, lambda path, client: FileAnswer(200, b"x" * 3000, ev))
        clock = [0.0]

        def tftp(data: bytes) -> None:
            clock[0] += 0.5
            out = t.datagram_received(data, ("198.18.0.2", 3000), clock[0])
            for s in out.sends:
                if s.via is not None:
                    t.transfer_received(s.via, data, ("198.18.0.2", 3000), clock[0])
            t.timer_expired(clock[0])

        return tftp
    if target == "http":
        from preprov.config import Config
        from preprov.files.service import FileRequest, fetch
        from preprov.runtime import build_runtime
        from preprov.web.httpd import FileServerProtocol

        rt = build_runtime(Config(), None)

        class Bus:
            def emit(self, event: object) -> None:
                pass

            def after_settled(self, callback):  # type: ignore[no-untyped-def]
                callback(None)

        class Transport:
            def get_extra_info(self, name: str) -> object:
                return ("198.18.0.2", 1)

            def write(self, data: bytes) -> None:
                pass

            def close(self) -> None:
                pass

            def pause_reading(self) -> None:
                pass

            def resume_reading(self) -> None:
                pass

        def http(data: bytes) -> None:
            p = FileServerProtocol(lambda: rt, Bus(), lambda m: False, set())  # type: ignore[arg-type]
            p.connection_made(Transport())  # type: ignore[arg-type]
            p.data_received(data)
            text = data.decode("latin-1")
            fetch(rt, FileRequest("http", "198.18.0.2", text[:200], user_agent=text[200:400],
                                  authorization=text[400:]))  # fmt: skip

        return http
    if target == "path":
        from preprov.files.templates import UnsafePath, check_request_path

        def path(data: bytes) -> None:
            with contextlib.suppress(UnsafePath, UnicodeError):
                check_request_path(data.decode("utf-8", "surrogatepass"))

        return path
    from preprov.macros import UrlError, parse_url

    def url(data: bytes) -> None:
        with contextlib.suppress(UrlError):
            parse_url(data.decode("utf-8", "replace"))

    return url


def run_one(target: str, runs: int) -> dict[str, object]:
    """One target in a process of its own (libFuzzer exits on the first crash)."""
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as corpus:
        for i, s in enumerate(seeds(target)):
            Path(corpus, f"seed{i}").write_bytes(s)
        started = time.monotonic()
        r = subprocess.run(
            [sys.executable, __file__, "--child", target, f"-runs={runs}", "-max_len=2048",
             f"-artifact_prefix={out}/fuzz-crash-{target}-", corpus],
            capture_output=True, text=True,
        )  # fmt: skip
    done = [line for line in r.stderr.splitlines() if line.startswith("Done ")]
    return {
        "target": target,
        "runs": int(done[-1].split()[1]) if done else 0,
        "seconds": round(time.monotonic() - started, 1),
        "crashes": 0 if r.returncode == 0 else 1,
        "tail": "" if r.returncode == 0 else r.stderr[-3000:],
    }


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        import atheris

        target = sys.argv[2]
        with atheris.instrument_imports(include=["preprov"]):
            fn = make_target(target)
        atheris.Setup([sys.argv[0], *sys.argv[3:]], fn)
        atheris.Fuzz()
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--target", action="append", choices=TARGETS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fuzz.json")
    args = ap.parse_args()
    results = [run_one(t, args.runs) for t in args.target or TARGETS]
    for r in results:
        print(f"{r['target']:6} {r['runs']:>9} inputs  {r['seconds']:>7} s  crashes {r['crashes']}")
        if r["crashes"]:
            print(r["tail"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 1 if any(r["crashes"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
