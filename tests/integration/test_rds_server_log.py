"""``[migration] command`` observed on an RDS-like scratch: its csvlog, read through the RDS API.

The scratch here is a local PostgreSQL 15 logging as migsafe's scratch parameter group makes RDS
log (``log_destination = csvlog``, ``log_min_duration_statement = 0``, RDS's hourly file names):
the records are PostgreSQL's own csvlog output. ``DescribeDBLogFiles`` and
``DownloadDBLogFilePortion`` are answered from its files at botocore's boundary (moto implements
neither), so the reader runs botocore's real serialisation and parsing.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from migsafe import serverlog
from migsafe.config import Settings
from migsafe.exceptions import ServerLogUnreadable
from migsafe.localpg import LocalCluster
from migsafe.plan import Plan
from migsafe.rdslog import APPLICATION_NAME, FENCE, RdsCsvLog, entries_from_csv
from migsafe.rehearse import rehearse
from migsafe.result import Result
from migsafe.scratch import Scratch, create_scratch
from moto import mock_aws
from pgsupport import ROOT, Database
from rdslog_support import enable_csvlog, log_dir, rds_error, serve_log_files, wait_for_text

from examples.async_tasks import seed

INSTANCE = "migsafe-scratch-0123456789abcdef"
EXAMPLE = ROOT / "examples" / "async_tasks"


@pytest.fixture
def logging_cluster(runtime_dir: Path) -> Iterator[LocalCluster]:
    """A throw-away cluster writing csvlog and, beside it, the stderr log with migsafe's prefix."""
    cluster = LocalCluster.create("csvlog", runtime_dir=runtime_dir)
    try:
        enable_csvlog(cluster, {"log_destination": "stderr,csvlog", "log_line_prefix": serverlog.PREFIX})
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        # made after the test's answers are registered: a client copies the session's handlers
        yield lambda: boto3.client("rds", region_name="us-east-1")


def _admin(cluster: LocalCluster, dbname: str = "postgres", app: str = "") -> psycopg.Connection[Any]:
    return psycopg.connect(host=str(cluster.socket_dir), port=cluster.port, dbname=dbname, user="postgres",
                           autocommit=True, application_name=app)


def _migrate_like_alembic(cluster: LocalCluster) -> None:
    """Two revisions in one transaction, as alembic runs them: DDL, a bound version update each."""
    with _admin(cluster, app="migsafe setup") as conn:  # migsafe's own: left out of what is read
        conn.execute("create table deployments (id int primary key, name text)")
        conn.execute("create table alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into alembic_version values ('0001')")
        serverlog.install_trigger(conn)
    with _admin(cluster, app="migsafe lock observer") as observer, _admin(cluster) as conn, conn.transaction():
        conn.execute("create index ix_name on deployments\n  using btree (name)")
        observer.execute("select count(*) from pg_locks")
        conn.execute("update alembic_version set version_num = %s where version_num = %s", ("0002", "0001"))
        conn.execute("alter table deployments add column owner text")
        conn.execute("update alembic_version set version_num = %s where version_num = %s", ("0003", "0002"))


def test_csvlog_and_the_stderr_log_give_the_same_statements(logging_cluster: LocalCluster) -> None:
    # Given: a migration logged by one server to its csvlog and to its stderr log (migsafe's prefix)
    _migrate_like_alembic(logging_cluster)
    csv_text = wait_for_text(log_dir(logging_cluster), "'0003'")
    stderr_text = "".join(p.read_text() for p in sorted(log_dir(logging_cluster).glob("postgresql.log.*"))
                          if p.suffix != ".csv")
    # When: each is read into records and interpreted
    from_csv = serverlog.interpret(entries_from_csv(csv_text))
    from_stderr = serverlog.interpret(serverlog.entries_from_stderr(stderr_text))
    # Then: the same statements (bound values filled in from the csv detail column, the multi-line
    # statement whole, migsafe's session and transaction control left out) and the same marks
    sqls = [s.sql for s in from_csv.statements]
    assert sqls == [s.sql for s in from_stderr.statements]
    assert "create index ix_name on deployments\n  using btree (name)" in sqls
    assert any("set version_num = '0002' where version_num = '0001'" in s for s in sqls)
    assert not any("pg_locks" in s or s.lower() in ("begin", "commit") for s in sqls)
    assert [m.revision for m in from_csv.marks] == [m.revision for m in from_stderr.marks] == [
        '["0001", "0002"]', '["0002", "0003"]']
    assert from_csv.marks[1].locks["public.deployments"] == "AccessExclusiveLock"
    # csv's millisecond log_time and stderr's %n agree on when each statement started
    for a, b in zip(from_csv.statements, from_stderr.statements, strict=True):
        assert abs(a.epoch - b.epoch) < 0.002 and a.pid == b.pid


