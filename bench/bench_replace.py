"""Restore ``--replace`` into a populated database: wall time and the lock window.

The target is a copy of the source (``create database ... template``, outside the timing), so every
table exists with the backup's rows; the restore replaces them. The lock window is the time the
target tables are held ACCESS EXCLUSIVE, as ``RestoreReport.lock_window_seconds`` reports it (in a
branch whose restore does not report one, the figure is absent: a single-transaction restore holds
the locks for all of it). Ratio against the plain restore into an empty database of the same run.

Goal (issue 11): lock window <= 1 s at 5M and flat in the table size.
"""

from __future__ import annotations

from typing import Any

from bench.common import Context, interleave, summarize

NAME = "replace"
VARIANT = "migsafe restore --replace"


def run(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"figures": {}, "ratios": {}}
    for label in ctx.sizes:
        shared = ctx.shared[label]

        def measure(name: str, rnd: int, shared: dict[str, Any] = shared, label: str = label) -> dict[str, Any]:
            with ctx.database("populated", template=ctx.sizes[label]["db"]) as target:
                timing, printed = ctx.bench.worker("_restore", "--mode", "replace", "--store", shared["store"],
                                                   "--backup-id", shared["backup_id"], "--dsn", target.url())  # fmt: skip
                return {**timing, **printed}

        figures = summarize(interleave(ctx.repeat, [VARIANT], measure, say=ctx.say, label=f"{label} replace"))
        out["figures"][label] = figures
        entry = figures[VARIANT]
        out["ratios"][label] = {
            f"{VARIANT} / migsafe restore (empty)": round(entry["median_s"] / shared["restore_s"], 3)
            if shared.get("restore_s") else None,
            "lock_window_s": entry.get("lock_window_s"),
            "goal_lock_window_s": 1.0,
        }
    return out
