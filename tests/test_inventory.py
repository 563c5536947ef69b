"""The SQLite inventory: group commit that survives a kill -9, migrations, budget (the
contract both backends keep is in test_store_contract.py)."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from preprov.events import (
    Dhcp4Lease,
    FileRefused,
    FileServed,
    PnpNotifySent,
    PnpSubscribe,
    RequestMalformed,
)
from preprov.inventory.sqlite import PRUNE_CHUNK, SCHEMA, SCHEMA_VERSION, SQLiteStore
from preprov.inventory.store import NOISE_BURST, Budget, Recorder, SchemaTooNew
from serverproc import ServerProc, start_server


def served(mac: str, ts: float = 1.0, **kw: object) -> FileServed:
    base = dict(
        channel="http",
        client="198.18.0.2",
        mac=mac,
        model="KX-HDV130",
        fwver="01.000",
        vendor="Panasonic",
        path="/x",
        template="x",
        rule="default",
        size=1,
        ts=ts,
    )
    base.update(kw)
    return FileServed(**base)  # type: ignore[arg-type]


def writer_pids(sp: ServerProc) -> list[int]:
    """The server's inventory writer processes (inventory/writer.py)."""
    children = Path(f"/proc/{sp.proc.pid}/task/{sp.proc.pid}/children").read_text().split()
    return [int(c) for c in children
            if b"preprov.inventory.writer" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_kill_9_in_the_middle_of_writes_loses_nothing_served(tmp_path: Path) -> None:
    sp = start_server(tmp_path)
    answered: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def phone(worker: int) -> None:
        n = 0
        while not stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", sp.port, timeout=5)
            try:
                while not stop.is_set():
                    mac = f"0080F0{worker:02X}{n:04X}"
                    ua = f"Panasonic_KX-HDV130/01.000 ({mac.lower()})"
                    conn.request("GET", f"/Config{mac}.cfg", headers={"User-Agent": ua})
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status == 200 and mac.encode() in body:
                        with lock:
                            answered.append(mac)
                    n += 1
            except (OSError, http.client.HTTPException):
                return
            finally:
                conn.close()

    threads = [threading.Thread(target=phone, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(answered) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    writers = writer_pids(sp)
    sp.proc.send_signal(signal.SIGKILL)
    sp.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(answered) >= 300, "the server answered too few requests before the kill"
    # an answer left once its event was in the writer's pipe: the writer, orphaned,
    # commits what it was handed, then sees the pipe's end and exits
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{w}").exists() for w in writers) and time.monotonic() < deadline:
        time.sleep(0.02)

    db = sqlite3.connect(sp.state_dir / "preprov.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    recorded = {m for (m,) in db.execute("SELECT mac FROM events WHERE kind = 'file.served'")}
    devices = {m for (m,) in db.execute("SELECT mac FROM devices")}
    db.close()
    missing = set(answered) - recorded
    assert not missing, (
        f"{len(missing)} files served but not in the event log: {sorted(missing)[:5]}"
    )
    assert set(answered) <= devices

    # and the server starts again on the same state and keeps the records
    sp2 = start_server(tmp_path)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", sp2.port, timeout=5)
        ua = "Panasonic_KX-HDV130/01.000 (0080f0ffffff)"
        conn.request("GET", "/Config0080F0FFFFFF.cfg", headers={"User-Agent": ua})
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        assert sp2.stop() == 0
    store = SQLiteStore(sp.state_dir / "preprov.db")
    assert set(answered) | {"0080F0FFFFFF"} <= {d.mac for d in store.devices()}
    store.close()


def fetch(sp: ServerProc, mac: str) -> int:
    """A phone's fetch of its own file: the status."""
    conn = http.client.HTTPConnection("127.0.0.1", sp.port, timeout=5)
    ua = f"Panasonic_KX-HDV130/01.000 ({mac.lower()})"
    conn.request("GET", f"/Config{mac}.cfg", headers={"User-Agent": ua})
    status = conn.getresponse().status
    conn.close()
    return status


def test_writer_process_killed_the_server_answers_and_loses_no_event(tmp_path: Path) -> None:
    """The group commits run in a writer process (inventory/writer.py). SIGKILLed, its
    commit in flight fails as "inventory unavailable": the server keeps answering
    files, keeps their events, starts a new writer and writes them all, without a
    restart."""
    sp = start_server(tmp_path)
    try:
        assert fetch(sp, "0080F0A00000") == 200
        children = Path(f"/proc/{sp.proc.pid}/task/{sp.proc.pid}/children").read_text().split()
        writers = writer_pids(sp)
        assert len(writers) == 1, children
        os.kill(writers[0], signal.SIGKILL)
        macs = [f"0080F0A0{i:04X}" for i in range(1, 41)]
        assert [fetch(sp, m) for m in macs] == [200] * 40
        sp.wait_event("inventory.recovered")
        status = Path(f"/proc/{sp.proc.pid}/task/{sp.proc.pid}/children").read_text().split()
        assert [c for c in status if c not in children], "no new writer process"
    finally:
        assert sp.stop() == 0
    db = sqlite3.connect(sp.state_dir / "preprov.db")
    recorded = {m for (m,) in db.execute("SELECT mac FROM events WHERE kind = 'file.served'")}
    db.close()
    assert set(macs) | {"0080F0A00000"} <= recorded


def test_a_failed_commit_keeps_its_events_until_the_database_takes_them(
    tmp_path: Path,
) -> None:
    """A file's answer leaves once its event is handed to the writer process; if the
    commit then fails (here: the events table renamed away under it, as a full disk
    or an I/O error would fail it), the events wait and are written once it works
    again, and the server says so (inventory.unavailable, inventory.recovered)."""
    sp = start_server(tmp_path)
    path = sp.state_dir / "preprov.db"

    def rename(a: str, b: str) -> None:
        db = sqlite3.connect(path, timeout=10)
        db.execute(f"ALTER TABLE {a} RENAME TO {b}")
        db.commit()
        db.close()

    macs = [f"0080F0B0{i:04X}" for i in range(6)]
    try:
        assert fetch(sp, macs[0]) == 200
        deadline = time.monotonic() + 10  # the writer is up: it committed that one
        while time.monotonic() < deadline:
            db = sqlite3.connect(path, timeout=10)
            (n,) = db.execute("SELECT count(*) FROM events WHERE mac = ?", (macs[0],)).fetchone()
            db.close()
            if n:
                break
            time.sleep(0.05)
        rename("events", "events_away")
        assert [fetch(sp, m) for m in macs[1:]] == [200] * 5
        down = sp.wait_event("inventory.unavailable")
        assert "writer: OperationalError: no such table: events" in str(down["reason"]), down
        rename("events_away", "events")
        sp.wait_event("inventory.recovered")
    finally:
        assert sp.stop() == 0
    db = sqlite3.connect(path)
    recorded = {m for (m,) in db.execute("SELECT mac FROM events WHERE kind = 'file.served'")}
    db.close()
    assert set(macs) <= recorded


def refused(mac: str | None, ts: float = 1.0, channel: str = "tftp") -> FileRefused:
    return FileRefused(channel=channel, client="198.18.0.9", mac=mac, path="/x", status=404,
                       reason="no template", ts=ts)  # fmt: skip


def test_refusals_create_no_device_and_stages_are_kept(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    store.write([refused(f"0080F0AA{i:04X}") for i in range(100)])
    assert store.devices() == []  # a flood of refused datagrams invents no device
    store.write([refused("0080F0BB0001", channel="http")])
    assert [d.mac for d in store.devices()] == ["0080F0BB0001"]  # a refused phone over TCP does
    assert store.devices()[0].ipv4 == "198.18.0.9"  # its facts fill the gaps of a new record
    store.db.execute("DELETE FROM devices")
    mac = "0080F0000001"
    store.write([PnpNotifySent(channel="sip-pnp", client="198.18.0.2", mac=mac, call_id="c",
                               url="http://h/{MODEL}.cfg", rule="default", to="198.18.0.2:5060")])  # fmt: skip
    (row,) = store.reads.status()
    assert (row["stage"], row["pnp"], row["files"]) == ("url-sent", "NOTIFY sent", 0)
    cursor = store.reads.cursor()
    store.write([served(mac, ts=2.0, template="{MODEL}.cfg")])
    store.write([served(mac, ts=2.1, template="Config{MAC}.cfg"), refused(mac, ts=2.2)])
    (row,) = store.reads.status(since=cursor)  # what changed since the cursor
    assert (row["stage"], row["files"], row["last_event"]) == ("provisioned", 2, "file.refused")
    assert store.reads.status(since=store.reads.cursor()) == []
    store.close()


def test_older_inventory_is_migrated_and_a_newer_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)  # version 1, as the last release wrote it
    db.execute("INSERT INTO devices (mac, first_seen, last_seen) VALUES ('0080F0000001', 1, 1)")
    db.execute("INSERT INTO events (ts, mac, kind, data) VALUES (1, '0080F0000001', "
               "'file.served', '{\"template\": \"Config{MAC}.cfg\"}')")  # fmt: skip
    db.commit()
    db.close()
    store = SQLiteStore(path)
    (row,) = store.reads.status()
    assert (row["stage"], row["files"]) == ("provisioned", 1)
    store.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match="newer than this preprov's"):
        SQLiteStore(path)


def test_event_log_pruned_oldest_first_within_count_and_bytes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db", budget=Budget(max_bytes=16 << 20, max_events=3000))
    store.write([served("0080F0000001", ts=time.time())])  # the lease-holding device stays
    for batch in range(40):
        store.write([served(f"0080F0{batch:02X}{i:04X}", ts=time.time(), path="/" + "p" * 300)
                     for i in range(500)])  # fmt: skip
        store.plan_pruning(store.db, time.time())
    n, first = store.db.execute("SELECT count(*), min(id) FROM events").fetchone()
    assert n <= 3000 + PRUNE_CHUNK and first > 1  # the oldest went first
    assert store.pruned >= 40 * 500 - 3000 - PRUNE_CHUNK
    # by bytes: a budget the events overflow prunes them too
    small = Budget(max_bytes=16 << 20, max_events=10**9)
    s2 = SQLiteStore(tmp_path / "q.db", budget=small)
    for batch in range(120):
        s2.write([served(f"0080F1{batch:02X}{i:04X}", ts=time.time(), path="/" + "p" * 1000)
                  for i in range(500)])  # fmt: skip
        s2.plan_pruning(s2.db, time.time())
    assert s2.reads.size()["database"] <= small.db_limit
    assert s2.pruned > 0
    s2.close()
    store.close()


def test_devices_forgotten_after_max_age_unless_registered_or_leased(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db", budget=Budget(max_age=100.0))
    now = time.time()
    old = now - 1000
    store.write([served("0080F0000001", ts=old), served("0080F0000002", ts=old),
                 served("0080F0000003", ts=now)])  # fmt: skip
    store.add_device("0080F0000002", old)
    store.write([Dhcp4Lease(channel="dhcpv4", mac="0080F0000004", ip="198.18.0.130",
                            client_id="x", state="bound", expires=now + 3600, ts=old)])  # fmt: skip
    store.plan_pruning(store.db, now)
    store.write([served("0080F0000005", ts=now)])
    assert {d.mac for d in store.devices()} == {"0080F0000002", "0080F0000003", "0080F0000004",
                                                "0080F0000005"}  # fmt: skip
    store.close()


async def test_refusals_are_stored_as_samples(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    rec = Recorder(store)
    for _ in range(5000):
        rec(RequestMalformed(channel="dhcpv4", client="198.18.0.9", reason="short"))
    rec(served("0080F0000001"))
    await rec.settled()
    kinds = [k for (k,) in store.db.execute("SELECT kind FROM events")]
    assert kinds.count("request.malformed") <= NOISE_BURST + 1 and "file.served" in kinds
    assert rec.unsampled["request.malformed/dhcpv4"] >= 5000 - NOISE_BURST - 1
    store.close()


def test_each_boot_starts_again_and_a_batch_counts_only_later_boots(tmp_path: Path) -> None:
    """A SUBSCRIBE after a quiet spell is a new boot: its stage, files, last error and
    provisioned_at start again. Within one batch of events as across batches."""
    from preprov.web.dashboard import batch_report

    mac = "0080F0C571EB"
    sub = dict(channel="sip-pnp", client="198.18.0.7", mac=mac, model="KX-HDV130")

    def boot(t: float, fails: bool) -> list[object]:
        evs: list[object] = [
            PnpSubscribe(**sub, call_id=f"c{t}", ts=t),
            PnpNotifySent(**sub, call_id=f"c{t}", url="http://x/{MODEL}.cfg", rule="d", to="",
                          ts=t + 0.1),
            served(mac, ts=t + 0.2, template="{MODEL}.cfg"),
        ]
        if fails:
            evs.append(refused(mac, ts=t + 0.3, channel="http"))
        else:
            evs.append(served(mac, ts=t + 0.3, template="Config{MAC}.cfg"))
        return evs

    for together in (False, True):
        store = SQLiteStore(tmp_path / f"boots-{together}.db", boot_gap=30.0)
        first, second = boot(1000.0, fails=False), boot(1100.0, fails=True)
        if together:
            store.write(first + second)  # type: ignore[arg-type]
        else:
            store.write(first)  # type: ignore[arg-type]
            (row,) = store.reads.status()
            assert (row["stage"], row["boots"], row["provisioned_at"]) == ("provisioned", 1, 1000.3)
            batch_created = 1050.0
            assert batch_report("b", [mac], [row], batch_created)["provisioned"] == 0
            store.write(second)  # type: ignore[arg-type]
        (row,) = store.reads.status()
        assert row["boots"] == 2 and row["boot_started"] == 1100.0
        assert row["stage"] == "fetching" and row["provisioned_at"] is None
        assert row["files"] == 1 and row["last_error"].startswith("file.refused")
        report = batch_report("b", [mac], [row], 1050.0)
        assert report["provisioned"] == 0 and report["missing"][0]["stage"] == "fetching"
        assert report["missing"][0]["reason"].startswith("file.refused")
        # a SUBSCRIBE within the gap (the same boot going on) starts nothing
        store.write([PnpSubscribe(**sub, call_id="again", ts=1110.0)])
        assert store.reads.status()[0]["boots"] == 2
        store.close()


async def test_the_wal_starts_again_under_steady_writes(tmp_path: Path) -> None:
    """Under steady group commits a checkpoint from another connection never completes
    (the writer appends while it copies), so the WAL would never start again from
    its beginning and would hold everything written (1 GB once). The writer process
    finishes each checkpoint itself between two commits: the WAL starts again (its
    header's checkpoint sequence number moves) while the writes stream in, and holds
    a fraction of what went through it."""
    budget = Budget(max_bytes=16 << 20)  # the WAL's share: 2 MiB
    store = SQLiteStore(tmp_path / "p.db", writer_process=True, budget=budget)
    await store.open()
    wal = tmp_path / "p.db-wal"
    biggest, starts = 0, set()
    try:
        for round_ in range(80):  # 8 group commits in flight at a time, as under load
            writes = [store.write([served(f"0080F000{i % 1000:04X}", ts=time.time(),
                                          path=f"/{round_}/{n}")
                                   for i in range(n * 50, n * 50 + 50)])
                      for n in range(8)]  # fmt: skip
            await asyncio.gather(*writes)  # type: ignore[arg-type]
            with open(wal, "rb") as f:
                head = f.read(16)
            starts.add(head[12:16])  # the checkpoint sequence number (WAL header)
            biggest = max(biggest, wal.stat().st_size)
        (events,) = store.db.execute("SELECT count(*) FROM events").fetchone()
    finally:
        await store.aclose()
    assert events == 80 * 8 * 50
    print(f"WAL started {len(starts)} times, at most {biggest >> 10} KiB")
    assert len(starts) >= 3, "the WAL never started again under steady writes"
