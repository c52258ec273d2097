"""The rehearsal: back up, copy the source to scratch, upgrade and downgrade there, timed and verified.

Order matters and is deliberate:
1. preflight -- everything that can be refused is refused before anything is created (exit 2);
2. the backup exists before anything else happens: it is the safety net;
3. the scratch copy is made, the backup restore-tested on it, the baseline taken;
4. upgrade, verify, downgrade, verify -- each timed, the locks observed;
5. the verdict, the reports, the notification;
6. the scratch is destroyed whatever happened (errors, Ctrl-C, SIGTERM).
The source is only read: its connections are opened with ``default_transaction_read_only``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from . import catalog, pgtools, serverlog
from .backup import BackupOptions, run_backup
from .config import Settings
from .dsn import Dsn, mask
from .exceptions import (
    BackupIncomplete,
    DatabaseError,
    EnvironmentFault,
    MigsafeError,
    RestoreFailed,
    RestoreRefused,
    RestoreVerificationFailed,
    ScratchFailed,
)
from .identifiers import QualifiedName
from .inventory import load_manifest
from .localpg import LocalCluster, sweep
from .migrate import (
    LOCK_STRENGTH as LOCK_ORDER,
)
from .migrate import (
    LockObserver,
    MigrationRun,
    Probe,
    observation,
    probe,
    relfilenodes,
    run_alembic,
    stronger,
)
from .plan import Plan
from .restore import RestoreOptions, run_restore
from .result import (
    BackupInfo,
    CheckResult,
    LintFinding,
    LockHold,
    Phase,
    Result,
    RevisionRun,
    Revisions,
    ScratchInfo,
    StatementRun,
    StepResult,
    TableResult,
    Traffic,
    TrafficPhase,
)
from .scratch import Scratch, create_scratch
from .store import open_store
from .traffic import Op, TrafficRun, derive_workload
from .verdict import decide, expectation_met

Say = Callable[[str], None]


class _Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so the scratch is destroyed."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Run:
    """Mutable state of one rehearsal; becomes a :class:`Result`."""

    def __init__(self, plan: Plan, settings: Settings, say: Say) -> None:
        self.plan = plan
        self.settings = settings
        self.say = say
        self.t0 = time.monotonic()
        self.started = datetime.now(UTC)
        self.steps: list[StepResult] = []
        self.tables = {t: TableResult(name=t) for t in plan.source.table_names}
        self.checks: list[CheckResult] = []
        self.locks: list[Any] = []
        self.backup: BackupInfo | None = None
        self.scratch: Scratch | None = None
        self.failed_step: str | None = None
        self.at = "start"  # the step (or migration phase) running now: what a database error stopped
        self.error: str | None = None
        self.warnings: list[str] = []
        self.restore_cluster: LocalCluster | None = None
        self.lint: list[LintFinding] = []
        self.revision_runs: list[RevisionRun] = []
        self.traffic = Traffic()
        self.traffic_ops: list[Op] | None = None
        self.after_upgrade: str | None = None
        self.after_downgrade: str | None = None
        self.traffic_dropped: set[str] = set()  # kinds of transaction that failed before any migration
        self.pg_version: str | None = None
        self.restore_cancelled = threading.Event()
        self.server_log: serverlog.ServerLog | None = None  # migration.command: the scratch's statement log
        self.given_log: serverlog.ServerLog | None = None  # the runner's (AWS: the scratch's csvlog)

    def cancel_restore_test(self) -> None:
        """Stop a running restore test quickly (its server goes away, so its restore fails).

        It may still be creating its cluster: the flag makes it stop as soon as that returns, and its
        children (initdb) are stopped now, so an interrupt never waits for a whole restore test.
        """
        self.restore_cancelled.set()
        pgtools.stop_all()
        if self.restore_cluster is not None:
            self.restore_cluster.destroy()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = datetime.now(UTC)
        t = time.monotonic()
        self.at = name
        self.say(f"{name} ...")
        try:
            yield
        except MigsafeError as exc:
            self._record(name, started, t, False, mask(str(exc)))
            raise
        except psycopg.Error as exc:
            self._record(name, started, t, False, mask(str(exc)).strip())
            raise
        except BaseException:
            self._record(name, started, t, False, "interrupted")
            raise
        self._record(name, started, t, True, None)

    def _record(self, name: str, started: datetime, t: float, ok: bool, error: str | None) -> None:
        seconds = round(time.monotonic() - t, 3)
        self.steps.append(StepResult(name=name, started=started, seconds=seconds, ok=ok, error=error))
        if not ok and self.failed_step is None:
            self.failed_step, self.error = name, error
        self.say(f"{name}: {'ok' if ok else 'FAILED'} ({seconds:.2f}s){'' if ok else ' ' + (error or '')}")

    def add_step(self, run: MigrationRun, name: str) -> None:
        started = self.started + timedelta(seconds=run.started_at)
        self.steps.append(
            StepResult(name=name, started=started, seconds=run.seconds, ok=run.ok, error=run.error)
        )
        if not run.ok and self.failed_step is None:
            self.failed_step, self.error = name, run.error
        self.say(
            f"{name}: {'ok' if run.ok else 'FAILED'} ({run.seconds:.2f}s){'' if run.ok else ' ' + (run.error or '')}"
        )


def preflight(plan: Plan, settings: Settings, backup_id: str | None = None) -> tuple[Dsn, str | None, Probe]:
    """Refuse bad input before anything is created: tables, revisions, store, a reused backup."""
    source = plan.source.resolve_dsn(settings.environ)
    with catalog.connect(
        source, application_name="migsafe preflight", options="-c default_transaction_read_only=on"
    ) as conn:
        catalog.resolve_tables(conn, plan.source.qualified_tables)
        revision = catalog.alembic_revision(conn)
    # the migration environment runs here, read-only, before anything is backed up (exit 2 if it cannot)
    pr = probe(plan, revision, settings.environ, source_url=source)
    store = open_store(plan.store.url, plan.base_dir)
    store.check()
    if backup_id is not None:
        _, manifest = load_manifest(store, backup_id)  # BackupNotFound / BackupIncomplete: exit 2
        missing = sorted(set(plan.source.table_names) - {t.name for t in manifest.tables})
        if missing:
            raise BackupIncomplete(f"backup {backup_id} does not hold {', '.join(missing)}")
    return source, revision, pr


def rehearse(
    plan: Plan,
    settings: Settings,
    *,
    scratch_dsn: Dsn | None = None,
    report_dir: Path | None = None,
    say: Say | None = None,
    backup_id: str | None = None,
    server_log: serverlog.ServerLog | None = None,
) -> Result:
    """Run the whole rehearsal; returns the Result (PASS/FAIL). Raises InputError before doing anything.

    ``backup_id`` reuses a backup already taken for this plan (on AWS the state machine backs up in
    parallel with the snapshot restore); it must be complete and hold every table of the plan.
    ``server_log`` is where a ``migration.command`` plan's statements are read on a scratch that is
    not a local cluster (on AWS: the scratch instance's csvlog, :mod:`migsafe.rdslog`).
    """
    say = say or (lambda _m: None)
    source, source_rev, pr = preflight(plan, settings, backup_id)
    if plan.scratch.kind == "local":
        removed = sweep(settings.runtime_dir)
        if removed:
            say(f"removed {len(removed)} scratch cluster(s) left by killed runs: {', '.join(removed)}")
    run = _Run(plan, settings, say)
    run.given_log = server_log
    fault: BaseException | None = None
    stopped_at = "start"
    try:
        with _sigterm_unwinds():
            _pipeline(run, source, pr, scratch_dsn, backup_id)
    except (EnvironmentFault, psycopg.Error) as exc:
        fault = exc
        stopped_at = run.failed_step or run.at  # before destroy_scratch becomes the last step
    except MigsafeError:
        pass  # a step found a problem (e.g. the restore test): recorded as a failed step, so FAIL
    except (KeyboardInterrupt, _Terminated) as exc:
        fault = exc
    finally:
        if run.scratch is not None:
            with run.step("destroy_scratch"):
                run.scratch.destroy()
    result = _result(run, source, source_rev, pr)
    if fault is not None and not isinstance(fault, KeyboardInterrupt | _Terminated):
        result.warnings.append(f"the rehearsal stopped on an environment fault: {mask(str(fault))}")
    decide(result, plan.thresholds, plan.expect)
    if report_dir is not None:
        from .report import write_reports

        write_reports(result, report_dir)
    if plan.notify.sns_topic_arn:
        from .notify import chatbot_message, publish

        publish(
            chatbot_message(result), plan.notify.sns_topic_arn, verdict=result.verdict, plan=plan.display_name
        )
    if isinstance(fault, KeyboardInterrupt | _Terminated):
        raise KeyboardInterrupt
    if isinstance(fault, psycopg.Error):  # unwrapped, it read "database: ..." -- which one?
        fault = _database_fault(stopped_at, fault)
    if fault is not None:
        setattr(fault, "result", result)  # noqa: B010 - the CLI reports it and exits 3
        raise fault
    return result


_SCRATCH_STEPS = ("baseline", "upgrade", "verify_upgrade", "downgrade", "verify_downgrade", "destroy_scratch")


def _database_fault(step: str, exc: psycopg.Error) -> EnvironmentFault:
    """A database error, named by the step it stopped and the server that step works on."""
    on_scratch = step in _SCRATCH_STEPS or step.startswith("after_")
    server = "the scratch server" if on_scratch else "the source" if step == "backup" else "a database"
    kind = ScratchFailed if on_scratch else DatabaseError
    fault = kind(f"rehearsal stopped at step {step}: {server} failed"
                 + (" (the source was not changed)" if on_scratch else "") + f": {mask(str(exc)).strip()}")
    fault.__cause__ = exc
    return fault


def _pipeline(run: _Run, source: Dsn, pr: Probe, scratch_dsn: Dsn | None, backup_id: str | None) -> None:
    plan, settings = run.plan, run.settings
    tables = plan.source.table_names
    store = open_store(plan.store.url, plan.base_dir)
    with run.step("backup"):
        if backup_id is not None:  # checked by preflight; its objects are verified by the restore test
            ref, manifest = load_manifest(store, backup_id)
            run.backup = BackupInfo(
                id=backup_id, url=store.location(ref.prefix), bytes=manifest.total_bytes, store_url=store.url
            )
        else:
            b = run_backup(
                source,
                store,
                plan.source.qualified_tables,
                BackupOptions(
                    compression=plan.backup.compression,
                    zstd_level=plan.backup.zstd_level,
                    jobs=plan.backup.jobs,
                    plan_sha256=plan.digest(),
                    pg_bindir=settings.pg_bindir,
                    stall_timeout_s=plan.source.stall_timeout_seconds,
                ),
            )
            run.backup = BackupInfo(id=b.backup_id, url=b.url, bytes=b.bytes, store_url=store.url)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="migsafe-restore-test") as pool:
        # Locally the restore test runs on its own throw-away cluster while the scratch copy is made
        # and the baseline taken (different servers, so the timed migration is never disturbed by it).
        # With a given scratch server (AWS) it runs there, in its own database, before the baseline.
        restore_test = (
            pool.submit(_restore_test_local, run, store, run.backup.id)
            if plan.scratch.kind == "local"
            else None
        )
        try:
            _on_scratch(run, source, pr, scratch_dsn, store, tables, restore_test)
        finally:
            if restore_test is not None and not restore_test.done():
                run.cancel_restore_test()


def _on_scratch(
    run: _Run,
    source: Dsn,
    pr: Probe,
    scratch_dsn: Dsn | None,
    store: Any,
    tables: list[str],
    restore_test: Future[None] | None,
) -> None:
    plan, settings = run.plan, run.settings
    assert run.backup is not None
    with run.step("scratch"):
        given = scratch_dsn or (Dsn.parse(plan.scratch.dsn) if plan.scratch.dsn else None)
        run.scratch = create_scratch(
            plan.scratch.kind,
            source,
            runtime_dir=settings.runtime_dir,
            scratch_dsn=given,
            pg_bindir=settings.pg_bindir,
            stall_timeout=plan.source.stall_timeout_seconds,
        )
    scratch = run.scratch.dsn
    if plan.migration.command:
        # no in-process capture with the project's own command: the scratch server logs what it runs
        log = run.given_log
        if run.scratch.cluster is not None:  # as the throw-away cluster's superuser (the source's may not be)
            log = serverlog.LocalFileLog(run.scratch.cluster.log_file,
                                         run.scratch.cluster.dsn(dbname=scratch.dbname or "postgres"))
        if log is None:
            run.warnings.append("server-side observation: this scratch's server log cannot be read here")
        else:
            try:
                run.warnings.extend(log.enable())
                run.server_log = log
            except (psycopg.Error, serverlog.ServerLogUnreadable) as exc:  # observation: noted, never fatal
                run.warnings.append(f"server-side observation could not be turned on: {mask(str(exc)).strip()}")
    if restore_test is None:
        with run.step("restore_test"):
            _restore_test(run, store, run.backup.id, scratch)
        run.backup.restore_tested = True
    observer = LockObserver(scratch, run.t0)
    with catalog.connect(scratch, application_name="migsafe verify") as conn:
        with run.step("baseline"):
            before_nodes = relfilenodes(conn, tables)
            for t in tables:
                q = QualifiedName.parse(t)
                run.tables[t].rows_before, run.tables[t].fingerprint_before = catalog.count_and_fingerprint(
                    conn, q
                )
            invalid = _invalid_fks(conn, tables)
            if invalid:
                run.warnings.append(
                    f"foreign keys already not valid before the upgrade: {', '.join(invalid)}"
                )
            _checks(run, conn, "before")
        if restore_test is not None:
            restore_test.result()  # the safety net is proven before the migration runs
            run.backup.restore_tested = True
        after_nodes = _phase(run, conn, observer, "upgrade", pr.upgrade_to, before_nodes)
        run.after_upgrade = catalog.alembic_revision(conn)
        if after_nodes is None:
            return
        downgraded = _phase(run, conn, observer, "downgrade", pr.downgrade_dest or "base", after_nodes)
        run.after_downgrade = back = catalog.alembic_revision(conn)
        if downgraded is None:
            return
        if back != (pr.downgrade_dest or None):
            run.warnings.append(f"after the downgrade the revision is {back}, expected {pr.downgrade_dest}")


def _phase(
    run: _Run,
    conn: psycopg.Connection[Any],
    observer: LockObserver,
    phase: Phase,
    revision: str,
    nodes_before: dict[str, int | None],
) -> dict[str, int | None] | None:
    """Run one direction of the migration, observed, then verify; the relfilenodes after, or None."""
    plan = run.plan
    assert run.scratch is not None
    run.at = phase
    traffic = _start_traffic(run, conn, phase)
    run.say(f"{phase} ...")  # add_step says its end
    began, clock = datetime.now(UTC), time.monotonic()
    try:
        if traffic is not None:
            traffic.phase_started()
        mig = run_alembic(
            plan,
            phase,
            revision,
            run.scratch.dsn,
            observer,
            run.settings.environ,
            phase,
            timeout=plan.migration.timeout_seconds,
            driver=plan.migration.sqlalchemy_driver,
            server_log=run.server_log,
        )
    except BaseException:
        run._record(phase, began, clock, False, "interrupted")  # the report shows where it stopped
        raise
    finally:
        if traffic is not None:
            traffic.phase_ended()
            felt = traffic.stop()
            run.warnings.extend(w for w in traffic.warnings if w not in run.warnings)
    run.add_step(mig, phase)
    _apply_locks(run, mig, observer, phase)
    _lint_phase(run, conn, mig, phase)
    if traffic is not None:
        _attribute_wait(run, traffic, felt, mig)
        setattr(run.traffic, phase, felt)
    if not mig.ok:
        return None
    tables = list(run.tables)
    with run.step(f"verify_{phase}"):
        nodes = relfilenodes(conn, tables)
        invalid = _invalid_fks(conn, tables)
        for t, tr in run.tables.items():
            rows, digest = catalog.count_and_fingerprint(conn, QualifiedName.parse(t))
            rewritten = nodes_before[t] != nodes[t]
            fks = [fk.split(":", 1)[1] for fk in invalid if fk.split(":")[0] == t]
            if phase == "upgrade":
                tr.rows_after_upgrade, tr.fingerprint_after_upgrade = rows, digest
                tr.rewritten, tr.fk_invalid_after_upgrade = rewritten, fks
            else:
                tr.rows_after_downgrade, tr.fingerprint_after_downgrade = rows, digest
                tr.rewritten_by_downgrade, tr.fk_invalid_after_downgrade = rewritten, fks
        _checks(run, conn, f"after_{phase}")
    return nodes


# SQLSTATE classes of a server or connection in trouble (not of the SQL a backup holds)
_FAULT_CLASSES = ("08", "53", "57", "58", "XX")


def _sql_cause(exc: BaseException) -> psycopg.Error | None:
    """The database error behind a migsafe error, following its chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.Error):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def _restore_test_verdict() -> Iterator[None]:
    """A backup the restore test cannot restore is a FAIL (exit 1), naming what is missing.

    Refusals (a foreign key's target, an extension the scratch cannot install) and the server
    rejecting the backup's SQL (``type "public.citext" does not exist``) say the *backup* is not
    restorable as it is. Only an unreachable or failing server or store is an environment fault (3).
    """
    try:
        yield
    except RestoreRefused as exc:
        raise RestoreVerificationFailed(f"restore test failed, the backup cannot be restored: {exc}") from exc
    except (RestoreFailed, DatabaseError) as exc:
        cause = _sql_cause(exc)
        state = getattr(cause, "sqlstate", None) or ""
        if isinstance(cause, psycopg.OperationalError) or not state or state[:2] in _FAULT_CLASSES \
                or state == "55P03":  # a lock not had in time
            raise
        hint = ""
        if state in ("42704", "42883"):  # undefined object (a type, an operator class) or function
            hint = (" (an extension the tables need? backups taken before migsafe recorded extensions do not "
                    "install them: take a new backup)")
        raise RestoreVerificationFailed(
            f"restore test failed, the backup cannot be restored: {exc}{hint}") from exc


