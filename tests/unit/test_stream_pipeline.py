"""``streams.stream_to_store``: the read-ahead thread and zstd threads change the speed, not the bytes."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zstandard
from migsafe.exceptions import ToolFailed
from migsafe.store import FileStore
from migsafe.streams import Cancelled, stream_to_store

DATA = b"".join(b"%d\tuser %d\tmarket_edge\tt\n" % (i, i % 977) for i in range(300_000))  # ~8 MB, many chunks


@pytest.mark.parametrize(("readahead", "threads"), [(0, 0), (8, 0), (1, 0), (8, 1)])
def test_the_stored_object_decompresses_to_the_source_and_its_sha256_is_of_the_stored_bytes(
    tmp_path: Path, readahead: int, threads: int
) -> None:
    # Given
    store = FileStore(tmp_path)
    # When
    written = stream_to_store(io.BytesIO(DATA), store, "t.dump.zst", "zstd", zstd_threads=threads, readahead=readahead)
    # Then
    stored = (tmp_path / "t.dump.zst").read_bytes()
    assert written.bytes == len(stored)
    assert written.sha256 == hashlib.sha256(stored).hexdigest()
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == DATA


def test_a_failing_tool_leaves_no_object_with_read_ahead(tmp_path: Path) -> None:
    # Given a producer whose exit check fails after it has sent its bytes
    store = FileStore(tmp_path)

    def finish() -> None:
        raise ToolFailed("pg_dump failed (dump t, exit 1): boom")

    # When / Then
    with pytest.raises(ToolFailed):
        stream_to_store(io.BytesIO(DATA), store, "t.dump.zst", "zstd", readahead=8, finish=finish)
    assert not (tmp_path / "t.dump.zst").exists()


def test_cancel_stops_a_stream_whose_producer_is_stalled(tmp_path: Path) -> None:
    # Given a producer that sends a little, then nothing (a pg_dump waiting on a lock)
    store = FileStore(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "import sys,time; sys.stdout.write('x'*1000); sys.stdout.flush(); time.sleep(60)"],
                            stdout=subprocess.PIPE)  # fmt: skip
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    # When
    t0 = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            assert proc.stdout is not None
            stream_to_store(proc.stdout, store, "t.dump.zst", "zstd", readahead=8, cancel=cancel)
        waited = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    # Then it returned on the cancel, not when the producer ended, and stored nothing
    assert waited < 30
    assert not (tmp_path / "t.dump.zst").exists()
    assert os.listdir(tmp_path) == []  # no partial file either
