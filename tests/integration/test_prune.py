"""Retention: old complete backups go, incomplete ones go after a day, everything young stays."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from backup_helpers import file_url
from migsafe import inventory
from migsafe.backup import backup_prefix, new_backup_id, run_backup
from migsafe.identifiers import QualifiedName
from migsafe.store import FileStore, Store
from migsafe.store.s3 import S3Store
from moto import mock_aws
from pgsupport import CliResult, Database

Cli = Callable[..., CliResult]
USERS = [QualifiedName.parse("public.users")]
BUCKET = "migsafe-prune"


@pytest.fixture
def source(make_database: Callable[..., Database]) -> Database:
    return make_database(users=20)


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    if request.param == "file":
        yield FileStore(tmp_path / "store")
        return
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield S3Store(BUCKET, "backups", client=client)


def _complete(db: Database, store: Store, when: datetime) -> str:
    return run_backup(db.dsn, store, USERS, now=when).backup_id


def _incomplete(store: Store, when: datetime) -> str:
    """A backup folder that died after its first dump: no manifest."""
    backup_id = new_backup_id(when)
    store.put_bytes(backup_prefix(backup_id) + "public.users.dump.zst", b"half a dump")
    return backup_id


def test_prune_deletes_old_complete_and_stale_incomplete_backups(source: Database, store: Store) -> None:
    # Given backups of every kind and age, and an object that is not a backup
    now = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
    old_complete = _complete(source, store, now - timedelta(days=40))
    young_complete = _complete(source, store, now - timedelta(days=3))
    old_incomplete = _incomplete(store, now - timedelta(days=2))
    young_incomplete = _incomplete(store, now - timedelta(hours=2))
    store.put_bytes("README.txt", b"not a backup")

    # When backups older than a week are pruned
    pruned = inventory.prune(store, timedelta(days=7), now=now)

    # Then the old complete and the stale incomplete backups are gone, whole
    assert sorted(r.backup_id for r in pruned) == sorted([old_complete, old_incomplete])
    remaining = {r.backup_id: r.complete for r in inventory.list_backups(store)}
    assert remaining == {young_complete: True, young_incomplete: False}
    for gone in (old_complete, old_incomplete):
        assert store.list(backup_prefix(gone)) == []
    assert store.exists("README.txt")
    assert inventory.verify_backup(store, young_complete).ok


def test_a_young_incomplete_backup_may_still_be_running_and_is_kept(source: Database, store: Store) -> None:
    # Given an incomplete backup started 20 hours ago, and a complete one as old
    now = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
    running = _incomplete(store, now - timedelta(hours=20))
    done = _complete(source, store, now - timedelta(hours=20))

    # When everything older than an hour is pruned
    pruned = inventory.prune(store, timedelta(hours=1), now=now)

    # Then the complete one goes, the incomplete one stays
    assert [r.backup_id for r in pruned] == [done]
    assert [(r.backup_id, r.complete) for r in inventory.list_backups(store)] == [(running, False)]


def test_dry_run_deletes_nothing(source: Database, store: Store) -> None:
    # Given an old complete backup
    now = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
    old = _complete(source, store, now - timedelta(days=40))
    before = store.list("")

    # When a dry run prunes
    pruned = inventory.prune(store, timedelta(days=7), now=now, dry_run=True)

    # Then it names the backup and leaves every object
    assert [r.backup_id for r in pruned] == [old]
    assert store.list("") == before


def test_prune_cli(source: Database, migsafe: Cli, tmp_path: Path) -> None:
    # Given a file store with backups relative to the real clock
    root = tmp_path / "store"
    store = FileStore(root)
    now = datetime.now(UTC)
    old_complete = _complete(source, store, now - timedelta(days=40))
    young_complete = _complete(source, store, now - timedelta(days=1))
    old_incomplete = _incomplete(store, now - timedelta(days=3))
    young_incomplete = _incomplete(store, now - timedelta(minutes=10))

    # When the CLI prunes (dry run first)
    dry = migsafe("prune", "--store", file_url(root), "--older-than", "30d", "--dry-run")
    listed_before = migsafe("backups", "list", "--store", file_url(root), "--json")
    real = migsafe("prune", "--store", file_url(root), "--older-than", "30d")
    listed_after = migsafe("backups", "list", "--store", file_url(root), "--json")

    # Then the dry run only reports, and the real run deletes the old and the stale backups
    assert dry.code == 0, dry.output
    assert f"would delete {old_complete} (complete" in dry.stdout
    assert f"would delete {old_incomplete} (incomplete" in dry.stdout
    assert len(json.loads(listed_before.stdout)) == 4
    assert real.code == 0, real.output
    assert f"deleted {old_complete}" in real.stdout and f"deleted {old_incomplete}" in real.stdout
    assert young_complete not in real.stdout and young_incomplete not in real.stdout
    assert {r["backup_id"] for r in json.loads(listed_after.stdout)} == {young_complete, young_incomplete}
    # and the emptied date folders are gone too
    old_dates = {backup_prefix(b).split("/")[0] for b in (old_complete, old_incomplete)}
    assert not any((root / d).exists() for d in old_dates)


def test_prune_refuses_a_bad_age(migsafe: Cli, tmp_path: Path) -> None:
    # Given an empty store
    # When the age is not a duration
    result = migsafe("prune", "--store", file_url(tmp_path), "--older-than", "forever")

    # Then it is bad input
    assert result.code == 2, result.output
    assert "not a duration" in result.output


def _killed_writer(store: Store, when: datetime, size: int) -> str:
    """What a backup killed mid-dump leaves: only a partial object (a hidden temp file on a folder,
    an unfinished multipart upload on S3), never a listed object."""
    backup_id = new_backup_id(when)
    writer = store.open_writer(backup_prefix(backup_id) + "public.users.dump.zst")
    writer.write(b"x" * size)
    if isinstance(store, S3Store):
        writer._flush_part()  # type: ignore[attr-defined]  # the part is stored, the upload never completed
    else:
        writer._fh.flush()  # type: ignore[attr-defined]
    return backup_id  # the writer is abandoned: neither committed nor aborted, as after kill -9


def test_a_folder_holding_only_a_killed_writers_partial_object_is_listed_incomplete_with_its_bytes(
    store: Store,
) -> None:
    # Given: a backup killed during its first dump
    now = datetime.now(UTC)
    size = 5 << 20 if isinstance(store, S3Store) else 12345
    killed = _killed_writer(store, now - timedelta(days=2), size)
    # When
    listed = {r.backup_id: r for r in inventory.list_backups(store)}
    # Then: it is listed, incomplete, with the bytes it really holds
    assert killed in listed
    assert not listed[killed].complete
    assert listed[killed].bytes == size


def test_prune_removes_every_byte_of_an_interrupted_backup(source: Database, store: Store) -> None:
    # Given: a backup that died after one dump and during the next, and one that died in its first
    now = datetime.now(UTC)
    first = _incomplete(store, now - timedelta(days=2))
    leftover = store.open_writer(backup_prefix(first) + "public.orders.dump.zst")
    leftover.write(b"y" * (5 << 20))
    if isinstance(store, S3Store):
        leftover._flush_part()  # type: ignore[attr-defined]
    else:
        leftover._fh.flush()  # type: ignore[attr-defined]
    second = _killed_writer(store, now - timedelta(days=3), 5 << 20)
    # When
    pruned = inventory.prune(store, timedelta(days=30), now=now)
    # Then: both are gone, with their partial objects (temp files / unfinished uploads)
    assert {r.backup_id for r in pruned} == {first, second}
    assert store.list() == []
    assert store.partials() == []
    if isinstance(store, FileStore):
        assert not any(p.is_file() for p in store.root.rglob("*"))
    else:
        assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


def test_a_missing_store_is_refused_by_list_verify_restore_and_prune(migsafe: Cli, tmp_path: Path) -> None:
    # Given: a mistyped store path
    missing = file_url(tmp_path / "no" / "such" / "store")
    bid = "20250101T000000Z-abcdef"
    # When / Then: each reading verb refuses it as bad input, one line, and creates nothing
    for args in (
        ["backups", "list", "--store", missing],
        ["verify", "--store", missing, "--backup-id", bid],
        ["restore", "--store", missing, "--backup-id", bid, "--target-dsn", "host=127.0.0.1 dbname=x"],
        ["prune", "--store", missing, "--older-than", "7d"],
    ):
        res = migsafe(*args)
        assert res.code == 2, (args, res.output)
        assert "does not exist" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "no").exists()


def test_prune_skips_an_old_incomplete_backup_whose_writer_is_alive(store: Store) -> None:
    # Given: a backup started two days ago that is still running (its lease is fresh), and a dead one
    now = datetime.now(UTC)
    running = _incomplete(store, now - timedelta(days=2))
    dead = _incomplete(store, now - timedelta(days=2, minutes=1))
    lease = inventory.WriterLease(store, backup_prefix(running))
    try:
        # When
        pruned = inventory.prune(store, timedelta(days=30), now=now)
    finally:
        lease.release()
    # Then: only the dead writer's folder is removed
    assert [r.backup_id for r in pruned] == [dead]
    assert store.exists(backup_prefix(running) + "public.users.dump.zst")


def test_a_backup_refuses_to_seal_a_manifest_over_objects_that_disappeared(source: Database, store: Store) -> None:
    # Given: a backup whose dump was deleted (by a prune, say) before its manifest was written
    from migsafe.exceptions import BackupFailed
    from migsafe.models import Manifest

    bid = _complete(source, store, datetime.now(UTC))
    prefix = backup_prefix(bid)
    manifest = Manifest.model_validate_json(store.get_bytes(prefix + "manifest.json"))
    store.delete([prefix + "manifest.json", prefix + "manifest.json.sha256", prefix + manifest.tables[0].key])
    # When / Then
    with pytest.raises(BackupFailed, match="disappeared"):
        inventory.write_manifest(store, prefix, manifest)
    assert not store.exists(prefix + "manifest.json")


KILLED_WRITER = """
import os, signal, sys
from migsafe.store import FileStore
writer = FileStore(sys.argv[1]).open_writer(sys.argv[2])
writer.write(b"x" * int(sys.argv[3]))
writer._fh.flush()
os.kill(os.getpid(), signal.SIGKILL)  # as a backup killed mid-dump: neither committed nor aborted
"""


def test_the_cli_lists_a_folder_of_only_a_killed_writers_partial_file_as_incomplete_and_prune_removes_it(
    migsafe: Cli, tmp_path: Path
) -> None:
    # Given: a store whose only backup folder holds what a writer killed with SIGKILL left: one
    # hidden partial file (12,288 bytes), from a backup started two days ago
    import subprocess
    import sys

    root = tmp_path / "store"
    root.mkdir()
    backup_id = new_backup_id(datetime.now(UTC) - timedelta(days=2))
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(root),
                             backup_prefix(backup_id) + "public.users.dump.zst", "12288"], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    partials = [p for p in root.rglob("*") if p.is_file()]
    assert [p.name.endswith(".migsafe-partial") for p in partials] == [True]
    # When: listed by the CLI, as text and as JSON
    text = migsafe("backups", "list", "--store", file_url(root))
    listed = migsafe("backups", "list", "--store", file_url(root), "--json")
    # Then: it is there, incomplete, with the bytes it really holds
    assert text.code == 0 and listed.code == 0, text.output + listed.output
    (row,) = [ln for ln in text.stdout.splitlines() if backup_id in ln]
    assert "incomplete" in row and "12.0 KiB" in row, text.stdout
    assert [(r["backup_id"], r["complete"], r["bytes"]) for r in json.loads(listed.stdout)] == [
        (backup_id, False, 12288)]
    # When: pruned by the CLI (incomplete and older than a day, no live writer)
    pruned = migsafe("prune", "--store", file_url(root), "--older-than", "30d")
    # Then: reported as deleted with its bytes, and every byte of it is gone
    assert pruned.code == 0, pruned.output
    assert f"deleted {backup_id} (incomplete, 12.0 KiB)" in pruned.stdout, pruned.output
    assert not [p for p in root.rglob("*") if p.is_file()]
    again = migsafe("backups", "list", "--store", file_url(root), "--json")
    assert again.code == 0 and json.loads(again.stdout) == [], again.output
