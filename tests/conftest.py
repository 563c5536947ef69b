"""Shared fixtures: a template tree and a Runtime built from it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from preprov.config import BUNDLED_TEMPLATES, CONFIGS_DIR, build_config
from preprov.lab import Lab, netns_unavailable
from preprov.runtime import Runtime, build_runtime

UA = "Panasonic_KX-HDV130/01.000 (0080f0c571eb)"


def under_ci_as_root() -> bool:
    return os.environ.get("CI") == "true" and os.geteuid() == 0


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    shutil.copytree(BUNDLED_TEMPLATES, d)
    return d


@pytest.fixture
def make_runtime(templates: Path) -> Callable[..., Runtime]:
    def make(**data: Any) -> Runtime:
        data.setdefault("files", {}).setdefault("templates", str(templates))
        data.setdefault("server", {}).setdefault("address", "198.18.0.1")
        return build_runtime(build_config(data), None, secret=b"k" * 32)

    return make


@pytest.fixture
def devices_csv() -> Path:
    return CONFIGS_DIR / "devices.csv"


def lab_or_skip() -> Lab:
    """A namespace lab; under CI as root it must work, elsewhere it may skip."""
    why = netns_unavailable()
    if why:
        if under_ci_as_root():
            pytest.fail(f"CI=true as root, but no network namespaces: {why}")
        pytest.skip(f"no network namespace lab: {why}")
    return Lab()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_or_skip() as the_lab:
        yield the_lab


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throw-away PostgreSQL cluster for the session (tests/pg.py); under CI as root
    it must work, elsewhere it may skip."""
    import pg

    why = pg.unavailable()
    if why:
        if under_ci_as_root():
            pytest.fail(f"CI=true as root, but no PostgreSQL cluster: {why}")
        pytest.skip(f"no PostgreSQL: {why}")
    cluster = pg.Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """The URL of an empty database of its own."""
    if not pg_cluster.started:
        pg_cluster.start()
    url: str = pg_cluster.new_database()
    return url
