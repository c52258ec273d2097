"""Partitioned tables: PostgreSQL 15's `pg_dump -t parent` alone would dump no rows at all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from migsafe.backup import run_backup
from migsafe.exceptions import InputError
from migsafe.identifiers import QualifiedName
from migsafe.inventory import load_manifest
from migsafe.restore import RestoreOptions, run_restore
from migsafe.store.file import FileStore
from pgsupport import Database, table_fingerprints

SCHEMA = """
create table events (id bigint, at date not null, kind text not null, primary key (id, at, kind))
    partition by range (at);
create table events_2025 partition of events for values from ('2025-01-01') to ('2026-01-01')
    partition by list (kind);
create table events_2025_a partition of events_2025 for values in ('a');
create table events_2025_b partition of events_2025 for values in ('b');
create table events_2026 partition of events for values from ('2026-01-01') to ('2027-01-01');
insert into events select g, date '2025-01-01' + (g % 700), case when g % 2 = 0 then 'a' else 'b' end
from generate_series(1, 3000) g;
"""


@pytest.fixture
def source(make_database: Callable[..., Database]) -> Database:
    """A database holding the two-level partitioned table ``events``."""
    db = make_database()
    with db.connect() as conn:
        conn.execute(SCHEMA)
    return db


def test_partitioned_table_is_backed_up_with_every_partition(
    tmp_path: Path, source: Database, make_database: Callable[..., Database]
) -> None:
    # Given: a two-level partitioned table
    store = FileStore(tmp_path / "store")
    # When
    backup = run_backup(source.dsn, store, [QualifiedName.parse("events")])
    target = make_database()
    report = run_restore(store, backup.backup_id, target.dsn, RestoreOptions())
    # Then
    _, manifest = load_manifest(store, backup.backup_id)
    assert manifest.tables[0].rows == 3000
    assert manifest.tables[0].partitions == [
        "public.events_2025",
        "public.events_2025_a",
        "public.events_2025_b",
        "public.events_2026",
    ]
    assert report.ok, report.problems()
    assert table_fingerprints(target, ["public.events"]) == table_fingerprints(source, ["public.events"])
    assert target.scalar("select count(*) from events_2025_b") == source.scalar("select count(*) from events_2025_b")


def test_listing_a_partition_beside_its_parent_is_refused(tmp_path: Path, source: Database) -> None:
    # Given
    store = FileStore(tmp_path / "store")
    # When / Then: nothing is written
    with pytest.raises(InputError, match=r"public.events_2026 \(a partition of public.events\)"):
        run_backup(source.dsn, store, [QualifiedName.parse("events"), QualifiedName.parse("events_2026")])
    assert not (tmp_path / "store").exists()
