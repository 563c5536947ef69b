"""The event loop's CPU per DHCPv4 exchange, in process: no peer, no sockets, no SQLite.

Not a comparison (bench/dhcp4_kea.py is): a measuring aid for the DHCPv4 hot path,
steadier than a network benchmark (one figure, a few percent from run to run). The
real core, endpoint, event bus and its subscribers (metrics, live stream, device
directory, log at info, the inventory's Recorder) answer --clients DORA exchanges
built with pydhcp (not timed), 64 at a time, the garbage collector set as the server
sets it; the Recorder's store turns each group into records and pickles them as
for the writer process's pipe, and goes no further.

    ./run bench dhcp4_inprocess [--clients 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import pickle
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvloop
from pydhcp.packet import DHCPMessage, DHCPMessageType, DHCPOpcode

from preprov.cli import GC_YOUNG
from preprov.config import Dhcp4Options, Rule
from preprov.dhcp4.leases import LeaseTable, Subnet
from preprov.dhcp4.server import Dhcp4Policy, Dhcp4Server
from preprov.dhcp4.transport import Dhcp4Endpoint
from preprov.events import Event, EventBus
from preprov.ident import Directory
from preprov.inventory.store import Recorder, records
from preprov.log import LogSink
from preprov.rules import RuleSet
from preprov.web.admin import Metrics
from preprov.web.dashboard import Stream

SERVER = ipaddress.IPv4Address("198.19.0.1")
PRL = bytes([1, 3, 6, 15, 42, 66, 67, 159, 160])
BATCH = 64


class PipeOnlyStore:
    """What the loop does for the writer process: records, pickled; nothing stored."""

    pipeline = 16
    shared = False

    def registered(self) -> set[str]:
        return set()

    def write(self, events: Sequence[Event], handed: Callable[[], None] | None = None) -> set[str]:
        recs, _ = records(events)
        pickle.dumps(("write", recs), protocol=pickle.HIGHEST_PROTOCOL)
        if handed is not None:
            handed()
        return set()


class Sent:
    stale = 0

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.data.append(data)


def message(mtype: DHCPMessageType, mac: str, xid: int, **opts: bytes) -> bytes:
    m = DHCPMessage(DHCPOpcode.BOOTREQUEST, chaddr=bytes.fromhex(mac), xid=xid)
    m.options[53] = mtype  # type: ignore[assignment]
    m.options[55] = PRL  # type: ignore[assignment]
    for k, v in opts.items():
        m.options[int(k[1:])] = v  # type: ignore[assignment]
    return bytes(m.encode())


def subscribed_bus() -> tuple[EventBus, Directory]:
    """The bus with the server's subscribers, the inventory's Recorder on PipeOnlyStore."""
    bus = EventBus()
    bus.subscribe(Metrics())
    bus.subscribe(Stream())
    directory = Directory()
    bus.subscribe(directory)
    bus.subscribe(LogSink("json", "warning"))  # its per-second summary line muted
    bus.subscribe_durable(Recorder(PipeOnlyStore()))  # type: ignore[arg-type]
    return bus, directory


async def run(clients: int) -> float:
    bus, directory = subscribed_bus()
    rules = RuleSet([Rule(name="d", url="http://${server}:${http_port}/{MODEL}.cfg")],
                    {"server": str(SERVER), "http_port": "8080"})  # fmt: skip
    rules.known = directory.known
    net = ipaddress.IPv4Network("198.19.0.0/16")
    pool = Subnet(net, ipaddress.IPv4Address("198.19.1.0"), ipaddress.IPv4Address("198.19.255.254"),
                  router=SERVER, exclude=frozenset({SERVER}))  # fmt: skip
    policy = Dhcp4Policy(server_ip=SERVER, rules=rules, local=pool,
                         options=Dhcp4Options(always_send=[66, 67, 159, 160]))  # fmt: skip
    iface = type("Iface", (), {"name": "eth0"})
    ep = Dhcp4Endpoint(iface, 67, Dhcp4Server(policy, LeaseTable([pool], {})), bus)  # type: ignore[arg-type]
    sent = Sent()
    ep._reader = sent  # type: ignore[assignment]
    macs = [f"0080F1{i:06X}" for i in range(clients)]
    discovers = [message(DHCPMessageType.DHCPDISCOVER, m, i) for i, m in enumerate(macs)]
    # the collector as `preprov serve` sets it: its thresholds, what exists at start frozen
    # (here the benchmark's own messages; without this a sixth of the figure was the
    # collector walking them)
    gc.set_threshold(GC_YOUNG, 10, 10)
    gc.freeze()
    cpu = 0.0
    for start in range(0, clients, BATCH):
        batch = range(start, min(clients, start + BATCH))
        sent.data.clear()
        cpu += await timed(ep, [(discovers[i], ("0.0.0.0", 68)) for i in batch], 2)
        offers = [DHCPMessage.decode(x) for x in sent.data]
        requests = [
            message(DHCPMessageType.DHCPREQUEST, macs[i], i, o54=SERVER.packed, o50=o.yiaddr.packed)
            for i, o in zip(batch, offers, strict=True)
        ]
        sent.data.clear()
        cpu += await timed(ep, [(r, ("0.0.0.0", 68)) for r in requests], 4)
        if len(sent.data) != len(requests):
            raise SystemExit(f"{len(sent.data)} ACKs for {len(requests)} REQUESTs")
    return cpu / clients


async def timed(ep: Any, datagrams: Sequence[tuple[bytes, tuple[str, int]]], turns: int) -> float:
    """The CPU seconds of the endpoint receiving a batch, and of the loop turns that its
    answers take to leave (an answer that binds waits for its group commit)."""
    t0 = time.process_time()
    for data, source in datagrams:
        ep.received(data, source)
    for _ in range(turns):
        await asyncio.sleep(0)
    return time.process_time() - t0


def main_of(run: Callable[[int], Awaitable[float]], doc: str | None, what: str) -> int:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=20000)
    args = ap.parse_args()
    per = uvloop.run(run(args.clients))
    print(f"{args.clients} {what}: {per * 1e6:.1f} µs of the event loop's CPU each "
          "(no sockets, no SQLite: the loop's own share)")  # fmt: skip
    return 0


def main() -> int:
    return main_of(run, __doc__, "DORA exchanges")


if __name__ == "__main__":
    raise SystemExit(main())
