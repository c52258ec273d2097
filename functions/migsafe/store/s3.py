"""``s3://bucket/prefix`` store: streaming multipart uploads with S3-side SHA-256 checksums.

Parts are buffered up to ``part_size`` (8 MiB) so memory is bounded; S3 verifies every part's
SHA-256 as it stores it. An aborted writer aborts the multipart upload, so nothing half-written is
ever visible; the bucket's lifecycle rule cleans up uploads orphaned by a killed process.
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

from ..exceptions import ObjectMissing, StoreUnreachable, TransientAwsError
from .base import CHUNK, ObjectInfo, ObjectWriter, Store

PART_SIZE = 8 << 20
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
            body = bytes(self._buf)
            number = len(self._parts) + 1
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
            self._buf.clear()
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise _fault("upload", self._where, exc) from exc

    def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= PART_SIZE:
            self._flush_part()

    def commit(self) -> None:
        try:
            if self._upload_id is None:
                body = bytes(self._buf)
                self._s3.put_object(
                    Bucket=self._bucket, Key=self._key, Body=body, ChecksumSHA256=_b64sha256(body)
                )
                return
            if self._buf:
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
        batch: list[Any] = [{"Key": self.full_key(k)} for k in keys]
        try:
            for i in range(0, len(batch), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch[i : i + 1000], "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            raise _fault("delete", self.url, exc) from exc

    def check(self) -> None:
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.full_key(""), MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            raise _fault("list", self.url, exc) from exc
