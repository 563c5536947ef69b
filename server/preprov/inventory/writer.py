"""The SQLite inventory's writer process.

The server turns each group commit's events into plain records on its event
loop and writes them to this process's input; here the device rows are
prepared (`DeviceRows`, whose cache lives here) and whatever has arrived is
committed in one transaction, each group answered in order. The server's
Recorder calls an answer's callbacks once its records are in the pipe (from
there they are committed even if the server is killed at once), a lease's
once it is committed. SQLite's work took a fifth of the event loop's time
under load; here it runs beside it. The process also runs the maintenance
(the WAL's checkpoints, the pruning's plan) in a thread of its own.

Written here rather than with multiprocessing: one pipe each way (the input
made by the server, a MiB), a frame per group commit (4-byte length, a pickle
of plain tuples), nothing shared. The process ends when its input ends: when
the server closes it, or exits for any reason (a kill -9 included), after
committing what the pipe held. It ignores SIGINT and SIGTERM (a terminal's
Ctrl-C reaches the whole process group; the server drains its events into it
first, then closes it). If it dies, cannot start, or a commit fails (a full
disk), the inventory is unavailable with the reason: the Recorder keeps the
events and tries again every second, and the next write starts a new process
if need be.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pickle
import signal
import struct
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .store import Budget, DeviceRows, StoreUnavailable

if TYPE_CHECKING:
    from .sqlite import Committer
    from .store import Record

_LEN = struct.Struct(">I")
PIPE_SIZE = 1 << 20


class _Pipe(asyncio.Protocol):
    """The write end of the writer's input: with write limits of 0, pause_writing
    means bytes wait in this process and resume_writing that all are in the pipe."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []

    def resume_writing(self) -> None:
        for fut in self.waiting:
            if not fut.done():
                fut.set_result(None)
        self.waiting.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()  # nothing more goes in: the answers say what happened


