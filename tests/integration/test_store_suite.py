"""One suite for both stores: FileStore on a folder, S3Store on moto (boto3 is the only thing mocked)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from backup_helpers import all_files
from migsafe import inventory
from migsafe.backup import run_backup
from migsafe.exceptions import ObjectMissing
from migsafe.identifiers import QualifiedName
from migsafe.restore import RestoreOptions, run_restore
from migsafe.store import FileStore, Store, open_store
from migsafe.store.s3 import PART_SIZE, S3Store
from moto import mock_aws
from pgsupport import Database, table_fingerprints

from examples.enum_uppercase import seed

BUCKET = "migsafe-test-backups"


class Boom(Exception):
    pass


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3, and a client for it, with an empty bucket."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return FileStore(tmp_path / "store")
    client = request.getfixturevalue("aws")
    return S3Store(BUCKET, "team/prod", client=client)


def _leftovers(store: Store) -> list[str]:
    """Anything half-written: temp files in a folder, pending multipart uploads in a bucket."""
    if isinstance(store, FileStore):
        return [str(p) for p in all_files(store.root)]
    assert isinstance(store, S3Store)
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    objects = store.client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    return [u["Key"] for u in uploads] + [o["Key"] for o in objects]


def test_write_read_list_exists_delete(store: Store) -> None:
    # Given objects under two backup folders
    store.put_bytes("2025-01-01/a/manifest.json", b"{}")
    store.put_bytes("2025-01-01/a/public.users.dump.zst", b"users")
    store.put_bytes("2025-01-02/b/types.sql", b"create type ...")
    with store.writer("2025-01-02/b/big.dump") as w:
        for part in (b"one ", b"two ", b"three"):
            w.write(part)

    # When they are listed, read and partly deleted
    everything = store.list("")
    under_a = store.list("2025-01-01/a/")
    body = store.get_bytes("2025-01-02/b/big.dump")
    store.delete(["2025-01-01/a/manifest.json", "2025-01-01/a/never-existed"])

    # Then listings are sorted, sized and prefix-relative; deletes ignore missing keys
    assert [(o.key, o.size) for o in everything] == [
        ("2025-01-01/a/manifest.json", 2), ("2025-01-01/a/public.users.dump.zst", 5),
        ("2025-01-02/b/big.dump", 13), ("2025-01-02/b/types.sql", 15)]
    assert [o.key for o in under_a] == ["2025-01-01/a/manifest.json", "2025-01-01/a/public.users.dump.zst"]
    assert body == b"one two three"
    assert not store.exists("2025-01-01/a/manifest.json")
    assert store.exists("2025-01-01/a/public.users.dump.zst")
    assert not store.exists("2025-01-01/a/public.users")  # a prefix of a key is not the key
    assert store.list("2025-01-03/") == []
    assert store.location("2025-01-02/b/types.sql").endswith("/2025-01-02/b/types.sql")
    store.check()


def test_an_overwrite_replaces_the_whole_object(store: Store) -> None:
    # Given an object
    store.put_bytes("k/obj", b"a long first version")

    # When it is written again, shorter
    store.put_bytes("k/obj", b"v2")

    # Then only the new content is there
    assert store.get_bytes("k/obj") == b"v2"
    assert [o.size for o in store.list("k/")] == [2]


@pytest.mark.parametrize("size", [10, PART_SIZE + (1 << 20)], ids=["small", "multipart"])
def test_a_writer_that_raises_leaves_no_object(store: Store, size: int) -> None:
    # Given a writer that has written some data (a whole part, for the large case)
    data = os.urandom(size)

    # When its block raises
    with pytest.raises(Boom), store.writer("2025-01-01/x/public.users.dump.zst") as w:
        for i in range(0, size, 1 << 20):
            w.write(data[i : i + (1 << 20)])
        raise Boom

    # Then no object, temp file or pending upload is left
    assert store.list("") == []
    assert not store.exists("2025-01-01/x/public.users.dump.zst")
    assert _leftovers(store) == []


def test_an_object_larger_than_a_part_round_trips(store: Store) -> None:
    # Given more than one S3 part of incompressible bytes
    data = os.urandom(PART_SIZE + PART_SIZE // 2 + 123)

    # When it is streamed in and read back
    with store.writer("big/object.bin") as w:
        for i in range(0, len(data), 1 << 20):
            w.write(data[i : i + (1 << 20)])
    chunks = list(store.read("big/object.bin"))

    # Then it is identical, in bounded chunks
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()
    assert max(len(c) for c in chunks) <= 1 << 20
    assert [o.size for o in store.list("big/")] == [len(data)]


def test_a_large_object_goes_multipart_on_s3(aws: Any) -> None:
    # Given an S3 store
    store = S3Store(BUCKET, "p", client=aws)
    data = os.urandom(PART_SIZE + 1)

    # When more than 8 MiB is streamed in 1 MiB writes
    with store.writer("obj") as w:
        for i in range(0, len(data), 1 << 20):
            w.write(data[i : i + (1 << 20)])

    # Then S3 assembled it from two parts, with SHA-256 checksums, and nothing is pending
    head = aws.head_object(Bucket=BUCKET, Key="p/obj", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-2")
    assert head["ContentLength"] == len(data)
    assert store.get_bytes("obj") == data
    assert aws.list_multipart_uploads(Bucket=BUCKET).get("Uploads") is None


def test_reading_a_missing_key_raises_object_missing(store: Store) -> None:
    # Given an empty store
    # When a key it does not hold is read
    with pytest.raises(ObjectMissing) as caught:
        store.get_bytes("2025-01-01/nope/manifest.json")

    # Then the error names the object
    assert "2025-01-01/nope/manifest.json" in str(caught.value)


def test_a_store_keeps_to_its_prefix(aws: Any) -> None:
    # Given two stores in one bucket, one under a prefix
    rooted = S3Store(BUCKET, "", client=aws)
    team = S3Store(BUCKET, "/team/", client=aws)

    # When each writes an object
    rooted.put_bytes("a", b"1")
    team.put_bytes("a", b"2")

    # Then each sees its own
    assert [o.key for o in rooted.list("")] == ["a", "team/a"]
    assert [o.key for o in team.list("")] == ["a"]
    assert team.get_bytes("a") == b"2"
    assert team.url == f"s3://{BUCKET}/team"


def test_backup_and_restore_end_to_end_on_s3(
    aws: Any, seeded: Database, make_database: Callable[..., Database]
) -> None:
    # Given an s3:// store opened by URL (its boto3 client is moto's), and an empty target
    store = open_store(f"s3://{BUCKET}/backups/prod")
    assert isinstance(store, S3Store)
    target = make_database()
    tables = [QualifiedName.parse(t) for t in seed.TABLES]

    # When the seed tables are backed up, listed, verified and restored
    result = run_backup(seeded.dsn, store, tables)
    [ref] = inventory.list_backups(store)
    report = inventory.verify_backup(store, result.backup_id)
    restored = run_restore(store, result.backup_id, target.dsn, RestoreOptions())

    # Then the target has the source's rows, and the objects sit under the prefix
    assert (ref.backup_id, ref.complete, ref.tables) == (result.backup_id, True, seed.TABLES)
    assert report.ok and len(report.objects) == 4
    assert restored.ok, restored.problems()
    assert table_fingerprints(target, seed.TABLES) == table_fingerprints(seeded, seed.TABLES)
    keys = [o["Key"] for o in aws.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert all(k.startswith(f"backups/prod/{ref.prefix}") for k in keys)
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == sorted(
        ["manifest.json", "manifest.json.sha256", "types.sql", *(f"{t}.dump.zst" for t in seed.TABLES)])
    assert result.url == f"s3://{BUCKET}/backups/prod/{ref.prefix}"


def test_a_changed_object_on_s3_fails_verification_and_restore(
    aws: Any, seeded: Database, make_database: Callable[..., Database]
) -> None:
    # Given an S3 backup whose users dump was overwritten with other bytes
    store = S3Store(BUCKET, "b", client=aws)
    result = run_backup(seeded.dsn, store, [QualifiedName.parse("public.users")])
    key = f"b/{result.manifest_key.rsplit('/', 1)[0]}/public.users.dump.zst"
    body = bytearray(aws.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[-10] ^= 0x01
    aws.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    target = make_database()

    # When it is verified and restored
    report = inventory.verify_backup(store, result.backup_id)
    with pytest.raises(Exception) as caught:
        run_restore(store, result.backup_id, target.dsn)

    # Then both see the mismatch, and the target is untouched
    assert [o.problem for o in report.objects] == ["checksum mismatch"]
    assert type(caught.value).__name__ == "ChecksumMismatch"
    assert caught.value.exit_code == 1  # type: ignore[attr-defined]
    assert target.scalar("select count(*) from pg_tables where schemaname = 'public'") == 0


# --- durability and permissions of the file store (power loss; production rows on a shared disk) ---
def test_a_file_object_is_durable_folder_entries_included(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given: every fsync recorded by the path it reached
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store = FileStore(tmp_path / "store")
    # When: an object is written into folders that do not exist yet
    store.put_bytes("2025-01-01/b1/manifest.json", b"{}")
    # Then: the file, the folder it was renamed in, and each new folder's parent were fsynced
    root = tmp_path / "store"
    assert any(p.startswith(str(root / "2025-01-01" / "b1" / ".manifest.json.")) for p in synced), synced
    assert str(root / "2025-01-01" / "b1") in synced  # the rename
    assert str(root / "2025-01-01") in synced  # mkdir b1
    assert str(root) in synced  # mkdir 2025-01-01
    assert str(tmp_path) in synced  # mkdir store


def test_file_objects_are_private(tmp_path: Path) -> None:
    # Given a permissive umask
    old = os.umask(0o022)
    try:
        store = FileStore(tmp_path / "store")
        # When
        store.put_bytes("2025-01-01/b1/public.users.dump.zst", b"rows")
    finally:
        os.umask(old)
    # Then: 0600 objects, 0700 folders
    root = tmp_path / "store"
    assert (root / "2025-01-01" / "b1" / "public.users.dump.zst").stat().st_mode & 0o777 == 0o600
    for folder in (root, root / "2025-01-01", root / "2025-01-01" / "b1"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder


# --- S3: part sizes, checksums, delete errors -------------------------------------------------------
def test_the_part_size_grows_so_ten_thousand_parts_hold_terabytes() -> None:
    from migsafe.store import s3

    assert s3.part_size(1) == s3.part_size(1000) == 8 << 20
    assert s3.part_size(1001) == 16 << 20 and s3.part_size(2001) == 32 << 20
    assert s3.part_size(10_000) <= s3.MAX_PART
    capacity = sum(s3.part_size(n) for n in range(1, s3.MAX_PARTS + 1))
    assert capacity > 5 << 40  # fixed 8 MiB parts stop at ~78 GiB


def test_an_s3_writer_grows_its_parts_and_stores_each_parts_sha256(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: parts that double after every part (instead of every 1,000), from moto's 5 MiB minimum
    from migsafe.store import s3

    monkeypatch.setattr(s3, "PART_SIZE", 5 << 20)
    monkeypatch.setattr(s3, "PARTS_PER_STEP", 1)
    store = S3Store(BUCKET, "p", client=aws)
    data = os.urandom(1 << 20) * 18  # 18 MiB: parts of 5, 10 and 3 MiB
    # When
    with store.writer("big") as w:
        for i in range(0, len(data), 1 << 20):
            w.write(data[i : i + (1 << 20)])
    # Then: three parts of growing size, and S3 holds each part's SHA-256 (the object's checksum is
    # the composite: the sha256 of the parts' sha256s)
    import base64

    head = aws.head_object(Bucket=BUCKET, Key="p/big", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    parts = [data[: 5 << 20], data[5 << 20 : 15 << 20], data[15 << 20 :]]
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    assert head.get("ChecksumSHA256", "").split("-")[0] == base64.b64encode(composite).decode(), head
    sizes = [aws.head_object(Bucket=BUCKET, Key="p/big", PartNumber=n)["ContentLength"] for n in (1, 2, 3)]
    assert sizes == [5 << 20, 10 << 20, 3 << 20]
    assert store.get_bytes("big") == data


def test_an_s3_delete_that_s3_partly_refuses_is_an_error(aws: Any) -> None:
    # Given: S3 answering DeleteObjects with a per-key error (the call itself succeeds)
    from migsafe.exceptions import StoreUnreachable

    store = S3Store(BUCKET, "p", client=aws)
    store.put_bytes("a", b"1")

    def refuse(parsed: dict[str, Any], **_: Any) -> None:
        parsed["Errors"] = [{"Key": "p/a", "Code": "AccessDenied", "Message": "denied"}]

    aws.meta.events.register("after-call.s3.DeleteObjects", refuse)
    # When / Then
    with pytest.raises(StoreUnreachable, match="AccessDenied"):
        store.delete(["a"])