def _restore_test_local(run: _Run, store: Any, backup_id: str) -> None:
    """Restore-test on a throw-away cluster of its own (destroyed after, and by sweeps if killed)."""
    with run.step("restore_test"):
        cluster = LocalCluster.create("restoretest", run.settings.runtime_dir)
        run.restore_cluster = cluster
        try:
            if run.restore_cancelled.is_set():  # interrupted while the cluster was being created
                raise ScratchFailed("restore test cancelled")
            with _restore_test_verdict():
                report = run_restore(
                    store,
                    backup_id,
                    cluster.dsn(),
                    RestoreOptions(no_owner=True, analyze=False, pg_bindir=run.settings.pg_bindir),
                )
            if not report.ok:
                raise RestoreVerificationFailed("restore test failed: " + "; ".join(report.problems()))
        finally:
            cluster.destroy()


def _restore_test(run: _Run, store: Any, backup_id: str, scratch: Dsn) -> None:
    """Restore the backup into a separate database on scratch and check it against the manifest."""
    name = "migsafe_restore_test"
    with catalog.connect(
        scratch.with_db("postgres") if scratch.dbname != "postgres" else scratch,
        application_name="migsafe restore test",
    ) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {} template template0").format(sql.Identifier(name)))
        try:
            with _restore_test_verdict():
                report = run_restore(
                    store,
                    backup_id,
                    scratch.with_db(name),
                    RestoreOptions(no_owner=True, analyze=False, pg_bindir=run.settings.pg_bindir),
                )
            if not report.ok:
                raise RestoreVerificationFailed("restore test failed: " + "; ".join(report.problems()))
        finally:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def _invalid_fks(conn: psycopg.Connection[Any], tables: list[str]) -> list[str]:
    oids = catalog.existing_tables(conn, [QualifiedName.parse(t) for t in tables])
    name_of = {oid: str(q) for q, oid in oids.items()}
    out = []
    for fk in catalog.foreign_keys(conn, list(oids.values())):
        if not fk["validated"]:
            table = next((n for n in name_of.values() if n == fk["table"]), fk["table"])
            out.append(f"{table}:{fk['name']}")
    return out


