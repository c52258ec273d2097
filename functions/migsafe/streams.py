"""Streaming helpers: a child process's stdout through compression and sha256 into a store object.

Nothing is staged on disk and memory stays bounded (one chunk plus the compressor's window, and on
S3 one 8 MiB part) whatever the table size.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Literal

import zstandard

from . import pgtools
from .dsn import mask
from .exceptions import ChecksumMismatch, MigsafeError, ToolFailed
from .store.base import CHUNK, Store

Compression = Literal["zstd", "gzip", "none"]


@dataclass
class Written:
    key: str
    bytes: int
    sha256: str


class Cancelled(MigsafeError):
    """Another worker failed; this one stopped early."""


class Tool:
    """A running PostgreSQL client tool whose stderr goes to a temp file (no pipe deadlock).

    It runs in its own process group (see :func:`pgtools.spawn`): :meth:`kill` stops the group and
    waits, and an interrupt anywhere in migsafe stops it through :func:`pgtools.stop_all`.
    """

    def __init__(self, argv: list[str], env: dict[str, str], *, stdin: int | IO[bytes] | None = None,
                 stdout: int | IO[bytes] | None = subprocess.PIPE) -> None:
        self.name = argv[0].rsplit("/", 1)[-1]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()/kill()
        self.proc = pgtools.spawn(argv, stdin=stdin, stdout=stdout, stderr=self._stderr, env=env)

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return mask(self._stderr.read().decode(errors="replace").strip())

    def finish(self, what: str) -> None:
        try:
            rc = self.proc.wait()
        finally:
            pgtools.release(self.proc)
        err = self.stderr_text()
        self._stderr.close()
        if rc != 0:
            raise ToolFailed(f"{self.name} failed ({what}, exit {rc}): {err[-2000:] or 'no message'}")

    def kill(self) -> None:
        """Stop the tool (SIGTERM, then SIGKILL) and wait for it; nothing of it is left running."""
        with contextlib.suppress(OSError):
            pgtools.stop(self.proc, grace=2.0)
        with contextlib.suppress(OSError):
            self._stderr.close()


def stream_to_store(
    source: IO[bytes],
    store: Store,
    key: str,
    compression: Compression,
    *,
    zstd_level: int = 3,
    zstd_threads: int = 0,
    readahead: int = 0,
    cancel: threading.Event | None = None,
    on_bytes: Callable[[int], None] | None = None,
    finish: Callable[[], None] | None = None,
) -> Written:
    """Copy ``source`` into ``store[key]`` (zstd-compressing when asked), hashing what is stored.

    ``finish`` runs after the source is exhausted and before the object is committed, so a tool's
    non-zero exit aborts the upload: no object ever exists for a failed dump.

    Overlap, so that the producer (pg_dump and the server's COPY behind it) never waits for us:

    - ``readahead`` > 0: a thread drains ``source`` into a queue of up to that many 1 MiB chunks while
      this one compresses, hashes and writes (or uploads an S3 part). Without it, pg_dump blocks on a
      full 64 KiB pipe whenever we are busy;
    - ``zstd_threads`` > 0: zstd compresses in that many worker threads of its own (one frame still,
      which any ``zstd -d`` reads), so the compression overlaps the reading too.

    Memory stays bounded: ``readahead`` chunks, plus zstd's window and job buffers.
    """
    digest = hashlib.sha256()
    size = 0
    compressor = (
        zstandard.ZstdCompressor(level=zstd_level, threads=zstd_threads, write_checksum=True).compressobj()
        if compression == "zstd"
        else None
    )
    with store.writer(key) as out, _chunks(source, readahead, cancel) as chunks:

        def emit(data: bytes) -> None:
            nonlocal size
            if data:
                digest.update(data)
                out.write(data)
                size += len(data)

        for chunk in chunks:
            emit(compressor.compress(chunk) if compressor else chunk)
            if on_bytes:
                on_bytes(len(chunk))
        if compressor:
            emit(compressor.flush())
        if finish:
            finish()
    return Written(key, size, digest.hexdigest())


@contextlib.contextmanager
def _chunks(source: IO[bytes], readahead: int, cancel: threading.Event | None) -> Iterator[Iterator[bytes]]:
    """``source`` in CHUNK pieces, read ahead by a thread when ``readahead`` > 0; Cancelled on ``cancel``."""

    def cancelled() -> bool:
        return cancel is not None and cancel.is_set()

    if readahead <= 0:

        def inline() -> Iterator[bytes]:
            while True:
                if cancelled():
                    raise Cancelled("cancelled")
                chunk = source.read(CHUNK)
                if not chunk:
                    return
                yield chunk

        yield inline()
        return

    pending: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=readahead)
    stop = threading.Event()

    def pump() -> None:
        try:
            while not stop.is_set():
                chunk = source.read(CHUNK)
                _put(chunk or None)
                if not chunk:
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            _put(exc)

    def _put(item: bytes | BaseException | None) -> None:
        while not stop.is_set():
            try:
                pending.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def drain() -> Iterator[bytes]:
        while True:
            if cancelled():
                raise Cancelled("cancelled")
            try:
                item = pending.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    reader = threading.Thread(target=pump, name="migsafe-readahead", daemon=True)
    reader.start()
    try:
        yield drain()
    except BaseException:
        # not joined: it may sit in a read of the tool's pipe until the caller kills the tool, which
        # ends that read; then it sees ``stop`` and returns
        stop.set()
        raise
    stop.set()
    reader.join()  # it has put the end of the stream and returned


def hashed_chunks(chunks: Iterable[bytes], digest: hashlib._Hash) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def decompressed(chunks: Iterable[bytes], compression: Compression) -> Iterator[bytes]:
    if compression != "zstd":
        yield from chunks
        return
    dobj = zstandard.ZstdDecompressor().decompressobj()
    for chunk in chunks:
        # 64 KiB in at a time: 1 MiB of zstd can inflate to ~15 MB in one call (memory stays flat)
        view = memoryview(chunk)
        for i in range(0, len(view), 1 << 16):
            try:
                out = dobj.decompress(view[i : i + (1 << 16)])
            except zstandard.ZstdError as exc:
                raise ChecksumMismatch(f"checksum mismatch: the stored object is corrupt ({exc})") from exc
            if out:
                yield out
