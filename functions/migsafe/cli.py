"""The ``migsafe`` command: a thin layer over the package's functions.

Exit codes (a contract with deploy pipelines): 0 success / PASS, 1 FAIL or verification failed,
2 bad input (nothing was done), 3 environment fault (database, store, AWS or a tool unreachable),
130 interrupted (SIGINT or SIGTERM: every child process was stopped and waited for first).
Errors are one line on stderr, never a traceback; passwords are masked everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import pgtools
from .cli_aws import approve, bundle_app, gate, reject
from .config import Settings
from .dsn import Dsn, mask, remove_secrets
from .exceptions import MigsafeError, ReportExists
from .plan import Plan
from .store import Store, open_store

# The step modules (psycopg, pydantic models) are imported inside the commands that use them:
# every command starts faster, and `migsafe --help` needs none of them.

EXIT_CODES = """\b
Exit codes:
  0    success / PASS
  1    FAIL verdict, or a verification failed (and only that)
  2    bad input: nothing was done
  3    environment fault (database, store, AWS or a tool unreachable): nothing left half-done
  130  interrupted (SIGINT/SIGTERM): every child process stopped first
"""

# plain help (rich_markup_mode=None): typer's rich panels show every boolean flag as "<bool>" with the
# click release installed, as if it took a value; click's own help shows flags as flags
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Make PostgreSQL schema migrations safe to ship.",
    epilog=EXIT_CODES,
)
backups_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect the backups in a store.")
scratch_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Local scratch clusters.")
app.add_typer(backups_app, name="backups")
app.add_typer(scratch_app, name="scratch")
app.add_typer(bundle_app, name="bundle")
app.command("gate")(gate)
app.command("approve")(approve)
app.command("reject")(reject)

def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"migsafe {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Make PostgreSQL schema migrations safe to ship: backups, rehearsals, verdicts, restores."""


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


def _existing(url: str) -> Store:
    """A store that must already exist (list, verify, restore, prune): a mistyped one is bad input."""
    store = open_store(url)
    store.require_exists()
    return store


def default_report_dir(now: Any = None) -> Path:
    """``./migsafe-reports/<UTC time>-<run id>``: two rehearsals started in one second never share one."""
    from datetime import UTC, datetime

    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return Path("migsafe-reports") / f"{stamp}-{uuid.uuid4().hex[:8]}"


def _claim_report_dir(directory: Path) -> None:
    """Create the report folder, refusing one that already holds a report (never overwritten)."""
    if directory.exists() and any((directory / n).exists() for n in ("result.json", "report.md", "report.html")):
        raise ReportExists(f"{directory} already holds a report: choose another --report-dir")
    directory.mkdir(parents=True, exist_ok=True)


