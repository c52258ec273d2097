"""Backup -> list -> verify -> restore through the real CLI, against real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from backup_helpers import (
    alive,
    all_files,
    backup_dir,
    backup_id_from,
    file_url,
    load_manifest,
    pg_dumps_of,
    pg_tool,
    run_tool,
    user_relations,
)
from migsafe import inventory
from migsafe.backup import BackupOptions, run_backup
from migsafe.exceptions import BackupFailed, StoreUnreachable
from migsafe.identifiers import QualifiedName
from migsafe.store import FileStore, ObjectWriter
from pgsupport import ROOT, CliResult, Database, table_fingerprints, write_plan

from examples.enum_uppercase import seed

TABLES = seed.TABLES
Cli = Callable[..., CliResult]


def _backup(migsafe: Cli, tmp_path: Path, db: Database, tables: list[str] | None = None,
            extra: str = "") -> tuple[Path, str]:
    store = tmp_path / "store"
    plan = write_plan(tmp_path / "plan.toml", db, file_url(store), tables, extra)
    result = migsafe("backup", "--plan", str(plan))
    assert result.code == 0, result.output
    return store, backup_id_from(result.stdout)


def test_round_trip_restores_every_table_with_the_same_content(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a seeded source with an alembic revision, and an empty target
    with seeded.connect() as conn:
        conn.execute("create table alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into alembic_version values ('3f2a1b9c0d7e')")
    source = table_fingerprints(seeded, TABLES)
    target = make_database()

    # When every table is backed up, listed, verified and restored into the empty target
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    listed = migsafe("backups", "list", "--store", file_url(store), "--json")
    verified = migsafe("verify", "--store", file_url(store), "--backup-id", backup_id)
    restored = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url)

    # Then the target holds the same rows, byte for byte
    assert listed.code == 0, listed.output
    [ref] = json.loads(listed.stdout)
    assert (ref["backup_id"], ref["complete"], ref["tables"]) == (backup_id, True, TABLES)
    assert verified.code == 0, verified.output
    assert restored.code == 0, restored.output
    assert table_fingerprints(target, TABLES) == source
    assert source["public.users"][0] == 2000

    # and the manifest describes every object, table and type
    manifest = load_manifest(store, backup_id)
    folder = backup_dir(store, backup_id)
    assert manifest["backup_id"] == backup_id
    assert manifest["alembic_revision"] == "3f2a1b9c0d7e"
    assert [t["name"] for t in manifest["tables"]] == TABLES
    for entry in manifest["tables"]:
        stored = (folder / entry["key"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(stored).hexdigest()
        assert entry["bytes"] == len(stored)
        assert entry["rows"] == source[entry["name"]][0]
    by_name = {t["name"]: t for t in manifest["tables"]}
    uaa = by_name["public.user_application_access"]
    assert [c["name"] for c in uaa["columns"]] == ["id", "user_id", "application", "has_access", "granted_by",
                                                   "granted_at"]
    assert any("ix_uaa_application" in i for i in uaa["indexes"])
    assert {c["references"] for c in uaa["constraints"] if c["type"] == "f"} == {"public.users"}
    assert {c["type"] for c in uaa["constraints"]} >= {"p", "u", "f"}
    assert uaa["types"] == ["public.applicationtype"]
    assert by_name["public.user_invitations"]["types"] == ["public.applicationtype", "public.invitationstatus"]
    labels = {t["name"]: t["labels"] for t in manifest["types"]}
    assert labels == {
        "public.applicationtype": ["market_edge", "causal_edge", "value_edge"],
        "public.invitationstatus": ["pending", "accepted", "expired", "revoked"],
    }
    types_sql = (folder / manifest["types_object"]["key"]).read_bytes()
    assert manifest["types_object"]["sha256"] == hashlib.sha256(types_sql).hexdigest()
    assert manifest["source"]["database"] == seeded.name
    assert manifest["source"]["port"] == seeded.dsn.port
    assert "password" not in manifest["source"]


def test_a_dump_restores_with_stock_postgresql_tools(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup of the seed tables and an empty target
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    manifest = load_manifest(store, backup_id)
    folder = backup_dir(store, backup_id)
    target = make_database()

    # When the types and then each dump are restored with psql, zstd and pg_restore only
    types = run_tool([pg_tool("psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", target.conninfo,
                      "-f", str(folder / "types.sql")])
    assert types.returncode == 0, types.stderr
    for entry in manifest["tables"]:  # users first: the others reference it
        dump = folder / entry["key"]
        assert dump.name.endswith(".dump.zst")
        unzstd = subprocess.Popen(["zstd", "-dc", str(dump)], stdout=subprocess.PIPE)
        loaded = run_tool([pg_tool("pg_restore"), "--exit-on-error", "-d", target.conninfo], stdin=unzstd.stdout)
        assert unzstd.wait() == 0
        assert loaded.returncode == 0, loaded.stderr

    # Then the target has the source's rows
    assert table_fingerprints(target, TABLES) == table_fingerprints(seeded, TABLES)


def test_a_changed_dump_fails_verify_and_restore_and_leaves_the_target_untouched(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup whose access dump had one byte changed in the store
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    dump = backup_dir(store, backup_id) / "public.user_application_access.dump.zst"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    target = make_database()

    # When it is verified and restored
    verified = migsafe("verify", "--store", file_url(store), "--backup-id", backup_id)
    restored = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url)

    # Then both fail with a checksum mismatch, and nothing reached the target
    assert verified.code == 1, verified.output
    assert "checksum mismatch" in verified.output
    assert "public.user_application_access.dump.zst" in verified.output
    assert restored.code == 1, restored.output
    assert "checksum mismatch" in restored.output
    assert user_relations(target) == []


def _big_source(make_database: Callable[..., Database]) -> Database:
    db = make_database(users=200)
    with db.connect() as conn:
        conn.execute(
            "create table public.zz_big as select g as id, md5(g::text) || md5((g * 7)::text) as payload, "
            "now() as at from generate_series(1, 400000) as g"
        )
    return db


def test_a_backup_killed_midway_is_incomplete_and_never_restored(
    make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path, runtime_dir: Path
) -> None:
    # Given a source whose last table is big, and a one-job backup of it running in its own process group
    source = _big_source(make_database)
    tables = [*TABLES, "public.zz_big"]
    before = table_fingerprints(source, tables)
    store = tmp_path / "store"
    plan = write_plan(tmp_path / "plan.toml", source, file_url(store), tables, "\n[backup]\njobs = 1\n")
    proc = subprocess.Popen([sys.executable, "-m", "migsafe", "backup", "--plan", str(plan)], cwd=ROOT,
                            env={**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        members: dict[int, str] = {}
        # the first table is stored and a pg_dump (of the big table) is still running
        while not (list(store.glob("*/*/public.users.dump.zst")) and "pg_dump" in members.values()):
            assert proc.poll() is None, "the backup ended before it could be killed"
            assert time.monotonic() < deadline, "the first table never appeared in the store"
            time.sleep(0.005)
            # pg_dump runs in a process group of its own (migsafe stops it; the kernel does if migsafe
            # is SIGKILLed): find it by the database it dumps
            members = pg_dumps_of(source.name)

        # When migsafe's whole process group is killed
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    listed = migsafe("backups", "list", "--store", file_url(store), "--json")
    listed_text = migsafe("backups", "list", "--store", file_url(store))
    [ref] = json.loads(listed.stdout)
    target = make_database()
    restored = migsafe("restore", "--store", file_url(store), "--backup-id", ref["backup_id"],
                       "--target-dsn", target.url)

    # Then the backup is listed incomplete and its restore is refused
    assert not (backup_dir(store, ref["backup_id"]) / "manifest.json").exists()
    assert ref["complete"] is False
    assert "incomplete" in listed_text.stdout
    assert restored.code == 2, restored.output
    assert "incomplete" in restored.output
    assert user_relations(target) == []
    # and no pg_dump of the killed backup is left running, on the client or the server
    assert not [pid for pid in members if alive(pid)]
    deadline = time.monotonic() + 30
    while source.scalar("select count(*) from pg_stat_activity where datname = %s and application_name = 'pg_dump'",
                        (source.name,)):
        assert time.monotonic() < deadline, "a pg_dump session outlived the killed backup"
        time.sleep(0.1)
    # and the source is intact
    assert table_fingerprints(source, tables) == before


def test_restore_refuses_tables_that_hold_data_unless_replace(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup, and a target restored from it that then lost rows
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = make_database()
    first = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url)
    assert first.code == 0, first.output
    with target.connect() as conn:
        conn.execute("delete from user_invitations where id % 3 = 0")
        conn.execute("delete from users where id > 1500")  # cascades to user_application_access
    damaged = table_fingerprints(target, TABLES)

    # When it is restored again without --replace
    refused = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url)

    # Then it is refused, naming every table that holds data, and the target is untouched
    assert refused.code == 2, refused.output
    for table in TABLES:
        assert f"{table} already holds data" in refused.output
    assert "--replace" in refused.output
    assert table_fingerprints(target, TABLES) == damaged

    # When it is restored with --replace
    replaced = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url,
                       "--replace")

    # Then the tables are back to the backup's rows
    assert replaced.code == 0, replaced.output
    assert table_fingerprints(target, TABLES) == table_fingerprints(seeded, TABLES)
    assert damaged["public.users"][0] == 1500


def test_replace_also_restores_over_a_database_with_other_rows(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup, and a target with the same schema but other rows
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    target = make_database(users=30)

    # When it is restored with --replace (the restore report as JSON)
    result = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url,
                     "--replace", "--json")

    # Then every table is replaced and verified
    assert result.code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(report["replaced"]) == sorted(TABLES)
    assert [(t["name"], t["rows_restored"]) for t in report["tables"]] == [
        ("public.users", 2000), ("public.user_application_access", 6000), ("public.user_invitations", 1000)]
    assert table_fingerprints(target, TABLES) == table_fingerprints(seeded, TABLES)


def test_a_table_whose_foreign_key_leaves_the_selection_needs_its_target_table(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup of every table, an empty database and one that has users
    store, backup_id = _backup(migsafe, tmp_path, seeded)
    empty = make_database()
    with_users = make_database()
    users = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", with_users.url,
                    "--tables", "public.users")
    assert users.code == 0, users.output

    # When only user_application_access is restored into each
    refused = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", empty.url,
                      "--tables", "public.user_application_access")
    accepted = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id,
                       "--target-dsn", with_users.url, "--tables", "public.user_application_access")

    # Then the empty database is refused, naming the table the foreign key needs, and left untouched
    assert refused.code == 2, refused.output
    assert "public.users" in refused.output
    assert "foreign key" in refused.output
    assert user_relations(empty) == []
    # and the database with users gets the table, its foreign keys valid
    assert accepted.code == 0, accepted.output
    tables = ["public.users", "public.user_application_access"]
    assert table_fingerprints(with_users, tables) == table_fingerprints(seeded, tables)
    assert with_users.scalar(
        "select count(*) from pg_constraint where contype = 'f' and convalidated "
        "and conrelid = 'public.user_application_access'::regclass") == 2


def test_passwords_never_reach_output_manifest_or_object_names(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given source and target DSNs that carry a password (the test cluster trusts any password)
    password = "Sup3rS3cret"
    source_url = f"postgresql://postgres:{password}@{seeded.dsn.host}:{seeded.dsn.port}/{seeded.name}"
    target = make_database()
    target_url = f"postgresql://postgres:{password}@{target.dsn.host}:{target.dsn.port}/{target.name}"
    store = tmp_path / "store"
    plan = tmp_path / "plan.toml"
    listed_tables = ", ".join(f'"{t}"' for t in TABLES)
    plan.write_text(f'[source]\ndsn = "{source_url}"\ntables = [{listed_tables}]\n\n[store]\nurl = "{file_url(store)}"\n')

    # When the whole loop runs, including a refused restore that prints the target
    backup = migsafe("backup", "--plan", str(plan), "--json")
    backup_id = json.loads(backup.stdout)["backup_id"]
    runs = [
        backup,
        migsafe("backups", "list", "--store", file_url(store)),
        migsafe("verify", "--store", file_url(store), "--backup-id", backup_id),
        migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target_url),
        migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target_url),
        migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn",
                f"postgresql://postgres:{password}@127.0.0.1:1/nowhere"),
    ]

    # Then it worked, and the password is nowhere to be seen
    assert [r.code for r in runs] == [0, 0, 0, 0, 2, 3], [r.output for r in runs]
    assert table_fingerprints(target, TABLES) == table_fingerprints(seeded, TABLES)
    for run in runs:
        assert password not in run.output
    files = all_files(store)
    assert files
    for path in files:
        assert password not in str(path.relative_to(store))
        if path.suffix in (".json", ".sql"):
            assert password not in path.read_text()
    manifest = load_manifest(store, backup_id)
    assert manifest["source"]["user"] == "postgres"


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_other_compressions_round_trip(
    compression: str, seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup made with another compression
    store, backup_id = _backup(migsafe, tmp_path, seeded, extra=f'\n[backup]\ncompression = "{compression}"\n')
    target = make_database()

    # When it is restored
    result = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id, "--target-dsn", target.url)

    # Then the rows are the source's, and the dumps are plain pg_dump archives
    assert result.code == 0, result.output
    assert table_fingerprints(target, TABLES) == table_fingerprints(seeded, TABLES)
    dumps = sorted(p.name for p in backup_dir(store, backup_id).glob("*.dump"))
    assert dumps == sorted(f"{t}.dump" for t in TABLES)
    assert all((backup_dir(store, backup_id) / d).read_bytes()[:5] == b"PGDMP" for d in dumps)


class _CountingStore(FileStore):
    """A FileStore that records how many table dumps are being written at once (each held 0.2 s)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lock = threading.Lock()
        self.open_now = 0
        self.most = 0

    def open_writer(self, key: str) -> ObjectWriter:
        inner = super().open_writer(key)
        if not key.endswith(".dump.zst"):
            return inner
        store = self
        with self.lock:
            self.open_now += 1
            self.most = max(self.most, self.open_now)

        class Held(ObjectWriter):
            def write(self, data: bytes) -> None:
                inner.write(data)

            def commit(self) -> None:
                time.sleep(0.2)
                with store.lock:
                    store.open_now -= 1
                inner.commit()

            def abort(self) -> None:
                with store.lock:
                    store.open_now -= 1
                inner.abort()

        return Held()


