"""Shared fixtures: real throw-away PostgreSQL clusters (never mocked), databases, stores, the CLI.

Each pytest worker starts one cluster for the session on a free port (as the ``postgres`` user
when we are root) and stops it at the end; databases are created per test by a factory that drops
them afterwards.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "functions"), str(ROOT)]

from migsafe.dsn import Dsn  # noqa: E402
from migsafe.localpg import LocalCluster  # noqa: E402

from examples.enum_uppercase import seed  # noqa: E402

EVENTS = Path(__file__).parent / "events"


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


@dataclass
class Database:
    name: str
    dsn: Dsn

    @property
    def conninfo(self) -> str:
        return self.dsn.conninfo()

    @property
    def url(self) -> str:
        return self.dsn.url()

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.conninfo, autocommit=True)

    def scalar(self, query: str, params: tuple = ()) -> object:
        with self.connect() as conn:
            row = conn.execute(query, params).fetchone()
            return row[0] if row else None


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


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


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


def table_fingerprints(db: Database, tables: list[str]) -> dict[str, tuple[int, str]]:
    """Row count and content fingerprint of each table, computed in the database."""
    from migsafe import catalog
    from migsafe.identifiers import QualifiedName

    with db.connect() as conn:
        return {
            t: (
                catalog.count_rows(conn, QualifiedName.parse(t)),
                catalog.fingerprint(conn, QualifiedName.parse(t)),
            )
            for t in tables
        }


def write_plan(
    path: Path, db: Database, store_url: str, tables: list[str] | None = None, extra: str = ""
) -> Path:
    tables = tables or seed.TABLES
    listed = ", ".join(f'"{t}"' for t in tables)
    path.write_text(
        f'[source]\ndsn = "{db.url}"\ntables = [{listed}]\n\n[store]\nurl = "{store_url}"\n{extra}'
    )
    return path