@pytest.mark.parametrize("log_timezone", ["Asia/Kolkata", "Etc/GMT-3", "America/New_York"])
def test_csvlog_times_are_read_in_the_servers_log_timezone(runtime_dir: Path, log_timezone: str) -> None:
    # Given a server whose log_timezone is not UTC: an abbreviation (IST, EST/EDT) or a numeric one (+03)
    with LocalCluster.create("csvtz", runtime_dir=runtime_dir) as cluster:
        enable_csvlog(cluster, {"log_destination": "stderr,csvlog", "log_line_prefix": serverlog.PREFIX,
                                "log_timezone": log_timezone})
        with _admin(cluster) as conn:
            conn.execute("select 'a statement to time'")
            shown = str((conn.execute("show log_timezone").fetchone() or [""])[0])
        csv_text = wait_for_text(log_dir(cluster), "a statement to time")
        stderr_text = "".join(p.read_text() for p in sorted(log_dir(cluster).glob("postgresql.log.*"))
                              if p.suffix != ".csv")
    # When the csv records are read in the zone the server reports (as RdsCsvLog.enable reads it)
    from migsafe.rdslog import _zone

    from_csv = serverlog.interpret(entries_from_csv(csv_text, _zone(shown)))
    from_stderr = serverlog.interpret(serverlog.entries_from_stderr(stderr_text))
    # Then each statement's time is the epoch the stderr log's %n gives
    [a] = [x for x in from_csv.statements if "a statement to time" in x.sql]
    [b] = [x for x in from_stderr.statements if "a statement to time" in x.sql]
    assert abs(a.epoch - b.epoch) < 0.002, (shown, a.epoch, b.epoch)


def test_the_rds_reader_keeps_what_was_logged_between_its_marks(logging_cluster: LocalCluster, aws: Any) -> None:
    # Given: the reader on the scratch (small download blocks, so the files are read in portions)
    calls: list[tuple[str, dict[str, str]]] = []
    with serve_log_files(lambda ident: log_dir(logging_cluster) if ident == INSTANCE else None, calls):
        log = RdsCsvLog(INSTANCE, aws(), logging_cluster.dsn(), wait_seconds=20, poll_seconds=0.1, lines=5)
        warnings = log.enable()
        with _admin(logging_cluster) as conn:
            conn.execute("create table before_the_phase (id int)")
        # When: a phase runs between the reader's marks
        mark = log.mark()
        _migrate_like_alembic(logging_cluster)
        seen = log.read(mark)
        # and a second phase continues where the first read stopped
        second = log.mark()
        with _admin(logging_cluster) as conn:
            conn.execute("drop index ix_name")
        again = log.read(second)
    # Then: only the phase's statements, with the trigger's marks; nothing from before the mark
    assert warnings == []
    sqls = [s.sql for s in seen.statements]
    assert not any("before_the_phase" in s for s in sqls)
    assert any(s.startswith("create index ix_name") for s in sqls)
    assert len(seen.marks) == 2
    assert [s.sql for s in again.statements] == ["drop index ix_name"]
    # the files were listed (csv only) and paged through with the markers RDS returned
    downloads = [p for op, p in calls if op == "DownloadDBLogFilePortion"]
    assert all(p["LogFileName"].startswith("error/postgresql.log.") and p["LogFileName"].endswith(".csv")
               for p in downloads)
    assert {p["Marker"] for p in downloads} - {"0"}, "never continued from a marker"
    assert all(p["FilenameContains"] == ".csv" for op, p in calls if op == "DescribeDBLogFiles")


def test_a_scratch_without_csvlog_is_refused_with_the_reason(runtime_dir: Path, aws: Any) -> None:
    # Given: a scratch whose parameter group was not applied (stderr only, RDS's default)
    with LocalCluster.create("nocsv", runtime_dir=runtime_dir) as cluster:
        log = RdsCsvLog(INSTANCE, aws(), cluster.dsn(), wait_seconds=1, poll_seconds=0.1)
        # When / Then
        with pytest.raises(ServerLogUnreadable, match="not csvlog: its parameter group"):
            log.enable()


def test_a_denied_log_download_is_refused_with_the_reason(logging_cluster: LocalCluster, aws: Any) -> None:
    # Given: a worker role without rds:DownloadDBLogFilePortion
    # (registered first: botocore takes the first handler's answer)
    with rds_error("DownloadDBLogFilePortion", "AccessDenied", "not authorized to perform: rds:DownloadDBLogFilePortion"), \
            serve_log_files(lambda ident: log_dir(logging_cluster)):
        log = RdsCsvLog(INSTANCE, aws(), logging_cluster.dsn(), wait_seconds=1, poll_seconds=0.1)
        # When / Then: the code and the message say why
        with pytest.raises(ServerLogUnreadable, match="AccessDenied"):
            log.enable()


