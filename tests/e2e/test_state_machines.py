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
from e2e_harness import EXAMPLE, REGION, SOURCE_INSTANCE, Harness, client_error
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


def execution_input(plan_path: Path, sha256: str, **migration: str) -> dict[str, Any]:
    """What the deploy pipeline sends: the plan (credentials by secret, not DSN) and the bundle."""
    plan = Plan.load(plan_path)
    data = plan.model_dump(mode="json", exclude={"store", "scratch", "notify"})
    data["migration"].update(migration)
    data["source"] = {"secret_arn": f"arn:aws:secretsmanager:{REGION}:123456789012:secret:app-db",
                      "tables": TABLES}
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
    assert "PASS" in messages[0]["Subject"]
    assert "PASS" in chatbot(messages[0])["content"]["title"]
    # the scratch instance and its cluster are gone; only the source is left
    assert harness.rds_instances() == [SOURCE_INSTANCE]
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
    assert harness.rds_instances() == [SOURCE_INSTANCE]
    assert harness.scratches == {}
    assert source.scalar("select version_num from alembic_version") == seed.BASELINE


def test_scratch_restore_fault_fails_publishes_fail_and_leaves_nothing_running(
        harness: Harness, tmp_path: Path, runtime_dir: Path) -> None:
    # Given RDS refusing to restore the scratch instance (no capacity: not a retried error)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    harness.fail_next("rds", "restore_db_instance_from_db_snapshot", client_error(
        "InsufficientDBInstanceCapacity", "no db.t4g.medium capacity in us-east-1a", "RestoreDBInstanceFromDBSnapshot"))
    clusters_before = sorted(p.name for p in runtime_dir.iterdir())

    # When the pipeline starts an execution
    arn = harness.start(machine, execution_input(plan_path, sha), name="us-6-no-capacity")
    described = harness.wait(arn)

    # Then it failed through the failure path, not retried (the error is not a transient one)
    assert described["status"] == "FAILED", harness.explain(arn)
    assert harness.failure(arn) == ("Rehearsal could not run", "MigsafeFailed")
    entered = harness.entered(arn)
    assert entered.count(workflows.RESTORE_SCRATCH) == 1
    assert len(harness.called("rds", "restore_db_instance_from_db_snapshot")) == 1
    assert workflows.REHEARSE not in entered
    assert [f"{workflows.PREPARE} failed", workflows.DELETE_AFTER_FAILURE, workflows.FORMAT_FAILURE,
            workflows.PUBLISH_FAILURE] == entered[entered.index(f"{workflows.PREPARE} failed"):][:4]
    # one FAIL message naming the state and RDS's error
    messages = harness.messages()
    assert len(messages) == 1, messages
    assert messages[0]["MessageAttributes"]["verdict"]["Value"] == "FAIL"
    context = chatbot(messages[0])["metadata"]["additionalContext"]
    assert context["state"] == workflows.PREPARE
    assert context["error"] == "Rds.InsufficientDbInstanceCapacityException"
    assert "the scratch deletion also failed" not in messages[0]["Message"]  # nothing existed to delete
    # and nothing is left running: no scratch instance, no cluster behind one
    assert harness.rds_instances() == [SOURCE_INSTANCE]
    assert harness.scratches == {}
    assert sorted(p.name for p in runtime_dir.iterdir()) == clusters_before


def test_transient_fault_is_retried_per_the_definition_then_succeeds(harness: Harness, tmp_path: Path) -> None:
    # Given the evaluate Lambda failing once with the package's transient error
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    harness.fail_next("lambda", "handlers.evaluate.handler", TransientAwsError("S3 GetObject: SlowDown (retry)"))

    # When the pipeline starts an execution
    arn = harness.start(machine, execution_input(plan_path, sha), name="us-6-transient")
    described = harness.wait(arn)

    # Then the state was retried (same state, second attempt) and the execution succeeded
    assert described["status"] == "SUCCEEDED", harness.explain(arn)
    assert [c.ok for c in harness.called("lambda", "handlers.evaluate.handler")] == [False, True]
    assert harness.entered(arn).count(workflows.EVALUATE) == 1
    failures = [e for e in harness.history(arn) if e["type"] in {"TaskFailed", "LambdaFunctionFailed"}]
    assert len(failures) == 1
    details = failures[0].get("taskFailedEventDetails") or failures[0]["lambdaFunctionFailedEventDetails"]
    assert details["error"] == "TransientAwsError"
    messages = harness.messages()
    assert [m["MessageAttributes"]["verdict"]["Value"] for m in messages] == ["PASS"]
    assert harness.rds_instances() == [SOURCE_INSTANCE]


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
