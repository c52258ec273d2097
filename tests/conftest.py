"""Shared fixtures: real throw-away PostgreSQL clusters (never mocked), databases, stores, the CLI.

Each pytest worker starts one cluster for the session on a free port (as the ``postgres`` user
when we are root) and stops it at the end; databases are created per test by a factory that drops
them afterwards.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from migsafe.localpg import LocalCluster
from pgsupport import ROOT, CliResult, Database, seed

# A test run started in the background of a non-interactive shell (`make test &` in a CI step)
# inherits SIGINT ignored and hands that on to every child, and a Python started with SIGINT ignored
# never turns it into KeyboardInterrupt: the tests that interrupt migsafe with SIGINT would then
# test the runner's shell, not migsafe. Each pytest process (xdist workers import this file too)
# takes SIGINT back, so the processes it starts get the default.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def runtime_dir() -> Iterator[Path]:
    """Where this session's clusters live (so sweeps in tests never touch anybody else's).

    Not under pytest's tmp_path: that is private to root, and the servers run as ``postgres``.
    """
    path = Path(tempfile.mkdtemp(prefix="migsafe-test-clusters-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster(runtime_dir: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster.create("tests", runtime_dir=runtime_dir)
    try:
        yield cluster
    finally:
        cluster.destroy()


_counter = itertools.count()


@pytest.fixture
def make_database(pg_cluster: LocalCluster) -> Iterator[Callable[..., Database]]:
    """Factory: ``make_database(users=N)`` makes a database (seeded when users > 0); dropped after."""
    created: list[str] = []

    def make(users: int = 0, name: str | None = None) -> Database:
        dbname = name or f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(pg_cluster.dsn().conninfo(), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(dbname)))
        created.append(dbname)
        db = Database(dbname, pg_cluster.dsn(dbname))
        if users:
            seed.load(db.conninfo, users)
        return db

    yield make
    with psycopg.connect(pg_cluster.dsn().conninfo(), autocommit=True) as conn:
        for dbname in created:
            conn.execute(
                psycopg.sql.SQL("drop database if exists {} with (force)").format(
                    psycopg.sql.Identifier(dbname)
                )
            )


@pytest.fixture
def seeded(make_database: Callable[..., Database]) -> Database:
    """A database with the seed scenario: 2,000 users, 6,000 access rows, 1,000 invitations."""
    return make_database(users=2000)


@pytest.fixture
def migsafe(runtime_dir: Path) -> Callable[..., CliResult]:
    """Run the real ``migsafe`` CLI in a subprocess (exit codes and output as a user sees them)."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
        full_env = {**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir), **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "migsafe", *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            cwd=ROOT,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run
