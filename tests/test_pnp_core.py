"""The SIP PnP responder core, with bytes and a fake clock."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from sipmessage import Message, Request, Response

from preprov.config import Match, Rule
from preprov.events import (
    PnpAnswered,
    PnpIgnored,
    PnpNotifyAcked,
    PnpNotifySent,
    PnpNotifyTimedOut,
    PnpSubscribe,
    RequestMalformed,
)
from preprov.rules import RuleSet
from preprov.safety import AllowList, RateLimiter
from preprov.sip.pnp import (
    LINGER,
    RESEND_CREDIT_MAX,
    RESEND_REFILL,
    STALLED,
    T1,
    TIMER_F,
    PnpPolicy,
    PnpResponder,
)

SERVER = ("198.18.0.1", 5060)
PHONE = ("198.18.0.2", 5060)
P = {"server": "198.18.0.1", "http_port": "8080"}
RULES = RuleSet([Rule(name="default", url="http://${server}:${http_port}/{MODEL}.cfg")], P)


def subscribe(
    ruri_user: str = "MAC%3a0080F0C571EB",
    event: str = 'ua-profile;profile-type="device";vender="Panasonic";model="KX-HDV130";'
    'version="01.000"',
    call_id: str = "abc@198.18.0.2",
    branch: str = "z9hG4bK1",
    accept: str | None = "application/url",
    contact: str = "<sip:198.18.0.2:5060>",
    port: int = 5060,
    eol: str = "\r\n",
    ua: str | None = "Panasonic_KX-HDV130/01.000 (0080f0c571eb)",
) -> bytes:
    lines = [
        f"SUBSCRIBE sip:{ruri_user}@224.0.1.75 SIP/2.0",
        f"Via: SIP/2.0/UDP 198.18.0.2:{port};branch={branch};rport",
        f"From: <sip:{ruri_user}@224.0.1.75>;tag=ph1",
        f"To: <sip:{ruri_user}@224.0.1.75>",
        f"Call-ID: {call_id}",
        "CSeq: 1 SUBSCRIBE",
        f"Event: {event}",
        "Expires: 0",
        *([f"Accept: {accept}"] if accept else []),
        f"Contact: {contact}",
        *([f"User-Agent: {ua}"] if ua else []),
        "Content-Length: 0",
    ]
    return (eol.join(lines) + eol + eol).encode()


def responder(**kw: object) -> PnpResponder:
    kw.setdefault("rules", RULES)
    policy = PnpPolicy(**kw)  # type: ignore[arg-type]
    return PnpResponder(SERVER, policy, rng=random.Random(1))


def ok_for(notify: bytes, code: int = 200) -> bytes:
    n = Message.parse(notify)
    h = n.headers
    return (
        f"SIP/2.0 {code} OK\r\nVia: {h['Via']}\r\nFrom: {h['From']}\r\nTo: {h['To']};tag=ph2\r\n"
        f"Call-ID: {h['Call-ID']}\r\nCSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_panasonic_subscribe_gets_200_then_notify() -> None:
    r = responder()
    out = r.datagram_received(subscribe(), PHONE, 100.0)
    assert [s.addr for s in out.sends] == [PHONE, PHONE]
    ok = Message.parse(out.sends[0].data)
    assert isinstance(ok, Response) and ok.code == 200
    assert (
        ok.headers["Via"]
        == "SIP/2.0/UDP 198.18.0.2:5060;branch=z9hG4bK1;rport=5060;received=198.18.0.2"
    )
    assert ok.headers["From"] == "<sip:MAC%3a0080F0C571EB@224.0.1.75>;tag=ph1"
    to_tag = ok.headers["To"].split(";tag=")[1]
    assert ok.headers["Call-ID"] == "abc@198.18.0.2" and ok.headers["CSeq"] == "1 SUBSCRIBE"
    assert ok.headers["Expires"] == "0" and ok.headers["Content-Length"] == "0"
    n = Message.parse(out.sends[1].data)
    assert isinstance(n, Request) and n.method == "NOTIFY"
    assert str(n.uri) == "sip:198.18.0.2:5060"
    assert n.headers["Via"].startswith("SIP/2.0/UDP 198.18.0.1:5060;branch=z9hG4bK")
    assert n.headers["From"] == f"<sip:MAC%3a0080F0C571EB@224.0.1.75>;tag={to_tag}"
    assert n.headers["To"] == "<sip:MAC%3a0080F0C571EB@224.0.1.75>;tag=ph1"
    assert n.headers["Call-ID"] == "abc@198.18.0.2" and n.headers["CSeq"] == "1 NOTIFY"
    assert n.headers["Event"].startswith("ua-profile;profile-type=")
    assert n.headers["Subscription-State"] == "terminated;reason=timeout"
    assert n.headers["Content-Type"] == "application/url"
    assert n.body == b"http://198.18.0.1:8080/{MODEL}.cfg"
    assert n.headers["Content-Length"] == str(len(n.body))
    kinds = [type(e) for e in out.events]
    assert kinds == [PnpSubscribe, PnpAnswered, PnpNotifySent]
    sub = out.events[0]
    assert (sub.mac, sub.model, sub.fwver, sub.vendor) == (  # type: ignore[attr-defined]
        "0080F0C571EB",
        "KX-HDV130",
        "01.000",
        "Panasonic",
    )


def test_field_variants_are_all_understood() -> None:
    cases = [
        # Yealink: MAC<hex>, no separator, source port 5059
        (dict(ruri_user="MAC805EC0123456", port=5059, ua="Yealink SIP-T46S 66.1.0.1",
              event='ua-profile;profile-type="device";vendor="yealink";model="T46S";version="66.1"'),
         ("198.18.0.2", 5059), ("805EC0123456", "T46S", "Yealink")),
        # Snom: vendor and model "OEM": the vendor comes from the OUI, the model stays unknown
        (dict(ruri_user="MAC%3a000413874B49", ua=None,
              event='ua-profile;profile-type="device";vendor="OEM";model="OEM";version="7.1.19"'),
         PHONE, ("000413874B49", None, "Snom")),
        (dict(ruri_user="MAC%3A0080F0C571EB"), PHONE, ("0080F0C571EB", "KX-HDV130", "Panasonic")),
        (dict(ruri_user="MAC:0080F0C571EB"), PHONE, ("0080F0C571EB", "KX-HDV130", "Panasonic")),
        (dict(ruri_user="MAC=0080F0C571EB"), PHONE, ("0080F0C571EB", "KX-HDV130", "Panasonic")),
        # Grandstream: source port 5080; AudioCodes: profile-type application
        (dict(ruri_user="MAC%3A000B82AABBCC", port=5080, ua="Grandstream GXP2170 1.0.9.1",
              event='ua-profile;profile-type="application";vendor="Grandstream";model="GXP2170"'),
         ("198.18.0.2", 5080), ("000B82AABBCC", "GXP2170", "Grandstream")),
        (dict(eol="\n"), PHONE, ("0080F0C571EB", "KX-HDV130", "Panasonic")),
        (dict(accept=None), PHONE, ("0080F0C571EB", "KX-HDV130", "Panasonic")),
    ]  # fmt: skip
    for kw, source, (mac, model, vendor) in cases:
        out = responder().datagram_received(subscribe(**kw), source, 0.0)  # type: ignore[arg-type]
        assert len(out.sends) == 2, (kw, out.events)
        assert out.sends[0].addr == source
        sub = out.events[0]
        assert isinstance(sub, PnpSubscribe)
        assert (sub.mac, sub.model, sub.vendor) == (mac, model, vendor), kw


def test_each_vendor_gets_the_url_in_its_form_and_audiocodes_is_found_by_its_lease() -> None:
    """Grandstream takes only a folder ending in /; AudioCodes the server's root, and its
    SUBSCRIBE names no MAC: the device holding its source address is the one."""
    grandstream = subscribe(ruri_user="MAC%3AC074AD112233", port=5080,
                            ua="Grandstream GRP2612W 1.0.5.67",
                            event='ua-profile;profile-type="device";vendor="Grandstream";'
                                  'model="GRP2612W";version="1.0.5.67"')  # fmt: skip
    out = responder().datagram_received(grandstream, ("198.18.0.2", 5080), 0.0)
    notify = out.sends[1].data.decode()
    assert notify.endswith("\r\n\r\nhttp://198.18.0.1:8080/")
    sent = next(e for e in out.events if isinstance(e, PnpNotifySent))
    assert sent.url == "http://198.18.0.1:8080/" and sent.vendor == "Grandstream"
    audiocodes = (b"SUBSCRIBE sip:224.0.1.75:5060 SIP/2.0\r\n"
                  b"Via: SIP/2.0/UDP 198.18.0.9:5060;branch=z9hG4bKac1;rport\r\n"
                  b"From: <sip:00000001@198.18.0.9:5060>;tag=a1\r\nTo: <sip:224.0.1.75:5060>\r\n"
                  b"Call-ID: ac1@198.18.0.9\r\nCSeq: 1 SUBSCRIBE\r\n"
                  b'Event: ua-profile;profile-type="application";model="440HD";version="2.2.2"\r\n'
                  b"Expires: 0\r\nAccept: application/url\r\n"
                  b"Contact: <sip:00000001@198.18.0.9:5060>\r\nUser-Agent: AUDC-IPPhone/2.2.2\r\n"
                  b"Content-Length: 0\r\n\r\n")  # fmt: skip
    r = responder()
    r.policy = replace(r.policy, holder={"198.18.0.9": "00908F602AAC"}.get)
    out = r.datagram_received(audiocodes, ("198.18.0.9", 5060), 0.0)
    sub = next(e for e in out.events if isinstance(e, PnpSubscribe))
    assert (sub.mac, sub.vendor, sub.model) == ("00908F602AAC", "AudioCodes", "440HD")
    assert sub.note and "holding 198.18.0.9" in sub.note
    assert out.sends[1].data.decode().endswith("\r\n\r\nhttp://198.18.0.1:8080/")


def test_notify_retransmitted_on_rfc3261_schedule_until_timer_f() -> None:
    r = responder()
    t0 = 10.0
    r.datagram_received(subscribe(), PHONE, t0)
    resends = []
    while (t := r.next_timer()) is not None:
        out = r.timer_expired(t)
        if out.sends:
            resends.append(round(t - t0, 3))
        if any(isinstance(e, PnpNotifyTimedOut) for e in out.events):
            timed_out = t - t0
            break
    # T1 doubling to T2: 0.5, 1.5, 3.5, 7.5, then every 4 s, until Timer F = 32 s
    assert resends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert timed_out == TIMER_F
    # then the transaction is forgotten
    assert r.open_transactions == 0 and r.next_timer() is None


def test_200_to_notify_stops_retransmission() -> None:
    r = responder()
    out = r.datagram_received(subscribe(), PHONE, 0.0)
    notify = out.sends[1].data
    r.timer_expired(T1)  # one retransmission
    ack = r.datagram_received(ok_for(notify), PHONE, 0.7)
    (ev,) = ack.events
    assert isinstance(ev, PnpNotifyAcked)
    assert (ev.status, ev.transmissions, ev.ms) == (200, 2, 700.0)
    assert ack.sends == []
    # a retransmitted 200 is absorbed
    assert r.datagram_received(ok_for(notify), PHONE, 0.8).events == []
    t = r.next_timer()
    assert t == LINGER and r.timer_expired(t).sends == []


def test_retransmitted_subscribe_gets_same_200_and_no_second_notify() -> None:
    r = responder()
    first = r.datagram_received(subscribe(), PHONE, 0.0)
    again = r.datagram_received(subscribe(), PHONE, 0.4)
    assert [s.data for s in again.sends] == [first.sends[0].data]
    (ev,) = again.events
    assert isinstance(ev, PnpSubscribe) and ev.retransmission
    # a new SUBSCRIBE (new Call-ID: the phone rebooted) is a new transaction
    new = r.datagram_received(subscribe(call_id="other"), PHONE, 1.0)
    assert len(new.sends) == 2 and r.open_transactions == 2


def test_what_gets_no_answer_says_why() -> None:
    cases = [
        (subscribe(event="presence"), "Event is presence, not ua-profile"),
        (subscribe(accept="application/sdp"), "Accept (application/sdp) does not allow application/url"),
        (subscribe().replace(b"SUBSCRIBE sip", b"OPTIONS sip", 1), "OPTIONS is not a SUBSCRIBE"),
        (b"SIP/2.0 200 OK\r\nCall-ID: x\r\nCSeq: 1 NOTIFY\r\nVia: SIP/2.0/UDP h;branch=b\r\n\r\n",
         "200 OK matches no NOTIFY of ours"),
    ]  # fmt: skip
    for data, reason in cases:
        out = responder().datagram_received(data, PHONE, 0.0)
        assert out.sends == []
        (ev,) = out.events
        assert isinstance(ev, PnpIgnored) and ev.reason == reason


def test_no_rule_no_answer() -> None:
    rules = RuleSet([Rule(name="yealink", match=Match(vendor=["Yealink"]), url="http://h/")], P)
    out = responder(rules=rules).datagram_received(subscribe(), PHONE, 0.0)
    assert out.sends == []
    assert out.events[0].reason == (  # type: ignore[attr-defined]
        "no rule matched (yealink: vendor Panasonic not in its list)"
    )


def test_allow_lists() -> None:
    only_oui = AllowList.build([], ["000413"], [])
    out = responder(allow=only_oui).datagram_received(subscribe(), PHONE, 0.0)
    assert out.sends == [] and out.events[0].reason == "MAC 0080F0C571EB is not in the allow-list"  # type: ignore[attr-defined]
    nets = AllowList.build([], [], ["198.18.1.0/24"])
    out = responder(allow=nets).datagram_received(subscribe(), PHONE, 0.0)
    assert out.events[0].reason == "source 198.18.0.2 is not in the allowed subnets (198.18.1.0/24)"  # type: ignore[attr-defined]
    ok = AllowList.build(["0080F0C571EB"], [], ["198.18.0.0/24"])
    assert len(responder(allow=ok).datagram_received(subscribe(), PHONE, 0.0).sends) == 2


def test_forged_contact_cannot_aim_the_notify_elsewhere() -> None:
    out = responder().datagram_received(subscribe(contact="<sip:203.0.113.9:5060>"), PHONE, 0.0)
    assert out.sends[1].addr == PHONE
    assert "Contact host 203.0.113.9 is not the source 198.18.0.2" in out.events[2].to  # type: ignore[attr-defined]
    out = responder().datagram_received(subscribe(contact="<sip:198.18.0.2:5062>"), PHONE, 0.0)
    assert out.sends[1].addr == ("198.18.0.2", 5062)


def test_rate_limit_per_source_with_one_event_per_second() -> None:
    r = responder(limiter=RateLimiter(burst=5, rate=1))
    answered, refusals = 0, []
    for i in range(50):
        out = r.datagram_received(subscribe(call_id=f"c{i}"), PHONE, 0.001 * i)
        answered += bool(out.sends)
        refusals += [e for e in out.events if isinstance(e, PnpIgnored)]
    assert answered == 5
    assert len(refusals) == 1 and refusals[0].reason.startswith("rate limit")
    # another source is not affected
    other = ("198.18.0.3", 5060)
    assert r.datagram_received(subscribe(call_id="x"), other, 0.05).sends
    # a second later the refusals are summed in one event, and the bucket refilled
    out = r.datagram_received(subscribe(call_id="late"), PHONE, 1.2)
    assert out.sends


def test_transaction_cap() -> None:
    r = responder(max_transactions=2)
    for i in range(2):
        assert r.datagram_received(subscribe(call_id=f"c{i}"), PHONE, 0.0).sends
    out = r.datagram_received(subscribe(call_id="c3"), PHONE, 0.0)
    assert out.sends == [] and "transactions open, the cap" in out.events[0].reason  # type: ignore[attr-defined]
    # once the oldest NOTIFY has gone unanswered for a while, it gives way
    out = r.datagram_received(subscribe(call_id="c4"), PHONE, STALLED + 0.1)
    assert len(out.sends) == 2 and isinstance(out.events[0], PnpNotifyTimedOut)
    assert "gave way to a new SUBSCRIBE" in out.events[0].reason and r.open_transactions == 2


def test_cap_counts_open_exchanges_only() -> None:
    """An answered exchange lingers for retransmissions without counting against the
    cap, so the default sustains thousands of new phones a second."""
    r = responder(max_transactions=2, max_answered=3)
    first = None
    for i in range(5):
        out = r.datagram_received(subscribe(call_id=f"c{i}"), PHONE, 0.01 * i)
        assert len(out.sends) == 2, out.events
        first = first or out.sends[0].data
        assert r.datagram_received(ok_for(out.sends[1].data), PHONE, 0.01 * i).events
    assert (r.open_transactions, r.answered_transactions) == (0, 3)  # bounded on its own
    # c0 was forgotten (the oldest beyond max_answered): it is a new exchange
    assert len(r.datagram_received(subscribe(call_id="c0"), PHONE, 0.1).sends) == 2
    # c4 is remembered: the same 200 (same To tag) again, no second NOTIFY
    again = r.datagram_received(subscribe(call_id="c4"), PHONE, 0.1)
    assert len(again.sends) == 1 and isinstance(again.events[0], PnpSubscribe)
    assert again.events[0].retransmission
    assert Message.parse(again.sends[0].data).headers["To"].endswith(";tag=" + _tag(r, "c4"))
    # a copy of it from another source is not answered
    copy = r.datagram_received(subscribe(call_id="c4"), ("198.18.0.77", 5060), 0.1)
    assert copy.sends == [] and "another source" in copy.events[0].reason  # type: ignore[attr-defined]
    # after the linger all of it is forgotten, and memory with it
    while (t := r.next_timer()) is not None:
        r.timer_expired(t)
    assert (r.open_transactions, r.answered_transactions) == (0, 0)


def _tag(r: PnpResponder, call_id: str) -> str:
    return next(a.tag for k, a in r._answered.items() if k[0] == call_id)


def test_answer_budget_of_all_sources_together() -> None:
    r = responder(answers=RateLimiter(10, 10, 1))
    answered, events = 0, []
    for i in range(200):  # 200 sources, one SUBSCRIBE each: the per-source limit never bites
        src = (f"198.18.1.{i}", 5060)
        out = r.datagram_received(subscribe(call_id=f"c{i}"), src, 0.001 * i)
        answered += bool(out.sends)
        events += [e for e in out.events if isinstance(e, PnpIgnored)]
    assert answered == 11  # the burst, and 0.2 s of refill at 10/s
    assert len(events) == 1 and events[0].reason.startswith("answer budget")


def test_spoofed_flood_draws_bounded_resends() -> None:
    """Nobody answers the NOTIFYs of a spoofed flood: the resends stay within the
    bytes received plus the time refill, instead of ten resends each."""
    r = responder()
    sent = received = 0
    t = 0.0
    for i in range(20_000):  # 2,000 a second for 10 s, each from another address
        t = i / 2000
        data = subscribe(call_id=f"c{i}")
        received += len(data)
        src = (f"198.18.{i // 250}.{i % 250}", 5060)
        sent += sum(len(s.data) for s in r.datagram_received(data, src, t).sends)
        while (w := r.next_timer()) is not None and w <= t:
            sent += sum(len(s.data) for s in r.timer_expired(w).sends)
    while (w := r.next_timer()) is not None:
        sent += sum(len(s.data) for s in r.timer_expired(w).sends)
        t = w
    assert r.resends_skipped > 0
    # 200 and NOTIFY for each (about twice the SUBSCRIBE), resends at most what came in
    # plus the credit's start and refill; without the credit it was 16 times
    assert sent <= received * 3.5 + RESEND_CREDIT_MAX + RESEND_REFILL * t, (sent, received)


def test_external_body_variant() -> None:
    out = responder(body="external-body").datagram_received(subscribe(), PHONE, 0.0)
    n = Message.parse(out.sends[1].data)
    assert n.headers["Content-Type"] == (
        'message/external-body; access-type=URL; URL="http://198.18.0.1:8080/{MODEL}.cfg"'
    )
    assert n.body == b""


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    out = responder().datagram_received(data, PHONE, 0.0)
    assert out.sends == [] or data.startswith(b"SUBSCRIBE")


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_subscribes_never_raise(data: st.DataObject) -> None:
    msg = bytearray(subscribe())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(msg) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "dup"]))
        if op == "flip":
            msg[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del msg[i : i + data.draw(st.integers(1, 20))]
        else:
            msg[i:i] = msg[i : i + data.draw(st.integers(1, 20))]
        if not msg:
            break
    r = responder()
    out = r.datagram_received(bytes(msg), PHONE, 0.0)
    for e in out.events:
        assert isinstance(
            e, (PnpSubscribe, PnpAnswered, PnpNotifySent, PnpIgnored, RequestMalformed)
        )
    while (t := r.next_timer()) is not None:
        r.timer_expired(t)
