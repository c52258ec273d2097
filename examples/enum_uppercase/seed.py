"""Load the seed scenario's schema and rows into a database (used by the demo, tests and bench)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

HERE = Path(__file__).parent
TABLES = ["public.users", "public.user_application_access", "public.user_invitations"]


BASELINE = "0001_baseline"


def load(conninfo: str, users: int = 100_000, *, alembic: bool = False) -> None:
    """Create the schema and ``users`` users (3 access rows each, users/2 invitations).

    ``alembic=True`` also stamps the database at the example project's baseline revision, as a
    production database managed by alembic would be.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        _exec(conn, (HERE / "schema.sql").read_text())
        conn.execute(sql.SQL("set migsafe.seed_users = {}").format(sql.Literal(str(int(users)))))
        _exec(conn, (HERE / "data.sql").read_text())
        if alembic:
            conn.execute("create table alembic_version (version_num varchar(32) primary key)")
            conn.execute("insert into alembic_version values (%s)", (BASELINE,))


def _exec(conn: psycopg.Connection[Any], script: str) -> None:
    with conn.transaction():
        conn.execute(script.encode())  # several statements, no parameters: simple query protocol
