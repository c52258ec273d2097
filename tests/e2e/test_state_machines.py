"""The synthesized state machines, executed: moto's Step Functions interpreter, real PostgreSQL.

Each test takes a definition from the synthesized template, substitutes its resource references
with the moto resources the test made, and runs it with
``mock_aws(config={"stepfunctions": {"execute_state_machine": True}})``. The task states reach
the project's real code through the seams described in ``e2e_harness`` (Lambda handlers and the
ECS worker in-process; RDS instances backed by local throw-away clusters); SNS, S3 and the RDS API
are moto's. Wait states are shortened to 0 s in the resolved definition (the scratch instance is
available at once here); Retry intervals are the definition's own.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from e2e_harness import REGION, SOURCE_INSTANCE, Harness
from migsafe import bundle
from migsafe.plan import Plan
from migsafe.store import open_store
from moto import mock_aws

from examples.enum_uppercase import seed
from infra import workflows

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "enum_uppercase"
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


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                       "POWERTOOLS_TRACE_DISABLED": "1", "POWERTOOLS_METRICS_NAMESPACE": "migsafe"}.items():
        monkeypatch.setenv(key, value)
    # the interpreter logs every caught failure with its whole parse tree: keep failures readable
    quiet = logging.getLogger("moto.stepfunctions.parser")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
            yield
    finally:
        quiet.setLevel(level)


@pytest.fixture
def source(make_database: Callable[..., Any]) -> Any:
    """The production stand-in: the seed scenario, stamped at the example project's baseline."""
    db = make_database()
    seed.load(db.conninfo, 2000, alembic=True)
    return db


@pytest.fixture
def harness(aws: None, template: dict[str, Any], source: Any, runtime_dir: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    h = Harness(template, source.dsn, runtime_dir, monkeypatch)
    try:
        yield h
    finally:
        h.close()


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


def execution_input(plan_path: Path, sha256: str) -> dict[str, Any]:
    """What the deploy pipeline sends: the plan (credentials by secret, not DSN) and the bundle."""
    plan = Plan.load(plan_path)
    data = plan.model_dump(mode="json", exclude={"store", "scratch", "notify"})
    data["source"] = {"secret_arn": f"arn:aws:secretsmanager:{REGION}:123456789012:secret:app-db",
                      "tables": TABLES}
    return {"plan": data, "bundle_sha256": sha256}


def fingerprints(dsn_conninfo: str) -> dict[str, Any]:
    with psycopg.connect(dsn_conninfo) as conn:
        return {t: conn.execute(f"select count(*), md5(string_agg(x::text, ',' order by x::text)) from {t} x")
                .fetchone() for t in TABLES}


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
