"""The ``migsafe`` command: a thin layer over the package's functions.

Exit codes (a contract with deploy pipelines): 0 success / PASS, 1 FAIL or verification failed,
2 bad input (nothing was done), 3 environment fault (database, store, AWS or a tool unreachable).
Errors are one line on stderr; passwords are masked everywhere.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .cli_aws import approve, bundle_app, gate, reject
from .config import Settings
from .dsn import Dsn, mask
from .exceptions import MigsafeError
from .plan import Plan
from .store import open_store

# The step modules (psycopg, pydantic models) are imported inside the commands that use them:
# every command starts faster, and `migsafe --help` needs none of them.

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make PostgreSQL schema migrations safe to ship.",
)
backups_app = typer.Typer(no_args_is_help=True, help="Inspect the backups in a store.")
scratch_app = typer.Typer(no_args_is_help=True, help="Local scratch clusters.")
app.add_typer(backups_app, name="backups")
app.add_typer(scratch_app, name="scratch")
app.add_typer(bundle_app, name="bundle")
app.command("gate")(gate)
app.command("approve")(approve)
app.command("reject")(reject)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
for _console in (out, err):
    if not _console.is_terminal:  # logs and pipes: never truncate names to 80 columns
        _console.width = 200
_settings: Settings | None = None


def settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings.from_environ(os.environ)
    return _settings


class _Reporter:
    """Per-table progress: a rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.live = err.is_terminal
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[rows]}"),
                TimeElapsedColumn(),
                console=err,
            )

    def __enter__(self) -> _Reporter:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, event: str, table: str, data: dict[str, Any]) -> None:
        if self.progress is not None:
            if event == "start":
                self.tasks[table] = self.progress.add_task(f"{self.verb} {table}", total=None, rows="")
            elif table in self.tasks and event == "bytes":
                self.progress.update(self.tasks[table], completed=data["bytes"])
            elif table in self.tasks and event == "rows":
                self.progress.update(self.tasks[table], rows=f"{data['rows']:,} rows")
            elif table in self.tasks and event in ("done", "loaded"):
                self.progress.update(self.tasks[table], total=1, completed=1)
            return
        if event == "start":
            err.print(f"{self.verb} {table} ...")
        elif event == "done":
            err.print(f"{self.verb} {table}: {data['rows']:,} rows, {data['bytes']:,} bytes stored")
        elif event == "loaded":
            err.print(f"{self.verb} {table}: loaded ({data['rows']:,} rows expected)")
        elif event == "verified":
            err.print(f"checksums ok ({data['objects']} objects)")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# --- commands ---------------------------------------------------------------------------------
