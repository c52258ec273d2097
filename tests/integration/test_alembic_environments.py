"""Migration environments as real projects ship them: async env.py, broken ones, observation that fails.

- migsafe's observation never changes the migration: an async (asyncpg) env.py is observed with its
  locks, and an observer that raises leaves the outcome identical, with a warning in the report;
- an environment that cannot run (env.py raising, a missing driver, no revisions at all) is bad input:
  exit 2 in preflight, naming the plan key, and nothing is backed up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic_projects import ASYNC_ENV_PY, ENV_PY, write_project
from migsafe.config import Settings
from migsafe.plan import Plan
from migsafe.rehearse import rehearse
from pgsupport import CliResult, Database

from examples.enum_uppercase import seed

TABLES = seed.TABLES
ADD_COLUMN = ["ALTER TABLE user_invitations ADD COLUMN note text"]
DROP_COLUMN = ["ALTER TABLE user_invitations DROP COLUMN note"]


@pytest.fixture
def source(make_database: Callable[..., Database]) -> Database:
    db = make_database()
    seed.load(db.conninfo, 300, alembic=True)
    return db


def _plan(tmp_path: Path, db: Database, ini: Path, migration: str = "", extra: str = "") -> Path:
    listed = ", ".join(f'"{t}"' for t in TABLES)
    path = tmp_path / "plan.toml"
    path.write_text(
        f'name = "env-plan"\n[source]\ndsn = "{db.url}"\ntables = [{listed}]\n'
        f'[migration]\nalembic_ini = "{ini}"\n{migration}'
        f'[store]\nurl = "file://{tmp_path / "store"}"\n'
        "[traffic]\nenabled = false\n" + extra
    )
    return path


def _rehearse(plan_file: Path, runtime_dir: Path, report_dir: Path, **env: str):  # type: ignore[no-untyped-def]
    settings = Settings.from_environ({**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir), **env})
    return rehearse(Plan.load(plan_file), settings, report_dir=report_dir)


def _stored(tmp_path: Path) -> list[Path]:
    store = tmp_path / "store"
    return [p for p in store.rglob("*") if p.is_file()] if store.exists() else []


def test_async_env_py_is_rehearsed_with_its_locks(tmp_path: Path, source: Database, runtime_dir: Path) -> None:
    # Given: `alembic init -t async`'s env.py, run with asyncpg (which returns relkind as bytes)
    ini = write_project(tmp_path / "proj", ADD_COLUMN, DROP_COLUMN, env_py=ASYNC_ENV_PY)
    plan = _plan(tmp_path, source, ini, 'sqlalchemy_driver = "postgresql+asyncpg"\n')
    # When
    result = _rehearse(plan, runtime_dir, tmp_path / "report")
    # Then: the migration passed, and migsafe saw it: its locks, statements and revision
    assert result.verdict == "PASS", (result.reasons, result.error)
    inv = next(t for t in result.tables if t.name == "public.user_invitations")
    assert inv.upgrade_lock_mode == "AccessExclusiveLock"
    assert inv.downgrade_lock_mode == "AccessExclusiveLock"
    assert not [w for w in result.warnings if "observation" in w or "capture" in w], result.warnings
    up = next(r for r in result.revision_runs if r.phase == "upgrade")
    assert up.id == "0002_change"
    assert any("ADD COLUMN note" in s.sql for s in up.statements)
    assert any(lk.relation == "public.user_invitations" and lk.mode == "AccessExclusiveLock" for lk in up.locks)


@pytest.mark.parametrize("hook", ["after_cursor_execute", "commit locks", "*"])
def test_a_failing_observer_leaves_the_migration_identical_and_says_so(
    tmp_path: Path, source: Database, runtime_dir: Path, hook: str
) -> None:
    # Given: one migration, rehearsed once as is and once with an observation hook that raises
    ini = write_project(tmp_path / "proj", ADD_COLUMN, DROP_COLUMN, env_py=ASYNC_ENV_PY)
    plan = _plan(tmp_path, source, ini, 'sqlalchemy_driver = "postgresql+asyncpg"\n')
    clean = _rehearse(plan, runtime_dir, tmp_path / "clean")
    # When
    faulty = _rehearse(plan, runtime_dir, tmp_path / "faulty", MIGSAFE_OBSERVER_FAULT=hook)
    # Then: the same outcome, step by step and table by table
    assert faulty.verdict == clean.verdict == "PASS", faulty.reasons
    assert [(s.name, s.ok) for s in faulty.steps] == [(s.name, s.ok) for s in clean.steps]
    for a, b in zip(clean.tables, faulty.tables, strict=True):
        assert (a.rows_after_upgrade, a.fingerprint_after_upgrade, a.fingerprint_after_downgrade) == (
            b.rows_after_upgrade,
            b.fingerprint_after_upgrade,
            b.fingerprint_after_downgrade,
        )
    assert faulty.revisions.after_upgrade == clean.revisions.after_upgrade == "0002_change"
    # and the report says observation failed, where, and that the migration ran on unobserved
    warned = [w for w in faulty.warnings if "observation failed" in w]
    assert [w.split(":")[0] for w in warned] == ["upgrade", "downgrade"], faulty.warnings
    assert all("injected observer fault" in w and "ran on unobserved" in w for w in warned)
    assert not [w for w in clean.warnings if "observation failed" in w]
    assert "observation failed" in (tmp_path / "faulty" / "report.md").read_text()
    assert "observation failed" in json.dumps(json.loads((tmp_path / "faulty" / "result.json").read_text()))


RAISING_ENV_PY = ENV_PY.replace("config = context.config", "raise RuntimeError('env.py needs APP_SETTINGS')")
# a project whose env.py reaches its settings through its AnyIO worker thread (the orchestrator of issue 13)
ANYIO_ENV_PY = ENV_PY.replace(
    "config = context.config",
    "import anyio.from_thread\nanyio.from_thread.run_sync(lambda: None)\nconfig = context.config")


@pytest.mark.parametrize(
    ("env_py", "migration", "key", "says"),
    [
        (RAISING_ENV_PY, "", "migration.alembic_ini", "RuntimeError: env.py needs APP_SETTINGS"),
        (ENV_PY, 'sqlalchemy_driver = "postgresql+psycopg2"\n', "migration.python", "No module named 'psycopg2'"),
        (ANYIO_ENV_PY, "", "migration.alembic_ini", "NoEventLoopError"),
    ],
    ids=["env-py-raises", "missing-driver", "anyio-no-event-loop"],
)
def test_an_environment_that_cannot_run_is_bad_input_and_nothing_is_backed_up(
    tmp_path: Path,
    source: Database,
    migsafe: Callable[..., CliResult],
    env_py: str,
    migration: str,
    key: str,
    says: str,
) -> None:
    # Given
    ini = write_project(tmp_path / "proj", ADD_COLUMN, DROP_COLUMN, env_py=env_py)
    plan = _plan(tmp_path, source, ini, migration)
    # When
    res = migsafe("rehearse", "--plan", str(plan), "--report-dir", str(tmp_path / "report"))
    # Then: exit 2, one line naming the plan key, nothing stored, no report
    assert res.code == 2, res.output
    line = next(x for x in res.output.splitlines() if key in x)
    assert says in line
    assert _stored(tmp_path) == []
    assert not (tmp_path / "report" / "result.json").exists()


def test_a_script_directory_without_revisions_is_bad_input(
    tmp_path: Path, source: Database, migsafe: Callable[..., CliResult]
) -> None:
    # Given: the ini points at a folder without any revision (a wrong script_location)
    ini = write_project(tmp_path / "proj", ADD_COLUMN, DROP_COLUMN)
    for f in (ini.parent / "migrations" / "versions").glob("*.py"):
        f.unlink()
    plan = _plan(tmp_path, source, ini)
    # When
    res = migsafe("rehearse", "--plan", str(plan))
    # Then
    assert res.code == 2, res.output
    assert "migration.alembic_ini" in res.output and "no revisions at all" in res.output
    assert "must name exactly one revision" not in res.output
    assert _stored(tmp_path) == []


@pytest.mark.parametrize(
    ("migration", "says"),
    [
        ("", "give migration.alembic_ini, migration.config_factory or migration.command"),
        ('config_factory = "brokenapp.db:alembic_config"\nbundle = ["proj"]\n',
         "migration.config_factory: alembic finds no usable configuration: KeyError: 'DATABASE_SETTINGS'"),
    ],
    ids=["no-way-to-read-revisions", "factory-raises"],
)
def test_a_migration_config_that_cannot_be_built_is_bad_input(
    tmp_path: Path, source: Database, migsafe: Callable[..., CliResult], migration: str, says: str
) -> None:
    # Given: no alembic.ini next to the plan and none named, or a config factory that raises
    app = tmp_path / "proj" / "brokenapp"
    app.mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "db.py").write_text("import os\n\ndef alembic_config():\n    return os.environ['DATABASE_SETTINGS']\n")
    listed = ", ".join(f'"{t}"' for t in TABLES)
    plan = tmp_path / "plan.toml"
    plan.write_text(
        f'[source]\ndsn = "{source.url}"\ntables = [{listed}]\n[migration]\n{migration}'
        f'[store]\nurl = "file://{tmp_path / "store"}"\n'
    )
    # When
    res = migsafe("rehearse", "--plan", str(plan))
    # Then
    assert res.code == 2, res.output
    assert says in res.output
    assert _stored(tmp_path) == []