class WriterProcess:
    """The server's side: starts the process, sends commits, matches the answers
    (in order: one pipe, one process, one transaction at a time)."""

    def __init__(
        self, path: Path, synchronous: str, budget: Budget, server: str, boot_gap: float
    ) -> None:
        self.args = [str(path), synchronous, str(budget.max_bytes), str(budget.max_age),
                     str(budget.max_events), server, str(boot_gap)]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None
        self._input: asyncio.WriteTransport | None = None
        self._pipe = _Pipe()
        self._waiting: deque[asyncio.Future[set[str]]] = deque()
        self._reader_task: asyncio.Task[None] | None = None
        self.pruned = 0  # as the process last said
        self.forgotten = 0

    async def start(self) -> None:
        # the input pipe made here, to make it hold a whole group commit (a MiB where
        # the system allows it): the process reads what it holds even after we die
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "preprov.inventory.writer", *self.args,
                stdin=r, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        self._pipe = _Pipe()
        transport, _ = await asyncio.get_running_loop().connect_write_pipe(
            lambda: self._pipe, os.fdopen(w, "wb", buffering=0)
        )
        transport.set_write_buffer_limits(high=0)
        self._input = transport
        self._reader_task = asyncio.ensure_future(self._answers(self.proc))

    def write(
        self, recs: list[Record], handed: Callable[[], None] | None = None
    ) -> Awaitable[set[str]]:
        """The records' group commit: the claims it lost, awaitable. `handed` is called
        as soon as the whole frame is in the pipe (at once, mostly): from there the
        process commits it even if the server dies."""
        return self._send(("write", recs), handed)

    def forget(self, mac: str) -> None:
        """The device is deleted: its row is written in full when it comes back."""
        if self.proc is not None:
            self._send(("forget", mac), None)

    def _send(
        self, frame: tuple[str, Any], handed: Callable[[], None] | None
    ) -> Awaitable[set[str]]:
        fut: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        proc, pipe = self.proc, self._input
        if proc is None or proc.returncode is not None or pipe is None or pipe.is_closing():
            return self._restart(frame, handed)
        data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
        self._waiting.append(fut)
        pipe.write(_LEN.pack(len(data)) + data)
        if handed is None:
            return fut
        if not pipe.get_write_buffer_size():
            handed()
            return fut
        drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pipe.waiting.append(drained)
        return self._drained(drained, fut, handed)

    async def _drained(
        self, drained: asyncio.Future[None], fut: asyncio.Future[set[str]],
        handed: Callable[[], None],
    ) -> set[str]:  # fmt: skip
        await drained
        handed()
        return await fut

    async def _restart(
        self, frame: tuple[str, Any], handed: Callable[[], None] | None
    ) -> set[str]:
        await self.start()
        return await self._send(frame, handed)

    async def _answers(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        why = "the inventory's writer process ended"
        try:
            while True:
                (n,) = _LEN.unpack(await proc.stdout.readexactly(4))
                answer = pickle.loads(await proc.stdout.readexactly(n))
                if answer[0] == "fatal":  # it could not start: the next commit tries again
                    why = f"the inventory's writer could not start: {answer[1]}"
                    break
                fut = self._waiting.popleft()
                if answer[0] == "ok":
                    _, lost, self.pruned, self.forgotten = answer
                    if not fut.done():
                        fut.set_result(lost)
                elif not fut.done():
                    # a commit that failed (a full disk, an I/O error, the lock held past
                    # 5 s): its events wait and are written again, as while a database
                    # cannot be reached; their answers may have left already
                    fut.set_exception(StoreUnavailable(f"the inventory's writer: {answer[1]}"))
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            code = await proc.wait()
            why = f"the inventory's writer process ended (exit status {code}): {e}"
        finally:
            if self.proc is proc:
                self.proc = None
                if self._input is not None:
                    self._input.close()
                    self._input = None
            while self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_exception(StoreUnavailable(why))

    async def aclose(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if self._input is not None:
            self._input.close()  # its input ends: it finishes, checkpoints and exits
            self._input = None
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader_task is not None:
            await self._reader_task

    def close(self) -> None:
        """Without a loop (after aclose, nothing is left to do)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()


def _frames(buf: bytearray) -> list[tuple[str, Any]]:
    """The whole frames at the head of `buf`, taken out of it."""
    frames = []
    at = 0
    while len(buf) - at >= 4:
        (n,) = _LEN.unpack_from(buf, at)
        if len(buf) - at - 4 < n:
            break
        frames.append(pickle.loads(memoryview(buf)[at + 4 : at + 4 + n]))
        at += 4 + n
    del buf[:at]
    return frames


def serve(
    inp: int, out: BinaryIO, committer: Committer, rows: DeviceRows
) -> None:
    """Until the input ends: everything that has arrived is committed together (the
    group commits that queued while the last one ran make one transaction), and
    each frame answered in order."""
    buf = bytearray()
    # read into one buffer made once: os.read(PIPE_SIZE) allocated (mmap), shrank
    # (mremap) and freed (munmap) a megabyte for every read, three system calls and
    # page faults per group commit
    space = bytearray(PIPE_SIZE)
    view = memoryview(space)
    while n := os.readv(inp, [space]):
        buf += view[:n]
        answers: list[tuple[Any, ...]] = []
        group: list[list[Record]] = []
        for what, arg in [*_frames(buf), ("end", None)]:
            if what == "write":
                group.append(arg)
                continue
            if group:
                answers += _commit(committer, rows, group)
                group = []
            if what == "forget":
                rows.written.pop(arg, None)
                answers.append(("ok", set(), committer.pruned, committer.forgotten))
        if answers:
            out.write(b"".join(_LEN.pack(len(d)) + d for d in
                               (pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL)
                                for a in answers)))  # fmt: skip
            out.flush()


def _commit(
    committer: Committer, rows: DeviceRows, group: list[list[Record]]
) -> list[tuple[Any, ...]]:
    """One transaction for the group; an answer per frame, with the claims it lost."""
    try:
        lost = committer.write(rows, [r for recs in group for r in recs])
    except Exception as e:  # told to the server, which keeps the events
        return [("error", f"{type(e).__name__}: {e}")] * len(group)
    pruned, forgotten = committer.pruned, committer.forgotten
    if not lost:
        return [("ok", set(), pruned, forgotten)] * len(group)
    return [("ok", {r[6][0] for r in recs if r[6] is not None} & lost, pruned, forgotten)
            for recs in group]  # fmt: skip


def main(argv: list[str]) -> int:
    from .sqlite import Committer, connect

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path, synchronous = Path(argv[0]), argv[1]
    budget = Budget(int(argv[2]), float(argv[3]), int(argv[4]))
    rows = DeviceRows(argv[5], float(argv[6]))  # what the device rows say, here only
    # answers go to the pipe the server reads; anything printed by mistake to the log
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        db = connect(path, synchronous, budget.wal_limit)
        # This process waits for the lock if another connection holds it (an operator's
        # write, a checkpoint): nothing else waits on it but the commit's own answers.
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA wal_autocheckpoint=0")  # the maintenance thread checkpoints
        committer = Committer(db, path, budget)
    except Exception as e:  # told to the server: its inventory is unavailable, and why
        data = pickle.dumps(("fatal", f"{type(e).__name__}: {e}"))
        out.write(_LEN.pack(len(data)) + data)
        out.flush()
        return 1
    closing = threading.Event()
    maintenance = threading.Thread(target=committer.maintain, args=(closing,),
                                   name="preprov-checkpoint", daemon=True)  # fmt: skip
    maintenance.start()
    try:
        serve(0, out, committer, rows)
        return 0
    finally:
        closing.set()
        maintenance.join()
        db.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
