"""A short coverage-guided fuzzing run of every parser and core (bench/fuzz.py: atheris).

The cores catch no exception of their own, so any crash the fuzzer finds fails
this test; `./run bench fuzz` runs the same targets a million inputs each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_every_core_survives_a_short_fuzzing_run(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    out = tmp_path / "fuzz.json"
    r = subprocess.run([sys.executable, str(BENCH / "fuzz.py"), "--runs", "20000", "--out",
                        str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads(out.read_text())
    assert {x["target"] for x in results} == {"pnp", "dhcp4", "dhcp6", "tftp", "http", "path",
                                              "url"}  # fmt: skip
    assert all(x["runs"] >= 20000 and x["crashes"] == 0 for x in results), results
