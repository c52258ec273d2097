"""The synthesized state machines, executed: moto's Step Functions interpreter, real PostgreSQL.

Each test takes a definition from the synthesized template, substitutes its resource references
with the moto resources the test made, and runs it with
``mock_aws(config={"stepfunctions": {"execute_state_machine": True}})``. SNS (read back through an
SQS subscription), S3 and the RDS API are moto's. The seams (``e2e_harness``, at the
interpreter's service-task classes, nothing else) are:

- Lambda task states call the project's handlers in-process, by the function's ``Handler`` in the
  template, with its environment (moto's Lambda needs Docker);
- ECS ``runTask.sync`` runs ``migsafe.worker.main`` in-process with the task definition's
  environment plus the state's container overrides; a non-zero exit fails the state with
  ``States.TaskFailed`` (moto's ECS never runs containers);
- RDS aws-sdk calls are normalised as Step Functions does (``DbInstanceIdentifier``,
  ``Rds.DbInstanceNotFoundException``), which moto's port skips; a restored scratch instance is a
  local cluster copied from the source, deleted with the instance;
- JSONPath: a definite path through an array index yields the node, as on AWS (moto wraps it in
  a list).

Wait states are shortened to 0 s in the resolved definition (the scratch instance is available at
once here); Retry intervals are the definition's own.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from e2e_harness import EXAMPLE, REGION, SOURCE_INSTANCE, SOURCE_INSTANCES, Harness, raw_rds_error
from migsafe import bundle
from migsafe.exceptions import TransientAwsError
from migsafe.plan import Plan
from migsafe.store import open_store
from psycopg import sql

from examples.enum_uppercase import seed
from infra import workflows

TABLES = ["public.users", "public.user_application_access", "public.user_invitations"]
BROKEN_REVISION = '''"""A migration that fails: the database refuses it."""
from alembic import op

revision = "0003_broken"
down_revision = "0002_uppercase_enums"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("update users set email = null")


def downgrade():
    pass
'''


def project(tmp_path: Path, *, broken: bool = False) -> Path:
    """A copy of the example alembic project (optionally with a revision the database refuses)."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__", "backups"))
    if broken:
        (root / "migrations" / "versions" / "0003_broken.py").write_text(BROKEN_REVISION)
    return root / "plan.toml"


def push_bundle(h: Harness, plan_path: Path) -> str:
    plan = Plan.load(plan_path)
    return bundle.push(plan, open_store(f"s3://{h.bucket}/backups")).sha256


def execution_input(plan_path: Path, sha256: str, scratch: dict[str, Any] | None = None,
                    **migration: str) -> dict[str, Any]:
    """What the deploy pipeline sends: the plan (credentials by secret, not DSN) and the bundle.
    The scratch's source is the RDS instance unless ``scratch`` says otherwise (the e2e stack is
    deployed with an Aurora cluster too, which ``auto`` would prefer)."""
    plan = Plan.load(plan_path)
    data = plan.model_dump(mode="json", exclude={"store", "scratch", "notify"})
    data["migration"].update(migration)
    data["source"] = {"secret_arn": f"arn:aws:secretsmanager:{REGION}:123456789012:secret:app-db",
                      "tables": TABLES}
    data["scratch"] = scratch if scratch is not None else {"instance_identifier": SOURCE_INSTANCE}
    return {"plan": data, "bundle_sha256": sha256}


def fingerprints(conninfo: str) -> dict[str, tuple[int, str]]:
    """Row count and content hash of each table."""
    query = sql.SQL("select count(*), coalesce(md5(string_agg(x::text, ',' order by x::text)), '') from {} x")
    out = {}
    with psycopg.connect(conninfo) as conn:
        for t in TABLES:
            row = conn.execute(query.format(sql.Identifier(*t.split(".")))).fetchone()
            assert row is not None
            out[t] = (int(row[0]), str(row[1]))
    return out


def chatbot(message: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(message["Message"]))


def sdk_error_name(service: str, operation: str, code: str) -> str:
    """``<Service>.<Java v2 exception>`` of the error shape ``operation`` models for ``code``."""
    import awscheck

    model = awscheck.service_model(service)
    shapes = [e for e in model.operation_model(operation).error_shapes if e.error_code == code]
    assert len(shapes) == 1, f"{operation} models no error with code {code}"
    prefix = awscheck.pascal(model.metadata["serviceId"])
    return f"{prefix}.{awscheck.java_exception(shapes[0].name)}"


