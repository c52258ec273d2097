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


def run(*args: str, capture: bool = False, ok: tuple[int, ...] = (0,)) -> str:
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"\n$ migsafe {shown}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "migsafe", *args], text=True, stdout=subprocess.PIPE if capture else None
    )
    if proc.returncode not in ok:
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
        # a report folder per run: migsafe never overwrites a report, and a second `make demo` must work
        report_dir = args.out / f"report-{backup_id}"
        run("lint", "--plan", str(plan))
        verdict = (
            run(
                "rehearse",
                "--plan",
                str(plan),
                "--report-dir",
                str(report_dir),
                "--backup-id",
                backup_id,
                capture=True,
                ok=(0, 1),
            )
            .strip()
            .split(" ")[0]
        )
        show_insight(report_dir / "result.json")
        print(f"\ndemo complete: backup {backup_id} restored and verified; migration rehearsed: {verdict}")
        print(
            f"reports: {report_dir / 'report.md'}\n         {report_dir / 'report.html'}\n"
            f"         {report_dir / 'result.json'}"
        )
        print("the throw-away server is being stopped.")


def show_insight(path: Path) -> None:
    """What the rehearsal says about the deploy minute: squawk's findings and what the clients felt."""
    import json

    result = json.loads(path.read_text())
    print("\nlint (squawk) on the statements the upgrade and downgrade ran:")
    for f in result["lint"]:
        held = f" -- observed {', '.join(f['locks'])}" if f["locks"] else ""
        print(f"  {f['rule']:28} {f['revision']} ({f['phase']}): {f['statement'][:70]}{held}")
    print("traffic on the touched tables while the migration ran:")
    for phase in ("upgrade", "downgrade"):
        t = (result.get("traffic") or {}).get(phase)
        if not t:
            continue
        print(
            f"  {phase:9} baseline p99 {t['baseline_p99_ms']} ms -> p99 {t['p99_ms']} ms, max {t['max_ms']} ms; "
            f"{t['waits_over_1s']} transactions waited > 1 s, {t['errors']} errors"
        )
        if t["blocked_max_s"] >= 0.1:
            print(
                f"            {t['blocked_table']}: clients blocked {t['blocked_max_s']:.1f} s by "
                f"{(t['blocking_statement'] or '?')[:80]} ({t['blocking_mode']}) in revision {t['blocking_revision']}"
            )


if __name__ == "__main__":
    main()