def _checks(run: _Run, conn: psycopg.Connection[Any], when: str) -> None:
    for check in run.plan.checks:
        if when not in check.when:
            continue
        value: Any = None
        error = None
        try:
            with conn.transaction(force_rollback=True):  # smoke queries never change scratch
                row = conn.execute(check.sql.encode()).fetchone()
            value = row[0] if row else None
            ok = expectation_met(value, check.expect)
        except psycopg.Error as exc:
            error, ok = mask(str(exc).strip()), False
        run.checks.append(
            CheckResult(
                name=check.name,
                when=when,
                sql=check.sql,
                expect=check.expect,  # type: ignore[arg-type]
                value=None if value is None else str(value),
                ok=ok,
                error=error,
            )
        )


def _apply_locks(run: _Run, mig: MigrationRun, observer: LockObserver, phase: str) -> None:
    holds = [h for h in observer.holds if h.phase == phase]
    run.locks.extend(holds)
    for t, tr in run.tables.items():
        sampled = [h for h in holds if h.relation == t]
        mode = None
        for h in sampled:
            mode = stronger(mode, h.mode)
        mode = stronger(mode, mig.commit_locks.get(t))
        ae = [h.end - h.start for h in sampled if h.mode == "AccessExclusiveLock"]
        seconds = max(ae, default=0.0)
        if mig.commit_locks.get(t) == "AccessExclusiveLock" and not ae:
            # held and released between two samples: at most the whole transaction
            seconds = min(mig.xact_seconds, mig.seconds)
        if phase == "upgrade":
            tr.upgrade_lock_mode, tr.upgrade_lock_seconds = mode, round(seconds, 3)
        else:
            tr.downgrade_lock_mode, tr.downgrade_lock_seconds = mode, round(seconds, 3)
        tr.max_lock_mode = stronger(tr.max_lock_mode, mode)
        tr.lock_seconds = max(tr.lock_seconds, round(seconds, 3))
    others = sorted(
        {h.relation for h in holds if h.relation not in run.tables}
        | {r for r in mig.commit_locks if r not in run.tables and r != "public.alembic_version"}
    )
    others = [o for o in others if not o.endswith(".alembic_version")]
    if others:
        run.warnings.append(f"the {phase} also locked tables the plan does not back up: {', '.join(others)}")


