"""Restore through staging: parallel load, a short swap, undo, and what the swap carries over."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from backup_helpers import backup_dir, backup_id_from, file_url
from migsafe.backup import run_backup
from migsafe.exceptions import RestoreRefused
from migsafe.identifiers import QualifiedName
from migsafe.restore import RestoreOptions, run_restore
from migsafe.store import FileStore
from pgsupport import CliResult, Database, table_fingerprints, write_plan

from examples.enum_uppercase import seed

TABLES = seed.TABLES
Cli = Callable[..., CliResult]

# what the target has around the restored tables: a trigger function, a reader role, a view,
# a table outside the backup whose foreign key points at users
AROUND = """
do $$ begin create role migsafe_reader; exception when duplicate_object then null; end $$;
create or replace function public.stamp_full_name() returns trigger language plpgsql as
  $f$ begin new.full_name := trim(new.full_name); return new; end $f$;
"""
DECORATE = """
grant select on users to migsafe_reader;
create trigger trim_full_name before insert or update on users for each row execute function public.stamp_full_name();
alter table user_invitations enable row level security;
create policy invitations_visible on user_invitations using (status <> 'revoked');
"""


def _staging_schemas(db: Database) -> list[str]:
    with db.connect() as conn:
        rows = conn.execute(
            "select nspname from pg_namespace where nspname like 'migsafe\\_%' order by 1").fetchall()
    return [r[0] for r in rows]


def _backup(migsafe: Cli, tmp_path: Path, db: Database, tables: list[str] | None = None) -> tuple[Path, str]:
    store = tmp_path / "store"
    plan = write_plan(tmp_path / "plan.toml", db, file_url(store), tables)
    result = migsafe("backup", "--plan", str(plan))
    assert result.code == 0, result.output
    return store, backup_id_from(result.stdout)


def _restore(migsafe: Cli, store: Path, backup_id: str, target: Database, *args: str) -> CliResult:
    return migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url,
                   *args)


@pytest.fixture
def decorated(make_database: Callable[..., Database]) -> Database:
    """The seed with grants, a trigger and a row-security policy on the tables it backs up."""
    db = make_database(users=2000)
    with db.connect() as conn:
        conn.execute(AROUND.encode())
        conn.execute(DECORATE.encode())
    return db


def _live_target(make_database: Callable[..., Database], migsafe: Cli, store: Path, backup_id: str) -> Database:
    """A target restored from the backup, then lived in: a view, an outside FK, edited rows, ids used."""
    target = make_database()
    with target.connect() as conn:
        conn.execute(AROUND.encode())
    first = _restore(migsafe, store, backup_id, target)
    assert first.code == 0, first.output
    with target.connect() as conn:
        conn.execute("create view active_users as select id, email from users where role <> 'viewer'")
        conn.execute("create table audit (id bigint generated always as identity primary key, "
                     "user_id bigint not null references users (id))")
        conn.execute("insert into audit (user_id) select id from users where id % 100 = 0")
        conn.execute("update users set full_name = 'changed ' || id where id % 3 = 0")
        conn.execute("insert into users (email, full_name) select 'new' || g || '@x', 'n' from generate_series(1, 5) g")
    return target


def test_replace_swaps_in_staged_tables_and_carries_everything_over(
    decorated: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup of the decorated seed, and a target restored from it that was then lived in
    store, backup_id = _backup(migsafe, tmp_path, decorated)
    target = _live_target(make_database, migsafe, store, backup_id)
    next_id_before = target.scalar("select last_value from users_id_seq")

    # When it is restored with --replace, on 2 parallel sessions
    result = _restore(migsafe, store, backup_id, target, "--replace", "--jobs", "2", "--json")

    # Then every table holds the backup's rows, with the manifest's fingerprints
    assert result.code == 0, result.output
    report = json.loads(result.stdout)
    assert table_fingerprints(target, TABLES) == table_fingerprints(decorated, TABLES)
    manifest = json.loads((backup_dir(store, backup_id) / "manifest.json").read_text())
    assert [t["fingerprint"] for t in manifest["tables"]] == [
        table_fingerprints(decorated, TABLES)[t][1] for t in TABLES]
    # and the report names the restore, its undo schema and a lock window shorter than the restore
    assert sorted(report["replaced"]) == sorted(TABLES)
    assert report["undo_schema"] == f"migsafe_undo_{report['restore_id']}"
    assert 0 < report["lock_window_seconds"] < report["seconds"]
    # and the view reads the new table, the outside foreign key points at it and is valid
    assert target.scalar("select count(*) from active_users") == decorated.scalar(
        "select count(*) from users where role <> 'viewer'")
    assert target.scalar("select count(*) from pg_constraint where conname = 'audit_user_id_fkey' and convalidated "
                         "and confrelid = 'public.users'::regclass") == 1
    # and the sequence never goes back: the next id is past every id used before
    assert target.scalar("select nextval('users_id_seq')") > next_id_before
    # and grants, trigger and row security came along
    assert target.scalar("select has_table_privilege('migsafe_reader', 'public.users', 'select')") is True
    assert target.scalar("select count(*) from pg_trigger where tgname = 'trim_full_name' "
                         "and tgrelid = 'public.users'::regclass") == 1
    assert target.scalar("select relrowsecurity from pg_class where oid = 'public.user_invitations'::regclass")
    assert target.scalar("select count(*) from pg_policy where polname = 'invitations_visible' "
                         "and polrelid = 'public.user_invitations'::regclass") == 1
    # and the old tables wait in the undo schema; no staging is left
    assert _staging_schemas(target) == [report["undo_schema"]]
    assert target.scalar(f"select count(*) from {report['undo_schema']}.users") == 2005


def test_undo_puts_the_previous_contents_back_exactly(
    decorated: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a lived-in target, replaced from the backup
    store, backup_id = _backup(migsafe, tmp_path, decorated)
    target = _live_target(make_database, migsafe, store, backup_id)
    before = table_fingerprints(target, [*TABLES, "public.audit"])
    replaced = _restore(migsafe, store, backup_id, target, "--replace", "--json")
    assert replaced.code == 0, replaced.output
    restore_id = json.loads(replaced.stdout)["restore_id"]
    assert table_fingerprints(target, TABLES) != {t: before[t] for t in TABLES}

    # When the restore is undone
    undone = migsafe("restore", "--target-dsn", target.url, "--undo", restore_id, "--json")

    # Then the tables are exactly as before, the view and the outside FK work on them
    assert undone.code == 0, undone.output
    assert table_fingerprints(target, [*TABLES, "public.audit"]) == before
    assert target.scalar("select count(*) from pg_constraint where conname = 'audit_user_id_fkey' and convalidated "
                         "and confrelid = 'public.users'::regclass") == 1
    assert target.scalar("select count(*) from active_users") == target.scalar(
        "select count(*) from users where role <> 'viewer'")
    # and the first undo schema is gone; the restored tables wait in the undo's own
    redo = json.loads(undone.stdout)
    assert _staging_schemas(target) == [redo["undo_schema"]]
    # and an unknown restore id is refused as bad input
    unknown = migsafe("restore", "--target-dsn", target.url, "--undo", "20200101000000_abcdef")
    assert unknown.code == 2, unknown.output
    assert "nothing to undo" in unknown.output


def test_a_flipped_byte_swaps_nothing_into_a_populated_target(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup with one byte of one dump flipped, and a populated target
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = make_database(users=30)
    before = table_fingerprints(target, TABLES)
    dump = backup_dir(store, backup_id) / "public.user_invitations.dump.zst"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))

    # When it is restored with --replace
    result = _restore(migsafe, store, backup_id, target, "--replace")

    # Then it fails as a verification failure, and the target is unchanged, no staging left
    assert result.code == 1, result.output
    assert "checksum mismatch" in result.output
    assert table_fingerprints(target, TABLES) == before
    assert _staging_schemas(target) == []


def test_a_foreign_key_failing_in_staging_exits_1_and_changes_nothing(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a target whose users lost rows that the backup's access rows reference
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = make_database()
    assert _restore(migsafe, store, backup_id, target).code == 0
    with target.connect() as conn:
        conn.execute("delete from users where id > 1500")
    before = table_fingerprints(target, TABLES)

    # When only the access table is restored with --replace
    result = _restore(migsafe, store, backup_id, target, "--replace", "--tables", "public.user_application_access")

    # Then the foreign key check fails: exit 1 (verification), target unchanged
    assert result.code == 1, result.output
    assert "foreign key" in result.output
    assert table_fingerprints(target, TABLES) == before
    assert _staging_schemas(target) == []


def test_rows_written_while_staging_loads_are_never_lost_without_replace(
    seeded: Database, make_database: Callable[..., Database], tmp_path: Path
) -> None:
    # Given a target whose users table exists but is empty (so no --replace is needed at first)
    store = FileStore(tmp_path / "store")
    backup = run_backup(seeded.dsn, store, [QualifiedName.parse("public.users")])
    target = make_database()
    with target.connect() as conn:
        conn.execute("create table users (id bigint primary key, email text not null, full_name text not null, "
                     "role text not null, created_at timestamptz not null)")

    def write_a_row(event: str, table: str, data: dict[str, object]) -> None:
        if event == "verified":  # staging loaded, before the swap
            with target.connect() as conn:
                conn.execute("insert into users values (1, 'late@x', 'late', 'viewer', now())")

    # When it is restored without --replace while a row arrives
    with pytest.raises(RestoreRefused, match="already holds data"):
        run_restore(store, backup.backup_id, target.dsn, RestoreOptions(), progress=write_a_row)

    # Then the row written meanwhile is still there, alone, and no staging is left
    assert target.scalar("select string_agg(email, ',') from users") == "late@x"
    assert _staging_schemas(target) == []


def test_a_schema_named_with_a_dot_restores(make_database: Callable[..., Database], tmp_path: Path) -> None:
    # Given tables in the schema "a.b", one referencing the other
    source = make_database()
    with source.connect() as conn:
        conn.execute('create schema "a.b"')
        conn.execute('create table "a.b"."Parent Table" (id int primary key, note text)')
        conn.execute('create table "a.b".child (id serial primary key, parent int references "a.b"."Parent Table")')
        conn.execute('insert into "a.b"."Parent Table" select g, \'n\' || g from generate_series(1, 40) g')
        conn.execute('insert into "a.b".child (parent) select 1 + g % 40 from generate_series(1, 60) g')
    names = ['"a.b"."Parent Table"', '"a.b".child']
    store = FileStore(tmp_path / "store")
    backup = run_backup(source.dsn, store, [QualifiedName.parse(n) for n in names])
    target = make_database()

    # When it is restored into an empty database, then again with --replace
    first = run_restore(store, backup.backup_id, target.dsn, RestoreOptions())
    again = run_restore(store, backup.backup_id, target.dsn, RestoreOptions(replace=True, tables=['"a.b".child']))

    # Then both are whole, and nothing of staging is left
    assert first.ok and again.ok
    assert first.lock_window_seconds == 0.0  # an empty database: nothing was locked
    assert again.replaced == ["a.b.child"]
    assert target.scalar('select count(*) from "a.b"."Parent Table"') == 40
    assert target.scalar('select count(*) from "a.b".child') == 60
    assert [s for s in _staging_schemas(target) if s.startswith("migsafe_staging_")] == []


def _big(make_database: Callable[..., Database], rows: int = 300_000) -> Database:
    db = make_database(users=100)
    with db.connect() as conn:
        conn.execute(f"create table big (id bigint primary key, payload text not null, n int not null); "
                     f"insert into big select g, md5(g::text) || md5((g * 7)::text), g % 1000 "
                     f"from generate_series(1, {rows}) g; create index big_n on big (n); "
                     "create index big_payload on big (payload)".encode())
    return db


def test_a_concurrent_reader_waits_no_longer_than_the_reported_lock_window(
    make_database: Callable[..., Database], tmp_path: Path
) -> None:
    # Given a backup of a large table, and a target that holds it (with other rows)
    source = _big(make_database)
    store = FileStore(tmp_path / "store")
    backup = run_backup(source.dsn, store, [QualifiedName.parse("big")])
    target = _big(make_database, rows=1000)
    waits: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        # the wait is measured by the server (statement start to the row, locks included), so the
        # client's own scheduling on a loaded machine does not count as being blocked
        with psycopg.connect(target.conninfo, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute("select extract(epoch from clock_timestamp() - statement_timestamp()) "
                                   "from big where id = 7").fetchone()
                if row is not None:
                    waits.append(float(row[0]))
                time.sleep(0.002)

    thread = threading.Thread(target=reader)
    thread.start()

    # When it is restored with --replace while the reader keeps reading
    try:
        report = run_restore(store, backup.backup_id, target.dsn, RestoreOptions(replace=True, jobs=2))
    finally:
        stop.set()
        thread.join()

    # Then the reader was never held longer than the lock window the restore reports (plus one
    # query), and that window is a small fraction of the restore
    assert report.ok and report.replaced == ["public.big"]
    assert target.scalar("select count(*) from big") == 300_000
    typical = sorted(waits)[len(waits) // 2]  # a typical unblocked query, as the allowance
    # (a one-transaction restore held the reader for most of the restore: seconds, not this)
    assert max(waits) <= report.lock_window_seconds + 10 * typical + 0.25
    assert report.lock_window_seconds < 0.2 * report.seconds
    assert len(waits) > 10



def _activity(db: Database, query: str) -> int:
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        row = conn.execute(query, (db.name,)).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("point", ["loading", "building", "swapping"])
def test_a_restore_killed_at_any_point_leaves_the_target_whole_and_its_staging_is_swept(
    point: str, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path, runtime_dir: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from pgsupport import ROOT

    # Given a backup of a large table, and a target that holds other rows of it
    source = _big(make_database)
    store = tmp_path / "store"
    backup = run_backup(source.dsn, FileStore(store), [QualifiedName.parse("big")])
    target = _big(make_database, rows=1000)
    before = table_fingerprints(target, ["public.big"])
    blocker = psycopg.connect(target.conninfo)
    if point == "swapping":  # a reader in a long transaction: the swap waits for its lock
        blocker.execute("select count(*) from big").fetchone()
    proc = subprocess.Popen(
        [sys.executable, "-m", "migsafe", "restore", "--store", file_url(store), "--backup-id", backup.backup_id,
         "--target-dsn", target.url, "--replace", "--jobs", "2"],
        cwd=ROOT, env={**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    reached = {
        "loading": "select count(*) from pg_stat_activity where datname = %s and starts_with(query, 'COPY ')",
        "building": "select count(*) from pg_stat_activity where datname = %s and application_name = "
                    "'migsafe restore staging' and (query ilike 'create%%index%%' or query ilike 'alter table%%')",
        "swapping": "select count(*) from pg_stat_activity where datname = %s and application_name = "
                    "'migsafe restore' and wait_event_type = 'Lock'",
    }[point]
    try:
        deadline = time.monotonic() + 120
        while not _activity(target, reached):
            assert proc.poll() is None, f"the restore ended before reaching {point}"
            assert time.monotonic() < deadline, f"the restore never reached {point}"
            time.sleep(0.002)

        # When its whole process group is killed there
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        blocker.close()

    # Then the target is unchanged (every kill point is before the swap's COMMIT)
    assert table_fingerprints(target, ["public.big"]) == before
    assert [s for s in _staging_schemas(target) if s.startswith("migsafe_staging_")]
    # and the leftover staging is removed by prune (or by the next restore)
    deadline = time.monotonic() + 60
    while _activity(target, "select count(*) from pg_stat_activity where datname = %s and "
                            "starts_with(application_name, 'migsafe restore')"):
        assert time.monotonic() < deadline, "sessions of the killed restore lingered"
        time.sleep(0.05)
    if point == "building":
        again = _restore(migsafe, store, backup.backup_id, target, "--replace", "--json")
        assert again.code == 0, again.output
        assert table_fingerprints(target, ["public.big"]) == table_fingerprints(source, ["public.big"])
        assert _staging_schemas(target) == [json.loads(again.stdout)["undo_schema"]]
    else:
        pruned = migsafe("prune", "--target-dsn", target.url)
        assert pruned.code == 0, pruned.output
        assert "migsafe_staging_" in pruned.stdout
        assert _staging_schemas(target) == []


def test_fingerprints_do_not_depend_on_the_clients_time_zone(
    make_database: Callable[..., Database], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a table of timestamps, backed up by a client in Tokyo
    source = make_database()
    with source.connect() as conn:
        conn.execute("create table events (id int primary key, at timestamptz not null, span interval)")
        conn.execute("insert into events select g, timestamptz '2026-01-01 00:00+00' + g * interval '37 minutes', "
                     "g * interval '1 hour' from generate_series(1, 200) g")
    store = FileStore(tmp_path / "store")
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    monkeypatch.setenv("PGDATESTYLE", "German")
    backup = run_backup(source.dsn, store, [QualifiedName.parse("events")])
    target = make_database()

    # When it is restored by a client in UTC
    monkeypatch.setenv("PGTZ", "UTC")
    monkeypatch.delenv("PGDATESTYLE")
    report = run_restore(store, backup.backup_id, target.dsn, RestoreOptions())

    # Then the fingerprints taken by either compare equal
    assert report.ok, report.problems()
    assert target.scalar("select count(*) from events") == 200


def test_prune_drops_undo_schemas_older_than_keep_undo_only(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a target whose tables were replaced (their old version waits in an undo schema)
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = make_database(users=30)
    replaced = _restore(migsafe, store, backup_id, target, "--replace", "--json")
    assert replaced.code == 0, replaced.output
    report = json.loads(replaced.stdout)

    # When the database is pruned keeping 7 days of undo, then keeping none
    kept = migsafe("prune", "--target-dsn", target.url)
    dropped = migsafe("prune", "--target-dsn", target.url, "--keep-undo", "0s")
    undo = migsafe("restore", "--target-dsn", target.url, "--undo", report["restore_id"])

    # Then the young undo schema survives the first, not the second, and can no longer be undone
    assert kept.code == 0 and dropped.code == 0, kept.output + dropped.output
    assert report["undo_schema"] not in kept.stdout
    assert f"dropped schema {report['undo_schema']}" in dropped.stdout
    assert _staging_schemas(target) == []
    assert undo.code == 2, undo.output
    assert table_fingerprints(target, TABLES) == table_fingerprints(seeded, TABLES)


def test_types_a_failed_restore_created_are_dropped_again(
    make_database: Callable[..., Database], tmp_path: Path
) -> None:
    # Given a backup of a table using a domain and a range type, with one byte of its dump flipped
    source = make_database()
    with source.connect() as conn:
        conn.execute("create schema billing; create domain billing.amount as numeric(12, 2) check (value >= 0); "
                     "create type billing.span as range (subtype = int4); "
                     "create table billing.invoices (id int primary key, total billing.amount, valid billing.span); "
                     "insert into billing.invoices select g, g, billing.span(g, g + 3) from generate_series(1, 3000) g")
    store = FileStore(tmp_path / "store")
    backup = run_backup(source.dsn, store, [QualifiedName.parse("billing.invoices")])
    dump = next(backup_dir(tmp_path / "store", backup.backup_id).glob("billing.invoices.dump*"))
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    target = make_database()

    # When it is restored into an empty database
    from migsafe.exceptions import ChecksumMismatch

    with pytest.raises(ChecksumMismatch):
        run_restore(store, backup.backup_id, target.dsn, RestoreOptions())

    # Then the types it created for the tables are gone again, as is the staging
    assert target.scalar("select count(*) from pg_type t join pg_namespace n on n.oid = t.typnamespace "
                         "where n.nspname = 'billing'") == 0
    assert _staging_schemas(target) == []


def test_an_incoming_foreign_key_the_restored_rows_break_fails_verification_with_the_undo_named(
    make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup of a parent table, and a target where a row added since is referenced by a
    # table outside the restore
    db = make_database()
    with db.connect() as conn:
        conn.execute("create table parent (id int primary key); insert into parent select generate_series(1, 10)")
        conn.execute("create table child (id int primary key, parent_id int references parent)")
    store, backup_id = _backup(migsafe, tmp_path, db, ["public.parent"])
    with db.connect() as conn:
        conn.execute("insert into parent values (11); insert into child values (1, 11)")

    # When the parent is restored with --replace
    result = _restore(migsafe, store, backup_id, db, "--replace")

    # Then the swap happened but the restore is not reported as verified: exit 1, naming the
    # foreign key and the undo that brings the previous parent back
    assert result.code == 1, result.output
    assert "child_parent_id_fkey" in result.stderr and "NOT VALID" in result.stderr
    assert "--undo" in result.stderr
    assert db.scalar("select count(*) from parent") == 10