PlanOpt = Annotated[Path, typer.Option("--plan", "-p", help="Plan file (TOML or JSON).")]
StoreOpt = Annotated[str, typer.Option("--store", help="Store URL: file:///path or s3://bucket/prefix.")]
IdOpt = Annotated[str, typer.Option("--backup-id", help="Backup id, as printed by `migsafe backup`.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


@app.command()
def backup(plan: PlanOpt, json_out: JsonOpt = False) -> None:
    """Back up the plan's tables to its store; prints the backup id on stdout."""
    from .backup import BackupOptions, run_backup

    p = Plan.load(plan)
    s = settings()
    dsn = p.source.resolve_dsn(s.environ)
    store = open_store(p.store.url, p.base_dir)
    opts = BackupOptions(
        compression=p.backup.compression,
        zstd_level=p.backup.zstd_level,
        jobs=p.backup.jobs,
        plan_sha256=p.digest(),
        pg_bindir=s.pg_bindir,
    )
    with _Reporter("backup") as rep:
        result = run_backup(dsn, store, p.source.qualified_tables, opts, progress=rep)
    err.print(
        f"backup {result.backup_id} complete: {len(result.tables)} tables, {_human(result.bytes)} "
        f"in {result.seconds:.1f}s -> {result.url}"
    )
    out.print(result.model_dump_json(indent=2) if json_out else result.backup_id)


@backups_app.command("list")
def backups_list(store: StoreOpt, json_out: JsonOpt = False) -> None:
    """List backups: id, date, tables, bytes, complete or incomplete."""
    from . import inventory

    refs = inventory.list_backups(open_store(store))
    if json_out:
        out.print(json.dumps([r.model_dump(mode="json") for r in refs], indent=2))
        return
    table = Table("backup id", "date", "tables", "bytes", "status", box=None)
    for r in refs:
        table.add_row(
            r.backup_id,
            r.date,
            ", ".join(r.tables) or "?",
            _human(r.bytes),
            "complete" if r.complete else "[red]incomplete[/red]",
        )
    out.print(table if refs else f"no backups in {store}")


@app.command()
def verify(store: StoreOpt, backup_id: IdOpt, json_out: JsonOpt = False) -> None:
    """Re-read every object of a backup and check its sha256 and size against the manifest."""
    from . import inventory

    report = inventory.verify_backup(open_store(store), backup_id)
    if json_out:
        out.print(report.model_dump_json(indent=2))
    else:
        for o in report.objects:
            out.print(f"{'ok  ' if o.ok else 'FAIL'} {o.key}  {o.problem or _human(o.actual_bytes or 0)}")
    if not report.ok:
        bad = ", ".join(f"{o.key}: {o.problem}" for o in report.objects if not o.ok)
        err.print(f"migsafe: backup {backup_id} failed verification: {bad}")
        raise typer.Exit(1)
    err.print(f"backup {backup_id}: {len(report.objects)} objects verified")


@app.command()
def restore(
    store: StoreOpt,
    backup_id: IdOpt,
    target_dsn: Annotated[str, typer.Option("--target-dsn", help="Database to restore into.")],
    tables: Annotated[
        str | None, typer.Option("--tables", help="Comma-separated subset of the backup's tables.")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Drop and restore tables that already hold data.")
    ] = False,
    no_owner: Annotated[
        bool, typer.Option("--no-owner", help="Skip ownership and grants (other cluster).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Restore tables from a backup: checksums first, one transaction, verified before COMMIT."""
    from .restore import RestoreOptions, run_restore

    target = Dsn.parse(target_dsn)
    names = [t.strip() for t in tables.split(",") if t.strip()] if tables else None
    opts = RestoreOptions(tables=names, replace=replace, no_owner=no_owner, pg_bindir=settings().pg_bindir)
    with _Reporter("restore") as rep:
        report = run_restore(open_store(store), backup_id, target, opts, progress=rep)
    if json_out:
        out.print(report.model_dump_json(indent=2))
    else:
        t = Table("table", "rows (backup)", "rows (restored)", "foreign keys valid", "ok", box=None)
        for c in report.tables:
            t.add_row(
                c.name,
                f"{c.rows_expected:,}",
                f"{c.rows_restored:,}",
                f"{c.foreign_keys_valid}/{c.foreign_keys}",
                "yes" if c.ok else "[red]NO[/red]",
            )
        for ty in report.types:
            t.add_row(f"type {ty.name}", "", "", "", "yes" if ty.ok else "[red]labels differ[/red]")
        out.print(t)
    if not report.ok:
        err.print("migsafe: restore verification failed: " + "; ".join(report.problems()))
        raise typer.Exit(1)
    err.print(
        f"restored {len(report.tables)} tables from {backup_id} into {report.target} in {report.seconds:.1f}s"
    )


@app.command()
def prune(
    store: StoreOpt,
    older_than: Annotated[str, typer.Option("--older-than", help="Age like 7d, 36h, 2w.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
) -> None:
    """Delete complete backups older than --older-than, and incomplete ones older than a day."""
    from . import inventory

    doomed = inventory.prune(open_store(store), inventory.parse_age(older_than), dry_run=dry_run)
    for r in doomed:
        out.print(
            f"{'would delete' if dry_run else 'deleted'} {r.backup_id} ({'complete' if r.complete else 'incomplete'}, "
            f"{_human(r.bytes)})"
        )
    err.print(f"{len(doomed)} backup(s) {'to prune' if dry_run else 'pruned'}")


@app.command()
def rehearse(
    plan: PlanOpt,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report-dir",
            help="Where result.json, report.md and report.html go (default ./migsafe-reports/<time>).",
        ),
    ] = None,
    json_out: JsonOpt = False,
    backup_id: Annotated[
        str | None,
        typer.Option(
            "--backup-id", help="Reuse this complete backup of the plan's tables instead of taking one."
        ),
    ] = None,
) -> None:
    """Back up, then rehearse the migration's upgrade and downgrade on a scratch copy; exit 0 PASS, 1 FAIL."""
    from datetime import UTC, datetime

    from .rehearse import rehearse as run_rehearsal

    p = Plan.load(plan)
    directory = report_dir or Path("migsafe-reports") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        result = run_rehearsal(
            p, settings(), report_dir=directory, say=lambda m: err.print(m, markup=False), backup_id=backup_id
        )
    except KeyboardInterrupt:
        err.print(
            f"migsafe: interrupted; the scratch copy was destroyed; partial reports in {directory.resolve()}"
        )
        raise typer.Exit(130) from None
    if json_out:
        out.print(result.model_dump_json(indent=2))
    for r in result.reasons:
        err.print(f"  - {r}", markup=False)
    for w in result.warnings:
        err.print(f"  ! {w}", markup=False)
    err.print(f"reports: {directory.resolve()}/report.md, report.html, result.json")
    out.print(f"{result.verdict} ({result.plan}, {result.seconds:.1f}s)" if not json_out else "")
    raise typer.Exit(0 if result.verdict == "PASS" else 1)


@scratch_app.command("sweep")
def scratch_sweep() -> None:
    """Stop and delete local scratch clusters whose rehearsal process is gone."""
    from .localpg import sweep

    removed = sweep(settings().runtime_dir)
    for r in removed:
        out.print(f"removed {r}")
    err.print(f"{len(removed)} orphaned scratch cluster(s) removed")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr for any error, and the documented exit code.

    Usage errors exit 2 (click's own convention, which matches "bad input").
    """
    try:
        app(args=argv, prog_name="migsafe")
    except MigsafeError as exc:
        err.print(f"migsafe: error: {mask(str(exc))}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("migsafe: interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
