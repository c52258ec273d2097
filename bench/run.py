"""migsafe against the raw PostgreSQL tools, in one run, on the same data.

    .venv/bin/python bench/run.py                       # 1M and 5M rows, 3 interleaved rounds (make bench)
    .venv/bin/python bench/run.py --rows 1000000 --repeat 5 --only backup,split
    .venv/bin/python bench/run.py --smoke               # every benchmark once at a tiny size (make test)

One throw-away cluster (migsafe.localpg.LocalCluster); the seed scenario loaded once per size, where
a size counts the rows of ``user_application_access`` (3 per user; users and invitations come with
them). Then each benchmark module, in this order (``bench/bench_<name>.py``, docs in each):

- ``rehearse``: ``migsafe rehearse`` against the same steps by hand (first size only);
- ``backup``: ``run_backup`` against ``pg_dump -Fc`` (and ``-Z0``), migsafe's variants;
- ``restore``: into an empty database, against serial ``pg_restore`` and ``pg_restore -j <cpus>``;
- ``replace``: ``restore --replace`` into a populated database: wall time and lock window;
- ``diff_merge``: ``diff`` and ``--merge`` over a target with 1% changed / deleted / new rows;
- ``split``: the biggest table as parallel ctid-range COPY streams (not migsafe's format);
- ``profile``: migsafe's phases and the codecs.

Every figure is a median over ``--repeat`` interleaved rounds (best kept too), with migsafe's peak RSS;
ratios compare figures of the same run, so they hold on a busy machine where seconds do not. It prints
the tables and writes ``bench/results.json`` (git-ignored). ``--smoke`` checks that every benchmark
runs end to end (not its timings) and exits 1 if one fails; an API missing from this branch is
reported "not available".
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "functions"), str(ROOT)]

from bench.common import TABLES, Bench, Context, machine_info, scalar  # noqa: E402

BENCHMARKS = ["rehearse", "backup", "restore", "replace", "diff_merge", "split", "profile"]
NEEDS_BACKUP = {"restore", "replace", "diff_merge", "profile"}
SMOKE_ROWS = 300


def size_label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows:,}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,5000000", help="sizes: rows of user_application_access")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds per figure (median reported)")
    parser.add_argument("--rehearse-repeat", type=int, default=3, help="rounds of each rehearsal side")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--backup-variants", default=None, help="comma-separated subset of bench_backup.VARIANTS")
    parser.add_argument("--smoke", action="store_true", help="each benchmark once, tiny size, no timings judged")
    parser.add_argument("--out", type=Path, default=None, help="results file (default bench/results.json)")
    parser.add_argument("--workdir", type=Path, default=None, help="dumps and stores (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.repeat, args.rehearse_repeat = str(SMOKE_ROWS), 1, 1
    chosen = BENCHMARKS if not args.only else [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}: choose from {BENCHMARKS}")
    if NEEDS_BACKUP & set(chosen):
        chosen = [*chosen, "backup"]
    args.chosen = [b for b in BENCHMARKS if b in chosen]
    args.sizes = [int(r) for r in args.rows.split(",")]
    return args


def seed_sizes(ctx_bench: Bench, cluster: Any, sizes: list[int], say: Any) -> dict[str, dict[str, Any]]:
    from examples.enum_uppercase import seed

    out: dict[str, dict[str, Any]] = {}
    admin = cluster.dsn("postgres").conninfo()
    for rows in sizes:
        label, users = size_label(rows), math.ceil(rows / 3)
        db = f"src_{label.replace(',', '').lower()}"
        ctx_bench.admin(admin, sql.SQL("create database {}").format(sql.Identifier(db)))
        t0 = time.monotonic()
        seed.load(cluster.dsn(db).conninfo(), users)
        with psycopg.connect(cluster.dsn(db).conninfo(), autocommit=True) as conn:
            conn.execute("vacuum (analyze)")  # hint bits set now, not in the first timed round
            conn.execute("checkpoint")
            counted = {t: scalar(conn, sql.SQL("select count(*) from {}").format(sql.Identifier(*t.split("."))))
                       for t in TABLES}  # fmt: skip
            relation_bytes = scalar(conn, sql.SQL("select sum(pg_total_relation_size(c::regclass)) from unnest({}::text[]) c")
                                    .format(sql.Literal(TABLES)))  # fmt: skip
        out[label] = {"db": db, "users": users, "rows": counted, "relation_bytes": int(relation_bytes),
                      "seed_s": round(time.monotonic() - t0, 1)}  # fmt: skip
        say(f"seeded {db}: {counted} in {out[label]['seed_s']}s")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from migsafe.localpg import LocalCluster
    from migsafe.pgtools import bindir

    pg_bindir = bindir()
    if pg_bindir is None:
        raise SystemExit("bench: pg_config --bindir not found: install the PostgreSQL client tools")
    work = Path(tempfile.mkdtemp(prefix="migsafe-bench-", dir=args.workdir))
    bench = Bench(work, pg_bindir, args.repeat)
    t_start = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", flush=True)

    types_sql = work / "types.sql"
    types_sql.write_text("\n".join(line for line in (ROOT / "examples/enum_uppercase/schema.sql").read_text().splitlines()
                                   if line.startswith("CREATE TYPE")) + "\n")  # fmt: skip
    results: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "repeat": args.repeat,
                               "smoke": args.smoke, "benchmarks": {}}  # fmt: skip
    status: dict[str, str] = {}
    try:
        with LocalCluster.create("bench") as cluster:
            results["machine"] = machine_info(bench, cluster.dsn("postgres").conninfo())
            say(f"cluster on port {cluster.port}; {results['machine']['nproc']} CPUs, load {results['machine']['loadavg_start']}")
            ctx = Context(bench=bench, cluster=cluster, sizes={}, repeat=args.repeat, smoke=args.smoke,
                          types_sql=types_sql, say=say)  # fmt: skip
            ctx.shared["rehearse_repeat"] = args.rehearse_repeat
            ctx.shared["rehearse_users"] = math.ceil(args.sizes[0] / 3)
            if args.backup_variants:
                ctx.shared["backup_variants"] = [v.strip() for v in args.backup_variants.split(",")]
            for name in args.chosen:
                if name != "rehearse" and not ctx.sizes:  # the rehearsal first: pg_basebackup copies the
                    ctx.sizes = results["sizes"] = seed_sizes(bench, cluster, args.sizes, say)  # whole cluster
                module = importlib.import_module(f"bench.bench_{name}")
                say(f"{name}: start")
                t0 = time.monotonic()
                try:
                    result = module.run(ctx)
                except Exception as exc:  # the smoke mode reports every benchmark, then fails
                    if not args.smoke:
                        raise
                    status[name] = f"FAILED: {type(exc).__name__}: {str(exc)[-500:]}"
                    traceback.print_exc()
                    if name == "backup":  # nothing downstream can run
                        status.update({n: "skipped: the backup benchmark failed" for n in args.chosen if n in NEEDS_BACKUP})
                        break
                    continue
                result["seconds"] = round(time.monotonic() - t0, 1)
                results["benchmarks"][name] = result
                missing = result.get("unavailable") or {}
                status[name] = "ok" + (f" ({len(missing)} not available: {', '.join(missing)})" if missing else "")
                say(f"{name}: {status[name]} in {result['seconds']}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    results["seconds"] = round(time.monotonic() - t_start, 1)
    results["status"] = status
    out = args.out or (None if args.smoke else ROOT / "bench" / "results.json")
    if out:
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_tables(results)
    print("\nsmoke:" if args.smoke else "\nstatus:")
    for name in args.chosen:
        print(f"  {name:16} {status.get(name, 'not run')}")
    if out:
        print(f"wrote {out} ({results['seconds']}s)")
    failed = [n for n in args.chosen if not status.get(n, "").startswith("ok")]
    return 1 if failed else 0


def print_tables(results: dict[str, Any]) -> None:
    m = results.get("machine")
    if m:
        print(f"\n{m['nproc']} CPUs ({m['cpu']}), {m['memory_gb']} GB, {m['postgresql'].split(' on ')[0]}; "
              f"load average at start {m['loadavg_start'][0]:.2f}, at end {results['loadavg_end'][0]:.2f}")  # fmt: skip
    for name, result in results.get("benchmarks", {}).items():
        if name == "rehearse":
            from bench.bench_rehearse import report

            report(result)
            continue
        if name == "profile":
            print(f"\nprofile ({result['size']}): restore {json.dumps(result['restore'].get('phases_s'))}, "
                  f"backup {json.dumps(result['backup'].get('phases_s'))}")  # fmt: skip
            for codec, c in result["codecs"].items():
                if isinstance(c, dict):
                    print(f"  {codec:28} {c['mb_per_s_wall']:8.1f} MB/s wall, cpu {c['cpu_s']:.2f}s, x{c['ratio']}")
            continue
        for label, figures in result.get("figures", {}).items():
            rows = results["sizes"][label]["rows"]["public.user_application_access"]
            print(f"\n{name}, {label} ({rows:,} rows in user_application_access)")
            print(f"  {'':40} {'median s':>9} {'best s':>7} {'MB':>8} {'RSS MB':>7} {'lock s':>7}")
            for variant, e in figures.items():
                mb = f"{e['bytes'] / 1e6:8.1f}" if "bytes" in e else " " * 8
                rss = f"{e['maxrss_mb']:7.0f}" if "maxrss_mb" in e else " " * 7
                lock = f"{e['lock_window_s']:7.2f}" if e.get("lock_window_s") is not None else " " * 7
                print(f"  {variant:40} {e['median_s']:9.2f} {e['best_s']:7.2f} {mb} {rss} {lock}")
            for key, value in (result.get("ratios", {}).get(label) or {}).items():
                print(f"    {key}: {value}")
        for variant, why in (result.get("unavailable") or {}).items():
            print(f"  {variant}: not available ({why})")


if __name__ == "__main__":
    sys.exit(main())
