"""The inventory: a SQLite store with group commit that survives a kill -9."""

from __future__ import annotations

import http.client
import signal
import sqlite3
import threading
import time
from pathlib import Path

from preprov.events import EventBus, FileRefused, FileServed, ServerStarted
from preprov.inventory.store import Recorder, SQLiteStore
from serverproc import start_server


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


def test_device_records_merge_facts_and_keep_history(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    store.write(
        [served("0080F0000001", ts=1.0), served("0080F0000001", ts=2.0, model=None, fwver="02.000")]
    )
    store.write(
        [
            FileRefused(
                channel="http",
                client="198.18.0.3",
                mac="0080F0000001",
                path="/y",
                status=404,
                reason="no template matches /y",
                ts=3.0,
            ),
            ServerStarted(
                services=(),
                listening=(),
                server_address=None,
                templates="",
                state_dir="",
                config=None,
            ),
        ]
    )
    d = store.device("0080F0000001")
    assert d is not None
    assert (d.model, d.fwver, d.ipv4, d.first_seen, d.last_seen) == (
        "KX-HDV130",
        "02.000",
        "198.18.0.3",
        1.0,
        3.0,
    )
    assert (d.last_event, d.last_error) == ("file.refused", "file.refused: no template matches /y")
    evs = store.events("0080F0000001")
    assert [e["kind"] for e in evs] == ["file.served", "file.served", "file.refused"]
    assert len(store.events()) == 4
    store.close()


async def test_group_commit_one_transaction_per_loop_turn(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    writes: list[int] = []
    real = store.write
    store.write = lambda evs: (writes.append(len(evs)), real(evs))[1]  # type: ignore[method-assign]
    rec = Recorder(store)
    bus = EventBus()
    bus.subscribe_durable(rec)
    for i in range(50):
        bus.emit(served(f"0080F00000{i:02d}"))
    await bus.settled()
    bus.emit(served("0080F0000099"))
    await bus.settled()
    assert writes == [50, 1]
    assert len(store.devices()) == 51


async def test_registered_devices(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    rec = Recorder(store)
    rec(served("0080F0000001"))
    await rec.settled()
    assert not rec.registered("0080F0000001")
    rec.register("0080F0000002")
    assert Recorder(SQLiteStore(tmp_path / "p.db")).registered("0080F0000002")


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
                    conn.request("GET", f"/Config{mac}.cfg")
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
    sp.proc.send_signal(signal.SIGKILL)
    sp.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(answered) >= 300, "the server answered too few requests before the kill"

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
        conn.request("GET", "/Config0080F0FFFFFF.cfg")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        assert sp2.stop() == 0
    store = SQLiteStore(sp.state_dir / "preprov.db")
    assert set(answered) | {"0080F0FFFFFF"} <= {d.mac for d in store.devices()}
    store.close()