# --- pre-migration --------------------------------------------------------------------------------
def test_passing_plan_succeeds_publishes_pass_and_cleans_up(harness: Harness, tmp_path: Path, source: Any) -> None:
    # Given the example migration, its bundle pushed, and the pre-migration state machine
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    before = fingerprints(source.conninfo)

    # When the pipeline starts an execution
    arn = harness.start(machine, execution_input(plan_path, sha), name="us-6-pass")
    described = harness.wait(arn)

    # Then it succeeded through the whole happy path
    assert described["status"] == "SUCCEEDED", harness.explain(arn, verbose=True)
    entered = harness.entered(arn)
    for state in (workflows.VALIDATE_PLAN, workflows.BACKUP, "Find latest snapshot", workflows.RESTORE_SCRATCH,
                  "Describe scratch", workflows.REHEARSE, workflows.EVALUATE, workflows.PUBLISH_RESULT,
                  workflows.DELETE_SCRATCH, "Migration is safe"):
        assert state in entered
    # one PASS message
    messages = harness.messages()
    assert len(messages) == 1
    assert messages[0]["MessageAttributes"]["verdict"]["Value"] == "PASS"
    assert messages[0]["MessageAttributes"]["plan"]["Value"] == "us-6-uppercase-enums"  # docs/slack.md's filter key
    assert "PASS" in messages[0]["Subject"]
    assert "PASS" in chatbot(messages[0])["content"]["title"]
    # the scratch instance and its cluster are gone; only the source is left
    assert harness.rds_instances() == SOURCE_INSTANCES
    assert harness.scratches == {}
    # the backup (dumps + manifest) and the results are in the bucket
    keys = harness.keys()
    manifests = [k for k in keys if k.startswith("backups/") and k.endswith("/manifest.json")]
    assert len(manifests) == 1
    backup_dir = manifests[0].rsplit("/", 1)[0]
    assert len([k for k in keys if k.startswith(backup_dir + "/") and k != manifests[0]]) >= len(TABLES)
    for name in ("backup.json", "result.json", "report.md"):
        assert f"results/us-6-pass/{name}" in keys
    result = json.loads(harness.s3.get_object(Bucket=harness.bucket, Key="results/us-6-pass/result.json")["Body"].read())
    assert result["verdict"] == "PASS"
    assert result["backup"]["id"] in backup_dir
    # and the source was never migrated
    assert fingerprints(source.conninfo) == before
    assert source.scalar("select version_num from alembic_version") == seed.BASELINE


def test_failing_migration_fails_publishes_fail_and_deletes_the_scratch(harness: Harness, tmp_path: Path,
                                                                        source: Any) -> None:
    # Given a project whose newest revision the database refuses
    plan_path = project(tmp_path, broken=True)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")

    # When the pipeline starts an execution
    arn = harness.start(machine, execution_input(plan_path, sha, downgrade_to=seed.BASELINE),
                           name="us-6-broken")
    described = harness.wait(arn)

    # Then the execution failed
    assert described["status"] == "FAILED", harness.explain(arn)
    # on the verdict (the rehearsal ran; the migration failed in it: a FAIL verdict, not a fault)
    assert harness.failure(arn) == ("Migration failed rehearsal", "VerdictFail")
    assert workflows.DELETE_SCRATCH in harness.entered(arn)
    # with one FAIL message that names the rehearsal's failed step and the database's error
    messages = harness.messages()
    assert len(messages) == 1, messages
    assert messages[0]["MessageAttributes"]["verdict"]["Value"] == "FAIL"
    content = chatbot(messages[0])["content"]
    assert "FAIL" in content["title"]
    assert "*Failed in state* `Rehearse on scratch`" in content["description"]
    assert "*Failed step* `upgrade`: NotNullViolation" in content["description"]
    assert 'null value in column \"email\"' in json.dumps(content) or 'null value in column "email"' in content[
        "description"]
    # the scratch instance was deleted, the source left as it was
    assert harness.rds_instances() == SOURCE_INSTANCES
    assert harness.scratches == {}
    assert source.scalar("select version_num from alembic_version") == seed.BASELINE


