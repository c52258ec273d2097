"""The rehearsal: ``migsafe rehearse`` against the same steps run by hand, one after another.

The seed scenario stamped at the example alembic project's baseline, rehearsed ``--rehearse-repeat``
times by migsafe (a subprocess, wall clock; result.json gives its steps) and by hand (``pg_dump -Fc``,
``pg_basebackup`` + start, ``pg_restore`` into a second cluster, the count + fingerprint queries,
``alembic upgrade head`` / ``downgrade -1``), interleaved: migsafe first in even rounds, raw in odd.
It runs on its own database at the first size, before the sizes are seeded: ``pg_basebackup`` copies
the whole cluster, which should hold the rehearsal's database alone.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.common import ROOT, TABLES, Bench, BenchFailed, Context, median, scalar

NAME = "rehearse"


# (label, the migsafe step in result.json, the raw steps that do the same work)
REHEARSAL_STEPS: list[tuple[str, str | None, tuple[str, ...]]] = [
    ("back up the 3 tables", "backup", ("pg_dump -Fc, 3 tables",)),
    ("scratch copy", "scratch", ("pg_basebackup + start",)),
    ("restore test", "restore_test", ("initdb + start a 2nd cluster", "types.sql + pg_restore, 3 dumps")),
    ("baseline: count + fingerprint", "baseline", ("queries before",)),
    ("alembic upgrade head", "upgrade", ("alembic upgrade head",)),
    ("verify after the upgrade", "verify_upgrade", ("queries after upgrade",)),
    ("alembic downgrade -1", "downgrade", ("alembic downgrade -1",)),
    ("verify after the downgrade", "verify_downgrade", ("queries after downgrade",)),
    ("destroy the scratch", "destroy_scratch", ()),
]
RAW_DUMP_RESTORE = (
    "pg_dump -Fc, 3 tables",
    "initdb + start a 2nd cluster",
    "types.sql + pg_restore, 3 dumps",
)
OVERLAPPED = (  # what migsafe runs between the backup and the upgrade, the restore test concurrently
    "pg_basebackup + start",
    "initdb + start a 2nd cluster",
    "types.sql + pg_restore, 3 dumps",
    "queries before",
)
RAW_TEARDOWN = "stop + delete both clusters"  # timed, not in the raw sum (the brief's raw steps)


def fingerprints(conninfo: str) -> dict[str, list[int]]:
    """count(*) and sum(hashtextextended(t::text, 0)) per table: one scan each, one connection."""
    with psycopg.connect(conninfo) as conn:
        out = {}
        for t in TABLES:
            row = conn.execute(
                sql.SQL("select count(*), sum(hashtextextended(t::text, 0)) from {} as t").format(
                    sql.Identifier(*t.split("."))
                )
            ).fetchone()
            assert row is not None
            out[t] = [int(row[0]), int(row[1])]
        return out


def raw_rehearsal(bench: Bench, src: Any, types_sql: Path, ini: Path, rnd: int) -> dict[str, Any]:
    """The rehearsal's steps run by hand, one after another, each timed: what the seed's kit and a
    careful engineer would type (pg_dump, pg_basebackup, pg_restore, psql queries, alembic)."""
    from migsafe.localpg import LocalCluster, _as_server_user

    steps: dict[str, float] = {}
    dumps = bench.work / "rehearse" / "raw" / str(rnd)
    dumps.mkdir(parents=True)
    conninfo = src.conninfo()

    def clock(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            steps[name] = steps.get(name, 0.0) + time.monotonic() - t0

    def dump() -> None:  # the seed kit's backup: one pg_dump -Fc per table, sequentially
        for t in TABLES:
            bench.run(
                [
                    bench.bin("pg_dump"),
                    "-Fc",
                    f"--table={t}",
                    f"--file={dumps / t}.dump",
                    f"--dbname={conninfo}",
                ]
            )

    clock("pg_dump -Fc, 3 tables", dump)
    scratch = restore = None
    try:
        scratch = LocalCluster.prepare("bench-raw-scratch")

        def basebackup() -> None:
            assert scratch is not None  # the flags of migsafe/scratch.py, as the server's user
            bench.run(_as_server_user([bench.bin("pg_basebackup"), "-D", str(scratch.data_dir), "-X", "stream",
                                       "-c", "fast", "--no-sync", "--no-password", "-d", conninfo]))  # fmt: skip
            scratch.start()

        clock("pg_basebackup + start", basebackup)
        restore = clock("initdb + start a 2nd cluster", lambda: LocalCluster.create("bench-raw-restore"))
        target = restore.dsn().conninfo()

        def pg_restore() -> None:
            bench.run(
                [bench.bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(types_sql), "-d", target]
            )
            for t in TABLES:
                bench.run(
                    [bench.bin("pg_restore"), "--exit-on-error", f"--dbname={target}", f"{dumps / t}.dump"]
                )

        clock("types.sql + pg_restore, 3 dumps", pg_restore)
        clock(RAW_TEARDOWN, restore.destroy)
        on_scratch = scratch.dsn(src.dbname)
        url = {"DATABASE_URL": on_scratch.url().replace("postgresql://", "postgresql+psycopg://", 1)}
        alembic = [sys.executable, "-m", "alembic", "-c", str(ini)]
        before = clock("queries before", lambda: fingerprints(on_scratch.conninfo()))
        clock("alembic upgrade head", lambda: bench.run([*alembic, "upgrade", "head"], env=url))
        upgraded = clock("queries after upgrade", lambda: fingerprints(on_scratch.conninfo()))
        clock("alembic downgrade -1", lambda: bench.run([*alembic, "downgrade", "-1"], env=url))
        after = clock("queries after downgrade", lambda: fingerprints(on_scratch.conninfo()))
        clock(RAW_TEARDOWN, scratch.destroy)
    finally:
        for c in (scratch, restore):
            if c is not None:
                c.destroy()
    shutil.rmtree(dumps, ignore_errors=True)
    if before != after or any(before[t][0] != upgraded[t][0] for t in TABLES):
        raise BenchFailed(f"bench: the raw rehearsal did not round-trip: {before} -> {upgraded} -> {after}")
    rewritten = [t for t in TABLES if before[t][1] != upgraded[t][1]]
    total = sum(v for k, v in steps.items() if k != RAW_TEARDOWN)
    strict = sum(v for k, v in steps.items() if k != RAW_TEARDOWN and k not in RAW_DUMP_RESTORE)
    return {
        "seconds": total,
        "strict_s": strict,
        "steps": {k: round(v, 3) for k, v in steps.items()},
        "upgrade_changed": rewritten,
    }


def migsafe_rehearsal(bench: Bench, plan: Path, rnd: int) -> dict[str, Any]:
    """``python -m migsafe rehearse`` as a user runs it: wall time, and result.json's step timings."""
    reports = bench.work / "rehearse" / f"report-{rnd}"
    timing = bench.run(
        [sys.executable, "-m", "migsafe", "rehearse", "--plan", str(plan), "--report-dir", str(reports)]
    )
    result = json.loads((reports / "result.json").read_text())
    if result["verdict"] != "PASS" or result["scratch"]["method"] != "pg_basebackup":
        raise BenchFailed(f"bench: rehearsal {result['verdict']} via {result['scratch']['method']}: {result}")
    steps = {s["name"]: s["seconds"] for s in result["steps"]}
    started = {s["name"]: datetime.fromisoformat(s["started"]).timestamp() for s in result["steps"]}
    # the critical path: from the backup's start to the upgrade's, and how long the upgrade waited for
    # the restore test (running on its own cluster) after the baseline was taken
    to_upgrade = started["upgrade"] - started["scratch"]
    waited = started["upgrade"] - (started["baseline"] + steps["baseline"])
    return {
        "seconds": timing["seconds"],
        "cpu_s": timing["cpu_s"],
        "in_process_s": result["seconds"],
        "steps": steps,
        "scratch_to_upgrade_s": round(to_upgrade, 3),
        "waited_for_restore_test_s": round(max(waited, 0.0), 3),
        "backup_bytes": result["backup"]["bytes"],
    }


