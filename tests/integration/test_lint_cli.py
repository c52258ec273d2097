"""`migsafe lint`: alembic --sql for the plan's range, linted with no database at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from chain_projects import write_chain
from migsafe.migrate import DRIVER
from pgsupport import CliResult

STEPS = [
    (["CREATE TABLE items (id bigint PRIMARY KEY, name text)"], ["DROP TABLE items"]),
    (["CREATE INDEX ix_items_name ON items (name)"], ["DROP INDEX ix_items_name"]),
    (["ALTER TABLE items ADD COLUMN price bigint NOT NULL"], ["ALTER TABLE items DROP COLUMN price"]),
]


def _plan(tmp_path: Path, ini: Path, extra: str = "") -> Path:
    plan = tmp_path / "plan.toml"
    # the DSN points nowhere: lint must never connect
    plan.write_text(
        '[source]\ndsn = "postgresql://nobody:secret@127.0.0.1:1/none"\ntables = ["public.items"]\n'
        f'[migration]\nalembic_ini = "{ini}"\nupgrade_to = "head"\ndowngrade_to = "0001_baseline"\n' + extra
    )
    return plan


def test_lint_offline_reports_per_revision_and_warns_by_default(
    tmp_path: Path, migsafe: Callable[..., CliResult]
) -> None:
    # Given
    ini = write_chain(tmp_path / "proj", STEPS)
    plan = _plan(tmp_path, ini)
    # When
    res = migsafe("lint", "--plan", str(plan), "--json", "--pg-version", "15")
    # Then: findings, but none of them fails without thresholds.lint_fail
    assert res.code == 0, res.output
    data = json.loads(res.stdout)
    assert data["revisions"] == ["0002_step", "0003_step", "0004_step"]
    index = [f for f in data["lint"] if f["rule"] == "require-concurrent-index-creation"]
    assert [(f["revision"], f["phase"]) for f in index] == [("0003_step", "upgrade")]
    assert index[0]["statement"].startswith("CREATE INDEX ix_items_name")
    assert any(f["rule"] == "adding-required-field" and f["revision"] == "0004_step" for f in data["lint"])
    assert data["failing"] == 0 and "secret" not in res.output


def test_lint_fail_rule_exits_1(tmp_path: Path, migsafe: Callable[..., CliResult]) -> None:
    # Given
    ini = write_chain(tmp_path / "proj", STEPS)
    plan = _plan(tmp_path, ini, '[thresholds]\nlint_fail = ["require-concurrent-index-creation"]\n')
    # When
    res = migsafe("lint", "--plan", str(plan))
    # Then
    assert res.code == 1, res.output
    assert "FAIL" in res.stdout and "require-concurrent-index-creation" in res.stdout
    assert "1 failing" in res.stderr


def test_lint_of_env_without_offline_mode_is_bad_input(
    tmp_path: Path, migsafe: Callable[..., CliResult]
) -> None:
    # Given: an env.py that only runs online (it builds an engine from the URL, which goes nowhere)
    ini = write_chain(tmp_path / "proj", STEPS)
    env = ini.parent / "migrations" / "env.py"
    env.write_text(env.read_text().replace("if context.is_offline_mode():", "if False:"))
    plan = _plan(tmp_path, ini)
    # When
    res = migsafe("lint", "--plan", str(plan))
    # Then: one line, naming the cause
    assert res.code == 2, res.output
    assert "offline mode" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_capture_that_cannot_write_never_stops_the_migration(tmp_path: Path, make_database) -> None:  # type: ignore[no-untyped-def]
    # Given: a capture file in a folder that does not exist
    db = make_database()
    ini = write_chain(tmp_path / "proj", STEPS[:1])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
        "MIGSAFE_ALEMBIC_URL": db.url.replace("postgresql://", "postgresql+psycopg://", 1),
        "MIGSAFE_CAPTURE": str(tmp_path / "missing" / "capture.jsonl"),
    }
    # When
    proc = subprocess.run(
        [sys.executable, str(DRIVER), "upgrade", str(ini), "head"], capture_output=True, text=True, env=env
    )
    # Then
    assert proc.returncode == 0, proc.stderr
    assert db.scalar("select count(*) from items") == 0


def test_a_failing_capture_query_leaves_the_migrations_transaction_usable(
    tmp_path: Path, make_database
) -> None:  # type: ignore[no-untyped-def]
    # Given: the driver's capture on a connection in the middle of the migration's transaction
    import importlib.util

    import psycopg

    spec = importlib.util.spec_from_file_location("migsafe_driver", DRIVER)
    assert spec and spec.loader
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    capture = driver._Capture(str(tmp_path / "capture.jsonl"), offline=False)
    db = make_database()
    with psycopg.connect(db.conninfo) as conn:
        conn.execute("create table t (a int)")
        # When: its own query fails
        with pytest.raises(psycopg.errors.DivisionByZero):
            capture._query(conn, "select 1/0")
        # Then: the migration's transaction goes on, its work intact
        conn.execute("insert into t values (1)")
        assert conn.execute("select count(*) from t").fetchone() == (1,)
