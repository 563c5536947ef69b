"""The store contract: the same tests against both backends, SQLite (the embedded
default) and PostgreSQL (a throw-away cluster, tests/pg.py)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from preprov.events import (
    ClaimsLost,
    Dhcp4Lease,
    Event,
    EventBus,
    FileRefused,
    FileServed,
    PnpNotifySent,
    PnpSubscribe,
)
from preprov.inventory.store import Recorder, SchemaTooNew, Store, open_store
from preprov.web.dashboard import batch_report

MAC = "0080F0000001"

MakeStore = Callable[..., Store]


@pytest.fixture(params=["sqlite", "sqlite-writer", "postgres"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Stores of one inventory (several may share it, as several servers do).
    "sqlite-writer": SQLite as the server runs it, its commits in a writer process."""
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    made: list[Store] = []

    def make(server: str = "a", **kw: Any) -> Store:
        if request.param == "sqlite-writer":
            kw.setdefault("background", True)
        store = open_store(url, tmp_path / "state", server=server, **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


async def write(store: Store, events: Sequence[Event]) -> set[str]:
    got = store.write(events)
    return await got if inspect.isawaitable(got) else got


def served(mac: str, ts: float = 1.0, **kw: Any) -> FileServed:
    base: dict[str, Any] = dict(channel="http", client="198.18.0.2", mac=mac, model="KX-HDV130",
                                fwver="01.000", vendor="Panasonic", path="/x", template="x",
                                rule="default", size=1, ts=ts)  # fmt: skip
    base.update(kw)
    return FileServed(**base)


def refused(mac: str | None, ts: float = 1.0, channel: str = "tftp") -> FileRefused:
    return FileRefused(channel=channel, client="198.18.0.9", mac=mac, path="/x", status=404,
                       reason="no template", ts=ts)  # fmt: skip


def lease(ip: str, client: str, mac: str, state: str = "bound", expires: float = 0.0,
          ts: float | None = None) -> Dhcp4Lease:  # fmt: skip
    now = time.time()
    return Dhcp4Lease(channel="dhcpv4", client=ip, mac=mac, ip=ip, client_id=client, state=state,
                      expires=expires or now + 3600, ts=ts or now)  # fmt: skip


async def test_devices_merge_facts_and_keep_their_history(make_store: MakeStore) -> None:
    store = make_store()
    await write(store, [served(MAC, ts=1.0), served(MAC, ts=2.0, model=None, fwver="02.000")])
    await write(store, [FileRefused(channel="http", client="198.18.0.3", mac=MAC, path="/y",
                                    status=404, reason="no template matches /y", ts=3.0)])  # fmt: skip
    d = store.device(MAC)
    assert d is not None
    assert (d.model, d.fwver, d.ipv4, d.first_seen, d.last_seen) == (
        "KX-HDV130", "02.000", "198.18.0.2", 1.0, 3.0)  # fmt: skip
    assert (d.last_event, d.last_error) == ("file.refused", "file.refused: no template matches /y")
    assert d.server == "a"
    evs = store.events(MAC)
    assert [e["kind"] for e in evs] == ["file.served", "file.served", "file.refused"]
    assert {e["server"] for e in evs} == {"a"}


async def test_refusals_create_no_device_and_stages_follow_the_events(
    make_store: MakeStore,
) -> None:
    store = make_store()
    await write(store, [refused(f"0080F0AA{i:04X}") for i in range(100)])
    assert store.devices() == []  # a flood of refused datagrams invents no device
    await write(store, [refused("0080F0BB0001", channel="http")])
    assert [d.mac for d in store.devices()] == ["0080F0BB0001"]  # a refused phone over TCP does
    await write(store, [PnpNotifySent(channel="sip-pnp", client="198.18.0.2", mac=MAC,
                                      call_id="c", url="http://h/{MODEL}.cfg", rule="default",
                                      to="198.18.0.2:5060")])  # fmt: skip
    (row,) = store.reads.status(macs=[MAC])
    assert (row["stage"], row["pnp"], row["files"]) == ("url-sent", "NOTIFY sent", 0)
    cursor = store.reads.cursor()
    await write(store, [served(MAC, ts=2.0, template="{MODEL}.cfg")])
    await write(store, [served(MAC, ts=2.1, template="Config{MAC}.cfg"), refused(MAC, ts=2.2)])
    (row,) = store.reads.status(since=cursor)  # what changed since the cursor
    assert (row["stage"], row["files"], row["last_event"]) == ("provisioned", 2, "file.refused")
    assert store.reads.status(since=store.reads.cursor()) == []
    assert store.reads.stage_counts() == {"seen": 1, "provisioned": 1}


async def test_each_boot_starts_again(make_store: MakeStore) -> None:
    store = make_store(boot_gap=30.0)
    sub: dict[str, Any] = dict(channel="sip-pnp", client="198.18.0.7", mac=MAC, model="KX-HDV130")

    def boot(t: float, fails: bool) -> list[Event]:
        last = refused(MAC, ts=t + 0.3, channel="http") if fails else served(
            MAC, ts=t + 0.3, template="Config{MAC}.cfg")  # fmt: skip
        return [PnpSubscribe(**sub, call_id=f"c{t}", ts=t),
                served(MAC, ts=t + 0.2, template="{MODEL}.cfg"), last]  # fmt: skip

    await write(store, boot(1000.0, fails=False))
    (row,) = store.reads.status()
    assert (row["stage"], row["boots"], row["provisioned_at"]) == ("provisioned", 1, 1000.3)
    await write(store, boot(1100.0, fails=True))
    (row,) = store.reads.status()
    assert row["boots"] == 2 and row["boot_started"] == 1100.0
    assert row["stage"] == "fetching" and row["provisioned_at"] is None
    assert row["files"] == 1 and row["last_error"].startswith("file.refused")
    assert batch_report("b", [MAC], [row], 1050.0)["provisioned"] == 0


async def test_batches_registered_and_forgotten_devices(make_store: MakeStore) -> None:
    store = make_store()
    bid = store.add_batch("bench 1", [MAC, "0080F0000002"], 5.0, {MAC: {"serial": "S1"}})
    assert store.rename_batch(bid, "bench one") and not store.rename_batch(bid + 99, "x")
    (b,) = store.batches()
    assert (b["name"], b["macs"], b["extra"]) == ("bench one", [MAC, "0080F0000002"],
                                                  {MAC: {"serial": "S1"}})  # fmt: skip
    assert store.delete_batch(bid) and store.batches() == []
    store.add_device("0080F0000003", 6.0)
    assert store.registered() == {"0080F0000003"}
    await write(store, [served(MAC)])
    assert store.forget_device(MAC) and store.device(MAC) is None and store.events(MAC) == []
    assert not store.forget_device(MAC)


async def test_a_lease_is_claimed_once_across_servers(make_store: MakeStore) -> None:
    """Two servers on one inventory: an address bound to one client is not taken by
    the other server's client; the same client renews; an expired one is free."""
    a, b = make_store("a"), make_store("b")
    ip = "198.18.0.200"
    assert await write(a, [lease(ip, "c1", "0080F0000001")]) == set()
    assert await write(b, [lease(ip, "c2", "0080F0000002")]) == {ip}  # taken: lost
    assert await write(a, [lease(ip, "c1", "0080F0000001")]) == set()  # the holder renews
    (held,) = b.leases()
    assert (held["client_id"], held["server"]) == ("c1", "a")
    # the event log says the claim was lost, not that the address was bound twice
    assert [e["state"] for e in b.events("0080F0000002")] == ["lost"]
    assert await write(a, [lease(ip, "c1", "0080F0000001", state="released")]) == set()
    assert await write(b, [lease(ip, "c2", "0080F0000002")]) == set()  # released: free
    gone = time.time() - 1
    assert await write(b, [lease("198.18.0.201", "c3", "m3", expires=gone, ts=gone - 10)]) == set()
    assert await write(a, [lease("198.18.0.201", "c4", "m4")]) == set()  # expired: free
    assert b.reads.leases_in_use(time.time()) == {"ipv4": 2, "ipv6": 0}
    assert {x["server"] for x in b.leases()} == {"a", "b"}


async def test_recorder_tells_a_lost_claim_to_its_answer_only(make_store: MakeStore) -> None:
    a, b = make_store("a"), make_store("b")
    await write(a, [lease("198.18.0.200", "c1", "m1")])
    rec = Recorder(b)
    bus = EventBus()
    bus.subscribe_durable(rec)
    got: dict[str, BaseException | None] = {}
    bus.emit(lease("198.18.0.200", "c2", "m2"))
    bus.after_settled(lambda e: got.setdefault("claim", e), claims=True)
    bus.after_settled(lambda e: got.setdefault("file", e))  # an HTTP answer, say
    await bus.settled()
    assert isinstance(got["claim"], ClaimsLost) and got["claim"].ips == {"198.18.0.200"}
    assert got["file"] is None
    assert rec.claims_lost == 1


async def test_group_commits_and_registered(make_store: MakeStore) -> None:
    store = make_store()
    writes: list[int] = []
    real = store.write

    def counting(
        evs: Sequence[Event], handed: Callable[[], None] | None = None
    ) -> set[str] | Awaitable[set[str]]:
        writes.append(len(evs))
        return real(evs, handed)

    store.write = counting  # type: ignore[method-assign]
    rec = Recorder(store)
    bus = EventBus()
    bus.subscribe_durable(rec)
    for i in range(50):
        bus.emit(served(f"0080F00000{i:02d}"))
    await bus.settled()
    bus.emit(served("0080F0000099"))
    await bus.settled()
    assert sum(writes) == 51 and len(writes) <= 3  # grouped, not one per event
    assert len(store.devices()) == 51
    rec.register("0080F0000077")
    assert Recorder(make_store()).registered("0080F0000077")
    rows = await store.read(lambda r: r.status(limit=10))
    assert len(rows) == 10 and rows[0]["mac"] == "0080F0000000"


async def test_a_schema_newer_than_the_code_is_refused(make_store: MakeStore) -> None:
    store = make_store()
    if hasattr(store, "sync"):
        store.sync.execute("UPDATE preprov_schema SET version = version + 1")  # type: ignore[attr-defined]
    else:
        store.db.execute("PRAGMA user_version = 99")  # type: ignore[attr-defined]
    with pytest.raises(SchemaTooNew, match="newer than this preprov's"):
        make_store()


async def test_events_and_devices_carry_their_server(make_store: MakeStore) -> None:
    a, b = make_store("bench-1"), make_store("bench-2")
    await write(a, [served(MAC)])
    await write(b, [served("0080F0000002")])
    rows = a.reads.status()
    assert {(r["mac"], r["server"]) for r in rows} == {(MAC, "bench-1"),
                                                        ("0080F0000002", "bench-2")}  # fmt: skip
    assert [r["mac"] for r in a.reads.status(server="bench-2")] == ["0080F0000002"]
    assert b.reads.server_counts() == {"bench-1": 1, "bench-2": 1}
    bid = a.add_batch("shipment", [MAC, "0080F0000002"], 1.0)  # batches are shared
    assert [x["id"] for x in b.batches()] == [bid]


def test_postgres_needs_no_sqlite_file(pg_url: str, tmp_path: Path) -> None:
    asyncio.run(_open_and_close(pg_url, tmp_path))
    assert not (tmp_path / "state" / "preprov.db").exists()


async def _open_and_close(url: str, tmp_path: Path) -> None:
    store = open_store(url, tmp_path / "state", server="x")
    await store.open()
    await write(store, [served(MAC)])
    await store.aclose()


async def test_servers_hear_each_others_leases_registrations_and_changes(
    pg_url: str, tmp_path: Path
) -> None:
    """LISTEN/NOTIFY (PostgreSQL only: one SQLite inventory has one server)."""
    a = open_store(pg_url, tmp_path, server="a")
    b = open_store(pg_url, tmp_path, server="b")
    await a.open()
    await b.open()
    heard: dict[str, list[Any]] = {"leases": [], "registered": [], "changed": []}
    b.on_leases = heard["leases"].extend
    b.on_registered = heard["registered"].append
    b.on_change = heard["changed"].append
    a.on_change = heard["changed"].append  # a does not hear itself
    await asyncio.sleep(0.3)  # the listeners are listening
    try:
        await write(a, [lease("198.18.0.200", "c1", "0080F0000001")])
        a.add_device("0080F0000009", 1.0)
        for _ in range(100):
            if heard["leases"] and heard["registered"]:
                break
            await asyncio.sleep(0.02)
    finally:
        await a.aclose()
        await b.aclose()
    (got,) = heard["leases"]
    assert (got["ip"], got["client_id"], got["state"]) == ("198.18.0.200", "c1", "bound")
    assert heard["registered"] == ["0080F0000009"]
    assert heard["changed"] and set(heard["changed"]) == {"a"}


async def test_postgres_retention_prunes_oldest_events_and_forgets_idle_devices(
    pg_url: str, tmp_path: Path
) -> None:
    from preprov.inventory.store import Budget

    store = open_store(pg_url, tmp_path, server="a",
                       budget=Budget(max_events=100, max_age=3600.0))  # fmt: skip
    await store.open()
    now = time.time()
    try:
        await write(store, [served("0080F0000001", ts=now - 7200)])  # idle for two hours
        await write(store, [lease("198.18.0.9", "c2", "0080F0000002", ts=now - 7200)])  # leased
        await write(store, [served(f"0080F00001{i:02X}", ts=now) for i in range(250)])
        store.prune(store.sync, now)  # type: ignore[attr-defined]
        ids = [e["id"] for e in store.events(limit=1000)]
        assert len(ids) == 100 and ids == sorted(ids) and min(ids) == 153  # the oldest went
        assert store.device("0080F0000001") is None  # forgotten
        assert store.device("0080F0000002") is not None  # it holds a lease
        assert store.pruned == 152 and store.forgotten == 1  # type: ignore[attr-defined]
    finally:
        await store.aclose()


async def test_recorder_while_the_database_is_away_answers_files_not_leases() -> None:
    """A store whose writes fail as PostgreSQL's do when it cannot be reached: the
    events wait, an answer claiming a lease is refused, the others go at once; when
    the database is back the waiting events are written and the state says so."""
    from preprov.inventory import store as store_module
    from preprov.inventory.store import StoreUnavailable

    written: list[list[Event]] = []
    away = True

    class Flaky:
        pipeline = 2  # as SQLite's writer process: two writes fail in order

        def registered(self) -> set[str]:
            return set()

        def write(
            self, events: Sequence[Event], handed: Callable[[], None] | None = None
        ) -> Awaitable[set[str]]:
            async def go() -> set[str]:
                if away:
                    raise StoreUnavailable("PostgreSQL at db cannot be reached: refused")
                written.append(list(events))
                return set()

            return go()

    states: list[object] = []
    rec = Recorder(Flaky())  # type: ignore[arg-type]
    rec.on_state = states.append
    old_retry, store_module.RETRY_UNAVAILABLE = store_module.RETRY_UNAVAILABLE, 0.05
    try:
        got: dict[str, BaseException | None] = {}
        rec(served(MAC))
        rec.after_commit(lambda e: got.setdefault("first", e))
        await asyncio.sleep(0.02)
        assert got["first"] is None and isinstance(rec.down, StoreUnavailable)
        rec(lease("198.18.0.9", "c1", MAC))
        rec.after_commit(lambda e: got.setdefault("lease", e), claims=True)
        rec.after_commit(lambda e: got.setdefault("file", e))
        assert isinstance(got["lease"], StoreUnavailable) and got["file"] is None
        away = False
        for _ in range(50):
            if written:
                break
            await asyncio.sleep(0.02)
    finally:
        store_module.RETRY_UNAVAILABLE = old_retry
    assert [e.kind for batch in written for e in batch] == ["file.served", "dhcp4.lease"]
    assert rec.down is None and len(states) == 2 and states[-1] is None


async def test_facts_told_to_one_server_reach_the_others_directory(
    pg_url: str, tmp_path: Path
) -> None:
    """Option 60 a phone sent to server a, and its model from a file a served, reach
    server b's device directory (its rules decide on them), SUBSCRIBE addresses too."""
    from preprov.events import Dhcp4Answered
    from preprov.ident import Directory

    a = open_store(pg_url, tmp_path, server="a")
    b = open_store(pg_url, tmp_path, server="b")
    await a.open()
    await b.open()
    directory = Directory()
    b.on_told = directory.told_elsewhere
    await asyncio.sleep(0.3)
    try:
        await write(a, [
            Dhcp4Answered(channel="dhcpv4", client=None, mac=MAC, message="DHCPACK",
                          request="DHCPREQUEST", xid="1", ip="198.18.0.9",
                          vendor_class="Panasonic SIP Phone", relay="198.18.7.1"),
            served(MAC, model="KX-HDV430"),
            PnpSubscribe(channel="sip-pnp", client="198.18.0.77", mac="0080F0000002",
                         model="KX-HDV130", call_id="c1"),
        ])  # fmt: skip
        await write(b, [served("0080F0000003")])  # b's own: not read back
        for _ in range(100):
            if directory.known(MAC).model:
                break
            await asyncio.sleep(0.02)
    finally:
        await a.aclose()
        await b.aclose()
    facts = directory.known(MAC)
    assert (facts.vendor_class, facts.relay, facts.model) == (
        "Panasonic SIP Phone", "198.18.7.1", "KX-HDV430")  # fmt: skip
    assert directory.holder("198.18.0.77") == "0080F0000002"
    assert directory.known("0080F0000003").model is None
