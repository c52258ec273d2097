"""Restore into an empty database: ``migsafe restore`` against stock ``pg_restore``, serial and ``-j``.

Per size, interleaved rounds on fresh databases: ``psql -f types.sql`` then ``pg_restore`` of each raw
``pg_dump -Fc`` dump (serially, and with ``-j <cpus>``), against ``python -m migsafe restore`` of the
backup benchmark's default backup, as a user runs it (its peak RSS through the worker).

Goal (issue 11): migsafe <= 0.7x serial pg_restore. ``-j`` is for reference.
"""

from __future__ import annotations

from typing import Any

from bench.common import Context, interleave, ratio, raw_restore, summarize

NAME = "restore"
MIGSAFE = "migsafe restore"


def run(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"figures": {}, "ratios": {}}
    parallel = f"pg_restore -j{ctx.cpus}"
    for label in ctx.sizes:
        shared = ctx.shared[label]

        def measure(name: str, rnd: int, shared: dict[str, Any] = shared) -> dict[str, Any]:
            with ctx.database("tgt") as target:
                if name.startswith("pg_restore"):
                    return raw_restore(ctx.bench, ctx.types_sql, shared["raw"] / "gz", target,
                                       jobs=ctx.cpus if name == parallel else 1)  # fmt: skip
                return ctx.bench.migsafe_cli("restore", "--store", shared["store"], "--backup-id",
                                             shared["backup_id"], "--target-dsn", target.url())  # fmt: skip

        samples = interleave(ctx.repeat, ["pg_restore", parallel, MIGSAFE], measure, say=ctx.say,
                             label=f"{label} restore")  # fmt: skip
        figures = summarize(samples)
        out["figures"][label] = figures
        out["ratios"][label] = {f"{MIGSAFE} / pg_restore": ratio(figures, MIGSAFE, "pg_restore"),
                                f"{MIGSAFE} / {parallel}": ratio(figures, MIGSAFE, parallel), "goal": 0.7}  # fmt: skip
        shared["restore_s"] = figures[MIGSAFE]["median_s"]
    return out
