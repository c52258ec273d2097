"""Store faults: S3 failing in the middle of a multipart upload, S3 slow. No manifest, nothing left."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from migsafe import inventory
from migsafe.backup import BackupOptions, run_backup
from migsafe.exceptions import BackupFailed
from migsafe.identifiers import QualifiedName
from migsafe.store import s3
from migsafe.store.s3 import S3Store
from moto import mock_aws
from pgsupport import Database

BUCKET = "migsafe-chaos"


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        c = boto3.client("s3", region_name="us-east-1")
        c.create_bucket(Bucket=BUCKET)
        yield c


@pytest.fixture
def big(make_database: Callable[..., Database], monkeypatch: pytest.MonkeyPatch) -> Database:
    """A table of ~16 MiB of incompressible text: three 5 MiB parts and a tail."""
    monkeypatch.setattr(s3, "PART_SIZE", 5 << 20)
    db = make_database()
    with db.connect() as conn:
        conn.execute("create table public.big (id int primary key, pad text)")
        conn.execute("insert into public.big select g, md5(g::text) || md5((g * 7)::text) from generate_series(1, 250000) g")
    return db


def _nothing_left(store: S3Store) -> None:
    assert store.client.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0
    assert not store.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_s3_failing_on_the_nth_upload_part_leaves_no_manifest_and_no_upload(
    nth: int, client: Any, big: Database
) -> None:
    # Given: S3 failing the nth UploadPart (injected at the botocore boundary)
    store = S3Store(BUCKET, "backups", client=client)
    calls = {"n": 0}

    def fail_nth(**_: Any) -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="https://s3.invalid")

    client.meta.events.register("before-call.s3.UploadPart", fail_nth)
    # When / Then: the backup fails as an environment fault (exit 3) ...
    with pytest.raises(BackupFailed) as caught:
        run_backup(big.dsn, store, [QualifiedName.parse("public.big")], BackupOptions(compression="none"))
    assert caught.value.exit_code == 3
    # ... and leaves no object, no manifest, no unfinished upload
    _nothing_left(store)
    assert inventory.list_backups(store) == []


def test_a_slow_s3_still_gives_a_whole_backup(client: Any, big: Database) -> None:
    # Given: every S3 call delayed
    store = S3Store(BUCKET, "backups", client=client)
    client.meta.events.register("before-call.s3.*", lambda **_: time.sleep(0.05))
    # When
    result = run_backup(big.dsn, store, [QualifiedName.parse("public.big")], BackupOptions(compression="none"))
    # Then
    assert inventory.verify_backup(store, result.backup_id).ok
    assert not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
