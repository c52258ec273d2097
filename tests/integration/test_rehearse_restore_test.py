"""A rehearsal's restore test that cannot restore the *backup* is a FAIL (exit 1) naming what is missing.

Only an unreachable server or store is an environment fault (exit 3).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic_projects import write_project
from backup_helpers import backup_id_from
from migsafe import inventory
from pgsupport import CliResult, Database

from examples.enum_uppercase import seed

Cli = Callable[..., CliResult]


@pytest.fixture
def source(make_database: Callable[..., Database]) -> Database:
    db = make_database()
    seed.load(db.conninfo, 200, alembic=True)
    return db


def _plan(tmp_path: Path, db: Database, tables: list[str]) -> Path:
    ini = write_project(
        tmp_path / "proj",
        upgrade=["ALTER TABLE users ADD COLUMN x int"],
        downgrade=["ALTER TABLE users DROP COLUMN x"],
    )
    listed = ", ".join(f'"{t}"' for t in tables)
    path = tmp_path / "plan.toml"
    path.write_text(
        f'name = "restore-test"\n[source]\ndsn = "{db.url}"\ntables = [{listed}]\n'
        f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n'
        f'[store]\nurl = "file://{tmp_path / "store"}"\n[traffic]\nenabled = false\n'
    )
    return path


def _as_written_before_extensions(store: Path, backup_id: str) -> None:
    """Rewrite a backup's manifest as a migsafe that did not record extensions wrote it (and reseal it)."""
    manifest = next(store.rglob(f"{backup_id}/manifest.json"))
    data = json.loads(manifest.read_text())
    assert [e["name"] for e in data.pop("extensions")] == ["citext"]
    body = json.dumps(data, indent=2).encode()
    manifest.write_bytes(body)
    (manifest.parent / inventory.MANIFEST_SUM).write_bytes(inventory._seal(body))


def test_a_foreign_key_target_missing_from_the_backup_fails_the_restore_test(
    tmp_path: Path, source: Database, migsafe: Cli
) -> None:
    # Given: the plan backs up invitations, which reference users by foreign key, but not users
    plan = _plan(tmp_path, source, ["public.user_invitations"])
    # When
    res = migsafe("rehearse", "--plan", str(plan), "--report-dir", str(tmp_path / "r"))
    # Then: FAIL, naming the table the backup lacks; the migration never ran
    assert res.code == 1, res.output
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["verdict"] == "FAIL" and result["failed_step"] == "restore_test"
    assert "public.users" in result["error"] and "foreign key" in result["error"]
    assert "the backup cannot be restored" in result["error"]
    assert result["revisions"]["after_upgrade"] is None


def test_an_extension_the_restore_test_cannot_have_fails_the_restore_test(
    tmp_path: Path, source: Database, migsafe: Cli
) -> None:
    # Given: users has a citext column; the backup's manifest does not list the extension (as
    # manifests written before extensions were recorded), so the restore test's server lacks it
    with source.connect() as conn:
        conn.execute("create extension citext; alter table users add column nick citext")
    plan = _plan(tmp_path, source, seed.TABLES)
    backed = migsafe("backup", "--plan", str(plan))
    assert backed.code == 0, backed.output
    backup_id = backup_id_from(backed.stdout)
    _as_written_before_extensions(tmp_path / "store", backup_id)
    # When
    res = migsafe("rehearse", "--plan", str(plan), "--backup-id", backup_id, "--report-dir", str(tmp_path / "r"))
    # Then: FAIL (1), not an environment fault (3), naming the missing type
    assert res.code == 1, res.output
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["verdict"] == "FAIL" and result["failed_step"] == "restore_test"
    assert 'type "public.citext" does not exist' in result["error"], result["error"]
    assert "an extension the tables need?" in result["error"]
    assert result["revisions"]["after_upgrade"] is None

