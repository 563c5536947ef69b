"""The SIP PnP responder core: no sockets, no clock, no tasks (STYLE.md §1).

Fed `datagram_received(data, source, now)` and `timer_expired(now)`, it
returns the datagrams to send and the events that happened; `next_timer()`
says when it next needs waking. A SUBSCRIBE goes through named stages, and the
stage that drops it says why in a `pnp.ignored` event: rate limit, parse,
method, event package, Accept, allow-list, transaction cap, rule.

What it sends (PROTOCOL.md §3, RFC 6080, RFC 3261 §17.1.2): a 200 OK to the
SUBSCRIBE's source, then a NOTIFY whose body is the provisioning URL,
retransmitted at T1 doubling to T2 until the phone's final answer or Timer F.
A retransmitted SUBSCRIBE gets the same 200 again and no second NOTIFY.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from sipmessage import Response

from ..datagrams import Addr, Output, Send, unexpected
from ..events import (
    DeviceFields,
    PnpAnswered,
    PnpIgnored,
    PnpNotifyAcked,
    PnpNotifySent,
    PnpNotifyTimedOut,
    PnpSubscribe,
    RequestMalformed,
    device_fields,
)
from ..ident import DeviceFacts
from ..rules import RuleSet
from ..safety import AllowList, RateLimiter
from . import message as m

CHANNEL = "sip-pnp"
T1 = 0.5  # RFC 3261 §17.1.2
T2 = 4.0
TIMER_F = 64 * T1
LINGER = 64 * T1  # how long an answered SUBSCRIBE is remembered for its retransmissions


@dataclass
class _Tx:
    key: tuple[str, str, str]  # Call-ID, CSeq, top Via branch of the SUBSCRIBE
    notify_key: tuple[str, str]  # Call-ID, branch of our NOTIFY
    facts: DeviceFacts
    client: str
    call_id: str
    ok: Send
    notify: Send
    first_sent: float
    deadline: float  # Timer F
    interval: float = T1
    transmissions: int = 1
    done: bool = False
    wake: float = 0.0


@dataclass
class PnpPolicy:
    rules: RuleSet
    allow: AllowList = field(default_factory=AllowList)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(20, 10))
    body: str = "url"
    max_transactions: int = 10000


class PnpResponder:
    def __init__(self, local: Addr, policy: PnpPolicy, rng: random.Random | None = None) -> None:
        self.local = local
        self.policy = policy
        self.rng = rng or random.Random()
        self._by_sub: dict[tuple[str, str, str], _Tx] = {}
        self._by_notify: dict[tuple[str, str], _Tx] = {}
        self._heap: list[tuple[float, int, tuple[str, str, str]]] = []
        self._seq = 0

    # -- the three calls -------------------------------------------------------

    def next_timer(self) -> float | None:
        while self._heap:
            wake, _, key = self._heap[0]
            tx = self._by_sub.get(key)
            if tx is not None and tx.wake == wake:
                return wake
            heapq.heappop(self._heap)  # stale entry
        return None

    def timer_expired(self, now: float) -> Output:
        out = Output()
        while self._heap and self._heap[0][0] <= now:
            wake, _, key = heapq.heappop(self._heap)
            tx = self._by_sub.get(key)
            if tx is None or tx.wake != wake:
                continue
            if tx.done:
                self._forget(tx)
            elif now >= tx.deadline:
                out.events.append(
                    PnpNotifyTimedOut(**self._dev(tx), call_id=tx.call_id,
                                      transmissions=tx.transmissions)
                )  # fmt: skip
                self._forget(tx)
            else:
                out.sends.append(tx.notify)
                tx.transmissions += 1
                tx.interval = min(tx.interval * 2, T2)
                self._schedule(tx, min(now + tx.interval, tx.deadline))
        return out

    def datagram_received(self, data: bytes, source: Addr, now: float) -> Output:
        out = Output()
        try:
            self._receive(data, source, now, out)
        except Exception as e:
            out.events.append(unexpected(CHANNEL, source, e))
        return out

    @property
    def open_transactions(self) -> int:
        return len(self._by_sub)

    # -- stages ----------------------------------------------------------------

    def _receive(self, data: bytes, source: Addr, now: float, out: Output) -> None:
        client = source[0]
        # 1. rate limit, before any parsing: a flood costs a dictionary lookup
        if not self.policy.limiter.allow(client, now):
            suppressed = self.policy.limiter.report(client, now)
            if suppressed is not None:
                out.events.append(
                    PnpIgnored(channel=CHANNEL, client=client, suppressed=suppressed,
                               reason=f"rate limit: more than {self.policy.limiter.burst:g} "
                                      f"at once or {self.policy.limiter.rate:g}/s from {client}")
                )  # fmt: skip
            return
        # 2. parse
        try:
            msg = m.parse(data)
        except m.NotSip as e:
            out.events.append(RequestMalformed(channel=CHANNEL, client=client, reason=str(e)[:300]))
            return
        if isinstance(msg, Response):
            self._response(msg, client, now, out)
            return
        # 3. method and event package
        if msg.method != "SUBSCRIBE":
            out.events.append(
                PnpIgnored(channel=CHANNEL, client=client,
                           reason=f"{msg.method} is not a SUBSCRIBE")
            )  # fmt: skip
            return
        event = m.EventHeader.parse(msg.headers.get("Event"))
        if event is None or event.package != "ua-profile":
            pkg = event.package if event else "(no Event header)"
            out.events.append(
                PnpIgnored(channel=CHANNEL, client=client, mac=m.mac_of(msg),
                           reason=f"Event is {pkg}, not ua-profile")
            )  # fmt: skip
            return
        facts = m.facts_of(msg, event, client)
        dev = _dev_fields(facts, client)
        if not m.accepts_url(msg):
            accept = ", ".join(msg.headers.getlist("Accept"))
            out.events.append(
                PnpIgnored(**dev, reason=f"Accept ({accept}) does not allow application/url")
            )
            return
        # 4. allow-list
        why = self.policy.allow.why_not(facts.mac, client)
        if why:
            out.events.append(PnpIgnored(**dev, reason=why))
            return
        call_id = msg.headers.get("Call-ID") or ""
        key = (call_id, msg.headers.get("CSeq") or "", m.top_branch(msg))
        # 5. a retransmission gets the same 200 and no second NOTIFY
        tx = self._by_sub.get(key)
        if tx is not None:
            out.sends.append(tx.ok)
            out.events.append(
                PnpSubscribe(**dev, call_id=call_id, profile_type=event.params.get("profile-type"),
                             retransmission=True)
            )  # fmt: skip
            return
        # 6. bounded state
        if len(self._by_sub) >= self.policy.max_transactions:
            out.events.append(
                PnpIgnored(**dev, reason=f"{len(self._by_sub)} transactions open, the cap "
                           "(pnp.max_transactions); SUBSCRIBE dropped")
            )  # fmt: skip
            return
        # 7. the rule
        decision = self.policy.rules.decide(facts)
        if decision is None:
            out.events.append(PnpIgnored(**dev, reason=self.policy.rules.explain(facts)))
            return
        # 8. answer: 200 OK to the source, then the NOTIFY
        tag = f"{self.rng.getrandbits(64):016x}"
        branch = f"z9hG4bK{self.rng.getrandbits(64):016x}"
        me = f"[{self.local[0]}]" if ":" in self.local[0] else self.local[0]
        try:
            ok = m.build_ok(msg, source, tag, f"sip:{me}:{self.local[1]}")
            target, note = m.notify_target(msg, source)
            notify = m.build_notify(msg, target, self.local, tag, branch, decision.url,
                                    self.policy.body)  # fmt: skip
        except (ValueError, KeyError) as e:
            out.events.append(PnpIgnored(**dev, reason=f"cannot answer this SUBSCRIBE: {e}"))
            return
        tx = _Tx(
            key=key, notify_key=(call_id, branch), facts=facts, client=client, call_id=call_id,
            ok=Send(ok, source), notify=Send(notify, target), first_sent=now,
            deadline=now + TIMER_F,
        )  # fmt: skip
        self._by_sub[key] = tx
        self._by_notify[tx.notify_key] = tx
        self._schedule(tx, now + T1)
        out.sends += [tx.ok, tx.notify]
        profile = event.params.get("profile-type")
        out.events += [
            PnpSubscribe(**dev, call_id=call_id, profile_type=profile),
            PnpAnswered(**dev, call_id=call_id),
            PnpNotifySent(**dev, call_id=call_id, url=decision.url, rule=decision.rule,
                          to=f"{target[0]}:{target[1]}" + (f" ({note})" if note else "")),
        ]  # fmt: skip

    def _response(self, msg: Response, client: str, now: float, out: Output) -> None:
        cseq = (msg.headers.get("CSeq") or "").split()
        key = (msg.headers.get("Call-ID") or "", m.top_branch(msg))
        tx = self._by_notify.get(key)
        if tx is None or len(cseq) != 2 or cseq[1].upper() != "NOTIFY":
            out.events.append(
                PnpIgnored(channel=CHANNEL, client=client,
                           reason=f"{msg.code} {msg.phrase} matches no NOTIFY of ours")
            )  # fmt: skip
            return
        if tx.done:
            return  # a retransmitted answer
        if msg.code < 200:
            tx.interval = T2  # RFC 3261 §17.1.2.2: a provisional answer slows the resends
            return
        tx.done = True
        self._schedule(tx, tx.first_sent + LINGER)
        ms = round((now - tx.first_sent) * 1000, 3)
        out.events.append(
            PnpNotifyAcked(**self._dev(tx), call_id=tx.call_id, status=msg.code,
                           transmissions=tx.transmissions, ms=ms)
        )  # fmt: skip

    # -- state -----------------------------------------------------------------

    def _schedule(self, tx: _Tx, wake: float) -> None:
        tx.wake = wake
        self._seq += 1
        heapq.heappush(self._heap, (wake, self._seq, tx.key))

    def _forget(self, tx: _Tx) -> None:
        self._by_sub.pop(tx.key, None)
        self._by_notify.pop(tx.notify_key, None)

    @staticmethod
    def _dev(tx: _Tx) -> DeviceFields:
        return _dev_fields(tx.facts, tx.client)


def _dev_fields(facts: DeviceFacts, client: str) -> DeviceFields:
    return device_fields(CHANNEL, facts, client)
