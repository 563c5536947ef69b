"""A throw-away PostgreSQL cluster for the tests: Debian's `postgresql` package,
initdb in a temporary folder, a Unix socket only (no TCP port, so nothing can
reach it from a network, and servers in network namespaces reach it by path),
started and stopped by the tests themselves."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

PORT = 5439


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def unavailable() -> str | None:
    """Why no cluster can be made here (None: it can)."""
    if pg_bin() is None:
        return "Debian's postgresql package is not installed (./run test installs it)"
    if os.geteuid() != 0:
        return "initdb runs as the postgres user: the tests need root"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    return None


class Cluster:
    def __init__(self) -> None:
        bindir = pg_bin()
        assert bindir is not None
        self.bin = bindir
        # pytest's tmp_path is 0700 root's: the postgres user could not reach it
        self.dir = Path(tempfile.mkdtemp(prefix="preprov-pg-"))
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                           "-U", "postgres", "--no-sync"])  # fmt: skip
        self.started = False
        self._databases = 0

    def _as_postgres(self, argv: list[str]) -> None:
        subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                        *argv], check=True, capture_output=True, cwd=self.dir)  # fmt: skip

    def start(self) -> None:
        opts = (f"-k {self.dir} -c listen_addresses='' -p {PORT} -c max_connections=200"
                " -c shared_buffers=64MB")  # fmt: skip
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts,
                           "-l", str(self.dir / "log"), "-w", "start"])  # fmt: skip
        self.started = True

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode,
                               "-w", "stop"])  # fmt: skip
            self.started = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.dir}&port={PORT}"

    def new_database(self) -> str:
        """A fresh, empty database: its URL."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}_{os.getpid()}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"DROP DATABASE IF EXISTS {name}")
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