# --- commands ---------------------------------------------------------------------------------
PlanOpt = Annotated[Path, typer.Option("--plan", "-p", help="Plan file (TOML or JSON).")]
StoreOpt = Annotated[str, typer.Option("--store", help="Store URL: file:///path or s3://bucket/prefix.")]
IdOpt = Annotated[str, typer.Option("--backup-id", help="Backup id, as printed by `migsafe backup`.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
StallOpt = Annotated[
    float | None,
    typer.Option("--stall-timeout", min=0.1, metavar="SECONDS",
                 help="Give up on a source that sends nothing and answers no query for this long (exit 3); "
                      "default: the plan's source.stall_timeout_seconds, 120."),
]


@app.command()
def backup(plan: PlanOpt, json_out: JsonOpt = False, stall_timeout: StallOpt = None) -> None:
    """Back up the plan's tables to its store; prints the backup id on stdout.

    \b
    Examples:
      migsafe backup --plan plan.toml
      migsafe backup --plan plan.toml --json --stall-timeout 300
    """
    from .backup import BackupOptions, run_backup

    p = Plan.load(plan).with_stall_timeout(stall_timeout)
    s = settings()
    dsn = p.source.resolve_dsn(s.environ)
    store = open_store(p.store.url, p.base_dir)
    opts = BackupOptions(
        compression=p.backup.compression,
        zstd_level=p.backup.zstd_level,
        jobs=p.backup.jobs,
        plan_sha256=p.digest(),
        pg_bindir=s.pg_bindir,
        stall_timeout_s=p.source.stall_timeout_seconds,
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
    """List backups: id, date, tables, bytes, complete or incomplete.

    \b
    Examples:
      migsafe backups list --store file:///var/backups/migsafe
      migsafe backups list --store s3://bucket/migsafe --json
    """
    from . import inventory

    refs = inventory.list_backups(_existing(store))
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
    """Re-read every object of a backup and check its sha256 and size against the manifest.

    \b
    Examples:
      migsafe verify --store file:///var/backups/migsafe --backup-id 20261202T010203Z-a1b2c3
    """
    from . import inventory

    report = inventory.verify_backup(_existing(store), backup_id)
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
    target_dsn: Annotated[str, typer.Option("--target-dsn", help="Database to restore into.")],
    store: Annotated[str | None, typer.Option("--store", help="Store URL: file:///path or s3://bucket/prefix.")] = None,
    backup_id: Annotated[str | None, typer.Option("--backup-id", help="Backup id, as printed by `migsafe backup`.")] = None,
    tables: Annotated[
        str | None, typer.Option("--tables", help="Comma-separated subset of the backup's tables.")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace tables that already hold data (they wait in an undo schema).")
    ] = False,
    no_owner: Annotated[
        bool, typer.Option("--no-owner", help="Skip ownership and grants (other cluster).")
    ] = False,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, help="Parallel sessions loading staging (default: CPUs).")
    ] = None,
    merge: Annotated[
        str | None,
        typer.Option("--merge", help="Bring back rows only the backup has, keep rows written since "
                     "(--merge); --merge=overwrite also rewrites changed rows to the backup's values."),
    ] = None,
    undo: Annotated[
        str | None, typer.Option("--undo", help="Swap back the tables a restore (this restore id) replaced.")
    ] = None,
    lock_timeout: Annotated[
        str, typer.Option("--lock-timeout", help="How long the swap waits for its locks per attempt.")
    ] = "30s",
    restore_schema: Annotated[
        bool, typer.Option("--restore-schema", help="The target's schema differs from the backup's (columns, "
                           "enum labels, alembic revision): restore the backup's schema too instead of refusing.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Restore tables: load and verify them in a staging schema, then swap them in briefly (or --merge).

    \b
    Examples:
      migsafe restore --store URL --backup-id ID --target-dsn postgresql://app@db/app --tables public.orders --replace
      migsafe restore --store URL --backup-id ID --target-dsn DSN --merge
      migsafe restore --target-dsn DSN --undo RESTORE_ID
    """
    from .exceptions import InputError
    from .restore import RestoreOptions, run_restore, run_undo

    target = Dsn.parse(target_dsn)
    if undo is not None:
        if store or backup_id or tables or replace or merge or restore_schema:
            raise InputError("--undo takes only --target-dsn (and --lock-timeout, --json)")
        report = run_undo(target, undo, lock_timeout=lock_timeout)
        out.print(report.model_dump_json(indent=2) if json_out else report.restore_id)
        err.print(f"undid restore {undo}: {', '.join(report.replaced) or 'nothing'} back in place "
                  f"(lock window {report.lock_window_seconds:.3f}s); undo this undo with --undo {report.restore_id}")
        return
    if not store or not backup_id:
        raise InputError("restore needs --store and --backup-id (or --undo RESTORE_ID)")
    if merge not in (None, "keep", "overwrite"):
        raise InputError(f"--merge takes no value or =overwrite, not {merge!r}")
    if merge and replace:
        raise InputError("--merge keeps the target's tables; it cannot be combined with --replace")
    names = [t.strip() for t in tables.split(",") if t.strip()] if tables else None
    opts = RestoreOptions(tables=names, replace=replace, no_owner=no_owner, pg_bindir=settings().pg_bindir,
                          jobs=jobs, merge=merge, lock_timeout=lock_timeout,  # type: ignore[arg-type]
                          restore_schema=restore_schema)
    with _Reporter("restore") as rep:
        report = run_restore(_existing(store), backup_id, target, opts, progress=rep)
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
        for m in report.merged:
            out.print(f"merged {m.name}: {m.inserted:,} rows inserted, {m.updated:,} updated")
    for w in report.warnings:
        err.print(f"  ! {w}", markup=False)
    if not report.ok:
        err.print("migsafe: restore verification failed: " + "; ".join(report.problems()))
        raise typer.Exit(1)
    how = "merged" if merge else "restored"
    err.print(
        f"{how} {len(report.tables)} tables from {backup_id} into {report.target} in {report.seconds:.1f}s "
        f"(restore id {report.restore_id}, lock window {report.lock_window_seconds:.3f}s"
        + (f"; undo with: migsafe restore --target-dsn ... --undo {report.restore_id}" if report.undo_schema else "")
        + ")"
    )


@app.command()
def diff(
    store: StoreOpt,
    backup_id: IdOpt,
    target_dsn: Annotated[str, typer.Option("--target-dsn", help="Database to compare with.")],
    tables: Annotated[
        str | None, typer.Option("--tables", help="Comma-separated subset of the backup's tables.")
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, help="Parallel sessions loading staging (default: CPUs).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare a backup with the live tables by primary key; exit 0 equal, 1 different.

    \b
    Examples:
      migsafe diff --store URL --backup-id ID --target-dsn postgresql://app@db/app --tables public.orders
    """
    from .diff import run_diff

    names = [t.strip() for t in tables.split(",") if t.strip()] if tables else None
    report = run_diff(_existing(store), backup_id, Dsn.parse(target_dsn), names, jobs=jobs,
                      pg_bindir=settings().pg_bindir)
    if json_out:
        out.print(report.model_dump_json(indent=2))
    else:
        t = Table("table", "only in backup", "only in target", "changed", box=None)
        for d in report.tables:
            t.add_row(d.name, f"{d.only_in_backup:,}", f"{d.only_in_target:,}", f"{d.changed:,}")
        out.print(t)
        for d in report.tables:
            for what, keys in d.sample.items():
                if keys:
                    out.print(f"{d.name} {what} (sample): " + json.dumps(keys, default=str), markup=False)
    err.print(f"backup {backup_id} and {report.target}: " + ("equal" if report.equal else "differ"))
    raise typer.Exit(0 if report.equal else 1)


@app.command()
def prune(
    store: Annotated[str | None, typer.Option("--store", help="Store URL whose old backups to delete.")] = None,
    older_than: Annotated[str | None, typer.Option("--older-than", help="Backup age like 7d, 36h, 2w.")] = None,
    target_dsn: Annotated[
        str | None, typer.Option("--target-dsn", help="Database whose old undo and leftover staging schemas to drop.")
    ] = None,
    keep_undo: Annotated[
        str, typer.Option("--keep-undo", help="With --target-dsn: keep undo schemas this young (like 7d).")
    ] = "7d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Delete old backups of a store (--store --older-than) and/or old undo schemas of a database (--target-dsn).

    \b
    Examples:
      migsafe prune --store file:///var/backups/migsafe --older-than 7d --dry-run
      migsafe prune --target-dsn postgresql://app@db/app --keep-undo 7d
    """
    from . import inventory
    from .exceptions import InputError

    if not store and not target_dsn:
        raise InputError("prune needs --store (with --older-than) and/or --target-dsn")
    if store and not older_than:
        raise InputError("prune --store needs --older-than (like 7d)")
    if older_than and not store:
        raise InputError("--older-than applies to --store backups; for a database use --target-dsn --keep-undo")
    keep = inventory.parse_age(keep_undo)
    summary: dict[str, Any] = {"dry_run": dry_run, "backups": [], "schemas": []}
    if store and older_than:
        doomed = inventory.prune(_existing(store), inventory.parse_age(older_than), dry_run=dry_run)
        summary["backups"] = [r.model_dump(mode="json") for r in doomed]
        for r in doomed if not json_out else []:
            out.print(
                f"{'would delete' if dry_run else 'deleted'} {r.backup_id} "
                f"({'complete' if r.complete else 'incomplete'}, {_human(r.bytes)})"
            )
        err.print(f"{len(doomed)} backup(s) {'to prune' if dry_run else 'pruned'}")
    if target_dsn:
        from .restore import prune_target

        target = Dsn.parse(target_dsn)
        schemas = prune_target(target, keep, dry_run=dry_run)
        summary["schemas"] = schemas
        for schema in schemas if not json_out else []:
            out.print(f"{'would drop' if dry_run else 'dropped'} schema {schema}")
        err.print(f"{len(schemas)} undo/staging schema(s) {'to prune' if dry_run else 'pruned'} in {target}")
    if json_out:
        out.print(json.dumps(summary, indent=2), markup=False)


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
    stall_timeout: StallOpt = None,
) -> None:
    """Back up, then rehearse the migration's upgrade and downgrade on a scratch copy; exit 0 PASS, 1 FAIL.

    \b
    Examples:
      migsafe rehearse --plan plan.toml
      migsafe rehearse --plan plan.toml --backup-id ID --report-dir out/
    """
    from .rehearse import rehearse as run_rehearsal

    p = Plan.load(plan).with_stall_timeout(stall_timeout)
    directory = report_dir or default_report_dir()
    _claim_report_dir(directory)
    try:
        result = run_rehearsal(
            p, settings(), report_dir=directory, say=lambda m: err.print(m, markup=False), backup_id=backup_id
        )
    except KeyboardInterrupt:
        global _interrupt_reported
        pgtools.stop_all()
        err.print(
            f"migsafe: interrupted; the scratch copy was destroyed; partial reports in {directory.resolve()}"
        )
        _interrupt_reported = True
        raise typer.Exit(130) from None
    if json_out:
        out.print(result.model_dump_json(indent=2))
    for r in result.reasons:
        err.print(f"  - {r}", markup=False)
    for a in result.accepted:
        err.print(f"  ~ accepted ([[expect]]): {a}", markup=False)
    for w in result.warnings:
        err.print(f"  ! {w}", markup=False)
    err.print(f"reports: {directory.resolve()}/report.md, report.html, result.json")
    out.print(f"{result.verdict} ({result.plan}, {result.seconds:.1f}s)" if not json_out else "")
    raise typer.Exit(0 if result.verdict == "PASS" else 1)


@app.command()
def lint(
    plan: PlanOpt,
    json_out: JsonOpt = False,
    pg_version: Annotated[
        str | None, typer.Option("--pg-version", help="PostgreSQL version squawk assumes, e.g. 15.4.")
    ] = None,
) -> None:
    """Lint the plan's upgrade and downgrade SQL (alembic --sql, no database); exit 1 on a lint_fail rule.

    \b
    Examples:
      migsafe lint --plan plan.toml
      migsafe lint --plan plan.toml --pg-version 15 --json
    """
    from .lint import lint_plan

    report = lint_plan(Plan.load(plan), settings().environ, pg_version_text=pg_version)
    if json_out:
        out.print(
            json.dumps(
                {
                    "revisions": report.revisions,
                    "lint": [f.model_dump(mode="json") for f in report.findings],
                    "warnings": report.warnings,
                    "failing": len(report.failing),
                },
                indent=2,
            )
        )
    else:
        for f in report.findings:
            mark = "FAIL" if f.fails else f.level
            out.print(
                f"{mark:7} {f.rule}  revision {f.revision} ({f.phase}), line {f.line}: {f.message}\n"
                f"        {f.statement}",
                markup=False,
            )
        for w in report.warnings:
            err.print(f"  ! {w}", markup=False)
        err.print(
            f"{len(report.findings)} finding(s) in {len(report.revisions)} revision(s), "
            f"{len(report.failing)} failing (thresholds.lint_fail)"
        )
    raise typer.Exit(1 if report.failing else 0)


@scratch_app.command("sweep")
def scratch_sweep() -> None:
    """Stop and delete local scratch clusters whose rehearsal process is gone.

    \b
    Examples:
      migsafe scratch sweep
    """
    from .localpg import sweep

    removed = sweep(settings().runtime_dir)
    for r in removed:
        out.print(f"removed {r}")
    err.print(f"{len(removed)} orphaned scratch cluster(s) removed")


class _TerminatedBySignal(KeyboardInterrupt):
    """SIGTERM arrived: unwind like Ctrl-C, so every ``finally`` and child cleanup runs."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _TerminatedBySignal()


def _one_line(text: str) -> str:
    return " ".join(mask(text).split()) or "no message"


_interrupt_reported = False


def _interrupted() -> int:
    stopped = pgtools.stop_all()
    if not _interrupt_reported:
        err.print(f"migsafe: interrupted{f' (stopped {stopped} child process(es))' if stopped else ''}")
    return 130


def run(argv: list[str] | None = None) -> int:
    """Run one command; the exit code. Every error ends here as one line on stderr, never a traceback."""
    from typer.exceptions import Abort, Exit, TyperException

    args = list(sys.argv[1:] if argv is None else argv)
    # `restore --merge` takes an optional value: a bare --merge means --merge=keep
    args = ["--merge=keep" if a == "--merge" else a for a in args]
    try:
        rv = app(args=args, prog_name="migsafe", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        return _interrupted() if code == 130 else code  # typer turns KeyboardInterrupt into Exit(130)
    except MigsafeError as exc:
        err.print(f"migsafe: error: {_one_line(str(exc))}", markup=False)
        return exc.exit_code
    except (KeyboardInterrupt, Abort):
        return _interrupted()
    except Exit as exc:
        return _interrupted() if exc.exit_code == 130 else int(exc.exit_code)
    except TyperException as exc:  # usage errors (click's): bad input
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            err.print(f"migsafe: error: {_one_line(str(exc))}", markup=False)
        return 2
    except Exception as exc:  # the contract: one line, never a traceback
        import psycopg

        if isinstance(exc, psycopg.Error):  # one the steps did not wrap: the database refused
            err.print(f"migsafe: error: database: {_one_line(str(exc))}", markup=False)
            return 3
        err.print(f"migsafe: error: unexpected {type(exc).__name__}: {_one_line(str(exc))}", markup=False)
        return 3
    finally:
        pgtools.stop_all()  # nothing migsafe started outlives it


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr for any error, and the documented exit code.

    Usage errors exit 2 (click's own convention, which matches "bad input"); SIGTERM is handled like
    Ctrl-C (exit 130, children stopped).
    """
    installed = False
    with contextlib.suppress(ValueError):  # not the main thread (embedded): no handler
        signal.signal(signal.SIGTERM, _on_sigterm)
        installed = True
    code = run(argv)
    if installed:  # the work is done (children stopped): a late SIGTERM no longer changes the outcome
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if code == 130:
        # An interrupt is an exception raised wherever the main thread is, and it can land inside the
        # standard library's own bookkeeping: between a ThreadPoolExecutor starting a worker thread
        # and registering it for shutdown, say. Interpreter shutdown then waits forever for that idle
        # worker (`make chaos` found it: a SIGTERM 30 ms into a rehearsal's backup hung 1 run in 4).
        # Every child is stopped and the output written by now: end without waiting for threads.
        remove_secrets()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
