"""The SIP PnP responder core: no sockets, no clock, no tasks (docs/design.md §1).

Fed `datagram_received(data, source, now)` and `timer_expired(now)`, it
returns the datagrams to send and the events that happened; `next_timer()`
says when it next needs waking. A SUBSCRIBE goes through named stages, and the
stage that drops it says why in a `pnp.ignored` event: rate limit, parse,
method, event package, Accept, allow-list, transaction cap, rule.

What it sends (docs/protocol.md §3, RFC 6080, RFC 3261 §17.1.2): a 200 OK to the
SUBSCRIBE's source, then a NOTIFY whose body is the provisioning URL,
retransmitted at T1 doubling to T2 until the phone's final answer or Timer F.
A retransmitted SUBSCRIBE gets the same 200 again and no second NOTIFY.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from sipmessage import Response

from .. import vendors
from ..datagrams import Addr, Output, Send
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
STALLED = 4 * T1  # an exchange whose NOTIFY is unanswered this long may give way at the cap


@dataclass
class _Tx:
    """An open exchange: the NOTIFY is not yet answered."""

    key: tuple[str, str, str]  # Call-ID, CSeq, top Via branch of the SUBSCRIBE
    notify_key: tuple[str, str]  # Call-ID, branch of our NOTIFY
    facts: DeviceFacts
    client: str
    call_id: str
    tag: str  # our To tag, for the 200 sent again to a retransmitted SUBSCRIBE
    ok: Send
    notify: Send
    first_sent: float
    deadline: float  # Timer F
    interval: float = T1
    transmissions: int = 1
    wake: float = 0.0


@dataclass(slots=True)
class _Answered:
    """What is kept of an exchange once the phone has answered the NOTIFY: enough to
    send the same 200 again to a retransmitted SUBSCRIBE and to absorb a
    retransmitted answer, about a fifth of an open exchange's memory."""

    expires: float
    tag: str
    notify_key: tuple[str, str]
    source: Addr  # a copy of the SUBSCRIBE from elsewhere is not answered


@dataclass
class PnpPolicy:
    rules: RuleSet
    allow: AllowList = field(default_factory=AllowList)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(20, 10))
    body: str = "url"
    max_transactions: int = 10000  # open exchanges (NOTIFY not yet answered)
    max_answered: int = 100_000  # answered exchanges remembered for their linger
    # all sources together: new SUBSCRIBEs answered, a bucket of this size refilled
    # at this rate a second (RateLimiter with one key)
    answers: RateLimiter = field(default_factory=lambda: RateLimiter(5000, 5000, 1))
    # per vendor key: the NOTIFY URL's form, replacing the vendor's default (config vendors)
    notify_forms: Mapping[str, str] = field(default_factory=dict)
    # which device holds an address (ident.Directory.holder): a SUBSCRIBE without a MAC
    holder: Callable[[str | None], str | None] = lambda _a: None


# NOTIFY retransmissions are paid for from a credit of bytes: it starts full, is
# refilled by every byte received (SUBSCRIBEs and the phones' answers) and by
# RESEND_REFILL a second, and holds at most RESEND_CREDIT_MAX. A lab whose phones
# answer never runs short; a flood of spoofed SUBSCRIBEs, which nobody answers,
# cannot draw eleven NOTIFYs each (RFC 3261's schedule) and so make the server send
# many times what it receives. A resend not paid for is skipped, not the exchange.
RESEND_CREDIT_MAX = 1 << 20
RESEND_REFILL = 64 * 1024


