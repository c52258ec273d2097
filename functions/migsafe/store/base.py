"""One store interface, two implementations (``file://`` and ``s3://``).

Objects appear whole or not at all: a writer commits on a clean exit and aborts (removing what it
wrote) on an exception. Reads are streamed in chunks so memory stays bounded whatever the size.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

CHUNK = 1 << 20  # 1 MiB reads and writes


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


Objects = list[ObjectInfo]  # (a module-level name: inside Store, ``list`` is the method)


class ObjectWriter(abc.ABC):
    """A streaming upload; use through :meth:`Store.writer`."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None: ...


class Store(abc.ABC):
    """A flat key space under one root (a folder, or an S3 bucket and prefix)."""

    url: str

    @abc.abstractmethod
    def open_writer(self, key: str) -> ObjectWriter: ...

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[ObjectWriter]:
        """Stream an object; it becomes visible only if the block exits cleanly."""
        w = self.open_writer(key)
        try:
            yield w
        except BaseException:
            w.abort()
            raise
        w.commit()

    @abc.abstractmethod
    def read(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the object's bytes in chunks; raises ObjectMissing if absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete objects (missing ones are ignored)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise StoreUnreachable unless the store can be listed (and written: it may be created)."""

    @abc.abstractmethod
    def require_exists(self) -> None:
        """Raise StoreNotFound unless the store already exists (reading verbs never create one)."""

    def partials(self, prefix: str = "") -> Objects:
        """What killed writers left under ``prefix``: never listed, never read, only counted and removed."""
        return []

    def delete_partials(self, partials: Iterable[ObjectInfo]) -> None:
        """Remove what :meth:`partials` returned (missing ones are ignored)."""
        return None

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.writer(key) as w:
            w.write(data)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.read(key))

    def exists(self, key: str) -> bool:
        return any(o.key == key for o in self.list(key))

    def location(self, key: str) -> str:
        """A human-readable URL for a key."""
        return self.url.rstrip("/") + "/" + key