def rehearsal_section(bench: Bench, cluster: Any, users: int, repeat: int, types_sql: Path,
                      say: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """The seed scenario stamped at alembic's baseline on the bench cluster, rehearsed ``repeat`` times
    by migsafe and by hand, interleaved (migsafe first in even rounds, raw first in odd ones)."""
    from examples.enum_uppercase import seed

    db = "app"
    work = bench.work / "rehearse"
    work.mkdir()
    bench.admin(cluster.dsn().conninfo(), sql.SQL("create database {}").format(sql.Identifier(db)))
    src = cluster.dsn(db)
    t0 = time.monotonic()
    seed.load(src.conninfo(), users, alembic=True)
    with psycopg.connect(src.conninfo(), autocommit=True) as conn:
        conn.execute("vacuum (analyze)")  # hint bits and statistics set now, not in the first timed round
        conn.execute("checkpoint")
        rows = {t: scalar(conn, sql.SQL("select count(*) from {}").format(sql.Identifier(*t.split("."))))
                for t in TABLES}  # fmt: skip
        cluster_bytes = int(scalar(conn, sql.SQL("select sum(pg_database_size(oid)) from pg_database")))
    say(f"rehearsal: seeded {db} {rows} in {time.monotonic() - t0:.1f}s; {repeat} rounds of each side")
    ini = ROOT / "examples" / "enum_uppercase" / "alembic.ini"
    plan = work / "plan.toml"
    store_url = f"file://{work / 'store'}"
    plan.write_text(
        'name = "bench-us-6-uppercase-enums"\n[source]\n'
        f"dsn = {json.dumps(src.url())}\ntables = {json.dumps(TABLES)}\n"
        f"\n[migration]\nalembic_ini = {json.dumps(str(ini))}\n"
        'upgrade_to = "head"\ndowngrade_to = "-1"\nurl_env = "DATABASE_URL"\n'
        '\n[scratch]\nkind = "local"\n'
        f"\n[store]\nurl = {json.dumps(store_url)}\nretention_days = 1\n\n"
        + (ROOT / "examples" / "enum_uppercase" / "checks.toml").read_text()
    )
    runs: dict[str, list[dict[str, Any]]] = {"migsafe": [], "raw": []}
    for rnd in range(repeat):
        order = ("migsafe", "raw") if rnd % 2 == 0 else ("raw", "migsafe")
        for side in order:
            r = migsafe_rehearsal(bench, plan, rnd) if side == "migsafe" else raw_rehearsal(
                bench, src, types_sql, ini, rnd)  # fmt: skip
            runs[side].append(r)
        m, w = runs["migsafe"][-1], runs["raw"][-1]
        say(f"rehearsal round {rnd + 1}/{repeat}: migsafe {m['seconds']:.2f}s, raw sum {w['seconds']:.2f}s "
            f"(strict {w['strict_s']:.2f}s), ratio {m['seconds'] / w['seconds']:.2f}x")  # fmt: skip
    bench.admin(cluster.dsn().conninfo(), sql.SQL("drop database {} with (force)").format(sql.Identifier(db)))

    def med(side: str, key: str) -> float:
        return median([r[key] for r in runs[side]])

    def med_step(side: str, key: str) -> float:
        return median([r["steps"].get(key, 0.0) for r in runs[side]])

    table = []
    for label, mstep, raw_steps in REHEARSAL_STEPS:
        table.append({
            "step": label,
            "migsafe_step": mstep,
            "migsafe_s": med_step("migsafe", mstep) if mstep else None,
            "raw_steps": list(raw_steps),
            "raw_s": round(sum(med_step("raw", k) for k in raw_steps), 3) if raw_steps else None,
            "raw_parts_s": {k: med_step("raw", k) for k in raw_steps},
        })  # fmt: skip
    wall, raw_sum, strict = med("migsafe", "seconds"), med("raw", "seconds"), med("raw", "strict_s")
    return {
        "rows": rows,
        "cluster_bytes": cluster_bytes,
        "repeat": repeat,
        "migsafe_wall_s": wall,
        "migsafe_in_process_s": med("migsafe", "in_process_s"),
        "migsafe_outside_steps_s": median([r["seconds"] - r["in_process_s"] for r in runs["migsafe"]]),
        "migsafe_steps_sum_s": median([sum(r["steps"].values()) for r in runs["migsafe"]]),
        "migsafe_scratch_to_upgrade_s": med("migsafe", "scratch_to_upgrade_s"),
        "migsafe_waited_for_restore_test_s": med("migsafe", "waited_for_restore_test_s"),
        "raw_scratch_to_upgrade_s": median([sum(r["steps"][k] for k in OVERLAPPED) for r in runs["raw"]]),
        "raw_sum_s": raw_sum,
        "raw_strict_sum_s": strict,
        "raw_teardown_s": med_step("raw", RAW_TEARDOWN),
        "ratio": round(wall / raw_sum, 3),
        "ratio_strict": round(wall / strict, 3),
        "ratio_per_round": [
            round(m["seconds"] / w["seconds"], 3) for m, w in zip(runs["migsafe"], runs["raw"], strict=True)
        ],
        "ratio_strict_per_round": [
            round(m["seconds"] / w["strict_s"], 3) for m, w in zip(runs["migsafe"], runs["raw"], strict=True)
        ],
        "target": 1.20,
        "steps": table,
        "runs": runs,
    }




def print_rehearsal(r: dict[str, Any]) -> None:
    rows = r["rows"]
    print(
        f"\nrehearsal: {rows['public.user_application_access']:,} rows in user_application_access, "
        f"{sum(rows.values()):,} in all; the cluster copied is {r['cluster_bytes'] / 1e6:.0f} MB; "
        f"medians of {r['repeat']} rounds per side, interleaved"
    )
    print(f"  {'step':34} {'migsafe s':>9} {'raw s':>8}  raw steps")
    for e in r["steps"]:
        m = f"{e['migsafe_s']:9.2f}" if e["migsafe_s"] is not None else f"{'':9}"
        w = f"{e['raw_s']:8.2f}" if e["raw_s"] is not None else f"{'':8}"
        parts = (
            " + ".join(f"{k} {v:.2f}" for k, v in e["raw_parts_s"].items()) or "(teardown, not in the sum)"
        )
        print(f"  {e['step']:34} {m} {w}  {parts}")
    print(
        f"  {'(outside steps: start, preflight, reports)':34} {r['migsafe_outside_steps_s']:9.2f}"
        f" {'':8}  raw teardown {r['raw_teardown_s']:.2f}s (not in the sum)"
    )
    print(
        f"  migsafe rehearse wall {r['migsafe_wall_s']:.2f}s (steps add up to {r['migsafe_steps_sum_s']:.2f}s; "
        f"the restore test overlaps the scratch copy and baseline)\n"
        f"  scratch copy -> upgrade start: migsafe {r['migsafe_scratch_to_upgrade_s']:.2f}s, of which "
        f"{r['migsafe_waited_for_restore_test_s']:.2f}s waiting for the restore test after the baseline; "
        f"raw {r['raw_scratch_to_upgrade_s']:.2f}s in sequence\n"
        f"  raw sum {r['raw_sum_s']:.2f}s -> ratio {r['ratio']:.2f}x (target <= {r['target']:.2f}x; per round "
        f"{r['ratio_per_round']})\n"
        f"  raw sum without the dump/restore steps {r['raw_strict_sum_s']:.2f}s -> ratio {r['ratio_strict']:.2f}x "
        f"(per round {r['ratio_strict_per_round']})"
    )


def run(ctx: Context) -> dict[str, Any]:
    users = ctx.shared["rehearse_users"]  # the first size; run before the sizes are seeded
    repeat = ctx.shared.get("rehearse_repeat", 1 if ctx.smoke else 3)
    return rehearsal_section(ctx.bench, ctx.cluster, users, repeat, ctx.types_sql, ctx.say)


def report(result: dict[str, Any]) -> None:
    print_rehearsal(result)
