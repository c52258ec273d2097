"""The README's first command: the whole backup/restore loop on a throw-away PostgreSQL.

Starts a local cluster, loads the seed scenario (users, user_application_access with enum
applicationtype, user_invitations with enum invitationstatus, foreign keys; 100,000 users and
400,000+ rows), then runs the real CLI exactly as a DBA would:
backup -> backups list -> verify -> restore into a second, empty database -> the verification table
-> rehearse the seed's upper-case enum migration (examples/enum_uppercase) on a scratch copy:
upgrade and downgrade timed, locks observed, verified, with a verdict and reports.
The server it started is always stopped and deleted, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "functions"), str(ROOT)]

from migsafe.localpg import LocalCluster, sweep  # noqa: E402

from examples.enum_uppercase import seed  # noqa: E402


def run(*args: str, capture: bool = False) -> str:
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"\n$ migsafe {shown}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "migsafe", *args], text=True, stdout=subprocess.PIPE if capture else None
    )
    if proc.returncode != 0:
        raise SystemExit(f"demo: `migsafe {shown}` exited {proc.returncode}")
    if capture:
        print(proc.stdout, end="")
    return proc.stdout or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output")
    args = parser.parse_args()
    sweep()
    args.out.mkdir(parents=True, exist_ok=True)
    store = f"file://{(args.out / 'backups').resolve()}"
    print(f"starting a throw-away PostgreSQL and loading {args.users:,} users ...", flush=True)
    with LocalCluster.create("demo") as cluster:
        t0 = time.monotonic()
        seed.load(cluster.dsn("postgres").conninfo(), args.users, alembic=True)
        print(f"seeded in {time.monotonic() - t0:.1f}s (source: {cluster.dsn('postgres')})")
        plan = args.out / "plan.toml"
        plan.write_text(
            'name = "us-6-uppercase-enums"\n[source]\n'
            f'dsn = "{cluster.dsn("postgres").url()}"\n'
            f"tables = {seed.TABLES!r}\n".replace("'", '"')
            + f'\n[migration]\nalembic_ini = "{ROOT / "examples" / "enum_uppercase" / "alembic.ini"}"\n'
            'upgrade_to = "head"\ndowngrade_to = "-1"\nurl_env = "DATABASE_URL"\n'
            + f'\n[store]\nurl = "{store}"\nretention_days = 7\n'
            + (ROOT / "examples" / "enum_uppercase" / "checks.toml").read_text()
        )
        print(f"plan: {plan}")
        backup_id = run("backup", "--plan", str(plan), capture=True).strip().splitlines()[-1]
        run("backups", "list", "--store", store)
        run("verify", "--store", store, "--backup-id", backup_id)
        import psycopg

        with psycopg.connect(cluster.dsn("postgres").conninfo(), autocommit=True) as conn:
            conn.execute("create database restored")
        run(
            "restore",
            "--store",
            store,
            "--backup-id",
            backup_id,
            "--target-dsn",
            cluster.dsn("restored").url(),
        )
        report_dir = args.out / "report"
        run("rehearse", "--plan", str(plan), "--report-dir", str(report_dir), capture=True)
        print(f"\ndemo complete: backup {backup_id} restored and verified; migration rehearsed: PASS")
        print(
            f"reports: {report_dir / 'report.md'}\n         {report_dir / 'report.html'}\n"
            f"         {report_dir / 'result.json'}"
        )
        print("the throw-away server is being stopped.")


if __name__ == "__main__":
    main()
