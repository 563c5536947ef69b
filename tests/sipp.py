"""Run sipp, the real SIP peer, from a lab host."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from preprov.lab import Host

SCENARIOS = Path(__file__).parent / "sipp"


@dataclass
class SippRun:
    returncode: int
    successful: int
    failed: int
    urls: list[str]
    stdout: str
    errors: str


def injection(path: Path, macs: list[str]) -> Path:
    path.write_text("SEQUENTIAL\n" + "".join(f"{m};{m.lower()}\n" for m in macs))
    return path


def run_sipp(
    host: Host, scenario: str, workdir: Path, macs: list[str], port: int = 5060,
    rate: float | None = None, timeout: float = 20.0, extra: tuple[str, ...] = (),
) -> SippRun:  # fmt: skip
    inf = injection(workdir / f"{scenario}-{port}.csv", macs)
    cmd = [
        *host.prefix(), "sipp", "-sf", str(SCENARIOS / f"{scenario}.xml"), "224.0.1.75:5060",
        "-i", str(host.ipv4.ip), "-p", str(port), "-m", str(len(macs)), "-inf", str(inf),
        "-timeout", f"{timeout:g}s", "-nostdin", "-trace_logs", "-trace_err", "-trace_stat",
        *(["-r", f"{rate:g}"] if rate else []), *extra,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=timeout + 30)
    urls: list[str] = []
    for log in workdir.glob(f"{scenario}_*_logs.log"):
        urls += re.findall(r"\burl (\S+://\S+)", log.read_text())
        log.unlink()
    errors = ""
    for err in workdir.glob(f"{scenario}_*_errors.log"):
        errors += err.read_text()
        err.unlink()
    ok = re.search(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", r.stdout)
    failed = re.search(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", r.stdout)
    return SippRun(
        r.returncode,
        int(ok.group(1)) if ok else -1,
        int(failed.group(1)) if failed else -1,
        urls,
        r.stdout,
        errors,
    )
