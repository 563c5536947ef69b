"""The event loop's CPU per DHCPv6 exchange, in process: no peer, no sockets, no SQLite.

The DHCPv6 counterpart of bench/dhcp4_inprocess.py (a measuring aid, not a
comparison: bench/dhcp6_kea.py is): the real core, endpoint, event bus and its
subscribers answer --clients SOLICIT/ADVERTISE/REQUEST/REPLY exchanges, 64 at a
time, built by the simulated phone's DHCPv6 client (not timed), each client from a
link-local address of its own, option 17 always sent as the benchmark labs send it.

    ./run bench dhcp6_inprocess [--clients 20000]
"""

from __future__ import annotations

import gc
import ipaddress
import random
import sys
from pathlib import Path

from preprov.cli import GC_YOUNG
from preprov.config import Rule
from preprov.dhcp6.server import Dhcp6Policy, Dhcp6Server, Leases6, Pool6
from preprov.dhcp6.transport import Dhcp6Endpoint
from preprov.phone.dhcp6 import Dhcp6Client
from preprov.rules import RuleSet
from preprov.safety import RateLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dhcp4_inprocess import Sent, main_of, subscribed_bus, timed

BATCH = 64


async def run(clients: int) -> float:
    bus, directory = subscribed_bus()
    rules = RuleSet([Rule(name="d", url="http://${server}:${http_port}/{MODEL}.cfg")],
                    {"server": "[fd00:1::1]", "http_port": "8080"})  # fmt: skip
    rules.known = directory.known
    net = ipaddress.IPv6Network("fd00:1::/64")
    base = int(net.network_address)
    pool = Pool6(net, ipaddress.IPv6Address(base + 0x1000),
                 ipaddress.IPv6Address(base + 0x1000 + (1 << 19)),
                 frozenset({ipaddress.IPv6Address(base + 1)}))  # fmt: skip
    # each client sends from an address of its own: the per-source limit as served
    policy = Dhcp6Policy(duid=b"\x00\x04" + bytes(range(16)), rules=rules, local=pool,
                         always_send=True, limiter=RateLimiter(200, 50))  # fmt: skip
    iface = type("Iface", (), {"name": "eth0"})
    ep = Dhcp6Endpoint(iface, 547, Dhcp6Server(policy, Leases6([pool])), bus)  # type: ignore[arg-type]
    sent = Sent()
    ep._reader = sent  # type: ignore[assignment]
    rng = random.Random(1)
    phones = [Dhcp6Client(f"0080F1{i:06X}", rng, stateless=False) for i in range(clients)]
    solicits = [p.start(0.0) for p in phones]
    sources = [(f"fe80::280:f1ff:fe{(i >> 16) & 0xFF:02x}:{i & 0xFFFF:x}", 546)
               for i in range(clients)]  # fmt: skip
    gc.set_threshold(GC_YOUNG, 10, 10)  # as `preprov serve` sets it (dhcp4_inprocess)
    gc.freeze()
    cpu = 0.0
    for start in range(0, clients, BATCH):
        batch = range(start, min(clients, start + BATCH))
        sent.data.clear()
        cpu += await timed(ep, [(solicits[i], sources[i]) for i in batch], 2)
        requests = []
        for i, advertise in zip(batch, sent.data, strict=True):
            request, _ = phones[i].datagram_received(advertise, "fe80::1", 0.0)
            if request is None:
                raise SystemExit(f"client {i} could not read its ADVERTISE")
            requests.append(request)
        sent.data.clear()
        cpu += await timed(ep, [(r, sources[i]) for i, r in zip(batch, requests, strict=True)], 4)
        if len(sent.data) != len(requests):
            raise SystemExit(f"{len(sent.data)} REPLYs for {len(requests)} REQUESTs")
    return cpu / clients


def main() -> int:
    return main_of(run, __doc__, "DHCPv6 exchanges")


if __name__ == "__main__":
    raise SystemExit(main())
