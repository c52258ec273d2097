"""Alembic under observation: probe revisions, run upgrade/downgrade timed, watch the locks it takes.

The user's env.py and models are their code, so alembic runs in a subprocess (in the plan's Python,
by default ours) through ``_alembic_driver.py``. While it runs, a second connection samples
``pg_locks`` every 50 ms; at each COMMIT the driver also records every relation lock the
transaction holds (relation locks are held to the end of the transaction), so even a migration
shorter than one sample is seen with its strongest lock.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from . import pgtools, serverlog
from .dsn import Dsn, mask
from .exceptions import MigrationEnvironmentInvalid, RevisionUnknown
from .plan import Plan
from .result import LockHold, Observation, Phase, RevisionLock, RevisionRun, StatementRun

DRIVER = Path(__file__).with_name("_alembic_driver.py")

LOCK_STRENGTH = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
]


def stronger(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if LOCK_STRENGTH.index(a) >= LOCK_STRENGTH.index(b) else b


@dataclass(frozen=True)
class Probe:
    upgrade_to: str
    downgrade_dest: str | None
    path: list[str]


def _python(plan: Plan) -> str:
    return str(plan.path(plan.migration.python)) if plan.migration.python else sys.executable


def _ini(plan: Plan) -> Path:
    return plan.path(plan.migration.ini)


def _config_key(plan: Plan) -> str:
    return "migration.config_factory" if plan.migration.config_factory else "migration.alembic_ini"


def _cwd(plan: Plan) -> Path:
    return plan.base_dir if plan.migration.config_factory else _ini(plan).parent


def _env(plan: Plan, extra: Mapping[str, str], url: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if not k.startswith(("PG", "MIGSAFE_"))}
    if environ.get("MIGSAFE_OBSERVER_FAULT"):  # test-only: makes an observation hook raise
        env["MIGSAFE_OBSERVER_FAULT"] = environ["MIGSAFE_OBSERVER_FAULT"]
    if plan.migration.config_factory:
        env["MIGSAFE_CONFIG_FACTORY"] = plan.migration.config_factory
    env.update(extra)
    if url is not None:
        env["MIGSAFE_ALEMBIC_URL"] = url
        if plan.migration.url_env:
            env[plan.migration.url_env] = url
    paths = [str(plan.path(p)) for p in plan.migration.bundle] + [str(_cwd(plan))]
    env["PYTHONPATH"] = os.pathsep.join(
        paths + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else [])
    )
    return env


def _check_config(plan: Plan) -> Path:
    ini = _ini(plan)
    if not plan.migration.config_factory and not ini.is_file():
        how = "migration.alembic_ini, migration.config_factory" + (
            "" if plan.migration.command else " or migration.command"
        )
        raise MigrationEnvironmentInvalid(
            f"migration.alembic_ini: {ini} does not exist (give {how}: migsafe reads the revisions from it)"
        )
    return ini


def probe(
    plan: Plan, source_revision: str | None, environ: Mapping[str, str], source_url: Dsn | None = None
) -> Probe:
    """Check the plan's revisions against the script directory before anything is created.

    With ``source_url`` (preflight) env.py also runs, in the plan's Python, against the source with
    every connection read-only: a missing driver, an env.py that raises or cannot find its event loop,
    is bad input (exit 2) found before any backup, not a FAIL of the migration.
    """
    ini = _check_config(plan)
    extra = {
        "MIGSAFE_PROBE_SOURCE": source_revision or "",
        "MIGSAFE_PROBE_UP": plan.migration.upgrade_to,
        "MIGSAFE_PROBE_DOWN": plan.migration.downgrade_to,
    }
    url = None
    if source_url is not None and not plan.migration.command:
        extra["MIGSAFE_PROBE_ENV"] = "1"
        url = source_url.url().replace("postgresql://", f"{plan.migration.sqlalchemy_driver}://", 1)
    env = _env(plan, extra, url, environ)
    proc = pgtools.run(
        [_python(plan), str(DRIVER), "probe", str(ini)], env=env, cwd=_cwd(plan), timeout=120
    )
    return _probe_answer(plan, proc)


def _probe_answer(plan: Plan, proc: subprocess.CompletedProcess[str]) -> Probe:
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
        raise MigrationEnvironmentInvalid(
            f"migration.python: {_python(plan)} cannot run migsafe's alembic driver: {mask(last)}"
        )
    data = json.loads(lines[-1])
    if data.get("env_error"):
        raise MigrationEnvironmentInvalid(_env_message(plan, data["where"], mask(data["env_error"])))
    if data.get("error"):
        raise RevisionUnknown(data["error"])
    return Probe(
        upgrade_to=data["upgrade_to"], downgrade_dest=data.get("downgrade_dest"), path=data.get("path", [])
    )


def _env_message(plan: Plan, where: str, error: str) -> str:
    """One line naming the plan key to fix."""
    if error.startswith(("ModuleNotFoundError", "ImportError")) and "MIGSAFE" not in error:
        return (
            f"migration.python: the migration environment does not load in {_python(plan)}: {error} "
            f"(install it there, or set migration.sqlalchemy_driver, now {plan.migration.sqlalchemy_driver!r}, "
            "to a driver it has)"
        )
    if where == "config":
        return f"{_config_key(plan)}: alembic finds no usable configuration: {error}"
    return (
        f"{_config_key(plan)}: env.py does not run ({error}); if it only runs inside the project's "
        "own tooling, set migration.command and migration.downgrade_command"
    )


class LockObserver:
    """Samples pg_locks of every other client backend on the scratch server, in a thread."""

    def __init__(self, dsn: Dsn, t0: float, interval: float = 0.05) -> None:
        self.dsn = dsn
        self.t0 = t0
        self.interval = interval
        self.holds: list[LockHold] = []
        self._open: dict[tuple[str, str], float] = {}
        self._last: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.phase: Phase = "upgrade"
        self.error: str | None = None

    def start(self, phase: Phase) -> None:
        self.phase = phase
        self._stop.clear()
        self._open.clear()
        self._thread = threading.Thread(target=self._run, name=f"migsafe-locks-{phase}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with psycopg.connect(
                self.dsn.conninfo(), autocommit=True, application_name="migsafe lock observer"
            ) as conn:
                conn.execute("set statement_timeout = '2s'")
                while not self._stop.is_set():
                    now = time.monotonic() - self.t0
                    rows = conn.execute(
                        """
                        select n.nspname || '.' || c.relname, l.mode
                        from pg_locks l
                        join pg_stat_activity a on a.pid = l.pid
                        join pg_class c on c.oid = l.relation join pg_namespace n on n.oid = c.relnamespace
                        where l.locktype = 'relation' and l.granted and l.pid <> pg_backend_pid()
                          and a.backend_type = 'client backend' and c.relkind in ('r', 'p', 'm')
                          and a.application_name not like 'migsafe traffic%%'
                          and n.nspname not in ('pg_catalog', 'information_schema')
                          and n.nspname not like 'pg_toast%%'
                        """
                    ).fetchall()
                    seen = {(r[0], r[1]) for r in rows}
                    for key in seen:
                        self._open.setdefault(key, now)
                        self._last[key] = now
                    for key in [k for k in self._open if k not in seen]:
                        self._close(key, now)
                    self._stop.wait(self.interval)
        except psycopg.Error as exc:
            self.error = mask(str(exc))

    def _close(self, key: tuple[str, str], end: float) -> None:
        start = self._open.pop(key)
        self.holds.append(
            LockHold(
                relation=key[0],
                mode=key[1],
                phase=self.phase,
                start=round(start, 3),
                end=round(max(end, start), 3),
            )
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        end = time.monotonic() - self.t0
        for key in list(self._open):
            self._close(key, end)


@dataclass
class MigrationRun:
    action: str
    revision: str
    seconds: float
    ok: bool
    error: str | None = None
    started_at: float = 0.0  # seconds since the rehearsal started
    commit_locks: dict[str, str] = field(default_factory=dict)  # relation -> strongest mode at commit
    xact_seconds: float = 0.0
    revisions: list[RevisionRun] = field(default_factory=list)
    statements: list[StatementRun] = field(default_factory=list)  # every captured one (bounded)
    warnings: list[str] = field(default_factory=list)  # the capture's own troubles (never fatal)


def run_alembic(
    plan: Plan,
    action: str,
    revision: str,
    scratch: Dsn,
    observer: LockObserver,
    environ: Mapping[str, str],
    phase: Phase,
    *,
    timeout: float | None = None,
    driver: str = "postgresql+psycopg",
    server_log: serverlog.ServerLog | None = None,
) -> MigrationRun:
    """Run ``alembic upgrade|downgrade revision`` against scratch, timed and observed.

    With ``[migration] command`` the project's own command runs instead, and ``server_log`` (the
    scratch's statement log: a local file, or an RDS scratch's csvlog) is where they are observed.
    """
    ini = _ini(plan)
    url = scratch.url().replace("postgresql://", f"{driver}://", 1)
    # a private folder, removed whatever happens (an interrupt, a timeout, a driver that crashed)
    workdir = Path(tempfile.mkdtemp(prefix="migsafe-alembic-"))
    try:
        return _run_observed(
            plan, action, revision, ini, url, workdir, observer, environ, phase, timeout, server_log
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_observed(
    plan: Plan,
    action: str,
    revision: str,
    ini: Path,
    url: str,
    workdir: Path,
    observer: LockObserver,
    environ: Mapping[str, str],
    phase: Phase,
    timeout: float | None,
    server_log: serverlog.ServerLog | None,
) -> MigrationRun:
    lock_file = workdir / "locks.jsonl"
    capture_file = workdir / "capture.jsonl"
    capture_file.touch()  # present even if the driver never starts: an unreadable capture is a warning
    command = plan.migration.command if action == "upgrade" else plan.migration.downgrade_command
    if command:
        argv = [a.replace("{revision}", revision) for a in command]
        env = _env(plan, {}, url, environ)
        env.pop("MIGSAFE_ALEMBIC_URL", None)  # the project's command reads url_env, nothing of ours
        cwd = plan.base_dir
    else:
        argv = [_python(plan), str(DRIVER), action, str(ini), revision]
        env = _env(
            plan, {"MIGSAFE_LOCK_REPORT": str(lock_file), "MIGSAFE_CAPTURE": str(capture_file)}, url, environ
        )
        cwd = _cwd(plan)
    log_mark: Any = None
    log_trouble = ""
    nodes_before: dict[str, int] | None = None
    if command and server_log is not None:
        try:
            log_mark = server_log.mark()
        except Exception as exc:  # observation: noted, never fatal
            log_trouble = mask(str(exc))
        try:
            nodes_before = serverlog.filenodes(observer.dsn)
        except psycopg.Error:
            nodes_before = None
    observer.start(phase)
    started_at = time.monotonic() - observer.t0
    epoch0 = time.time() - started_at  # wall clock of the rehearsal's start (the driver stamps epochs)
    t = time.monotonic()
    try:
        # its own process group: a migration that forks (or an env.py that does) is stopped whole
        proc = pgtools.spawn(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
        )
        try:
            _out, err = proc.communicate(timeout=timeout)
        except BaseException:
            pgtools.stop(proc, grace=2.0)
            raise
        pgtools.release(proc)
        seconds = time.monotonic() - t
    finally:
        observer.stop()
    run = MigrationRun(
        action=action,
        revision=revision,
        seconds=round(seconds, 3),
        ok=proc.returncode == 0,
        started_at=round(started_at, 3),
    )
    if proc.returncode != 0:
        marker = [line for line in err.splitlines() if line.startswith("MIGSAFE-ERROR: ")]
        if marker:
            info = json.loads(marker[-1].removeprefix("MIGSAFE-ERROR: "))
            run.error = mask(f"{info['type']}: {info['message']}")
        else:
            run.error = mask(
                err.strip().splitlines()[-1] if err.strip() else f"alembic exited {proc.returncode}"
            )
    if observer.error:
        run.warnings.append(f"the {phase}'s pg_locks sampling stopped: {observer.error}")
    if command:
        if server_log is None:
            run.warnings.append(
                f"the {phase} ran through migration.command on a scratch whose server log migsafe cannot "
                "read: no statements or per-revision figures, only pg_locks sampling"
            )
            return run
        try:
            if log_trouble:
                raise serverlog.ServerLogUnreadable(log_trouble)
            read_server_log(server_log.read(log_mark), run, phase, epoch0, nodes_before)
        except Exception as exc:  # observation: noted, never fatal
            run.warnings.append(f"the {phase}'s server log could not be read: {mask(str(exc))}")
        return run
    try:
        read_commit_locks(lock_file, run)
    except Exception as exc:  # observation: noted, never fatal
        run.warnings.append(f"the {phase}'s commit-time locks could not be read: {exc}")
    try:
        read_capture(capture_file, run, phase, epoch0)
    except Exception as exc:  # instrumentation: noted, never fatal
        run.warnings.append(f"the {phase}'s statement capture could not be read: {exc}")
    return run


def read_commit_locks(lock_file: Path, run: MigrationRun) -> None:
    if not lock_file.exists():
        return
    for line in lock_file.read_text().splitlines():
        rec: dict[str, Any] = json.loads(line)
        run.xact_seconds = max(run.xact_seconds, float(rec.get("xact_seconds", 0.0)))
        for nsp, rel, relkind, mode in rec["locks"]:
            if relkind in ("r", "p", "m"):
                name = f"{nsp}.{rel}"
                run.commit_locks[name] = stronger(run.commit_locks.get(name), mode) or mode


def read_server_log(
    seen: serverlog.Observed,
    run: MigrationRun,
    phase: Phase,
    epoch0: float,
    nodes_before: dict[str, int] | None = None,
) -> None:
    """Statements and per-revision figures from the scratch's log (``migration.command`` mode).

    A statement belongs to the revision whose ``alembic_version`` update follows it (the update
    itself, logged when it ends, to the revision it records); locks and rewrites per revision are the
    differences between consecutive version updates of one transaction.
    """
    upgrade = phase == "upgrade"
    stmts = [
        StatementRun(
            sql=s.sql[:2000], start=round(s.epoch - epoch0, 3), seconds=round(s.seconds, 4), locks={}
        )
        for s in seen.statements
    ]
    run.statements = stmts[:MAX_STATEMENTS]
    if not seen.marks:
        if stmts:
            run.warnings.append(
                f"the {phase}'s statements could not be attributed to revisions "
                "(alembic_version did not exist before it)"
            )
        return
    held: dict[str, str] = {}
    nodes = nodes_before
    begin = run.started_at
    commit_at = run.started_at + run.seconds  # the locks are held to the end of the transaction
    # The log's order, not its millisecond stamps, decides: a backend writes a statement's line when
    # the statement ends, and the trigger's line during the version update (whose own line follows).
    as_run = {id(s): r for s, r in zip(seen.statements, stmts, strict=True)}
    groups: list[tuple[serverlog.RevisionMark, list[StatementRun]]] = []
    pending: list[StatementRun] = []
    update_due = False  # the version update whose trigger just logged is logged next
    for event in seen.events:
        if isinstance(event, serverlog.RevisionMark):
            groups.append((event, pending))
            pending, update_due = [], True
        elif update_due and event.pid == groups[-1][0].pid and "alembic_version" in event.sql:
            groups[-1][1].append(as_run[id(event)])
            update_due = False
        else:
            update_due = update_due and event.pid != groups[-1][0].pid
            pending.append(as_run[id(event)])
    for mark, mine in groups:
        new = {
            r: m for r, m in mark.locks.items()
            if not r.endswith(".alembic_version") and (r not in held or stronger(held[r], m) != held[r])
        }
        held.update(new)
        for rel, mode in mark.locks.items():
            if not rel.endswith(".alembic_version"):
                run.commit_locks[rel] = stronger(run.commit_locks.get(rel), mode) or mode
        run.xact_seconds = max(run.xact_seconds, mark.xact_seconds)
        at = round(mark.epoch - epoch0, 3)  # the version update: the revision's end
        rewrites = (
            sorted(
                r for r, n in mark.nodes.items()
                if r in nodes and nodes[r] != n and not r.endswith(".alembic_version")
            )
            if nodes is not None
            else []
        )
        nodes = mark.nodes
        run.revisions.append(
            RevisionRun(
                id=serverlog.revision_of(mark, upgrade),
                phase=phase,
                start=round(begin, 3),
                seconds=round(max(at - begin, 0.0), 3),
                statement_count=len(mine),
                statements=mine[:REVISION_STATEMENTS],
                locks=sorted(
                    (
                        RevisionLock(relation=r, mode=m, held_seconds=round(max(commit_at - at, 0.0), 3))
                        for r, m in new.items()
                    ),
                    key=lambda h: -LOCK_STRENGTH.index(h.mode),
                ),
                rewrites=rewrites,
            )
        )
        begin = at


def observation(command: bool, server_log: bool) -> Observation:
    """What each way of running the migration lets migsafe observe (the report states it)."""
    sampled = "pg_locks sampling every 50 ms (locks held longer than a sample, traffic waits)"
    table_figures = "row counts, fingerprints and rewrites per table (verify steps)"
    if not command:
        return Observation(
            mode="in-process",
            available=[
                table_figures,
                sampled,
                "every statement with its timing and the locks it newly took",
                "per-revision time, locks and rewrites",
                "every relation lock held at COMMIT",
            ],
        )
    if server_log:
        return Observation(
            mode="server-log",
            available=[
                table_figures,
                sampled,
                "every statement with its timing, from the scratch's server log",
                "per-revision locks and rewrites, from a trigger on alembic_version",
                "every relation lock held at each version update",
            ],
            unavailable=["the locks each single statement newly took (only per revision)"],
        )
    return Observation(
        mode="sampling-only",
        available=[table_figures, sampled],
        unavailable=["statements", "per-revision figures", "locks shorter than a sample"],
    )


MAX_STATEMENTS = 5_000  # kept per phase (the rest are counted)
REVISION_STATEMENTS = 200


def read_capture(path: Path, run: MigrationRun, phase: Phase, epoch0: float) -> None:
    """Turn the driver's JSON lines into statements and per-revision figures on the rehearsal's clock."""
    stmts: list[tuple[float, StatementRun]] = []  # (epoch, statement)
    revisions: list[dict[str, Any]] = []
    commits: list[float] = []
    count = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec: dict[str, Any] = json.loads(line)
        kind = rec.get("kind")
        if kind == "statement":
            count += 1
            if len(stmts) < MAX_STATEMENTS:
                new_locks = {
                    r: m for r, m in (rec.get("locks") or {}).items() if not r.endswith(".alembic_version")
                }
                stmts.append(
                    (
                        float(rec["at"]),
                        StatementRun(
                            sql=str(rec["sql"])[:2000],
                            start=round(float(rec["at"]) - epoch0, 3),
                            seconds=round(float(rec["seconds"]), 4),
                            locks=new_locks,
                        ),
                    )
                )
        elif kind == "revision":
            revisions.append(rec)
        elif kind == "commit":
            commits.append(float(rec["at"]))
        elif kind == "warning":
            run.warnings.append(f"{phase}: " + mask(str(rec.get("message"))))
    run.statements = [s for _, s in stmts]
    end_epoch = epoch0 + run.started_at + run.seconds
    for rec in revisions:
        begin, end = float(rec["started"]), float(rec["at"])
        mine = [(t, s) for t, s in stmts if begin <= t <= end]
        commit = next((c for c in commits if c >= end), end_epoch)
        locks: dict[str, RevisionLock] = {}
        for t, s in mine:
            for rel, mode in s.locks.items():
                have = locks.get(rel)
                if have is None or stronger(have.mode, mode) != have.mode:
                    locks[rel] = RevisionLock(
                        relation=rel, mode=mode, held_seconds=round(max(commit - t, 0.0), 3)
                    )
        for rel, mode in (rec.get("locks") or {}).items():
            if rel not in locks and not rel.endswith(".alembic_version"):
                locks[rel] = RevisionLock(
                    relation=rel, mode=mode, held_seconds=round(max(commit - begin, 0.0), 3)
                )
        run.revisions.append(
            RevisionRun(
                id=str(rec.get("revision") or "?"),
                phase=phase,
                start=round(begin - epoch0, 3),
                seconds=round(float(rec["seconds"]), 3),
                statement_count=len(mine),
                statements=[s for _, s in mine[:REVISION_STATEMENTS]],
                locks=sorted(locks.values(), key=lambda h: -LOCK_STRENGTH.index(h.mode)),
                rewrites=[r for r in rec.get("rewrites", []) if not r.endswith(".alembic_version")],
            )
        )
    if count > MAX_STATEMENTS:
        run.warnings.append(f"the {phase} ran {count} statements; the first {MAX_STATEMENTS} were kept")


def relfilenodes(conn: psycopg.Connection[Any], tables: list[str]) -> dict[str, int | None]:
    """Physical file of each table: a change means the table was rewritten."""
    out: dict[str, int | None] = {}
    for t in tables:
        schema, name = t.split(".", 1)
        row = conn.execute(
            """
            select pg_relation_filenode(c.oid) from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = %s and c.relname = %s
            """,
            (schema, name),
        ).fetchone()
        out[t] = int(row[0]) if row and row[0] is not None else None
    return out


def probe_offline(plan: Plan, environ: Mapping[str, str]) -> Probe:
    """The plan's range with no database: from ``downgrade_to`` (resolved from ``upgrade_to``) up."""
    ini = _check_config(plan)
    env = _env(
        plan,
        {
            "MIGSAFE_PROBE_OFFLINE": "1",
            "MIGSAFE_PROBE_UP": plan.migration.upgrade_to,
            "MIGSAFE_PROBE_DOWN": plan.migration.downgrade_to,
        },
        None,
        environ,
    )
    proc = subprocess.run(
        [_python(plan), str(DRIVER), "probe", str(ini)],
        capture_output=True,
        text=True,
        env=env,
        cwd=_cwd(plan),
        timeout=120,
    )
    return _probe_answer(plan, proc)


