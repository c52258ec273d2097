"""Data migrations that move rows between tables, rehearsed: FAIL naming both tables, or PASS as the plan expects."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic_projects import write_project
from pgsupport import CliResult, Database

from examples.enum_uppercase import seed

Cli = Callable[..., CliResult]


@pytest.fixture
def source(make_database: Callable[..., Database]) -> Database:
    db = make_database()
    seed.load(db.conninfo, 50, alembic=True)
    return db


MOVE_SCHEMA = """
create table public.active_orders (id bigint primary key, note text not null);
create table public.archived_orders (id bigint primary key, note text not null);
insert into public.active_orders select g, 'order ' || g from generate_series(1, 20) g;
insert into public.archived_orders select g, 'order ' || g from generate_series(100, 104) g;
"""
MOVE_TABLES = ["public.active_orders", "public.archived_orders"]


def _move_plan(tmp_path: Path, db: Database, expect: str = "") -> Path:
    ini = write_project(
        tmp_path / "proj",
        upgrade=["INSERT INTO archived_orders SELECT * FROM active_orders WHERE id <= 3",
                 "DELETE FROM active_orders WHERE id <= 3"],
        downgrade=[],  # the rows stay archived
    )
    listed = ", ".join(f'"{t}"' for t in MOVE_TABLES)
    path = tmp_path / "plan.toml"
    path.write_text(
        f'name = "move"\n[source]\ndsn = "{db.url}"\ntables = [{listed}]\n'
        f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n'
        f'[store]\nurl = "file://{tmp_path / "store"}"\n[traffic]\nenabled = false\n' + expect
    )
    return path


EXPECT_MOVE = """
[[expect]]
table = "public.active_orders"
rows_after_upgrade = "-3"
rows_after_downgrade = "-3"
reason = "orders 1-3 are archived for good"

[[expect]]
table = "public.archived_orders"
rows_after_upgrade = "+3"
rows_after_downgrade = "+3"
reason = "orders 1-3 are archived for good"
"""


@pytest.mark.parametrize("expect", ["", EXPECT_MOVE], ids=["no-expect", "expect"])
def test_rows_moved_between_tables_fail_unless_the_plan_expects_them(
    tmp_path: Path, source: Database, migsafe: Cli, expect: str
) -> None:
    # Given: an upgrade that moves 3 rows from one table to another, and a downgrade that leaves them
    with source.connect() as conn:
        conn.execute(MOVE_SCHEMA)
    plan = _move_plan(tmp_path, source, expect)
    # When
    res = migsafe("rehearse", "--plan", str(plan), "--report-dir", str(tmp_path / "r"))
    # Then
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    moved = ("3 rows left public.active_orders during the upgrade and did not come back on the downgrade "
             "(20 before, 17 after the upgrade, 17 after the downgrade); public.archived_orders gained 3")
    report = (tmp_path / "r" / "report.md").read_text()
    if not expect:
        assert res.code == 1, res.output
        assert any(r.startswith(moved) for r in result["reasons"]), result["reasons"]
        assert result["accepted"] == []
    else:
        assert res.code == 0, res.output
        assert result["verdict"] == "PASS" and result["reasons"] == []
        assert any(n.startswith(moved) and "orders 1-3 are archived for good" in n for n in result["accepted"])
        assert "Accepted differences" in report and "accepted ([[expect]])" in res.stderr
