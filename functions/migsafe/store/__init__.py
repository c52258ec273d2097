"""Backup stores: ``file://PATH`` and ``s3://BUCKET/PREFIX`` behind one interface."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from ..exceptions import InputError
from .base import ObjectInfo, ObjectWriter, Store
from .file import FileStore

__all__ = ["FileStore", "ObjectInfo", "ObjectWriter", "Store", "open_store"]


def open_store(url: str, base_dir: Path | None = None) -> Store:
    """A store for ``file:///abs``, ``file://./rel`` (relative to ``base_dir``), a bare path, or ``s3://``."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InputError(f"store URL needs a bucket: {url}")
        from .s3 import S3Store

        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme in {"file", ""}:
        raw = unquote(parsed.netloc + parsed.path) if parsed.scheme == "file" else url
        path = Path(raw)
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        return FileStore(path.resolve(), url=f"file://{path.resolve()}")
    raise InputError(f"unsupported store URL {url!r}: use file://PATH or s3://BUCKET/PREFIX")