def _start_traffic(run: _Run, conn: psycopg.Connection[Any], phase: Phase) -> TrafficRun | None:
    """The synthetic clients, started a baseline before the phase (None when the plan turns them off)."""
    cfg = run.plan.traffic
    if not cfg.enabled or run.scratch is None:
        return None
    # The application of today (the schema before the upgrade) is what runs during both phases:
    # migrations deploy before the new code, and a rollback puts the old code back before downgrading.
    if run.traffic_ops is None:
        run.traffic_ops, warnings = derive_workload(conn, list(run.tables), cfg)
        run.warnings.extend(w for w in warnings if w not in run.warnings)
    ops = run.traffic_ops
    if not ops:
        run.warnings.append(f"traffic: nothing to run against the touched tables during the {phase}")
        return None
    traffic = TrafficRun(run.scratch.dsn, ops, cfg, run.t0, phase, dropped=run.traffic_dropped)
    traffic.start()
    try:
        time.sleep(cfg.baseline_seconds)  # the baseline: the same clients before the migration starts
    except BaseException:
        traffic.stop()
        raise
    return traffic


def _attribute_wait(run: _Run, traffic: TrafficRun, felt: TrafficPhase, mig: MigrationRun) -> None:
    """Name the migration's statement that held the lock the longest wait was on, and its revision.

    The blocker's ``pg_stat_activity.query`` is only what it runs *now* (maybe a later statement in
    the same transaction): the captured statements say which one took the lock.
    """
    wait = traffic.worst
    if wait is None or not wait.table:
        return
    table = wait.table
    took = [s for s in mig.statements if table in s.locks and s.start <= wait.started + 0.05]
    if not took:
        took = [s for s in mig.statements if table in s.locks]
    if not took:
        return

    def strength(s: StatementRun) -> tuple[int, float]:
        mode = s.locks[table]
        return (LOCK_ORDER.index(mode) if mode in LOCK_ORDER else -1, -s.start)

    stmt = max(took, key=strength)
    felt.blocking_statement = " ".join(stmt.sql.split())[:300]
    felt.blocking_mode = stronger(felt.blocking_mode, stmt.locks[table])
    # the revision the statement was captured in (time windows of adjacent revisions touch)
    rev = next((r for r in mig.revisions if any(x is stmt for x in r.statements)), None)
    if rev is None:
        rev = next((r for r in reversed(mig.revisions) if r.start <= stmt.start), None)
    felt.blocking_revision = rev.id if rev else None