@dataclass
class OfflineRevision:
    id: str
    phase: Phase
    sql: str


def run_offline(
    plan: Plan, action: Phase, start: str | None, end: str | None, environ: Mapping[str, str]
) -> list[OfflineRevision]:
    """``alembic upgrade|downgrade start:end --sql``: the SQL of each revision, with no database."""
    ini = _ini(plan)
    with tempfile.NamedTemporaryFile(prefix="migsafe-capture-", suffix=".jsonl", delete=False) as fh:
        capture_file = Path(fh.name)
    env = _env(plan, {"MIGSAFE_CAPTURE": str(capture_file)}, None, environ)
    span = f"{start or 'base'}:{end or 'base'}"
    try:
        proc = subprocess.run(
            [_python(plan), str(DRIVER), action, str(ini), span, "--sql"],
            capture_output=True,
            text=True,
            env=env,
            cwd=_cwd(plan),
            timeout=plan.migration.timeout_seconds,
        )
        if proc.returncode != 0:
            marker = [line for line in proc.stderr.splitlines() if line.startswith("MIGSAFE-ERROR: ")]
            if marker:
                info = json.loads(marker[-1].removeprefix("MIGSAFE-ERROR: "))
                why = f"{info['type']}: {info['message']}"
            else:
                why = (
                    proc.stderr.strip().splitlines()[-1]
                    if proc.stderr.strip()
                    else f"exited {proc.returncode}"
                )
            raise RevisionUnknown(
                f"alembic {action} {span} --sql failed (does env.py support offline mode?): {mask(why)}"
            )
        out: list[OfflineRevision] = []
        for line in capture_file.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "revision":
                out.append(
                    OfflineRevision(
                        id=str(rec.get("revision") or "?"), phase=action, sql=str(rec.get("sql", ""))
                    )
                )
        return out
    finally:
        capture_file.unlink(missing_ok=True)
