"""``s3://bucket/prefix`` store: streaming multipart uploads with S3-side SHA-256 checksums.

Parts are buffered up to the part size so memory is bounded; S3 verifies every part's SHA-256 as it
stores it. The size of a dump is unknown up front and S3 allows 10,000 parts, so the part size grows
with the stream: 8 MiB for parts 1-1,000, then doubling every 1,000 parts (:func:`part_size`), which
reaches ~8 TiB by part 10,000 while a small object still uses 8 MiB of memory. An aborted writer
aborts the multipart upload, so nothing half-written is ever visible; uploads orphaned by a killed
process are listed by :meth:`S3Store.partials` and aborted by ``prune`` (the bucket's lifecycle rule
is the backstop).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..exceptions import ObjectMissing, StoreNotFound, StoreUnreachable, TransientAwsError
from .base import CHUNK, ObjectInfo, Objects, ObjectWriter, Store

PART_SIZE = 8 << 20  # the first parts; see part_size()
PARTS_PER_STEP = 1000
MAX_PART = 5 << 30  # S3's limit for one part
MAX_PARTS = 10_000
UPLOAD_SEPARATOR = "#upload="  # partials() names an orphaned upload "<key>#upload=<id>"


def part_size(number: int) -> int:
    """The size of part ``number`` (1-based): 8 MiB, doubled every 1,000 parts, at most 5 GiB."""
    return min(PART_SIZE << ((number - 1) // PARTS_PER_STEP), MAX_PART)
_TRANSIENT = {"Throttling", "ThrottlingException", "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"}


def _fault(action: str, where: str, exc: Exception) -> Exception:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _TRANSIENT:
            return TransientAwsError(f"S3 {action} {where}: {code} (retry)")
        return StoreUnreachable(f"S3 {action} {where}: {code or exc}")
    return StoreUnreachable(f"S3 {action} {where}: {exc}")


def _b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


class _S3Writer(ObjectWriter):
    def __init__(self, store: S3Store, key: str) -> None:
        self._s3 = store.client
        self._bucket = store.bucket
        self._key = store.full_key(key)
        self._where = store.location(key)
        self._buf = bytearray()
        self._parts: list[Any] = []  # CompletedPartTypeDef
        self._upload_id: str | None = None

    def _flush_part(self) -> None:
        try:
            if self._upload_id is None:
                resp = self._s3.create_multipart_upload(
                    Bucket=self._bucket, Key=self._key, ChecksumAlgorithm="SHA256"
                )
                self._upload_id = resp["UploadId"]
            number = len(self._parts) + 1
            size = part_size(number)
            body = bytes(self._buf[:size])
            checksum = _b64sha256(body)
            resp = self._s3.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                ChecksumSHA256=checksum,
            )
            self._parts.append({"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": checksum})
            del self._buf[: len(body)]
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise _fault("upload", self._where, exc) from exc

    def write(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= part_size(len(self._parts) + 1):
            if len(self._parts) >= MAX_PARTS:
                self.abort()
                raise StoreUnreachable(f"S3 upload {self._where}: more than {MAX_PARTS} parts")
            self._flush_part()

    def commit(self) -> None:
        try:
            if self._upload_id is None:
                body = bytes(self._buf)
                self._s3.put_object(
                    Bucket=self._bucket, Key=self._key, Body=body, ChecksumSHA256=_b64sha256(body)
                )
                return
            while self._buf:
                self._flush_part()
            self._s3.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise _fault("upload", self._where, exc) from exc

    def abort(self) -> None:
        self._buf.clear()
        if self._upload_id is not None:
            # if this fails, the bucket's lifecycle rule aborts stale uploads after a day
            with contextlib.suppress(ClientError, BotoCoreError):
                self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
            self._upload_id = None


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "", client: Any | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = client or boto3.client(
            "s3", config=Config(retries={"max_attempts": 5, "mode": "adaptive"})
        )

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def open_writer(self, key: str) -> ObjectWriter:
        return _S3Writer(self, key)

    def read(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                raise ObjectMissing(f"object missing from store: {self.location(key)}") from None
            raise _fault("read", self.location(key), exc) from exc
        except BotoCoreError as exc:
            raise _fault("read", self.location(key), exc) from exc
        body = resp["Body"]
        try:
            while chunk := body.read(chunk_size):
                yield chunk
        except (ClientError, BotoCoreError) as exc:
            raise _fault("read", self.location(key), exc) from exc
        finally:
            body.close()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(obj["Key"][strip:], obj["Size"], obj["LastModified"]))
        except (ClientError, BotoCoreError) as exc:
            raise _fault("list", self.url, exc) from exc
        return sorted(out, key=lambda o: o.key)

    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; a key S3 reports it could not delete is an error, never a silent success."""
        batch: list[Any] = [{"Key": self.full_key(k)} for k in keys]
        failed: list[str] = []
        try:
            for i in range(0, len(batch), 1000):
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch[i : i + 1000], "Quiet": True}
                )
                failed += [f"{e.get('Key')} ({e.get('Code')})" for e in resp.get("Errors", [])]
        except (ClientError, BotoCoreError) as exc:
            raise _fault("delete", self.url, exc) from exc
        if failed:
            raise StoreUnreachable(f"S3 delete {self.url}: {len(failed)} object(s) not deleted: {', '.join(failed[:5])}")

    def check(self) -> None:
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.full_key(""), MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            raise _fault("list", self.url, exc) from exc

    def require_exists(self) -> None:
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.full_key(""), MaxKeys=1)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise StoreNotFound(f"no store at {self.url}: bucket {self.bucket} does not exist") from exc
            raise _fault("list", self.url, exc) from exc
        except BotoCoreError as exc:
            raise _fault("list", self.url, exc) from exc

    def partials(self, prefix: str = "") -> Objects:
        """Multipart uploads under our prefix that were never completed (a killed writer's)."""
        out = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
                for up in page.get("Uploads", []):
                    size = 0
                    parts = self.client.list_parts(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    size = sum(int(p.get("Size", 0)) for p in parts.get("Parts", []))
                    key = up["Key"][strip:] + UPLOAD_SEPARATOR + up["UploadId"]
                    out.append(ObjectInfo(key, size, up["Initiated"]))
        except (ClientError, BotoCoreError) as exc:
            raise _fault("list uploads", self.url, exc) from exc
        return sorted(out, key=lambda o: o.key)

    def delete_partials(self, partials: Iterable[ObjectInfo]) -> None:
        for p in partials:
            key, sep, upload_id = p.key.partition(UPLOAD_SEPARATOR)
            if not sep:
                continue
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.full_key(key), UploadId=upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise _fault("abort upload", self.location(key), exc) from exc
            except BotoCoreError as exc:
                raise _fault("abort upload", self.location(key), exc) from exc
