"""``file://`` store: a folder; objects are written to a hidden temp file then renamed into place.

Durability: the temp file is fsynced before the rename, the folder after it (a rename lives in the
folder's entries, so without that fsync a power loss can undo it and lose a manifest reported
written), and every new folder's parent after its mkdir. Objects are 0600 and folders 0700: a backup
holds production rows.

A writer killed midway leaves its hidden ``.<name>.<random>.migsafe-partial`` file: never listed as
an object, but reported by :meth:`FileStore.partials` so that ``backups list`` counts its bytes and
``prune`` removes it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from ..exceptions import ObjectMissing, StoreNotFound, StoreUnreachable
from .base import CHUNK, ObjectInfo, Objects, ObjectWriter, Store

_TMP_SUFFIX = ".migsafe-partial"


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in {"", ".", ".."} for p in parts):
        raise StoreUnreachable(f"invalid object key {key!r}")
    return key


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file or folder in it) survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` with 0700 folders, each new one made durable by an fsync of its parent."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    fsync_dir(path.parent)


class _FileWriter(ObjectWriter):
    def __init__(self, final: Path) -> None:
        self._final = final
        self._tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")
        try:
            make_dirs(final.parent)
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._fh: BinaryIO = os.fdopen(fd, "wb")
        except OSError as exc:
            raise StoreUnreachable(f"cannot write {final}: {exc.strerror}") from exc

    def write(self, data: bytes) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            raise StoreUnreachable(f"cannot write {self._final}: {exc.strerror}") from exc

    def commit(self) -> None:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._tmp, self._final)
            fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise StoreUnreachable(f"cannot write {self._final}: {exc.strerror}") from exc

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


class FileStore(Store):
    def __init__(self, root: str | Path, url: str | None = None) -> None:
        self.root = Path(root)
        self.url = url or f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    def open_writer(self, key: str) -> ObjectWriter:
        return _FileWriter(self._path(key))

    def read(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - generator closes it
        except FileNotFoundError:
            raise ObjectMissing(f"object missing from store: {self.location(key)}") from None
        except OSError as exc:
            raise StoreUnreachable(f"cannot read {path}: {exc.strerror}") from exc
        with fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.exists():
            return []
        if not self.root.is_dir():
            raise StoreUnreachable(f"store root is not a directory: {self.root}")
        out = []
        try:
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    if name.endswith(_TMP_SUFFIX):
                        continue
                    full = Path(dirpath) / name
                    key = full.relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        st = full.stat()
                        out.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        except OSError as exc:
            raise StoreUnreachable(f"cannot list {self.root}: {exc.strerror}") from exc
        return sorted(out, key=lambda o: o.key)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StoreUnreachable(f"cannot delete {path}: {exc.strerror}") from exc
            # remove now-empty folders up to the root
            parent = path.parent
            while parent != self.root and parent.is_relative_to(self.root):
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def check(self) -> None:
        """Writable, or creatable: the root exists, or its parent does (a mistyped path is refused)."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreUnreachable(f"store root is not a directory: {self.root}")
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():  # a regular file on the way: the root can never be created
            raise StoreUnreachable(f"store root cannot be created, {probe} is not a directory: {self.root}")
        if probe not in (self.root, self.root.parent):
            raise StoreNotFound(
                f"store folder {self.root} does not exist, nor does its parent {self.root.parent}: "
                "create it first (a mistyped path must not become a new store)"
            )
        if not os.access(probe, os.W_OK):
            raise StoreUnreachable(f"store root is not writable: {self.root}")

    def require_exists(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreUnreachable(f"store root is not a directory: {self.root}")
        if not self.root.is_dir():
            raise StoreNotFound(f"no store at {self.url}: {self.root} does not exist")

    def partials(self, prefix: str = "") -> Objects:
        out: Objects = []
        if not self.root.is_dir():
            return out
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.endswith(_TMP_SUFFIX):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        st = full.stat()
                        out.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return sorted(out, key=lambda o: o.key)

    def delete_partials(self, partials: Iterable[ObjectInfo]) -> None:
        self.delete(p.key for p in partials if p.key.endswith(_TMP_SUFFIX))