def test_a_fence_that_never_shows_is_refused_after_the_wait(logging_cluster: LocalCluster, aws: Any,
                                                            tmp_path: Path) -> None:
    # Given: RDS lists no csv file (the log files are somewhere else)
    with serve_log_files(lambda ident: tmp_path):
        log = RdsCsvLog(INSTANCE, aws(), logging_cluster.dsn(), wait_seconds=0.5, poll_seconds=0.1)
        # When / Then
        with pytest.raises(ServerLogUnreadable, match="did not show migsafe's mark within 0 s"):
            log.enable()


# --- the whole rehearsal ------------------------------------------------------------------------
@pytest.fixture
def source(make_database: Callable[..., Database]) -> Database:
    db = make_database()
    seed.load(db.conninfo, 600)
    return db


@pytest.fixture
def rds_scratch(source: Database, runtime_dir: Path) -> Iterator[Scratch]:
    """The source copied to a server that logs like a scratch with migsafe's parameter group."""
    scratch = create_scratch("local", source.dsn, runtime_dir=runtime_dir)
    try:
        assert scratch.cluster is not None
        enable_csvlog(scratch.cluster)
        yield scratch
    finally:
        scratch.destroy()


def _command_plan(db: Database, store: Path) -> Plan:
    data: dict[str, Any] = tomllib.loads((EXAMPLE / "plan-command.toml").read_text())
    data["source"] = {"dsn": db.url, "tables": data["source"]["tables"]}
    data["store"] = {"url": f"file://{store}"}
    data["traffic"] = {"enabled": False}
    data["scratch"] = {"kind": "dsn"}  # what the worker makes of the scratch the state machine restored
    data.pop("expect", None)
    for key in ("command", "downgrade_command"):
        data["migration"][key] = [sys.executable if a == "python" else a for a in data["migration"][key]]
    return Plan.from_mapping(data, EXAMPLE)


def _rehearse_on(scratch: Scratch, plan: Plan, log: RdsCsvLog, runtime_dir: Path, reports: Path) -> Result:
    settings = Settings.from_environ({**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)})
    return rehearse(plan, settings, scratch_dsn=scratch.dsn, report_dir=reports, server_log=log)


def test_a_command_rehearsal_on_an_rds_scratch_is_observed_from_its_csvlog(
        source: Database, rds_scratch: Scratch, aws: Any, runtime_dir: Path, tmp_path: Path) -> None:
    # Given: the async_tasks example through its own CLI, the scratch an RDS-like server
    assert rds_scratch.cluster is not None
    folder = log_dir(rds_scratch.cluster)
    with serve_log_files(lambda ident: folder if ident == INSTANCE else None):
        log = RdsCsvLog(INSTANCE, aws(), rds_scratch.dsn, wait_seconds=20, poll_seconds=0.1)
        # When
        result = _rehearse_on(rds_scratch, _command_plan(source, tmp_path / "store"), log, runtime_dir,
                              tmp_path / "reports")
    # Then: observed at the server, each revision with its own statements and locks
    assert result.observation is not None and result.observation.mode == "server-log", result.warnings
    runs = {(r.phase, r.id): r for r in result.revision_runs}
    assert set(runs) == {("upgrade", "0002_archive_completed_runs"), ("upgrade", "0003_deployment_search"),
                         ("downgrade", "0003_deployment_search"), ("downgrade", "0002_archive_completed_runs")}
    assert any("gin_trgm_ops" in s.sql for s in runs[("upgrade", "0003_deployment_search")].statements)
    assert "AccessExclusiveLock" in {lk.mode for lk in runs[("upgrade", "0003_deployment_search")].locks}
    assert not any("migsafe-fence" in s.sql or FENCE in s.sql for r in result.revision_runs for s in r.statements)
    assert not any("server log could not be read" in w for w in result.warnings)
    # migsafe's own sessions wrote to the same files, and were left out
    assert APPLICATION_NAME in wait_for_text(folder, APPLICATION_NAME)


def test_an_unreadable_rds_log_leaves_the_rehearsal_sampling_with_a_warning(
        source: Database, rds_scratch: Scratch, aws: Any, runtime_dir: Path, tmp_path: Path) -> None:
    # Given: the same rehearsal, but the worker may not download the scratch's log files
    assert rds_scratch.cluster is not None
    folder = log_dir(rds_scratch.cluster)
    with rds_error("DownloadDBLogFilePortion", "AccessDenied", "not authorized"), serve_log_files(lambda ident: folder):
        log = RdsCsvLog(INSTANCE, aws(), rds_scratch.dsn, wait_seconds=2, poll_seconds=0.1)
        # When
        result = _rehearse_on(rds_scratch, _command_plan(source, tmp_path / "store"), log, runtime_dir,
                              tmp_path / "reports")
    # Then: the rehearsal ran to its verdict, sampling only, and says why
    assert result.observation is not None and result.observation.mode == "sampling-only"
    assert any("server-side observation could not be turned on" in w and "AccessDenied" in w
               for w in result.warnings), result.warnings
    assert result.revisions.after_upgrade == seed.HEAD and result.revisions.after_downgrade == seed.BASELINE
    assert result.revision_runs == []
