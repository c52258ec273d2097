"""Restores after a migration went wrong: changed enums, partial selections, unusual names."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from backup_helpers import backup_dir, backup_id_from, file_url, load_manifest
from migsafe.backup import run_backup
from migsafe.identifiers import QualifiedName
from migsafe.store import FileStore
from pgsupport import CliResult, Database, table_fingerprints

from examples.enum_uppercase import seed

TABLES = seed.TABLES
Cli = Callable[..., CliResult]


def _backup(migsafe: Cli, tmp_path: Path, db: Database, tables: list[str] | None = None) -> tuple[Path, str]:
    store = tmp_path / "store"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"source": {"dsn": db.url, "tables": tables or TABLES},
                                "store": {"url": file_url(store)}}))
    result = migsafe("backup", "--plan", str(plan))
    assert result.code == 0, result.output
    return store, backup_id_from(result.stdout)


def _restore(migsafe: Cli, store: Path, backup_id: str, target: Database, *args: str) -> CliResult:
    return migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url, *args)


def _upper_case_the_enum(db: Database) -> None:
    """What the seed's migration does: rename the applicationtype labels to upper case."""
    with db.connect() as conn:
        for label in ("market_edge", "causal_edge", "value_edge"):
            conn.execute(f"alter type applicationtype rename value '{label}' to '{label.upper()}'")