class PnpResponder:
    def __init__(self, local: Addr, policy: PnpPolicy, rng: random.Random | None = None) -> None:
        self.local = local
        self.policy = policy
        self.rng = rng or random.Random()
        self._by_sub: dict[tuple[str, str, str], _Tx] = {}
        self._by_notify: dict[tuple[str, str], _Tx] = {}
        # answered exchanges, oldest first (each lingers LINGER from its first NOTIFY)
        self._answered: dict[tuple[str, str, str], _Answered] = {}
        self._answered_notify: set[tuple[str, str]] = set()
        self._heap: list[tuple[float, int, tuple[str, str, str]]] = []
        self._seq = 0
        self.resend_credit = float(RESEND_CREDIT_MAX)
        self._credit_at: float | None = None
        self.resends_skipped = 0

    # -- the three calls -------------------------------------------------------

    def next_timer(self) -> float | None:
        linger = next(iter(self._answered.values())).expires if self._answered else None
        while self._heap:
            wake, _, key = self._heap[0]
            tx = self._by_sub.get(key)
            if tx is not None and tx.wake == wake:
                return wake if linger is None else min(wake, linger)
            heapq.heappop(self._heap)  # stale entry
        return linger

    def timer_expired(self, now: float) -> Output:
        out = Output()
        self._expire_answered(now)
        self._refill(0, now)
        while self._heap and self._heap[0][0] <= now:
            wake, _, key = heapq.heappop(self._heap)
            tx = self._by_sub.get(key)
            if tx is None or tx.wake != wake:
                continue
            if now >= tx.deadline:
                out.events.append(
                    PnpNotifyTimedOut(**self._dev(tx), call_id=tx.call_id,
                                      transmissions=tx.transmissions)
                )  # fmt: skip
                self._forget(tx)
                continue
            if self.resend_credit >= len(tx.notify.data):
                self.resend_credit -= len(tx.notify.data)
                out.sends.append(tx.notify)
                tx.transmissions += 1
            else:
                self.resends_skipped += 1  # not paid for: the phone may still answer
            tx.interval = min(tx.interval * 2, T2)
            self._schedule(tx, min(now + tx.interval, tx.deadline))
        return out

    def datagram_received(self, data: bytes, source: Addr, now: float) -> Output:
        out = Output()
        self._receive(data, source, now, out)
        return out

    @property
    def open_transactions(self) -> int:
        return len(self._by_sub)

    @property
    def answered_transactions(self) -> int:
        return len(self._answered)

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
        self._refill(len(data), now)
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
        by_address = None
        if facts.mac is None and (held := self.policy.holder(client)) is not None:
            # no MAC in the SUBSCRIBE (AudioCodes): the device that holds its source
            # address (its lease); the event says so
            facts = replace(facts, mac=held).with_vendor_from_oui()
            by_address = f"MAC of the device holding {client} (no MAC in the SUBSCRIBE)"
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
        done = self._answered.get(key) if tx is None else None
        if done is not None and done.source != source:  # answered only where it came from
            out.events.append(PnpIgnored(**dev, reason="copy of an answered SUBSCRIBE "
                                         "from another source"))  # fmt: skip
            return
        if tx is not None or done is not None:
            if tx is not None:
                out.sends.append(tx.ok)
            else:
                assert done is not None
                try:
                    ok = m.build_ok(msg, source, done.tag, self._contact())
                except (ValueError, KeyError) as e:
                    out.events.append(PnpIgnored(**dev, reason=f"cannot answer: {e}"))
                    return
                out.sends.append(Send(ok, source))
            out.events.append(
                PnpSubscribe(**dev, call_id=call_id, profile_type=event.params.get("profile-type"),
                             retransmission=True)
            )  # fmt: skip
            return
        # 6. bounded state, and the budget of all sources together. At the cap, the
        # oldest exchange whose NOTIFY has gone unanswered for STALLED seconds gives
        # way (a phone answers in milliseconds; the SUBSCRIBEs of a spoofed flood
        # are never answered and would hold the cap for Timer F, 32 s)
        if len(self._by_sub) >= self.policy.max_transactions:
            oldest = next(iter(self._by_sub.values()))
            if now - oldest.first_sent < STALLED:
                out.events.append(
                    PnpIgnored(**dev, reason=f"{len(self._by_sub)} transactions open, the cap "
                               "(pnp.max_transactions); SUBSCRIBE dropped")
                )  # fmt: skip
                return
            out.events.append(
                PnpNotifyTimedOut(**self._dev(oldest), call_id=oldest.call_id,
                                  transmissions=oldest.transmissions,
                                  reason=f"no answer to the NOTIFY in {now - oldest.first_sent:.1f}"
                                  " s: gave way to a new SUBSCRIBE at the cap")
            )  # fmt: skip
            self._forget(oldest)
        answers = self.policy.answers
        if not answers.allow("", now):
            if answers.report("", now) is not None:
                out.events.append(
                    PnpIgnored(**dev, reason=f"answer budget: more than {answers.rate:g} new "
                               "SUBSCRIBEs a second from all sources (pnp.max_answers_per_second)")
                )  # fmt: skip
            return
        # 7. the rule
        decision = self.policy.rules.decide(facts)
        if decision is None:
            out.events.append(
                PnpIgnored(**dev, reason=self.policy.rules.explain(facts), no_rule=True)
            )
            return
        # 8. answer: 200 OK to the source, then the NOTIFY
        tag = f"{self.rng.getrandbits(64):016x}"
        branch = f"z9hG4bK{self.rng.getrandbits(64):016x}"
        try:
            ok = m.build_ok(msg, source, tag, self._contact())
            target, note = m.notify_target(msg, source)
            # the URL in the form the phone's vendor takes it (a Grandstream: its folder)
            url = vendors.notify_form(facts.vendor, decision.url, self.policy.notify_forms)
            notify = m.build_notify(msg, target, self.local, tag, branch, url, self.policy.body)
        except (ValueError, KeyError) as e:
            out.events.append(PnpIgnored(**dev, reason=f"cannot answer this SUBSCRIBE: {e}"))
            return
        tx = _Tx(
            key=key, notify_key=(call_id, branch), facts=facts, client=client, call_id=call_id,
            tag=tag, ok=Send(ok, source), notify=Send(notify, target), first_sent=now,
            deadline=now + TIMER_F,
        )  # fmt: skip
        self._by_sub[key] = tx
        self._by_notify[tx.notify_key] = tx
        self._schedule(tx, now + T1)
        out.sends += [tx.ok, tx.notify]
        profile = event.params.get("profile-type")
        out.events += [
            PnpSubscribe(**dev, call_id=call_id, profile_type=profile, note=by_address),
            PnpAnswered(**dev, call_id=call_id),
            PnpNotifySent(**dev, call_id=call_id, url=url, rule=decision.rule,
                          to=f"{target[0]}:{target[1]}" + (f" ({note})" if note else "")),
        ]  # fmt: skip

    def _response(self, msg: Response, client: str, now: float, out: Output) -> None:
        cseq = (msg.headers.get("CSeq") or "").split()
        key = (msg.headers.get("Call-ID") or "", m.top_branch(msg))
        tx = self._by_notify.get(key)
        if tx is None and key in self._answered_notify:
            return  # a retransmitted answer to a NOTIFY already answered
        if tx is None or len(cseq) != 2 or cseq[1].upper() != "NOTIFY":
            out.events.append(
                PnpIgnored(channel=CHANNEL, client=client,
                           reason=f"{msg.code} {msg.phrase} matches no NOTIFY of ours")
            )  # fmt: skip
            return
        if msg.code < 200:
            tx.interval = T2  # RFC 3261 §17.1.2.2: a provisional answer slows the resends
            return
        # Answered: no longer open (it does not count against max_transactions); a
        # compact record lingers for retransmitted SUBSCRIBEs and answers.
        self._forget(tx)
        self._answered[tx.key] = _Answered(
            tx.first_sent + LINGER, tx.tag, tx.notify_key, tx.ok.addr
        )
        self._answered_notify.add(tx.notify_key)
        while len(self._answered) > self.policy.max_answered:
            self._drop_oldest_answered()
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

    def _expire_answered(self, now: float) -> None:
        # oldest first; an exchange answered late may wait behind one answered
        # early for at most Timer F, which only keeps it a little longer
        while self._answered and next(iter(self._answered.values())).expires <= now:
            self._drop_oldest_answered()
        if not self._answered and not self._by_sub:
            # dicts do not shrink as keys are deleted: new ones give the memory back
            self._answered, self._answered_notify = {}, set()
            self._by_sub, self._by_notify = {}, {}

    def _drop_oldest_answered(self) -> None:
        key = next(iter(self._answered))
        done = self._answered.pop(key)
        self._answered_notify.discard(done.notify_key)

    def _refill(self, received: int, now: float) -> None:
        elapsed = 0.0 if self._credit_at is None else max(0.0, now - self._credit_at)
        self._credit_at = now
        credit = self.resend_credit + received + elapsed * RESEND_REFILL
        self.resend_credit = min(credit, RESEND_CREDIT_MAX)

    def _contact(self) -> str:
        me = f"[{self.local[0]}]" if ":" in self.local[0] else self.local[0]
        return f"sip:{me}:{self.local[1]}"

    @staticmethod
    def _dev(tx: _Tx) -> DeviceFields:
        return _dev_fields(tx.facts, tx.client)


def _dev_fields(facts: DeviceFacts, client: str) -> DeviceFields:
    return device_fields(CHANNEL, facts, client)
