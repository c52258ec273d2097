"""Issue 9, item 4: two tables whose names join to the same text get distinct objects and verify."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backup_helpers import backup_dir, backup_id_from, file_url, load_manifest
from pgsupport import CliResult, Database


def test_dotted_names_back_up_to_distinct_objects_that_verify(
    make_database: Callable[..., Database], migsafe: Callable[..., CliResult], tmp_path: Path
) -> None:
    # Given "s.x".t and s."x.t" (both were stored as s.x.t.dump.zst: verify failed on a "complete" backup)
    db = make_database()
    with db.connect() as conn:
        conn.execute('create schema "s.x"; create schema s')
        conn.execute('create table "s.x".t (id int primary key); insert into "s.x".t select generate_series(1, 30)')
        conn.execute('create table s."x.t" (id int primary key); insert into s."x.t" select generate_series(1, 7)')
    store = tmp_path / "store"
    plan = tmp_path / "plan.toml"
    plan.write_text(f"[source]\ndsn = \"{db.url}\"\ntables = ['\"s.x\".t', 's.\"x.t\"']\n\n"
                    f"[store]\nurl = \"{file_url(store)}\"\n")
    # When
    backed = migsafe("backup", "--plan", str(plan))
    # Then: two objects, each with its own rows, and verify passes
    assert backed.code == 0, backed.output
    backup_id = backup_id_from(backed.stdout)
    manifest = load_manifest(store, backup_id)
    objects = sorted((t["key"], t["rows"]) for t in manifest["tables"])
    assert objects == [("s%2Ex.t.dump.zst", 30), ("s.x%2Et.dump.zst", 7)]
    assert sorted(p.name for p in backup_dir(store, backup_id).iterdir() if p.name.endswith(".zst")) == [
        "s%2Ex.t.dump.zst", "s.x%2Et.dump.zst"]
    verified = migsafe("verify", "--store", file_url(store), "--backup-id", backup_id)
    assert verified.code == 0, verified.output


def test_a_table_listed_twice_is_refused_with_exit_2_and_nothing_written(
    make_database: Callable[..., Database], migsafe: Callable[..., CliResult], tmp_path: Path
) -> None:
    # Given a plan naming one table twice, once quoted (the same object key)
    db = make_database()
    with db.connect() as conn:
        conn.execute("create table t (id int primary key)")
    store = tmp_path / "store"
    store.mkdir()
    plan = tmp_path / "plan.toml"
    plan.write_text(f"[source]\ndsn = \"{db.url}\"\ntables = ['public.t', '\"public\".\"t\"']\n\n"
                    f"[store]\nurl = \"{file_url(store)}\"\n")
    # When
    result = migsafe("backup", "--plan", str(plan))
    # Then
    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    assert list(store.rglob("*")) == []