def _captured_holds(run: _Run, mig: MigrationRun, phase: Phase) -> None:
    """Lock holds the 50 ms sampler missed (shorter than a sample), from the statement capture.

    A statement's new lock is held from the statement to its transaction's COMMIT; a hold already
    sampled for the same relation and mode in this phase is not added twice.
    """
    sampled = {(h.relation, h.mode) for h in run.locks if h.phase == phase}
    for rev in mig.revisions:
        for lk in rev.locks:
            if (lk.relation, lk.mode) in sampled or lk.relation.endswith(".alembic_version"):
                continue
            first = next(
                (st.start for st in rev.statements if st.locks.get(lk.relation) == lk.mode), rev.start
            )
            run.locks.append(
                LockHold(
                    relation=lk.relation,
                    mode=lk.mode,
                    phase=phase,
                    start=round(first, 3),
                    end=round(first + lk.held_seconds, 3),
                )
            )
            sampled.add((lk.relation, lk.mode))


def _lint_phase(run: _Run, conn: psycopg.Connection[Any], mig: MigrationRun, phase: Phase) -> None:
    """Per-revision figures and squawk's findings on the statements the phase ran (never fatal)."""
    from .lint import Unit, lint_units, pg_version

    run.warnings.extend(mig.warnings)
    run.revision_runs.extend(mig.revisions)
    _captured_holds(run, mig, phase)
    if run.pg_version is None:
        row = conn.execute("show server_version_num").fetchone()
        run.pg_version = pg_version(int(row[0])) if row else None
    units = [
        Unit(r.id, phase, [s.sql for s in r.statements], [s.locks for s in r.statements])
        for r in mig.revisions
    ]
    if not units and mig.statements:
        units = [Unit(None, phase, [s.sql for s in mig.statements], [s.locks for s in mig.statements])]
    findings, warnings = lint_units(
        units, pg_version_text=run.pg_version, lint_fail=run.plan.thresholds.lint_fail
    )
    run.warnings.extend(w for w in warnings if w not in run.warnings)
    run.lint.extend(findings)
    for r in mig.revisions:
        r.lint = [f for f in findings if f.revision == r.id]