def test_scratch_restore_fault_fails_publishes_fail_and_leaves_nothing_running(
        harness: Harness, tmp_path: Path, runtime_dir: Path) -> None:
    # Given RDS refusing to restore the scratch instance (no capacity: not a retried error), answered
    # on the wire: an HTTP 400 with RDS's XML error body, parsed by botocore (the harness names no error)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    clusters_before = sorted(p.name for p in runtime_dir.iterdir())

    # When the pipeline starts an execution
    with raw_rds_error("RestoreDBInstanceFromDBSnapshot", "InsufficientDBInstanceCapacity",
                       "no db.t4g.medium capacity in us-east-1a (raw)"):
        arn = harness.start(machine, execution_input(plan_path, sha), name="us-6-no-capacity")
        described = harness.wait(arn)

    # Then it failed through the failure path, not retried (the error is not a transient one)
    assert described["status"] == "FAILED", harness.explain(arn)
    assert harness.failure(arn) == ("Rehearsal could not run", "MigsafeFailed")
    entered = harness.entered(arn)
    assert entered.count(workflows.RESTORE_SCRATCH) == 1
    assert len(harness.called("rds", "restore_db_instance_from_db_snapshot")) == 1
    assert workflows.REHEARSE not in entered
    # (an instance scratch passes the Aurora cluster's deletion choice by: there is no cluster; a plan
    # alembic runs in-process had no scratch parameter group either)
    assert [f"{workflows.PREPARE} failed", workflows.DELETE_AFTER_FAILURE,
            f"{workflows.DELETE_CLUSTER_AFTER_FAILURE}?", f"{workflows.DELETE_SNAPSHOT_AFTER_FAILURE}?",
            workflows.DELETE_SECRET_AFTER_FAILURE, f"{workflows.DELETE_PARAMETER_GROUP_AFTER_FAILURE}?",
            workflows.FORMAT_FAILURE, workflows.PUBLISH_FAILURE] == entered[entered.index(f"{workflows.PREPARE} failed"):][:8]
    # one FAIL message naming the state and RDS's error
    messages = harness.messages()
    assert len(messages) == 1, messages
    assert messages[0]["MessageAttributes"]["verdict"]["Value"] == "FAIL"
    context = chatbot(messages[0])["metadata"]["additionalContext"]
    assert context["state"] == workflows.PREPARE
    # the name Step Functions' SDK integration gives that error: the Java v2 exception class of the
    # error shape botocore's model declares for the code (tests/infra/awscheck.py's rule)
    assert context["error"] == sdk_error_name("rds", "RestoreDBInstanceFromDBSnapshot", "InsufficientDBInstanceCapacity")
    assert context["error"] == "Rds.InsufficientDbInstanceCapacityException"
    assert "no db.t4g.medium capacity in us-east-1a (raw)" in messages[0]["Message"]  # RDS's own message
    assert "the scratch deletion also failed" not in messages[0]["Message"]  # nothing existed to delete
    # and nothing is left running: no scratch instance, no cluster behind one
    assert harness.rds_instances() == SOURCE_INSTANCES
    assert harness.scratches == {}
    assert sorted(p.name for p in runtime_dir.iterdir()) == clusters_before


def test_transient_fault_is_retried_per_the_definition_then_succeeds(harness: Harness, tmp_path: Path) -> None:
    import boto3
    from botocore.exceptions import ClientError

    # Given S3 answering the evaluate Lambda's first read of the result with SlowDown: the Lambda's own
    # code must turn that into the package's transient error (the harness injects no error name)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    slowed: list[str] = []

    def slow_down(params: dict[str, Any], **_: Any) -> None:
        if not slowed and str(params.get("url_path", "")).endswith("/result.json"):
            slowed.append(params["url_path"])
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}},
                              "GetObject")

    events = boto3._get_default_session().events
    events.register("before-call.s3.GetObject", slow_down)

    # When the pipeline starts an execution
    try:
        arn = harness.start(machine, execution_input(plan_path, sha), name="us-6-transient")
        described = harness.wait(arn)
    finally:
        events.unregister("before-call.s3.GetObject", slow_down)

    # Then the state was retried (same state, second attempt) and the execution succeeded
    assert described["status"] == "SUCCEEDED", harness.explain(arn)
    assert [c.ok for c in harness.called("lambda", "handlers.evaluate.handler")] == [False, True]
    assert harness.entered(arn).count(workflows.EVALUATE) == 1
    failures = [e for e in harness.history(arn) if e["type"] in {"TaskFailed", "LambdaFunctionFailed"}]
    assert len(failures) == 1
    details = failures[0].get("taskFailedEventDetails") or failures[0]["lambdaFunctionFailedEventDetails"]
    assert slowed and details["error"] == TransientAwsError.__name__
    messages = harness.messages()
    assert [m["MessageAttributes"]["verdict"]["Value"] for m in messages] == ["PASS"]
    assert harness.rds_instances() == SOURCE_INSTANCES


