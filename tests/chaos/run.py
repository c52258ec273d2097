"""``make chaos``: the full fault-injection run on a throw-away PostgreSQL; prints the seed and a table.

    python tests/chaos/run.py [--seed N] [--per-kind 20] [--flips 50] [--faults N] [--only KINDS]

Exit 0 when no invariant broke, 1 otherwise. Reproduce a run with its seed.
"""

from __future__ import annotations

import argparse
import itertools
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults
from migsafe.localpg import LocalCluster
from pgsupport import Database


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--per-kind", type=int, default=20, help="trials per kill fault (per signal and phase)")
    ap.add_argument("--flips", type=int, default=50)
    ap.add_argument("--phases", type=int, default=None, help="rehearse phases per signal (default: all)")
    ap.add_argument("--faults", type=int, default=None,
                    help="trials per server and disk fault (default: --per-kind)")
    ap.add_argument("--only", default=None,
                    help="comma-separated kinds to run (backup, rehearse, restore, source_stopped, "
                         "scratch_killed, source_hung, disk_full, byteflip): replays one kind with its seed")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    runtime = Path(tempfile.mkdtemp(prefix="migsafe-chaos-"))
    runtime.chmod(0o755)
    work = Path(tempfile.mkdtemp(prefix="migsafe-chaos-work-"))
    counter = itertools.count()
    cluster = LocalCluster.create("chaossource", runtime)
    t0 = time.monotonic()
    try:
        import psycopg
        from psycopg import sql

        def make_db(prefix: str) -> Database:
            name = f"{prefix}{next(counter)}"
            with psycopg.connect(cluster.dsn().conninfo(), autocommit=True) as conn:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
            return Database(name, cluster.dsn(name))

        source = make_db("source")
        faults.prepare_source(source)
        lab = faults.Lab(source=source, runtime_dir=runtime, work=work, make_target=lambda: make_db("target"))
        trials = faults.run_trials(lab, seed, args.per_kind, args.flips, args.phases, args.faults,
                                   only=set(args.only.split(",")) if args.only else None)
    finally:
        cluster.destroy()
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"seed {seed}, {len(trials)} trials in {time.monotonic() - t0:.0f}s")
    print(faults.table(trials))
    broken = [t for t in trials if t.broken]
    for t in broken:
        print(f"BROKEN {t.fault} (trial seed {t.seed}): {'; '.join(t.notes)}")
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
