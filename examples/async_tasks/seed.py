"""Load the async_tasks example's schema and rows into a database, stamped at its baseline revision."""

from __future__ import annotations

from pathlib import Path

import psycopg

HERE = Path(__file__).parent
TABLES = ["public.deployments", "public.flow_runs", "public.flow_run_archive"]
BASELINE = "0001_baseline"
HEAD = "0003_deployment_search"


def completed(runs: int) -> int:
    """How many of ``runs`` flow runs are COMPLETED (every third): the rows 0002 archives."""
    return len(range(0, runs, 3))


def load(conninfo: str, runs: int = 3000) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        conn.execute((HERE / "schema.sql").read_bytes())
        conn.execute(
            "insert into deployments select g, 'deployment-' || g, 'Deploy-' || g"
            " from generate_series(1, 20) g"
        )
        conn.execute(
            "insert into flow_runs select g, 1 + g %% 20, 'run-' || md5(g::text),"
            " case when g %% 3 = 0 then 'COMPLETED' when g %% 3 = 1 then 'RUNNING' else 'FAILED' end,"
            " timestamptz '2026-01-01' + g * interval '1 minute'"
            " from generate_series(0, %s - 1) g",
            (runs,),
        )
        conn.execute("create table alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into alembic_version values (%s)", (BASELINE,))