def test_replace_restores_an_enum_whose_labels_a_migration_changed(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup, and a target restored from it whose enum was then upper-cased
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = make_database()
    assert _restore(migsafe, store, backup_id, target).code == 0
    _upper_case_the_enum(target)

    # When it is restored without --replace, with --replace, and with --replace --restore-schema
    refused = _restore(migsafe, store, backup_id, target)
    migrated = _restore(migsafe, store, backup_id, target, "--replace")
    replaced = _restore(migsafe, store, backup_id, target, "--replace", "--restore-schema")

    # Then the first two are refused (the second saying the downgrade must run first), and the
    # third brings back the lower-case labels and the rows
    assert refused.code == 2, refused.output
    assert "public.applicationtype" in refused.output
    assert migrated.code == 2, migrated.output
    assert "public.applicationtype" in migrated.output and "downgrade first" in migrated.output
    assert replaced.code == 0, replaced.output
    assert target.scalar("select enum_range(null::applicationtype)::text") == "{market_edge,causal_edge,value_edge}"
    assert table_fingerprints(target, TABLES) == table_fingerprints(seeded, TABLES)


def test_undo_brings_back_the_migrated_enum_with_its_tables(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a target whose enum was upper-cased, replaced from the backup with its schema
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = make_database()
    assert _restore(migsafe, store, backup_id, target).code == 0
    _upper_case_the_enum(target)
    migrated = table_fingerprints(target, TABLES)
    replaced = _restore(migsafe, store, backup_id, target, "--replace", "--restore-schema", "--json")
    assert replaced.code == 0, replaced.output

    # When that restore is undone
    undone = migsafe("restore", "--target-dsn", target.url, "--undo", json.loads(replaced.stdout)["restore_id"])

    # Then the upper-case enum and the migrated rows are back
    assert undone.code == 0, undone.output
    assert target.scalar("select enum_range(null::applicationtype)::text") == "{MARKET_EDGE,CAUSAL_EDGE,VALUE_EDGE}"
    assert table_fingerprints(target, TABLES) == migrated


def test_an_enum_used_outside_the_restored_tables_is_never_dropped(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup of the access table, and a target whose changed enum another table also uses
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = make_database()
    assert _restore(migsafe, store, backup_id, target).code == 0
    _upper_case_the_enum(target)
    before = table_fingerprints(target, TABLES)

    # When only user_application_access is restored with --replace
    result = _restore(migsafe, store, backup_id, target, "--replace", "--tables", "public.user_application_access")

    # Then it is refused, naming the other user of the type, and nothing changed
    assert result.code == 2, result.output
    assert "public.user_invitations" in result.output
    assert table_fingerprints(target, TABLES) == before


def test_replacing_a_referenced_table_keeps_the_foreign_keys_that_point_at_it(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a target restored from a backup, whose users were then edited
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = make_database()
    assert _restore(migsafe, store, backup_id, target).code == 0
    with target.connect() as conn:
        conn.execute("update users set full_name = upper(full_name) where id % 2 = 0")

    # When only users is restored with --replace
    result = _restore(migsafe, store, backup_id, target, "--replace", "--tables", "public.users")

    # Then users is back, and the foreign keys of the other tables still point at it, valid
    assert result.code == 0, result.output
    assert table_fingerprints(target, TABLES) == table_fingerprints(seeded, TABLES)
    fks = target.scalar(
        "select count(*) from pg_constraint where contype = 'f' and convalidated and confrelid = 'public.users'::regclass"
    )
    assert fks == 3  # user_id and granted_by of the access table, invited_by of the invitations
    with target.connect() as conn:
        conn.execute("delete from users where id = 500")  # ON DELETE CASCADE still works
    assert target.scalar("select count(*) from user_application_access where user_id = 500") == 0


def test_tables_with_unusual_names_in_another_schema_round_trip(
    make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given tables whose names need quoting, two of which differ only in punctuation and case
    source = make_database()
    with source.connect() as conn:
        conn.execute('create schema "Sales Data"')
        conn.execute('create type "Sales Data"."Mood" as enum (\'happy\', \'sad\')')
        conn.execute('create table "Sales Data"."Order Items" (id int primary key, mood "Sales Data"."Mood")')
        conn.execute('create table "Sales Data"."Order_Items" (id int primary key, note text)')
        conn.execute('create table "Sales Data"."order items" (id int primary key)')
        conn.execute('insert into "Sales Data"."Order Items" select g, (array[\'happy\', \'sad\'])[1 + g % 2]::'
                     '"Sales Data"."Mood" from generate_series(1, 50) g')
        conn.execute('insert into "Sales Data"."Order_Items" select g, \'n\' || g from generate_series(1, 70) g')
        conn.execute('insert into "Sales Data"."order items" select generate_series(1, 90)')
    tables = ['"Sales Data"."Order Items"', '"Sales Data"."Order_Items"', '"Sales Data"."order items"']
    names = ["Sales Data.Order Items", "Sales Data.Order_Items", "Sales Data.order items"]
    # (in-process: the plan file cannot name such tables yet, see the report)
    store = tmp_path / "store"
    backup_id = run_backup(source.dsn, FileStore(store), [QualifiedName.parse(t) for t in tables]).backup_id
    target = make_database()
    one = make_database()

    # When it is verified and restored into an empty database, and one table (named as a user would) into another
    verified = migsafe("verify", "--store", file_url(store), "--backup-id", backup_id)
    restored = _restore(migsafe, store, backup_id, target)
    single = _restore(migsafe, store, backup_id, one, "--tables", '"Sales Data"."Order_Items"')

    # Then every table has its own object and comes back whole
    manifest = load_manifest(store, backup_id)
    keys = [t["key"] for t in manifest["tables"]]
    assert len(set(keys)) == 3, keys
    assert all((backup_dir(store, backup_id) / k).is_file() for k in keys)
    assert verified.code == 0, verified.output
    assert restored.code == 0, restored.output
    quoted = [f'"Sales Data".{t.split(".", 1)[1]}' for t in tables]
    assert [t["name"] for t in manifest["tables"]] == names
    counts = {q: target.scalar(f"select count(*) from {q}") for q in quoted}
    assert list(counts.values()) == [50, 70, 90]
    assert single.code == 0, single.output
    assert one.scalar('select count(*) from "Sales Data"."Order_Items"') == 70
    assert one.scalar("""select count(*) from pg_tables where schemaname = 'Sales Data'""") == 1



def test_a_migrated_target_is_refused_until_downgraded_or_told_to_restore_the_schema(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup taken at revision "base", and a target restored from it and then migrated:
    # a column added, alembic_version moved on
    with seeded.connect() as conn:
        conn.execute("create table alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into alembic_version values ('base')")
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = make_database()
    assert _restore(migsafe, store, backup_id, target).code == 0
    with target.connect() as conn:
        conn.execute("create table alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into alembic_version values ('head')")
        conn.execute("alter table users add column nickname text")
        conn.execute("update users set full_name = 'x'")
    before = table_fingerprints(target, TABLES)

    # When it is restored with --replace, then with --restore-schema too
    refused = _restore(migsafe, store, backup_id, target, "--replace", "--tables", "public.users")
    after_refusal = table_fingerprints(target, TABLES)
    forced = _restore(migsafe, store, backup_id, target, "--replace", "--tables", "public.users", "--restore-schema")

    # Then the first is refused naming the drift and the downgrade, changing nothing
    assert refused.code == 2, refused.output
    assert "nickname text" in refused.output
    assert "alembic revision head" in refused.output and "alembic downgrade base" in refused.output
    assert after_refusal == before
    # and the second restores the backup's table, schema included, and says to stamp the revision
    assert forced.code == 0, forced.output
    assert "alembic stamp base" in forced.output
    assert table_fingerprints(target, ["public.users"]) == table_fingerprints(seeded, ["public.users"])
    assert before["public.users"] != table_fingerprints(target, ["public.users"])["public.users"]