@pytest.mark.parametrize("jobs", [1, 2])
def test_backup_runs_at_most_jobs_dumps_at_once(jobs: int, seeded: Database, tmp_path: Path) -> None:
    # Given a store that notices overlapping table dumps
    store = _CountingStore(tmp_path / "store")

    # When the three seed tables are backed up with a job limit
    result = run_backup(seeded.dsn, store, [QualifiedName.parse(t) for t in TABLES], BackupOptions(jobs=jobs))

    # Then no more than that many dumps ran together, and the backup is whole
    assert store.most == jobs
    assert inventory.verify_backup(store, result.backup_id).ok


class _FailingStore(FileStore):
    """A FileStore that fails to commit one table's dump, once the types object has been stored."""

    def __init__(self, root: Path, failing: str) -> None:
        super().__init__(root)
        self.failing = failing

    def open_writer(self, key: str) -> ObjectWriter:
        inner = super().open_writer(key)
        if not key.endswith(self.failing):
            return inner
        store = self

        class Failing(ObjectWriter):
            def write(self, data: bytes) -> None:
                inner.write(data)

            def commit(self) -> None:
                deadline = time.monotonic() + 30
                while not any(o.key.endswith("/types.sql") for o in store.list("")):
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                inner.abort()
                raise StoreUnreachable(f"disk full writing {key}")

            def abort(self) -> None:
                inner.abort()

        return Failing()


def test_a_failed_backup_removes_everything_it_wrote(seeded: Database, tmp_path: Path) -> None:
    # Given a store that fails on the last table, after the others and the types were stored
    store = _FailingStore(tmp_path / "store", "public.user_invitations.dump.zst")

    # When the seed tables are backed up to it
    with pytest.raises(BackupFailed) as caught:
        run_backup(seeded.dsn, store, [QualifiedName.parse(t) for t in TABLES], BackupOptions(jobs=1))

    # Then it fails as an environment fault, and no object of the backup is left behind
    assert caught.value.exit_code == 3
    assert "disk full" in str(caught.value) and "removed" in str(caught.value)
    assert store.list("") == []
    assert inventory.list_backups(store) == []