def _result(run: _Run, source: Dsn, source_rev: str | None, pr: Probe) -> Result:
    finished = datetime.now(UTC)
    sc = run.scratch
    return Result(
        plan=run.plan.display_name,
        verdict="FAIL",
        started=run.started,
        finished=finished,
        seconds=round(time.monotonic() - run.t0, 3),
        source=f"{source.host}:{source.port}/{source.dbname}",
        revisions=Revisions(
            source=source_rev,
            upgrade_to=pr.upgrade_to,
            downgrade_to=pr.downgrade_dest or "base",  # resolved: "-1" is no command anyone can run
            after_upgrade=run.after_upgrade,
            after_downgrade=run.after_downgrade,
        ),
        thresholds=run.plan.thresholds.model_dump(),
        steps=run.steps,
        tables=list(run.tables.values()),
        checks=run.checks,
        locks=run.locks,
        lint=run.lint,
        revision_runs=run.revision_runs,
        traffic=run.traffic if run.traffic.phases() else None,
        backup=run.backup,
        scratch=ScratchInfo(
            kind=run.plan.scratch.kind,
            id=sc.id if sc else None,
            destroyed=bool(sc and sc.destroyed),
            method=sc.method if sc else None,
        ),
        failed_step=run.failed_step,
        error=run.error,
        warnings=run.warnings,
        observation=observation(bool(run.plan.migration.command), run.server_log is not None),
        downgrade_command=run.plan.migration.downgrade_command,
    )