# --- restore --------------------------------------------------------------------------------------
def backup_in_bucket(h: Harness, source: Any) -> str:
    """A complete backup of the source's tables in the stack's bucket (what a rehearsal leaves)."""
    from migsafe.backup import run_backup
    from migsafe.identifiers import QualifiedName

    result = run_backup(source.dsn, open_store(f"s3://{h.bucket}/backups"), [QualifiedName.parse(t) for t in TABLES])
    return result.backup_id


def test_restore_into_scratch_succeeds_with_verified_counts(harness: Harness, source: Any) -> None:
    # Given a backup in the bucket and the restore state machine
    backup_id = backup_in_bucket(harness, source)
    machine = harness.create_state_machine("Restore")
    counts = {t: rows for t, (rows, _) in fingerprints(source.conninfo).items()}

    # When an engineer starts a restore into a throw-away cluster
    arn = harness.start(machine, {"backup_id": backup_id, "target": "scratch"}, name="restore-scratch")
    described = harness.wait(arn)

    # Then it succeeded, and the worker verified every table against the manifest
    assert described["status"] == "SUCCEEDED", harness.explain(arn)
    assert harness.entered(arn)[-1] == "Tables restored"
    body = json.loads(harness.s3.get_object(Bucket=harness.bucket, Key="results/restore-scratch/restore.json")["Body"]
                      .read())
    assert body["ok"] is True and body["problems"] == []
    restored = {t["name"]: (t["rows_expected"], t["rows_restored"]) for t in body["report"]["tables"]}
    assert restored == {t: (n, n) for t, n in counts.items()}
    assert [c.detail["exit_code"] for c in harness.called("ecs", "restore")] == [0]
    messages = harness.messages()
    assert [m["MessageAttributes"]["verdict"]["Value"] for m in messages] == ["PASS"]
    assert backup_id in messages[0]["Message"]


def test_restore_into_an_instance_without_confirm_fails_and_changes_nothing(
        harness: Harness, source: Any, make_database: Callable[..., Any]) -> None:
    # Given a backup, and a real instance (staging, with its own data) the engineer names as target
    backup_id = backup_in_bucket(harness, source)
    staging = make_database(users=50)
    harness.rds.create_db_instance(DBInstanceIdentifier="app-staging", Engine="postgres",
                                   DBInstanceClass="db.t4g.medium", MasterUsername="app",
                                   MasterUserPassword="e2e-not-checked", AllocatedStorage=20)
    harness.instances["app-staging"] = staging.dsn
    before = fingerprints(staging.conninfo)
    machine = harness.create_state_machine("Restore")

    # When the restore is started without "confirm"
    arn = harness.start(machine, {"backup_id": backup_id, "target": "app-staging", "replace": True},
                        name="restore-unconfirmed")
    described = harness.wait(arn)

    # Then it failed in the first state, with a FAIL message that says why
    assert described["status"] == "FAILED", harness.explain(arn)
    assert harness.failure(arn) == ("Restore could not run", "MigsafeFailed")
    entered = harness.entered(arn)
    assert "Restore tables" not in entered and "Describe target instance" not in entered
    assert harness.called("ecs", "restore") == []
    messages = harness.messages()
    assert len(messages) == 1
    context = chatbot(messages[0])["metadata"]["additionalContext"]
    assert (context["state"], context["error"]) == ("Validate restore request", "ConfirmationMismatch")
    assert "confirm" in chatbot(messages[0])["content"]["description"]
    # and the target is untouched
    assert fingerprints(staging.conninfo) == before


# --- issue 8: the scratch password, its revision, the run's snapshot, the plan in S3 --------------
def _secrets(h: Harness) -> list[str]:
    import boto3

    client = boto3.client("secretsmanager", region_name=REGION)
    return sorted(s["Name"] for s in client.list_secrets()["SecretList"])


