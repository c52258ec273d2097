"""Per-revision accounting on a real alembic history: mlflow's, 8 revisions up to head and back.

The data is logged with MlflowClient (mlflow's own code creates the schema at head), then the source is
taken 8 revisions down with alembic, and the rehearsal goes up to head and back down again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from migsafe.config import Settings
from migsafe.plan import Plan
from migsafe.rehearse import rehearse
from pgsupport import Database

pytestmark = pytest.mark.slow

TABLES = ["experiments", "experiment_tags", "runs", "params", "metrics", "tags", "jobs"]
STEPS = 8


def _script_location() -> Path:
    import mlflow.store.db_migrations as migrations

    return Path(migrations.__file__).parent


def _alembic_config(ini: Path, url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config(str(ini))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


@pytest.fixture
def mlflow_source(tmp_path: Path, make_database: Callable[..., Database]) -> tuple[Database, Path, list[str]]:
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow import MlflowClient

    db = make_database()
    url = db.url.replace("postgresql://", "postgresql+psycopg://", 1)
    client = MlflowClient(tracking_uri=url)  # mlflow migrates the empty database to head itself
    exp = client.create_experiment("migsafe-chain", tags={"team": "ml"})
    for i in range(3):
        run = client.create_run(exp, tags={"attempt": str(i)})
        client.log_param(run.info.run_id, "alpha", str(0.1 * i))
        for step in range(20):
            client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1 + i), step=step)
        client.set_terminated(run.info.run_id)
    ini = tmp_path / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {_script_location()}\n")
    cfg = _alembic_config(ini, url)
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    assert head is not None
    path = [r.revision for r in script.iterate_revisions(head, "base")][: STEPS + 1]  # newest first
    command.downgrade(cfg, path[STEPS])
    return db, ini, list(reversed(path))


def test_mlflow_chain_is_accounted_per_revision(
    tmp_path: Path, mlflow_source: tuple[Database, Path, list[str]], runtime_dir: Path
) -> None:
    # Given: the source 8 revisions below mlflow's head, with runs, params and metrics in it
    db, ini, chain = mlflow_source
    start, applied = chain[0], chain[1:]
    assert db.scalar("select version_num from alembic_version") == start
    assert db.scalar("select count(*) from metrics") == 60
    listed = ", ".join(f'"{t}"' for t in TABLES)
    plan = tmp_path / "plan.toml"
    plan.write_text(
        f'name = "mlflow"\n[source]\ndsn = "{db.url}"\ntables = [{listed}]\n'
        f'[migration]\nalembic_ini = "{ini}"\nupgrade_to = "head"\ndowngrade_to = "-{STEPS}"\n'
        f'[store]\nurl = "file://{tmp_path / "store"}"\n'
        "[traffic]\nclients = 2\nrate = 20\nbaseline_seconds = 1\n"
    )
    settings = Settings.from_environ({**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)})
    # When
    result = rehearse(Plan.load(plan), settings, report_dir=tmp_path / "report")
    # Then: one entry per revision and phase, in the order alembic ran them
    ups = [r for r in result.revision_runs if r.phase == "upgrade"]
    downs = [r for r in result.revision_runs if r.phase == "downgrade"]
    assert [r.id for r in ups] == applied, result.reasons
    assert [r.id for r in downs] == list(reversed(applied))
    for r in ups + downs:
        assert r.seconds >= 0
        assert r.statement_count == len(r.statements) or r.statement_count > 200
    # the statements are attributed to their revision: each DDL revision ran some
    assert sum(r.statement_count for r in ups) > STEPS
    # per-revision time adds up to at most the phase's time
    upgrade = result.step("upgrade")
    assert upgrade is not None and sum(r.seconds for r in ups) <= upgrade.seconds
    # locks and lint land on the revision that caused them
    assert any(r.locks for r in ups)
    assert all(f.revision in applied for f in result.lint)
    # and the reports show the per-revision table
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Revisions" in md
    for rev in applied:
        assert rev in md
    assert result.revisions.after_upgrade == applied[-1]
    assert result.revisions.after_downgrade == start
