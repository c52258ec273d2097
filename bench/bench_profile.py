"""Where the time goes: migsafe's restore and backup phase by phase, and the codecs on one core.

One instrumented run of each at the first size (``workers.py _profile_restore`` / ``_profile_backup``
wrap whichever of the module's phase functions exist in this branch), and the compression speed of
zstd (levels 1 and 3, with 0-2 worker threads) and gzip on the biggest table's uncompressed archive.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import BIG, Context

NAME = "profile"


def run(ctx: Context) -> dict[str, Any]:
    label = next(iter(ctx.sizes))
    shared = ctx.shared[label]
    out: dict[str, Any] = {"size": label}
    with ctx.database("prof") as target:
        _t, out["restore"] = ctx.bench.worker("_profile_restore", "--store", shared["store"], "--backup-id",
                                              shared["backup_id"], "--dsn", target.url())  # fmt: skip
    _t, out["backup"] = ctx.bench.worker("_profile_backup", "--dsn", ctx.source(label).url(), "--store",
                                         shared["store"])  # fmt: skip
    archive = ctx.bench.work / label / "profile-z0.dump"
    ctx.bench.run([ctx.bench.bin("pg_dump"), "-Fc", "-Z0", f"--table={BIG}", f"--file={archive}",
                   f"--dbname={ctx.source(label).conninfo()}"])  # fmt: skip
    out["codecs"] = compression_speed(archive)
    archive.unlink()
    return out


def compression_speed(path: Path) -> dict[str, Any]:
    """Compression of an uncompressed archive: CPU and wall per MB for each codec and thread count."""
    import zstandard

    data = path.read_bytes()
    out: dict[str, Any] = {"input": path.name, "input_bytes": len(data)}

    def zstd(level: int, threads: int) -> Callable[[bytes], bytes]:
        def run(b: bytes) -> bytes:  # streaming, in 1 MiB chunks, as migsafe feeds it
            c = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True).compressobj()
            parts = [c.compress(b[i : i + (1 << 20)]) for i in range(0, len(b), 1 << 20)]
            return b"".join([*parts, c.flush()])

        return run

    codecs: dict[str, Callable[[bytes], bytes]] = {
        "zstd-1": zstd(1, 0),
        "zstd-1 threads=1": zstd(1, 1),
        "zstd-1 threads=2": zstd(1, 2),
        "zstd-3": zstd(3, 0),
        "zstd-3 threads=2": zstd(3, 2),
        "gzip-6 (pg_dump's default)": lambda b: zlib.compress(b, 6),
    }
    for name, fn in codecs.items():
        t0, c0 = time.monotonic(), time.process_time()
        packed = fn(data)
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
        out[name] = {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "mb_per_s_wall": round(len(data) / wall / 1e6, 1),
                     "bytes": len(packed), "ratio": round(len(data) / max(1, len(packed)), 2)}  # fmt: skip
    return out