def test_the_worker_logs_in_to_the_scratch_only_with_a_password_of_its_own_which_is_then_deleted(
        harness: Harness, tmp_path: Path) -> None:
    # Given a scratch that, like a restored snapshot, accepts only the password of snapshot time
    # (the harness requires a password on it), and the source secret's password is another one
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")

    # When the pipeline starts an execution
    arn = harness.start(machine, execution_input(plan_path, sha), name="i8-password")
    described = harness.wait(arn)

    # Then it passed: the worker set a fresh password on the scratch and logged in with it
    assert described["status"] == "SUCCEEDED", harness.explain(arn, verbose=True)
    (scratch_id, password), = harness.passwords.items()
    assert [c.detail for c in harness.called("rds", "modify_db_instance")] == [
        {"instance": scratch_id, "password_set": True}]
    assert password not in ("e2e-not-checked", "password-at-snapshot-time") and len(password) >= 32
    # the secret that held it is gone, and the password appears nowhere: history, messages, results
    assert _secrets(harness) == []
    history = json.dumps(harness.history(arn), default=str)
    assert password not in history
    assert all(password not in json.dumps(m) for m in harness.messages())
    for key in harness.keys("results/i8-password/"):
        assert password not in harness.s3.get_object(Bucket=harness.bucket, Key=key)["Body"].read().decode()


def test_a_scratch_at_another_revision_than_the_source_fails_naming_both(harness: Harness, tmp_path: Path,
                                                                         source: Any) -> None:
    # Given a latest snapshot taken before a migration the source has since run
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    harness.snapshot_revision = "0000_before_the_last_deploy"

    # When the pipeline starts an execution without create_snapshot
    arn = harness.start(machine, execution_input(plan_path, sha), name="i8-stale")
    described = harness.wait(arn)

    # Then it failed in the rehearsal, before any upgrade, with a FAIL naming both revisions
    assert described["status"] == "FAILED", harness.explain(arn)
    assert harness.failure(arn) == ("Rehearsal could not run", "MigsafeFailed")
    messages = harness.messages()
    assert len(messages) == 1
    context = chatbot(messages[0])["metadata"]["additionalContext"]
    assert (context["state"], context["error"]) == (workflows.REHEARSE, "ScratchStale")
    text = messages[0]["Message"]
    assert "0000_before_the_last_deploy" in text and seed.BASELINE in text and "create_snapshot" in text
    assert "result.json" not in " ".join(harness.keys("results/i8-stale/"))  # nothing was rehearsed
    # and the scratch and its secret are gone
    assert harness.rds_instances() == SOURCE_INSTANCES and harness.scratches == {}
    assert _secrets(harness) == []


def _snapshots(h: Harness) -> list[str]:
    return sorted(s["DBSnapshotIdentifier"] for s in h.rds.describe_db_snapshots()["DBSnapshots"])


def test_a_snapshot_the_run_created_is_deleted_with_the_scratch(harness: Harness, tmp_path: Path) -> None:
    # Given an execution that snapshots the source first
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    before = _snapshots(harness)

    # When it runs
    arn = harness.start(machine, {**execution_input(plan_path, sha), "create_snapshot": True}, name="i8-snapshot")
    described = harness.wait(arn)

    # Then it rehearsed on a copy of its own snapshot, and deleted that snapshot (only that one)
    assert described["status"] == "SUCCEEDED", harness.explain(arn)
    entered = harness.entered(arn)
    assert "Create snapshot" in entered and workflows.DELETE_SNAPSHOT in entered
    created = harness.called("rds", "create_db_snapshot")
    assert len(created) == 1
    assert _snapshots(harness) == before  # the nightly snapshot stays, the run's is gone
    assert harness.rds_instances() == SOURCE_INSTANCES


def test_a_snapshot_the_run_created_is_deleted_when_the_rehearsal_fails(harness: Harness, tmp_path: Path) -> None:
    # Given an execution that snapshots the source, whose rehearsal task dies (a fault, not a verdict)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    harness.fail_next("ecs", "rehearse", RuntimeError("the task was stopped"))
    before = _snapshots(harness)

    # When it runs
    arn = harness.start(machine, {**execution_input(plan_path, sha), "create_snapshot": True}, name="i8-snap-fail")
    described = harness.wait(arn)

    # Then the failure path deleted the scratch and the run's snapshot
    assert described["status"] == "FAILED", harness.explain(arn)
    assert workflows.DELETE_SNAPSHOT_AFTER_FAILURE in harness.entered(arn)
    assert _snapshots(harness) == before
    assert harness.rds_instances() == SOURCE_INSTANCES


