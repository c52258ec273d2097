"""The backup's snapshot: taken after the tables are locked, and shared by every dump and count.

Issue 9, item 12: a table-rewriting ALTER or a TRUNCATE that committed between the snapshot and the
dumps left a dump (and a manifest count) of 0 rows. And the counts must come from the dumps' snapshot,
not from a newer one (READ COMMITTED would pass every other test).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard
from backup_helpers import all_files, pg_tool
from migsafe import backup, catalog
from migsafe.backup import BackupOptions, run_backup
from migsafe.exceptions import BackupFailed, LockNotAcquired
from migsafe.identifiers import QualifiedName
from migsafe.store import FileStore
from pgsupport import Database

ROWS = 5000
TABLE = QualifiedName("public", "ledger")


@pytest.fixture
def ledger(make_database: Callable[..., Database]) -> Database:
    """A database with one int-keyed table of ROWS rows (an int -> bigint ALTER rewrites it)."""
    db = make_database()
    with db.connect() as conn:
        conn.execute("create table ledger (id int primary key, note text not null)")
        conn.execute("insert into ledger select g, 'row ' || g from generate_series(1, %s) g", (ROWS,))
    return db


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    (tmp_path / "store").mkdir()
    return FileStore(tmp_path / "store")


def dumped_rows(store: FileStore, key: str) -> int:
    """Rows in a stored dump, counted by stock pg_restore (the COPY block's lines)."""
    packed = b"".join(store.read(key))
    archive = zstandard.ZstdDecompressor().decompressobj().decompress(packed)
    script = subprocess.run([pg_tool("pg_restore"), "--data-only", "--file=-"], input=archive,
                            capture_output=True, check=True).stdout.decode()
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("COPY "))
    end = lines.index("\\.", start)
    return end - start - 1


