"""Large tables backed up as parallel parts: round trip, stock-tools recipe, checksums, old manifests."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from backup_helpers import backup_dir, pg_tool
from migsafe.backup import BackupOptions, run_backup
from migsafe.exceptions import ChecksumMismatch
from migsafe.identifiers import QualifiedName
from migsafe.inventory import load_manifest, verify_backup
from migsafe.restore import RestoreOptions, run_restore
from migsafe.store.file import FileStore
from pgsupport import Database, table_fingerprints

from examples.enum_uppercase import seed

TABLES = seed.TABLES
NAMES = [QualifiedName.parse(t) for t in TABLES]
SPLIT = 16 << 10  # 16 KiB of heap: at 2000 users, every seed table is split in 3


@pytest.fixture
def split_backup(seeded: Database, tmp_path: Path) -> tuple[FileStore, str]:
    """The seed (2000 users) backed up with a tiny split threshold, 3 parts per table."""
    with seeded.connect() as conn:  # a generated column: not in the parts' COPY, recomputed on load
        conn.execute("alter table users add column domain text generated always as (split_part(email, '@', 2)) stored")
    store = FileStore(tmp_path / "store")
    backup = run_backup(seeded.dsn, store, NAMES, BackupOptions(split_bytes=SPLIT, jobs=3))
    return store, backup.backup_id


def test_a_split_backup_lists_its_parts_and_restores_equal(
    seeded: Database, make_database: Callable[..., Database], split_backup: tuple[FileStore, str]
) -> None:
    # Given a backup whose tables were split into parts
    store, backup_id = split_backup
    _, manifest = load_manifest(store, backup_id)
    assert [len(t.parts) for t in manifest.tables] == [3, 3, 3]
    users = manifest.table("public.users")
    assert users.copy_columns == ["id", "email", "full_name", "role", "created_at"]
    assert [p.key for p in users.parts] == [f"public.users.part{i}.copy.zst" for i in (1, 2, 3)]
    assert verify_backup(store, backup_id).ok
    assert "--section=pre-data" in manifest.restore_hint
    target = make_database()

    # When it is restored into an empty database
    report = run_restore(store, backup_id, target.dsn, RestoreOptions())

    # Then every table holds the source's rows (count and fingerprint checked in staging, and here),
    # the generated column is computed again, and the sequences carry on from the source's values
    assert report.ok, report.problems()
    assert table_fingerprints(target, TABLES) == table_fingerprints(seeded, TABLES)
    assert target.scalar("select count(*) from users where domain = 'example.com'") == 2000
    for seq in ("users_id_seq", "user_application_access_id_seq"):
        assert target.scalar(f"select last_value from {seq}") == seeded.scalar(f"select last_value from {seq}")


def test_a_split_table_restores_with_the_stock_tools_recipe(
    seeded: Database, make_database: Callable[..., Database], split_backup: tuple[FileStore, str]
) -> None:
    # Given a split backup and an empty database
    store, backup_id = split_backup
    _, manifest = load_manifest(store, backup_id)
    folder = backup_dir(Path(store.root), backup_id)
    target = make_database()
    db = shlex.quote(target.conninfo)
    psql = f"{pg_tool('psql')} -X -q -v ON_ERROR_STOP=1 -d {db}"
    pg_restore = f"{pg_tool('pg_restore')} -d {db}"

    # When it is restored with the recipe of docs/benchmarks.md, literally: types, every table's
    # pre-data, its parts, then every table's data (sequence values) and post-data
    steps = [f"{psql} -f types.sql"]
    steps += [f"zstd -dc {t.key} | {pg_restore} --section=pre-data" for t in manifest.tables]
    for t in manifest.tables:
        columns = ", ".join(f'"{c}"' for c in t.copy_columns)
        copy = shlex.quote(f"COPY {t.name} ({columns}) FROM STDIN")
        steps += [f"zstd -dc {p.key} | PGCLIENTENCODING=UTF8 {psql} -c {copy}" for p in t.parts]
    steps += [f"zstd -dc {t.key} | {pg_restore} --section=data --section=post-data" for t in manifest.tables]
    script = "set -euo pipefail\n" + "\n".join(steps) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=folder, capture_output=True, text=True)

    # Then the tables equal the source's, foreign keys and sequences included
    assert done.returncode == 0, done.stderr
    assert table_fingerprints(target, TABLES) == table_fingerprints(seeded, TABLES)
    fks = "select count(*) from pg_constraint where contype = 'f' and convalidated"
    assert target.scalar(fks) == seeded.scalar(fks) == 3
    assert target.scalar("select last_value from users_id_seq") == seeded.scalar("select last_value from users_id_seq")


def test_a_flipped_byte_in_a_part_fails_verify_and_restores_nothing(
    make_database: Callable[..., Database], split_backup: tuple[FileStore, str]
) -> None:
    # Given a split backup with one byte of one part flipped
    store, backup_id = split_backup
    part = backup_dir(Path(store.root), backup_id) / "public.user_application_access.part2.copy.zst"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    target = make_database()

    # When it is verified, and restored
    report = verify_backup(store, backup_id)
    with pytest.raises(ChecksumMismatch):
        run_restore(store, backup_id, target.dsn, RestoreOptions())

    # Then verify names the part, and the target holds nothing
    assert [o.key.rsplit("/", 1)[1] for o in report.objects if not o.ok] == [part.name]
    assert target.scalar("select count(*) from pg_class where relkind = 'r' and relnamespace = 'public'::regnamespace") == 0
    assert target.scalar("select count(*) from pg_namespace where starts_with(nspname, 'migsafe')") == 0


def test_small_tables_and_split_off_keep_one_archive_per_table(seeded: Database, tmp_path: Path) -> None:
    # Given the seed, backed up with the default threshold (64 MiB) and with splitting off
    store = FileStore(tmp_path / "store")

    # When both run
    default = run_backup(seeded.dsn, store, NAMES)
    off = run_backup(seeded.dsn, store, NAMES, BackupOptions(split_bytes=0))

    # Then neither has parts: a manifest like those written before parts existed
    assert [t.parts for t in default.tables] == [[], [], []]
    assert [t.parts for t in off.tables] == [[], [], []]


def test_restored_tables_keep_their_own_storage_options(
    seeded: Database, make_database: Callable[..., Database], tmp_path: Path
) -> None:
    # Given a backup where one table turns autovacuum off itself, and the others set nothing
    # (staging turns autovacuum off while it loads them, split or not)
    with seeded.connect() as conn:
        conn.execute("alter table user_invitations set (autovacuum_enabled = false, fillfactor = 90)")
    store = FileStore(tmp_path / "store")
    backup = run_backup(seeded.dsn, store, NAMES, BackupOptions(split_bytes=SPLIT))
    target = make_database()

    # When it is restored
    report = run_restore(store, backup.backup_id, target.dsn, RestoreOptions())

    # Then each table has the storage options of the source, no more
    assert report.ok, report.problems()
    options = "select relname, reloptions from pg_class where relname = any(%s) order by relname"
    assert target.connect().execute(options, (["users", "user_application_access", "user_invitations"],)).fetchall() == [
        ("user_application_access", None), ("user_invitations", ["autovacuum_enabled=false", "fillfactor=90"]),
        ("users", None)]