def test_a_plan_of_200_tables_and_50_checks_reaches_the_worker(harness: Harness, tmp_path: Path) -> None:
    # Given a plan far bigger than ECS's 8,192-character container overrides, whose tables are not
    # in the database (so the backup refuses them: the point is that the request arrives whole)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    payload = execution_input(plan_path, sha)
    payload["plan"]["source"]["tables"] = TABLES + [f"public.archived_table_{i:03}" for i in range(197)]
    payload["plan"]["checks"] = [{"name": f"check {i}", "sql": f"select count(*) from users where id > {i}",
                                  "expect": ">= 0", "when": ["before"]} for i in range(50)]
    assert len(json.dumps(payload["plan"])) > 8192

    # When the pipeline starts an execution
    arn = harness.start(machine, payload, name="i8-big-plan")
    harness.wait(arn)

    # Then every ECS task got only short overrides, and the worker read the whole plan by its key
    for call in harness.called("ecs", "backup") + harness.called("ecs", "rehearse"):
        environment = call.detail["environment"]
        assert "MIGSAFE_REQUEST" not in environment
        overrides = {k: v for k, v in environment.items() if k.startswith(("MIGSAFE_REQUEST", "MIGSAFE_EXEC",
                                                                              "MIGSAFE_SCRATCH"))}
        assert len(json.dumps(overrides)) < 2000
    stored = json.loads(harness.s3.get_object(Bucket=harness.bucket, Key="backups/requests/i8-big-plan.json")
                        ["Body"].read())
    assert len(stored["plan"]["source"]["tables"]) == 200 and len(stored["plan"]["checks"]) == 50
    backup = harness.called("ecs", "backup")
    assert backup, harness.explain(arn)
    errors = [k for k in harness.keys("results/i8-big-plan/") if "error-backup" in k]
    # the worker parsed the whole plan and refused the missing tables by name, not a truncated request
    assert errors, harness.explain(arn)
    body = harness.s3.get_object(Bucket=harness.bucket, Key=errors[0])["Body"].read().decode()
    assert "archived_table" in body and "invalid backup request" not in body


# --- issue 8: restores into real instances need the allowlist and an approval ---------------------
def _staging(h: Harness, make_database: Callable[..., Any], *, allowlisted: bool = True) -> Any:
    """An instance of its own (another server, the source's database name, as a restored copy
    would be) whose data has drifted from the backup: half its invitations are gone."""
    from migsafe.scratch import create_scratch

    copy = create_scratch("local", h.source, runtime_dir=h.runtime_dir)
    h.extra_clusters.append(copy)
    with psycopg.connect(copy.dsn.conninfo(), autocommit=True) as conn:
        conn.execute("delete from user_invitations where email like '%1%'")

    class Staging:
        dsn = copy.dsn
        conninfo = copy.dsn.conninfo()

    staging = Staging()
    tags = [{"Key": "migsafe:restore-target", "Value": "true"}] if allowlisted else []
    h.rds.create_db_instance(DBInstanceIdentifier="app-staging", Engine="postgres", DBInstanceClass="db.t4g.medium",
                             MasterUsername="app", MasterUserPassword="e2e-not-checked", AllocatedStorage=20,
                             Tags=tags)
    h.instances["app-staging"] = staging.dsn
    return staging


def _approval_message(h: Harness, deadline: float = 120) -> dict[str, Any]:
    import time

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for message in h.messages():
            if message["MessageAttributes"]["verdict"]["Value"] == "APPROVAL":
                return message
        time.sleep(0.3)
    raise AssertionError("no approval request was published")


def _token(message: dict[str, Any], verb: str) -> str:
    steps = chatbot(message)["content"]["nextSteps"]
    line = next(s for s in steps if f"migsafe {verb} " in s)
    assert "--region us-east-1" in line
    return line.split("--token ", 1)[1].strip()


RESTORE = {"target": "app-staging", "confirm": "app-staging", "mode": "replace"}


