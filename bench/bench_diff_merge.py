"""Delayed discovery: ``diff`` and ``restore --merge`` over a target that moved on since the backup.

The target is a copy of the source with 1% of the rows changed, 1% deleted and 1% new in
``user_application_access`` and ``user_invitations`` (and the new users those rows need), made once
per size and copied (``create database ... template``) for each round outside the timing. Measured
through the Python API in a child (peak RSS): ``migsafe.diff.run_diff`` and ``run_restore`` with
``RestoreOptions(merge="keep")`` and ``merge="overwrite"``. Ratio against the plain restore into an
empty database of the same run.

Goal (issue 11): <= 1.5x the plain restore. In a branch without that API the variants are reported
"not available" (the smoke test accepts that, and only that).
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from bench.common import BenchFailed, Context, Unavailable, interleave, summarize

NAME = "diff_merge"
MODES = {"migsafe diff": "diff", "migsafe restore --merge": "merge", "migsafe restore --merge=overwrite": "merge-overwrite"}

MUTATE = """
update user_application_access set has_access = not has_access where id % 100 = 1;
delete from user_application_access where id % 100 = 2;
insert into users (email, full_name)
  select 'late' || g || '@bench.example', 'late user ' || g from generate_series(1, {new_users}) g;
insert into user_application_access (user_id, application, has_access)
  select u.id, a.app, true from users u cross join unnest(enum_range(null::applicationtype)) a(app)
  where u.email like 'late%@bench.example';
update user_invitations set status = 'revoked' where id % 100 = 1;
delete from user_invitations where id % 100 = 2;
insert into user_invitations (email, invited_by, application)
  select 'late' || g || '@bench.example', (select min(id) from users), 'market_edge'
  from generate_series(1, {new_invitations}) g;
"""


def mutated_copy(ctx: Context, label: str) -> str:
    """A copy of the source with the 1% changed / deleted / new rows (kept for every round)."""
    name = ctx.fresh_db(f"moved_{label.lower()}", template=ctx.sizes[label]["db"])
    rows = ctx.sizes[label]["rows"]
    script = MUTATE.format(new_users=max(1, rows["public.user_application_access"] // 300),
                           new_invitations=max(1, rows["public.user_invitations"] // 100))  # fmt: skip
    import psycopg

    with psycopg.connect(ctx.cluster.dsn(name).conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL(script))  # type: ignore[arg-type]
        conn.execute("vacuum analyze")
    return name


def run(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"figures": {}, "ratios": {}, "unavailable": {}}
    for label in ctx.sizes:
        shared = ctx.shared[label]
        moved = mutated_copy(ctx, label)
        available = []
        for name, mode in MODES.items():  # one probe round each: absent API -> "not available"
            try:
                probe = measure_one(ctx, shared, moved, mode)
            except Unavailable as exc:
                out["unavailable"][name] = str(exc)
                continue
            available.append(name)
            shared.setdefault("probes", {})[name] = probe

        def measure(name: str, rnd: int, shared: dict[str, Any] = shared, moved: str = moved) -> dict[str, Any]:
            return measure_one(ctx, shared, moved, MODES[name])

        rounds = 0 if ctx.smoke else max(0, ctx.repeat - 1)  # the probe was the first round
        samples = interleave(rounds, available, measure, say=ctx.say, label=f"{label} diff/merge")
        for name in available:
            samples[name].insert(0, shared["probes"][name])
        figures = summarize(samples)
        out["figures"][label] = figures
        base = shared.get("restore_s")
        out["ratios"][label] = {f"{n} / migsafe restore (empty)": round(f["median_s"] / base, 3) if base else None
                                for n, f in figures.items()}  # fmt: skip
        out["ratios"][label]["goal"] = 1.5
        ctx.drop_db(moved)
    return out


def measure_one(ctx: Context, shared: dict[str, Any], moved: str, mode: str) -> dict[str, Any]:
    with ctx.database("merge", template=moved) as target:
        timing, printed = ctx.bench.worker("_restore", "--mode", mode, "--store", shared["store"],
                                           "--backup-id", shared["backup_id"], "--dsn", target.url())  # fmt: skip
        if mode == "diff" and printed.get("equal"):
            raise BenchFailed("bench: diff found the moved target equal to the backup")
        return {**timing, **printed}
