"""The async_tasks example rehearsed twice: alembic in-process, and the project's own command.

The example has what real projects ship: an async (asyncpg) env.py, alembic configured in code
(``config_factory``), tables that depend on pg_trgm and citext, and a data migration that moves rows
between two tables and does not move them back (declared with ``[[expect]]``). Through ``command``
migsafe cannot instrument the process, so it observes at the scratch server (its statement log and
a trigger on ``alembic_version``). Both modes must agree: the verdict, the lock findings, and which
statements each revision ran.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from migsafe.config import Settings
from migsafe.plan import Plan
from migsafe.rehearse import rehearse
from migsafe.result import Result
from pgsupport import ROOT, Database, table_fingerprints

from examples.async_tasks import seed

EXAMPLE = ROOT / "examples" / "async_tasks"
RUNS = 3000


@pytest.fixture
def source(make_database: Callable[..., Database]) -> Database:
    db = make_database()
    seed.load(db.conninfo, RUNS)
    return db


def _plan(name: str, db: Database, store: Path) -> Plan:
    data: dict[str, Any] = tomllib.loads((EXAMPLE / name).read_text())
    data["source"] = {"dsn": db.url, "tables": data["source"]["tables"]}
    data["store"] = {"url": f"file://{store}"}
    data["traffic"] = {"enabled": False}
    migration = data["migration"]
    for key in ("command", "downgrade_command"):
        if key in migration:  # the example says `python`; here it is the interpreter running the tests
            migration[key] = [sys.executable if a == "python" else a for a in migration[key]]
    return Plan.from_mapping(data, EXAMPLE)


def _rehearse(plan: Plan, runtime_dir: Path, report_dir: Path) -> Result:
    settings = Settings.from_environ({**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)})
    return rehearse(plan, settings, report_dir=report_dir)


def _migration_statements(result: Result) -> dict[tuple[str, str], list[str]]:
    """Per (phase, revision): the statements that change something, as the migration wrote them."""
    out: dict[tuple[str, str], list[str]] = {}
    for r in result.revision_runs:
        out[(r.phase, r.id)] = [
            " ".join(s.sql.split())
            for s in r.statements
            if not re.match(r"\s*(select|show|with)\b", s.sql, re.I) and "alembic_version" not in s.sql
        ]
    return out


def _lock_findings(result: Result) -> dict[str, tuple[str | None, str | None, bool, bool]]:
    return {
        t.name: (t.upgrade_lock_mode, t.downgrade_lock_mode, t.rewritten, t.rewritten_by_downgrade)
        for t in result.tables
    }


def _revision_locks(result: Result) -> dict[tuple[str, str], dict[str, str]]:
    return {(r.phase, r.id): {lk.relation: lk.mode for lk in r.locks} for r in result.revision_runs}


def test_in_process_and_command_rehearsals_agree(tmp_path: Path, source: Database, runtime_dir: Path) -> None:
    # Given: the example's source at its baseline, and its two plans
    before = table_fingerprints(source, seed.TABLES)
    moved = seed.completed(RUNS)
    # When: rehearsed through alembic in-process, then through the project's own command
    inproc = _rehearse(_plan("plan.toml", source, tmp_path / "store"), runtime_dir, tmp_path / "inproc")
    viacmd = _rehearse(_plan("plan-command.toml", source, tmp_path / "store"), runtime_dir, tmp_path / "cmd")

    # Then: the same verdict, a PASS with the expected move noted (0002's downgrade keeps rows archived)
    assert inproc.verdict == viacmd.verdict == "PASS", (inproc.reasons, viacmd.reasons, viacmd.error)
    for result in (inproc, viacmd):
        runs = next(t for t in result.tables if t.name == "public.flow_runs")
        archive = next(t for t in result.tables if t.name == "public.flow_run_archive")
        assert runs.rows_before is not None and archive.rows_before is not None
        assert (runs.rows_before - runs.rows_after_downgrade, archive.rows_after_downgrade) == (moved, moved)
        assert result.backup is not None and result.backup.restore_tested  # pg_trgm and citext restored
        assert result.revisions.after_upgrade == seed.HEAD
        assert result.revisions.after_downgrade == seed.BASELINE
    # the same lock findings: each table's strongest lock per phase, and its rewrites
    assert _lock_findings(viacmd) == _lock_findings(inproc)
    deployments = _lock_findings(inproc)["public.deployments"]
    assert deployments[:2] == ("AccessExclusiveLock", "AccessExclusiveLock")
    assert _lock_findings(inproc)["public.flow_runs"][0] == "RowExclusiveLock"
    # the same statements attributed to the same revisions, and the same locks taken by each
    statements = _migration_statements(inproc)
    assert set(statements) == {
        ("upgrade", "0002_archive_completed_runs"),
        ("upgrade", "0003_deployment_search"),
        ("downgrade", "0003_deployment_search"),
        ("downgrade", "0002_archive_completed_runs"),
    }
    assert any("gin_trgm_ops" in s for s in statements[("upgrade", "0003_deployment_search")])
    assert _migration_statements(viacmd) == statements
    assert _revision_locks(viacmd) == _revision_locks(inproc)
    # the report says how each was observed, and what that mode cannot see; the source is untouched
    assert inproc.observation is not None and inproc.observation.mode == "in-process"
    assert viacmd.observation is not None and viacmd.observation.mode == "server-log"
    report = (tmp_path / "cmd" / "report.md").read_text()
    assert "server-log" in report and "not observed" in report
    assert table_fingerprints(source, seed.TABLES) == before