def test_an_approved_restore_backs_up_the_target_first_then_restores(
        harness: Harness, source: Any, make_database: Callable[..., Any]) -> None:
    from migsafe.cli_aws import answer_approval

    # Given a backup, and an allowlisted staging instance with its own data
    backup_id = backup_in_bucket(harness, source)
    staging = _staging(harness, make_database)
    before = fingerprints(staging.conninfo)
    machine = harness.create_state_machine("Restore")

    # When an engineer starts a confirmed restore, and someone approves it from the Slack message
    arn = harness.start(machine, {"backup_id": backup_id, **RESTORE}, name="i8-approved")
    message = _approval_message(harness)
    assert "app-staging" in message["Subject"] and "console.aws.amazon.com" in message["Message"]
    assert fingerprints(staging.conninfo) == before  # nothing happens before the answer
    answer_approval(harness.sfn, _token(message, "approve"), approve=True, who="alice")
    described = harness.wait(arn)

    # Then the restore ran and the target now holds the backup's rows
    assert described["status"] == "SUCCEEDED", harness.explain(arn)
    assert fingerprints(staging.conninfo) == fingerprints(source.conninfo)
    # and an undo backup of the target's tables, taken first, holds what the target had
    body = json.loads(harness.s3.get_object(Bucket=harness.bucket, Key="results/i8-approved/restore.json")["Body"]
                      .read())
    undo = body["undo"]
    assert undo["backup_id"] and sorted(undo["tables"]) == sorted(TABLES)
    manifest = next(k for k in harness.keys("backups/") if undo["backup_id"] in k and k.endswith("manifest.json"))
    tables = json.loads(harness.s3.get_object(Bucket=harness.bucket, Key=manifest)["Body"].read())["tables"]
    rows = {t["name"]: t["rows"] for t in tables}
    assert rows == {t: n for t, (n, _) in before.items()}
    result = [m for m in harness.messages() if m["MessageAttributes"]["verdict"]["Value"] == "PASS"]
    assert len(result) == 1 and undo["backup_id"] in result[0]["Message"]


def test_a_rejected_restore_changes_nothing(harness: Harness, source: Any,
                                           make_database: Callable[..., Any]) -> None:
    from migsafe.cli_aws import answer_approval

    # Given a confirmed restore into an allowlisted instance, waiting for approval
    backup_id = backup_in_bucket(harness, source)
    staging = _staging(harness, make_database)
    before = fingerprints(staging.conninfo)
    machine = harness.create_state_machine("Restore")
    arn = harness.start(machine, {"backup_id": backup_id, **RESTORE}, name="i8-rejected")

    # When someone rejects it
    answer_approval(harness.sfn, _token(_approval_message(harness), "reject"), approve=False, who="bob",
                    reason="wrong backup")
    described = harness.wait(arn)

    # Then it failed without running the restore, with a FAIL message naming the rejection
    assert described["status"] == "FAILED", harness.explain(arn)
    assert harness.called("ecs", "restore") == []
    assert fingerprints(staging.conninfo) == before
    messages = harness.messages()
    context = chatbot(messages[-1])["metadata"]["additionalContext"]
    assert (context["state"], context["error"]) == (workflows.WAIT_FOR_APPROVAL, workflows.RESTORE_REJECTED)


def test_an_unanswered_restore_times_out_to_a_rejection(harness: Harness, source: Any,
                                                        make_database: Callable[..., Any]) -> None:
    # Given an approval that times out after 2 seconds here (an hour on AWS)
    backup_id = backup_in_bucket(harness, source)
    staging = _staging(harness, make_database)
    before = fingerprints(staging.conninfo)
    harness.approval_seconds = 2
    machine = harness.create_state_machine("Restore")

    # When nobody answers
    arn = harness.start(machine, {"backup_id": backup_id, **RESTORE}, name="i8-timeout")
    described = harness.wait(arn)

    # Then it failed as a rejection, and nothing was restored
    assert described["status"] == "FAILED", harness.explain(arn)
    assert harness.called("ecs", "restore") == []
    assert fingerprints(staging.conninfo) == before
    context = chatbot(harness.messages()[-1])["metadata"]["additionalContext"]
    assert (context["state"], context["error"]) == (workflows.WAIT_FOR_APPROVAL, "States.Timeout")


def test_a_restore_into_an_instance_off_the_allowlist_is_refused(harness: Harness, source: Any,
                                                                 make_database: Callable[..., Any]) -> None:
    # Given a confirmed restore into an instance without the migsafe:restore-target tag
    backup_id = backup_in_bucket(harness, source)
    staging = _staging(harness, make_database, allowlisted=False)
    before = fingerprints(staging.conninfo)
    machine = harness.create_state_machine("Restore")

    # When it starts
    arn = harness.start(machine, {"backup_id": backup_id, **RESTORE}, name="i8-not-allowed")
    described = harness.wait(arn)

    # Then validation refuses it: no approval request, no restore, the target untouched
    assert described["status"] == "FAILED", harness.explain(arn)
    assert workflows.WAIT_FOR_APPROVAL not in harness.entered(arn)
    messages = harness.messages()
    assert len(messages) == 1
    context = chatbot(messages[0])["metadata"]["additionalContext"]
    assert (context["state"], context["error"]) == (workflows.VALIDATE_RESTORE, "RestoreRefused")
    assert fingerprints(staging.conninfo) == before


