"""Prototype (not migsafe's format): the biggest table as parallel COPY streams over ctid ranges.

What a split backup could reach: ``workers.py _split`` locks the table, exports a snapshot and runs
N sessions, each ``COPY (select * from t where ctid >= (a,0) and ctid < (b,0)) TO STDOUT`` in that
snapshot (a TID range scan), through zstd and sha256 into a file. Against ``pg_dump -Fc`` of the same
table alone, interleaved. migsafe's backup now splits large tables this way (``BackupOptions.split_bytes``,
measured against whole tables in ``bench_backup.py``); this prototype still isolates the largest table.
"""

from __future__ import annotations

import shutil
from typing import Any

from bench.common import BIG, Context, interleave, ratio, summarize

NAME = "split"
RAW = f"pg_dump -Fc -t {BIG}"
RAW_Z0 = f"pg_dump -Fc -Z0 -t {BIG}"  # the floor of one archive per table: no compression at all


def run(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"figures": {}, "ratios": {}}
    variants = [RAW, "COPY x1, zstd-1", "COPY x2, zstd-1"] + ([] if ctx.smoke else [RAW_Z0, "COPY x2, zstd-3"])
    for label in ctx.sizes:
        src = ctx.source(label)
        folder = ctx.bench.work / label / "split"

        def measure(name: str, rnd: int, src: Any = src, folder: Any = folder) -> dict[str, Any]:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            if name in (RAW, RAW_Z0):
                f = folder / "big.dump"
                r = ctx.bench.run([ctx.bench.bin("pg_dump"), "-Fc", *(["-Z0"] if name == RAW_Z0 else []),
                                   f"--table={BIG}", f"--file={f}",
                                   f"--dbname={src.conninfo()}"])  # fmt: skip
                return {**r, "bytes": f.stat().st_size}
            parts, level = name.split()[1].strip("x,"), name.rsplit("-", 1)[1]
            timing, printed = ctx.bench.worker("_split", "--dsn", src.conninfo(), "--table", BIG, "--parts", parts,
                                               "--level", level, "--out", str(folder))  # fmt: skip
            return {**timing, **printed}

        figures = summarize(interleave(ctx.repeat, variants, measure, say=ctx.say, label=f"{label} split"))
        out["figures"][label] = figures
        out["ratios"][label] = {f"{n} / {RAW}": ratio(figures, n, RAW) for n in figures if n != RAW}
        whole = ctx.shared.get(label, {}).get("backup_figures", {})
        if "pg_dump -Fc" in whole:  # against the seed kit's backup of all the tables, as the backup goal is
            for n in figures:
                out["ratios"][label][f"{n} / pg_dump -Fc (all tables)"] = round(
                    figures[n]["median_s"] / whole["pg_dump -Fc"]["median_s"], 3)
    return out
