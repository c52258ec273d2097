"""The rehearsal end to end, on real PostgreSQL: verdicts, locks, rewrites, cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic_projects import write_project
from migsafe.config import Settings
from migsafe.dsn import Dsn
from migsafe.inventory import list_backups, verify_backup
from migsafe.localpg import DEFAULT_RUNTIME_DIR, MARKER
from migsafe.plan import Plan
from migsafe.rehearse import rehearse
from migsafe.restore import RestoreOptions, run_restore
from migsafe.store import open_store
from pgsupport import ROOT, CliResult, Database, table_fingerprints

from examples.enum_uppercase import seed

TABLES = seed.TABLES
ADMIN_CHECK = (
    '[[checks]]\nname = "admin keeps access"\n'
    'sql = "select count(*) from user_application_access a join users u on u.id = a.user_id '
    "where u.email = 'admin@example.com' and a.has_access\"\n"
    'expect = "= 3"\n'
)


@pytest.fixture
def source(make_database: Callable[..., Database]) -> Database:
    db = make_database()
    seed.load(db.conninfo, 2000, alembic=True)
    return db


def _plan(tmp_path: Path, db: Database, ini: Path, extra: str = "") -> Path:
    listed = ", ".join(f'"{t}"' for t in TABLES)
    path = tmp_path / "plan.toml"
    path.write_text(
        f'name = "test-plan"\n[source]\ndsn = "{db.url}"\ntables = [{listed}]\n'
        f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n'
        f'[store]\nurl = "file://{tmp_path / "store"}"\n' + extra
    )
    return path


def _rehearse(plan_file: Path, runtime_dir: Path, report_dir: Path):  # type: ignore[no-untyped-def]
    settings = Settings.from_environ({**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)})
    return rehearse(Plan.load(plan_file), settings, report_dir=report_dir)


def _scratch_dirs(runtime_dir: Path) -> list[Path]:
    """Scratch and restore-test clusters of this session (the test source cluster is not one)."""
    found = [*runtime_dir.glob("scratch-*"), *runtime_dir.glob("restoretest-*")]
    return [p for p in found if (p / MARKER).exists() or (p / "data").exists()]


def test_reversible_migration_passes_and_leaves_no_trace(
    tmp_path: Path, source: Database, runtime_dir: Path
) -> None:
    # Given: the seed's upper-case enum migration (rewrites both tables, and back)
    ini = ROOT / "examples" / "enum_uppercase" / "alembic.ini"
    plan = _plan(tmp_path, source, ini, ADMIN_CHECK)
    before = table_fingerprints(source, TABLES)
    # When
    result = _rehearse(plan, runtime_dir, tmp_path / "report")
    # Then
    assert result.verdict == "PASS", result.reasons
    assert result.rollback == "downgrade"
    for t in result.tables:
        assert t.fingerprint_before == t.fingerprint_after_downgrade
        assert t.rows_before == t.rows_after_upgrade == t.rows_after_downgrade == before[t.name][0]
    assert [c.ok for c in result.checks] == [True, True, True]
    assert result.scratch.destroyed and not _scratch_dirs(runtime_dir)
    # the source is untouched: same content, same revision
    assert table_fingerprints(source, TABLES) == before
    assert source.scalar("select version_num from alembic_version") == seed.BASELINE
    # reports are written and say the same
    written = json.loads((tmp_path / "report" / "result.json").read_text())
    assert written["verdict"] == "PASS" and written["backup"]["id"] == result.backup.id
    assert (tmp_path / "report" / "report.md").exists() and (tmp_path / "report" / "report.html").exists()


def test_lossy_downgrade_fails_naming_the_table(tmp_path: Path, source: Database, runtime_dir: Path) -> None:
    # Given: the upgrade merges two statuses, the downgrade cannot tell them apart again
    ini = write_project(
        tmp_path / "proj",
        upgrade=["UPDATE user_invitations SET status = 'expired' WHERE status = 'revoked'"],
        downgrade=[],
    )
    plan = _plan(tmp_path, source, ini)
    # When
    result = _rehearse(plan, runtime_dir, tmp_path / "report")
    # Then
    assert result.verdict == "FAIL"
    assert result.rollback == "restore"
    lossy = [r for r in result.reasons if "does not restore the data" in r]
    assert len(lossy) == 1 and lossy[0].startswith("public.user_invitations")
    inv = next(t for t in result.tables if t.name == "public.user_invitations")
    assert inv.rows_before == inv.rows_after_downgrade
    assert any("migsafe restore" in s and "public.user_invitations" in s for s in result.next_steps)


def test_the_reports_rollback_followed_literally_gives_back_the_pre_upgrade_data_and_revision(
    tmp_path: Path, source: Database, runtime_dir: Path
) -> None:
    from migsafe.report import rollback_advice

    # Given a lossy migration, rehearsed (FAIL, rollback by restore), then applied to the source anyway
    ini = write_project(
        tmp_path / "proj",
        upgrade=["UPDATE user_invitations SET status = 'expired' WHERE status = 'revoked'"],
        downgrade=[],
    )
    plan = _plan(tmp_path, source, ini)
    before = table_fingerprints(source, TABLES)
    revision = source.scalar("select version_num from alembic_version")
    result = _rehearse(plan, runtime_dir, tmp_path / "report")
    _, command = rollback_advice(result)
    assert result.verdict == "FAIL" and command is not None
    # the project's DATABASE_URL names its driver, as SQLAlchemy URLs do
    url = source.url.replace("postgresql://", "postgresql+psycopg://", 1)
    env = {**os.environ, "DATABASE_URL": url,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MIGSAFE_RUNTIME_DIR": str(runtime_dir)}
    migrate = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
                             env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr
    assert table_fingerprints(source, TABLES) != before

    # When the report's rollback is run exactly as written, in the project's folder
    rollback = subprocess.run(["bash", "-c", command], cwd=ini.parent, env=env, capture_output=True, text=True)

    # Then the data and the revision are those from before the upgrade
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert table_fingerprints(source, TABLES) == before
    assert source.scalar("select version_num from alembic_version") == revision


def test_lossy_downgrade_can_be_a_warning(tmp_path: Path, source: Database, runtime_dir: Path) -> None:
    # Given
    ini = write_project(
        tmp_path / "proj", upgrade=["UPDATE users SET full_name = upper(full_name)"], downgrade=[]
    )
    plan = _plan(tmp_path, source, ini, '[thresholds]\nlossy_downgrade = "warn"\n')
    # When
    result = _rehearse(plan, runtime_dir, tmp_path / "report")
    # Then
    assert result.verdict == "PASS"
    assert any("public.users" in w and "does not restore" in w for w in result.warnings)


def test_migration_failing_midway_fails_with_the_database_error(
    tmp_path: Path, source: Database, runtime_dir: Path
) -> None:
    # Given: the second statement violates a constraint
    ini = write_project(
        tmp_path / "proj",
        upgrade=[
            "ALTER TABLE users ADD COLUMN nickname text",
            "ALTER TABLE users ALTER COLUMN nickname SET NOT NULL",
        ],
        downgrade=["ALTER TABLE users DROP COLUMN nickname"],
    )
    plan = _plan(tmp_path, source, ini)
    # When
    result = _rehearse(plan, runtime_dir, tmp_path / "report")
    # Then
    assert result.verdict == "FAIL"
    assert result.failed_step == "upgrade"
    assert any(
        "upgrade failed" in r and 'column "nickname"' in r and "null values" in r for r in result.reasons
    )
    assert result.scratch.destroyed and not _scratch_dirs(runtime_dir)
    # the backup is complete and restorable
    store = open_store(f"file://{tmp_path / 'store'}")
    assert [b.complete for b in list_backups(store)] == [True]
    assert verify_backup(store, result.backup.id).ok
    target = source.__class__(name="x", dsn=source.dsn.with_db("postgres"))
    with target.connect() as conn:
        conn.execute("create database restore_after_failure")
    try:
        report = run_restore(
            store, result.backup.id, source.dsn.with_db("restore_after_failure"), RestoreOptions()
        )
        assert report.ok
    finally:
        with target.connect() as conn:
            conn.execute("drop database restore_after_failure with (force)")


def test_threshold_exceeded_names_threshold_and_value(
    tmp_path: Path, source: Database, runtime_dir: Path
) -> None:
    # Given: a migration that takes at least 0.3 s against a 0.1 s budget
    ini = write_project(tmp_path / "proj", upgrade=["SELECT pg_sleep(0.3)"], downgrade=[])
    plan = _plan(tmp_path, source, ini, "[thresholds]\nupgrade_seconds = 0.1\n")
    # When
    result = _rehearse(plan, runtime_dir, tmp_path / "report")
    # Then
    assert result.verdict == "FAIL"
    reason = next(r for r in result.reasons if "thresholds.upgrade_seconds" in r)
    measured = float(reason.split("took ")[1].split(" s")[0])
    assert measured >= 0.3 and "0.1 s threshold" in reason


def test_column_type_change_is_a_rewrite_under_access_exclusive(
    tmp_path: Path, source: Database, runtime_dir: Path
) -> None:
    # Given
    ini = write_project(
        tmp_path / "proj",
        upgrade=["ALTER TABLE users ALTER COLUMN full_name TYPE varchar(200)"],
        downgrade=["ALTER TABLE users ALTER COLUMN full_name TYPE text"],
    )
    plan = _plan(tmp_path, source, ini)
    # When
    result = _rehearse(plan, runtime_dir, tmp_path / "report")
    # Then
    users = next(t for t in result.tables if t.name == "public.users")
    assert users.rewritten is True
    assert users.upgrade_lock_mode == "AccessExclusiveLock"
    others = [t for t in result.tables if t.name != "public.users"]
    assert not any(t.rewritten for t in others)


def test_enum_rename_value_is_not_a_rewrite(tmp_path: Path, source: Database, runtime_dir: Path) -> None:
    # Given
    ini = write_project(
        tmp_path / "proj",
        upgrade=["ALTER TYPE applicationtype RENAME VALUE 'market_edge' TO 'MARKET_EDGE'"],
        downgrade=["ALTER TYPE applicationtype RENAME VALUE 'MARKET_EDGE' TO 'market_edge'"],
    )
    plan = _plan(tmp_path, source, ini)
    # When
    result = _rehearse(plan, runtime_dir, tmp_path / "report")
    # Then
    assert result.verdict == "PASS", result.reasons
    assert not any(t.rewritten for t in result.tables)
    uaa = next(t for t in result.tables if t.name == "public.user_application_access")
    assert uaa.fingerprint_after_upgrade != uaa.fingerprint_before  # the data did change, in place
    assert uaa.fingerprint_after_downgrade == uaa.fingerprint_before


def test_unknown_upgrade_target_is_refused_before_anything_is_created(
    tmp_path: Path, source: Database, runtime_dir: Path, migsafe: Callable[..., CliResult]
) -> None:
    # Given
    ini = write_project(tmp_path / "proj", upgrade=[], downgrade=[])
    plan = _plan(tmp_path, source, ini, "")
    plan.write_text(
        plan.read_text().replace(
            'url_env = "DATABASE_URL"', 'url_env = "DATABASE_URL"\nupgrade_to = "9999_nope"'
        )
    )
    # When
    res = migsafe("rehearse", "--plan", str(plan), "--report-dir", str(tmp_path / "r"))
    # Then
    assert res.code == 2, res.output
    assert "9999_nope" in res.stderr
    assert not (tmp_path / "store").exists() and not _scratch_dirs(runtime_dir)


def test_downgrade_not_returning_to_source_is_refused_naming_both(
    tmp_path: Path, source: Database, runtime_dir: Path, migsafe: Callable[..., CliResult]
) -> None:
    # Given: downgrade to base although the source is at 0001_baseline
    ini = write_project(tmp_path / "proj", upgrade=[], downgrade=[])
    plan = _plan(tmp_path, source, ini)
    plan.write_text(
        plan.read_text().replace(
            'url_env = "DATABASE_URL"', 'url_env = "DATABASE_URL"\ndowngrade_to = "base"'
        )
    )
    # When
    res = migsafe("rehearse", "--plan", str(plan))
    # Then
    assert res.code == 2, res.output
    assert "base" in res.stderr and "0001_baseline" in res.stderr
    assert not (tmp_path / "store").exists()


def test_cli_exit_codes_pass_and_fail(
    tmp_path: Path, source: Database, migsafe: Callable[..., CliResult]
) -> None:
    # Given
    ok_ini = write_project(
        tmp_path / "ok",
        upgrade=["ALTER TABLE users ADD COLUMN x int"],
        downgrade=["ALTER TABLE users DROP COLUMN x"],
    )
    bad_ini = write_project(tmp_path / "bad", upgrade=["SELECT 1/0"], downgrade=[])
    # When
    ok = migsafe(
        "rehearse", "--plan", str(_plan(tmp_path, source, ok_ini)), "--report-dir", str(tmp_path / "r1")
    )
    bad = migsafe(
        "rehearse", "--plan", str(_plan(tmp_path, source, bad_ini)), "--report-dir", str(tmp_path / "r2")
    )
    # Then
    assert ok.code == 0 and "PASS" in ok.stdout, ok.output
    assert bad.code == 1 and "FAIL" in bad.stdout and "division by zero" in bad.stderr, bad.output


def test_sigkilled_rehearsal_leaves_nothing_after_sweep(
    tmp_path: Path, source: Database, runtime_dir: Path, migsafe: Callable[..., CliResult]
) -> None:
    # Given: a rehearsal whose upgrade sleeps, killed while its scratch server runs
    ini = write_project(tmp_path / "proj", upgrade=["SELECT pg_sleep(60)"], downgrade=[])
    plan = _plan(tmp_path, source, ini)
    env = {**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "migsafe", "rehearse", "--plan", str(plan)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
        (d / "data" / "postmaster.pid").exists() for d in runtime_dir.glob("scratch-*")
    ):
        time.sleep(0.05)
    assert _scratch_dirs(runtime_dir), "the scratch server never started"
    time.sleep(1.0)  # let the upgrade begin
    # When
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = migsafe("scratch", "sweep")
    # Then
    assert res.code == 0, res.output
    assert not _scratch_dirs(runtime_dir)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(runtime_dir / "scratch-") not in ps
    assert runtime_dir != DEFAULT_RUNTIME_DIR


def test_sns_message_is_published_with_the_verdict(
    tmp_path: Path, source: Database, runtime_dir: Path
) -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        # Given: a results topic with an SQS subscriber
        sns = boto3.client("sns", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        topic = sns.create_topic(Name="migsafe-results")["TopicArn"]
        queue = sqs.create_queue(QueueName="results")["QueueUrl"]
        qarn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=qarn)
        ini = write_project(tmp_path / "proj", upgrade=["SELECT 1/0"], downgrade=[])
        # a DSN with a password (the test server trusts loopback, so it is carried but never checked)
        with_password = Database(source.name, Dsn({**source.dsn.params, "password": "pw-must-not-leak"}))
        plan = _plan(tmp_path, with_password, ini, f'[notify]\nsns_topic_arn = "{topic}"\n')
        # When
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        result = _rehearse(plan, runtime_dir, tmp_path / "report")
        # Then
        msgs = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        assert len(msgs) == 1
        envelope = json.loads(msgs[0]["Body"])
        assert envelope["MessageAttributes"]["verdict"]["Value"] == "FAIL" == result.verdict
        message = json.loads(envelope["Message"])
        assert message["version"] == "1.0" and message["source"] == "custom"
        assert "FAIL" in message["content"]["title"]
        assert "division by zero" in message["content"]["description"]
        assert "pw-must-not-leak" not in envelope["Message"]
        assert "pw-must-not-leak" not in (tmp_path / "report" / "result.json").read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_rehearsal_destroys_its_scratch(
    tmp_path: Path, source: Database, runtime_dir: Path, sig: signal.Signals
) -> None:
    # Given: a rehearsal whose upgrade sleeps
    ini = write_project(tmp_path / "proj", upgrade=["SELECT pg_sleep(60)"], downgrade=[])
    plan = _plan(tmp_path, source, ini)
    env = {**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "migsafe",
            "rehearse",
            "--plan",
            str(plan),
            "--report-dir",
            str(tmp_path / "r"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and source.scalar("select count(*) from pg_stat_activity where query like 'SELECT pg_sleep(60)%%'")
        == 0
        and not _upgrade_running(runtime_dir)
    ):
        time.sleep(0.1)
    assert _upgrade_running(runtime_dir), "the upgrade never started"
    # When: Ctrl-C (SIGINT) or a polite kill (SIGTERM), without any sweep afterwards
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    # Then
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not _scratch_dirs(runtime_dir)


def _upgrade_running(runtime_dir: Path) -> bool:
    """True while some scratch server of this session runs the sleeping upgrade."""
    import psycopg

    for d in runtime_dir.glob("scratch-*"):
        pid = d / "data" / "postmaster.pid"
        if not pid.exists():
            continue
        try:
            port = int(pid.read_text().splitlines()[3])
            with psycopg.connect(
                host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2
            ) as conn:
                row = conn.execute(
                    "select count(*) from pg_stat_activity where query like 'SELECT pg_sleep(60)%%'"
                ).fetchone()
                if row and row[0]:
                    return True
        except (OSError, ValueError, IndexError, psycopg.Error):
            continue
    return False


def test_source_refusing_replication_is_copied_with_pg_dump(tmp_path: Path, runtime_dir: Path) -> None:
    # Given: a source server that allows no replication connection (max_wal_senders = 0)
    from migsafe.localpg import LocalCluster

    cluster = LocalCluster.prepare("norepl", runtime_dir)
    try:
        cluster.initdb()
        with open(cluster.data_dir / "postgresql.conf", "a") as fh:
            fh.write("max_wal_senders = 0\nwal_level = minimal\n")
        cluster.start()
        seed.load(cluster.dsn().conninfo(), 500, alembic=True)
        db = Database("postgres", cluster.dsn())
        ini = ROOT / "examples" / "enum_uppercase" / "alembic.ini"
        plan = _plan(tmp_path, db, ini, ADMIN_CHECK)
        # When
        result = _rehearse(plan, runtime_dir, tmp_path / "report")
        # Then
        assert result.scratch.method == "pg_dump"
        assert result.verdict == "PASS", result.reasons
        assert [c.ok for c in result.checks] == [True, True, True]
    finally:
        cluster.destroy()


def test_rehearsal_can_reuse_a_backup_and_refuses_an_unknown_one(
    tmp_path: Path, source: Database, runtime_dir: Path, migsafe: Callable[..., CliResult]
) -> None:
    # Given: a backup of the plan's tables already in the store
    ini = write_project(
        tmp_path / "proj",
        upgrade=["ALTER TABLE users ADD COLUMN x int"],
        downgrade=["ALTER TABLE users DROP COLUMN x"],
    )
    plan = _plan(tmp_path, source, ini)
    taken = migsafe("backup", "--plan", str(plan))
    assert taken.code == 0, taken.output
    backup_id = taken.stdout.strip().splitlines()[-1]
    # When
    reused = migsafe(
        "rehearse", "--plan", str(plan), "--backup-id", backup_id, "--report-dir", str(tmp_path / "r")
    )
    unknown = migsafe("rehearse", "--plan", str(plan), "--backup-id", "20200101T000000Z-abcdef")
    # Then: the same backup, restore-tested, and no second one
    assert reused.code == 0, reused.output
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["backup"]["id"] == backup_id and result["backup"]["restore_tested"] is True
    assert len(list_backups(open_store(f"file://{tmp_path / 'store'}"))) == 1
    assert unknown.code == 2 and "no backup 20200101T000000Z-abcdef" in unknown.stderr
    assert not _scratch_dirs(runtime_dir)
