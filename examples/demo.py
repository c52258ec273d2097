"""The README's first command: the whole backup/restore loop on a throw-away PostgreSQL.

Starts a local cluster, loads the seed scenario (users, user_application_access with enum
applicationtype, user_invitations with enum invitationstatus, foreign keys; 100,000 users and
400,000+ rows), then runs the real CLI exactly as a DBA would:
backup -> backups list -> verify -> restore into a second, empty database -> the verification table.
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

from examples.enum_uppercase import seed  # noqa: E402
from migsafe.localpg import LocalCluster, sweep  # noqa: E402


def run(*args: str, capture: bool = False) -> str:
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"\n$ migsafe {shown}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "migsafe", *args], text=True,
                          stdout=subprocess.PIPE if capture else None)
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
        seed.load(cluster.dsn("postgres").conninfo(), args.users)
        print(f"seeded in {time.monotonic() - t0:.1f}s (source: {cluster.dsn('postgres')})")
        plan = args.out / "plan.toml"
        plan.write_text(
            "[source]\n"
            f'dsn = "{cluster.dsn("postgres").url()}"\n'
            f"tables = {seed.TABLES!r}\n".replace("'", '"')
            + f'\n[store]\nurl = "{store}"\nretention_days = 7\n'
        )
        print(f"plan: {plan}")
        backup_id = run("backup", "--plan", str(plan), capture=True).strip().splitlines()[-1]
        run("backups", "list", "--store", store)
        run("verify", "--store", store, "--backup-id", backup_id)
        import psycopg

        with psycopg.connect(cluster.dsn("postgres").conninfo(), autocommit=True) as conn:
            conn.execute("create database restored")
        run("restore", "--store", store, "--backup-id", backup_id, "--target-dsn", cluster.dsn("restored").url())
        print(f"\ndemo complete: backup {backup_id} restored and verified; the server is being stopped.")


if __name__ == "__main__":
    main()