def after_version_check(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run ``action`` (committed from another session) right after the backup's version check."""
    original = backup._check_tool_version

    def check_then_act(*args: Any) -> None:
        original(*args)
        action()

    monkeypatch.setattr(backup, "_check_tool_version", check_then_act)


@pytest.mark.parametrize(
    "ddl",
    [
        "alter table ledger alter column id type bigint",
        "begin; truncate ledger; insert into ledger select g, 'again ' || g from generate_series(1, 5000) g; commit",
    ],
    ids=["rewriting-alter", "truncate-and-reload"],
)
def test_ddl_committed_right_after_the_version_check_is_not_a_zero_row_backup(
    ledger: Database, store: FileStore, monkeypatch: pytest.MonkeyPatch, ddl: str
) -> None:
    # Given a rewrite of the table that commits right after the backup checked pg_dump's version
    def rewrite() -> None:
        with ledger.connect() as conn:
            conn.execute(ddl)

    after_version_check(monkeypatch, rewrite)
    # When
    result = run_backup(ledger.dsn, store, [TABLE])
    # Then the manifest and the dump both hold every row the table holds
    entry = result.tables[0]
    assert entry.rows == ROWS
    assert dumped_rows(store, result.manifest_key.rsplit("/", 1)[0] + "/" + entry.key) == ROWS


def test_a_rewrite_holding_the_table_is_waited_for_and_its_result_backed_up(
    ledger: Database, store: FileStore
) -> None:
    # Given another session rewriting the table, its transaction still open when the backup starts
    holder = psycopg.connect(ledger.conninfo)
    holder.execute("alter table ledger alter column id type bigint")
    holder.execute("update ledger set note = 'rewritten'")
    committer = threading.Timer(1.0, holder.commit)
    committer.start()
    try:
        # When
        result = run_backup(ledger.dsn, store, [TABLE], BackupOptions(lock_timeout_s=20))
    finally:
        committer.join()
        holder.close()
    # Then the backup waited for the lock and saw the committed rewrite, every row of it
    entry = result.tables[0]
    assert entry.rows == ROWS
    assert dumped_rows(store, result.manifest_key.rsplit("/", 1)[0] + "/" + entry.key) == ROWS
    assert [c.type for c in entry.columns if c.name == "id"] == ["bigint"]


@pytest.fixture
def table_held(ledger: Database) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(ledger.conninfo)
    conn.execute("lock table ledger in access exclusive mode")
    yield conn
    conn.rollback()
    conn.close()


def test_a_lock_that_cannot_be_had_is_exit_3_and_nothing_is_written(
    ledger: Database, store: FileStore, tmp_path: Path, table_held: psycopg.Connection[Any]
) -> None:
    # Given another session holding ACCESS EXCLUSIVE on the table (table_held)
    # When
    t0 = time.monotonic()
    with pytest.raises(LockNotAcquired) as caught:
        run_backup(ledger.dsn, store, [TABLE], BackupOptions(lock_timeout_s=0.5))
    # Then: a one-line message naming the table, exit 3, no object, and the wait bounded by the timeout
    assert caught.value.exit_code == 3
    assert "public.ledger" in str(caught.value) and "\n" not in str(caught.value)
    assert all_files(tmp_path / "store") == []
    assert time.monotonic() - t0 < 15


def test_counts_and_dumps_come_from_one_snapshot_under_concurrent_writes(
    ledger: Database, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given rows inserted and committed by another session after the snapshot, before the counts
    inserted = threading.Event()
    original = catalog.describe

    def describe_then_write(conn: psycopg.Connection[Any], oid: int) -> Any:
        if not inserted.is_set():
            with ledger.connect() as other:
                other.execute("insert into ledger select g, 'late' from generate_series(%s::int, %s::int) g",
                              (ROWS + 1, ROWS + 700))
            inserted.set()
        return original(conn, oid)

    monkeypatch.setattr(catalog, "describe", describe_then_write)
    # When
    result = run_backup(ledger.dsn, store, [TABLE])
    # Then the late rows are in neither the count nor the dump: both read the snapshot
    assert inserted.is_set()
    entry = result.tables[0]
    assert entry.rows == ROWS
    assert dumped_rows(store, result.manifest_key.rsplit("/", 1)[0] + "/" + entry.key) == ROWS
    assert ledger.scalar("select count(*) from ledger") == ROWS + 700


def test_ddl_queued_behind_the_backup_fails_it_instead_of_hanging(
    ledger: Database, store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an ALTER that queues behind the backup's ACCESS SHARE lock just before pg_dump starts: pg_dump's
    # own lock then queues behind the ALTER, which waits for the backup, which waits for pg_dump
    original = backup._pg_dump_argv
    ddl_done = threading.Event()

    def alter() -> None:
        with ledger.connect() as conn:
            conn.execute("alter table ledger add column late int")
        ddl_done.set()

    def argv_after_queueing_ddl(*args: Any) -> list[str]:
        threading.Thread(target=alter, daemon=True).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the ALTER waits for its lock
            waiting = ledger.scalar("select count(*) from pg_locks where not granted and mode = 'AccessExclusiveLock'")
            if waiting:
                break
            time.sleep(0.05)
        return original(*args)

    def break_the_wait() -> None:  # so that a backup that would hang fails this test instead
        with ledger.connect() as conn:
            conn.execute("select pg_cancel_backend(pid) from pg_stat_activity where query like 'alter table ledger%%'")

    monkeypatch.setattr(backup, "_pg_dump_argv", argv_after_queueing_ddl)
    watchdog = threading.Timer(40, break_the_wait)
    watchdog.start()
    # When
    t0 = time.monotonic()
    try:
        with pytest.raises(BackupFailed) as caught:
            run_backup(ledger.dsn, store, [TABLE], BackupOptions(lock_timeout_s=1))
    finally:
        watchdog.cancel()
    # Then: exit 3 within seconds (not a hang), nothing kept, and the ALTER goes through once the backup is gone
    assert caught.value.exit_code == 3
    assert time.monotonic() - t0 < 30
    assert all_files(tmp_path / "store") == []
    assert ddl_done.wait(10)