def test_a_stale_scratch_is_replaced_by_a_fresh_copy_when_the_input_allows_it(harness: Harness, tmp_path: Path,
                                                                              source: Any) -> None:
    # Given a latest snapshot older than the source's revision, and an input that allows a fresh snapshot
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    harness.snapshot_revision = "0000_before_the_last_deploy"
    before = _snapshots(harness)

    # When the pipeline starts an execution with "create_snapshot": "if-stale"
    arn = harness.start(machine, {**execution_input(plan_path, sha), "create_snapshot": "if-stale"},
                        name="i8-refresh")
    described = harness.wait(arn)

    # Then the stale scratch was deleted, the source snapshotted, and the rehearsal passed on a fresh copy
    assert described["status"] == "SUCCEEDED", harness.explain(arn)
    entered = harness.entered(arn)
    for state in ("Check for a stale scratch", "Delete stale scratch", "Prepare a fresh scratch",
                  "Create snapshot (fresh)", workflows.DELETE_SNAPSHOT):
        assert state in entered, state
    assert entered.count(workflows.REHEARSE) == 2
    assert [m["MessageAttributes"]["verdict"]["Value"] for m in harness.messages()] == ["PASS"]
    # and nothing is left: no scratch, no run snapshot, no secret
    assert harness.rds_instances() == SOURCE_INSTANCES and harness.scratches == {}
    assert _snapshots(harness) == before and _secrets(harness) == []


# --- issue 11: the console restore's diff and merge modes -------------------------------------------
def test_a_diff_reads_the_target_and_publishes_what_changed_per_table(
        harness: Harness, source: Any, make_database: Callable[..., Any]) -> None:
    # Given a backup, and an allowlisted instance that lost rows since (half its invitations)
    backup_id = backup_in_bucket(harness, source)
    staging = _staging(harness, make_database)
    before = fingerprints(staging.conninfo)
    lost = fingerprints(source.conninfo)["public.user_invitations"][0] - before["public.user_invitations"][0]
    machine = harness.create_state_machine("Restore")

    # When an engineer starts a diff (it only reads: no approval is asked for)
    arn = harness.start(machine, {"backup_id": backup_id, "target": "app-staging", "confirm": "app-staging",
                                  "mode": "diff"}, name="i11-diff")
    described = harness.wait(arn)

    # Then it succeeded without touching the target, and Slack got the per-table summary
    assert described["status"] == "SUCCEEDED", harness.explain(arn)
    assert fingerprints(staging.conninfo) == before
    messages = harness.messages()  # drained: read once
    assert [m["MessageAttributes"]["verdict"]["Value"] for m in messages] == ["PASS"], harness.explain(arn)
    message = chatbot(messages[-1])
    text = message["content"]["description"]
    assert "migsafe diff" in message["content"]["title"]
    assert f"public.user_invitations: {lost:,} only in the backup (deleted since), 0 only in the target" in text
    assert "public.user_application_access: equal" in text


def test_an_approved_merge_brings_back_the_deleted_rows(
        harness: Harness, source: Any, make_database: Callable[..., Any]) -> None:
    from migsafe.cli_aws import answer_approval

    # Given a backup, and an allowlisted instance that lost rows since
    backup_id = backup_in_bucket(harness, source)
    staging = _staging(harness, make_database)
    assert fingerprints(staging.conninfo) != fingerprints(source.conninfo)
    machine = harness.create_state_machine("Restore")

    # When an engineer starts a merge and it is approved
    arn = harness.start(machine, {"backup_id": backup_id, "target": "app-staging", "confirm": "app-staging",
                                  "mode": "merge"}, name="i11-merge")
    answer_approval(harness.sfn, _token(_approval_message(harness), "approve"), approve=True, who="alice")
    described = harness.wait(arn)

    # Then the deleted rows are back (nothing else had changed), with an undo backup taken first
    assert described["status"] == "SUCCEEDED", harness.explain(arn)
    assert fingerprints(staging.conninfo) == fingerprints(source.conninfo)
    body = json.loads(harness.s3.get_object(Bucket=harness.bucket, Key="results/i11-merge/restore.json")["Body"]
                      .read())
    assert body["undo"]["backup_id"] and body["ok"] is True
