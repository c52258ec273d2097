"""Backup: ``migsafe.backup.run_backup`` to a ``file://`` store against raw ``pg_dump -Fc``.

Per size, in interleaved rounds: the seed kit's backup (one ``pg_dump -Fc`` per table, sequentially,
into files), ``pg_dump -Fc -Z0`` (the floor of the archive format without compression), and migsafe's
variants (each in a child process that reports its own peak RSS). The default variant's backup ids and
the raw dumps are left in ``ctx.shared`` for the restore benchmarks.

Goals (issue 11): migsafe default <= 0.45x ``pg_dump -Fc`` at 1M rows and <= 0.35x at 5M, no larger.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from migsafe.backup import BackupOptions

from bench.common import BIG, Context, interleave, ratio, raw_dump, summarize

NAME = "backup"
DEFAULT = "migsafe"  # BackupOptions' defaults, as the plan's
# name: extra worker arguments; the levers of issue 11, one at a time against the default
VARIANTS: dict[str, list[str]] = {
    DEFAULT: [],
    "migsafe readahead=8": ["--readahead", "8"],
    "migsafe zstd-3": ["--level", "3"],
    "migsafe threads=1": ["--threads", "1"],
    # the content fingerprint's cost: the old text method, and none at all (row count only)
    "migsafe fingerprint=text": ["--fingerprint", "text"],
    "migsafe fingerprint=off": ["--fingerprint", "off"],
    # tables over BackupOptions.split_bytes as parallel COPY parts (the default) against whole pg_dumps
    "migsafe split=off": ["--split-bytes", "0"],
    "migsafe split=off fingerprint=off": ["--split-bytes", "0", "--fingerprint", "off"],
    "migsafe split=off fingerprint=text": ["--split-bytes", "0", "--fingerprint", "text"],
}
SMOKE_VARIANTS = [DEFAULT]
# the floor of one pg_dump archive per table: the largest table's dump alone, uncompressed
FLOOR = f"pg_dump -Fc -Z0 -t {BIG} alone"
GOALS = {"1M": 0.45, "5M": 0.35}


def run(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"figures": {}, "ratios": {}}
    variants = SMOKE_VARIANTS if ctx.smoke else ctx.shared.get("backup_variants", list(VARIANTS))
    if set(variants) - set(VARIANTS):
        raise ValueError(f"unknown backup variants {sorted(set(variants) - set(VARIANTS))}: {list(VARIANTS)}")
    if "zstd_threads" not in {f.name for f in dataclasses.fields(BackupOptions)}:
        out["unavailable"] = {v: "BackupOptions.zstd_threads is missing" for v in variants if "--threads" in VARIANTS[v]}
    if "readahead" not in {f.name for f in dataclasses.fields(BackupOptions)}:
        out.setdefault("unavailable", {}).update({v: "BackupOptions.readahead is missing" for v in variants
                                                  if "--readahead" in VARIANTS[v]})
    variants = [v for v in variants if v not in out.get("unavailable", {})]
    for label in ctx.sizes:
        src = ctx.source(label)
        raw = ctx.bench.work / label / "raw"
        store_url = f"file://{ctx.bench.work / label / 'store'}"
        backup_ids: dict[str, str] = {}

        def measure(name: str, rnd: int, src: Any = src, raw: Any = raw, store_url: str = store_url,
                    backup_ids: dict[str, str] = backup_ids) -> dict[str, Any]:  # fmt: skip
            if name == "pg_dump -Fc":
                return raw_dump(ctx.bench, src, raw / "gz")
            if name == "pg_dump -Fc -Z0":
                return raw_dump(ctx.bench, src, raw / "z0", ["-Z0"])
            if name == FLOOR:
                return raw_dump(ctx.bench, src, raw / "floor", ["-Z0"], tables=[BIG])
            timing, printed = ctx.bench.worker("_backup", "--dsn", src.url(), "--store", store_url, *VARIANTS[name])
            backup_ids[name] = printed["backup_id"]
            return {**timing, **printed}

        names = ["pg_dump -Fc", *([] if ctx.smoke else ["pg_dump -Fc -Z0", FLOOR]), *variants]
        samples = interleave(ctx.repeat, names, measure, say=ctx.say, label=f"{label} backup")
        figures = summarize(samples)
        out["figures"][label] = figures
        out["ratios"][label] = {f"{n} / pg_dump -Fc": ratio(figures, n, "pg_dump -Fc") for n in figures
                                if n != "pg_dump -Fc"}  # fmt: skip
        if label in GOALS and DEFAULT in figures:
            out["ratios"][label]["goal"] = GOALS[label]
        ctx.shared.setdefault(label, {}).update(
            store=store_url, backup_id=backup_ids.get(DEFAULT), raw=raw, backup_figures=figures
        )
    return out
