"""Aurora PostgreSQL sources: the scratch is a copy-on-write clone of the cluster (or its latest
cluster snapshot restored) with one instance, executed like test_state_machines (same harness and
seams): moto's Step Functions and RDS, and behind the scratch cluster's instance a real PostgreSQL
copied from the source. The e2e stack is deployed with ``sourceClusterId`` (conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from e2e_harness import (
    REGION,
    SOURCE_CLUSTER,
    SOURCE_CLUSTER_PARAMETER_GROUP,
    SOURCE_CLUSTER_SUBNETS,
    SOURCE_INSTANCE,
    SOURCE_INSTANCES,
    Harness,
    raw_rds_error,
)
from handlers import steps
from migsafe.exceptions import PlanInvalid
from migsafe.plan import Plan, Scratch
from test_state_machines import chatbot, execution_input, project, push_bundle, sdk_error_name

from examples.enum_uppercase import seed
from infra import workflows

CLONE = {"cluster_identifier": SOURCE_CLUSTER}  # kind "local" (the default) is "auto" on AWS: a clone


def _secrets() -> list[str]:
    client = boto3.client("secretsmanager", region_name=REGION)
    return sorted(s["Name"] for s in client.list_secrets()["SecretList"])


def _requests(h: Harness, operation: str) -> list[dict[str, Any]]:
    return [params for op, params in h.requests if op == operation]


def _deletions(h: Harness) -> list[str]:
    """The scratch deletions, in the order the state machine made them."""
    return [op for op, _ in h.requests if op in ("delete_db_instance", "delete_db_cluster")]


def _text(value: Any) -> str:
    """Every string in a decoded message, joined."""
    if isinstance(value, dict):
        return " ".join(_text(v) for v in value.values())
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    return str(value)


def _nothing_left(h: Harness) -> None:
    assert h.rds_instances() == SOURCE_INSTANCES
    assert h.rds_clusters() == [SOURCE_CLUSTER]
    assert h.scratches == {}
    assert _secrets() == []


def test_a_clone_rehearsal_passes_on_a_copy_with_the_sources_settings_then_deletes_instance_and_cluster(
        harness: Harness, tmp_path: Path, source: Any) -> None:
    # Given the example migration and a plan naming the Aurora source cluster
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")

    # When the pipeline starts an execution
    arn = harness.start(machine, execution_input(plan_path, sha, scratch=CLONE), name="i12-clone")
    described = harness.wait(arn)

    # Then it passed through the clone: cluster, then one instance in it
    assert described["status"] == "SUCCEEDED", harness.explain(arn, verbose=True)
    entered = harness.entered(arn)
    for state in (workflows.SCRATCH_KIND, workflows.CLONE_CLUSTER, workflows.DESCRIBE_CLUSTER,
                  workflows.CREATE_CLUSTER_INSTANCE, "Describe scratch", workflows.REHEARSE, workflows.DELETE_SCRATCH,
                  workflows.DELETE_CLUSTER, "Migration is safe"):
        assert state in entered, state
    assert "Find latest snapshot" not in entered and workflows.RESTORE_SCRATCH not in entered
    # a copy-on-write clone of the source at its latest restorable time, with the source's groups and port
    (clone,) = _requests(harness, "restore_db_cluster_to_point_in_time")
    cluster_id = clone["DBClusterIdentifier"]
    assert cluster_id.startswith("migsafe-scratch-")
    assert (clone["SourceDBClusterIdentifier"], clone["RestoreType"], clone["UseLatestRestorableTime"]) == (
        SOURCE_CLUSTER, "copy-on-write", True)
    assert clone["DBSubnetGroupName"] == SOURCE_CLUSTER_SUBNETS
    assert clone["VpcSecurityGroupIds"] == [harness.source_cluster_security_group]
    assert clone["DBClusterParameterGroupName"] == SOURCE_CLUSTER_PARAMETER_GROUP
    assert clone["Port"] == int(source.dsn.port) and clone["DeletionProtection"] is False
    assert {t["Key"] for t in clone["Tags"]} == {"migsafe:scratch", "migsafe:execution"}
    # one instance of the smallest class RDS offers for the engine version, tagged, private
    (instance,) = _requests(harness, "create_db_instance")
    assert instance["DBClusterIdentifier"] == cluster_id and instance["Engine"] == "aurora-postgresql"
    assert instance["DBInstanceClass"] == "db.t4g.medium"
    assert instance["PubliclyAccessible"] is False and {t["Key"] for t in instance["Tags"]} == {
        "migsafe:scratch", "migsafe:execution"}
    # the worker set a password of its own on the cluster (the clone's is production's) and used it
    assert [c.detail for c in harness.called("rds", "modify_db_cluster")] == [
        {"cluster": cluster_id, "password_set": True}]
    assert harness.called("rds", "modify_db_instance") == []
    (password,) = harness.passwords.values()
    assert password not in json.dumps(harness.history(arn), default=str)
    # the rehearsal reports the clone's age: its state (the source's latest restorable time) vs the start
    scratch = json.loads(harness.s3.get_object(Bucket=harness.bucket, Key="results/i12-clone/scratch.json")["Body"].read())
    assert scratch["kind"] == "aurora-clone" and scratch["cluster_id"] == cluster_id
    assert scratch["revision"] == seed.BASELINE
    assert scratch["age"] is not None and abs(scratch["age"]["age_seconds"]) < 600
    assert scratch["age"]["execution_start"].startswith(str(described["startDate"].year))
    # one PASS message, which says how old the clone's data was; the instance was deleted before the
    # cluster, and nothing is left
    messages = harness.messages()
    assert [m["MessageAttributes"]["verdict"]["Value"] for m in messages] == ["PASS"]
    assert "*Scratch* Aurora clone, production's state as of" in chatbot(messages[0])["content"]["description"]
    assert _deletions(harness) == ["delete_db_instance", "delete_db_cluster"]
    (deleted,) = _requests(harness, "delete_db_cluster")
    assert deleted == {"DBClusterIdentifier": cluster_id, "SkipFinalSnapshot": True}
    _nothing_left(harness)
    assert source.scalar("select version_num from alembic_version") == seed.BASELINE


def test_a_failing_migration_on_a_clone_fails_and_deletes_instance_then_cluster(harness: Harness, tmp_path: Path,
                                                                                source: Any) -> None:
    # Given a project whose newest revision the database refuses, and the Aurora source
    plan_path = project(tmp_path, broken=True)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")

    # When the pipeline starts an execution
    arn = harness.start(machine, execution_input(plan_path, sha, scratch=CLONE, downgrade_to=seed.BASELINE),
                        name="i12-broken")
    described = harness.wait(arn)

    # Then it failed on the verdict, with a FAIL message naming the database's error
    assert described["status"] == "FAILED", harness.explain(arn)
    assert harness.failure(arn) == ("Migration failed rehearsal", "VerdictFail")
    messages = harness.messages()
    assert [m["MessageAttributes"]["verdict"]["Value"] for m in messages] == ["FAIL"]
    assert "*Failed step* `upgrade`: NotNullViolation" in chatbot(messages[0])["content"]["description"]
    # and the scratch is gone, instance first; the source was never migrated
    assert _deletions(harness) == ["delete_db_instance", "delete_db_cluster"]
    _nothing_left(harness)
    assert source.scalar("select version_num from alembic_version") == seed.BASELINE


def test_a_clone_creation_fault_fails_with_rdss_error_and_leaves_nothing(harness: Harness, tmp_path: Path,
                                                                        runtime_dir: Path) -> None:
    # Given RDS refusing the clone (no cluster capacity), answered on the wire (HTTP 400, RDS's XML)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    clusters_before = sorted(p.name for p in runtime_dir.iterdir())

    # When the pipeline starts an execution
    with raw_rds_error("RestoreDBClusterToPointInTime", "InsufficientDBClusterCapacityFault",
                       "not enough capacity for the clone (raw)"):
        arn = harness.start(machine, execution_input(plan_path, sha, scratch=CLONE), name="i12-no-capacity")
        described = harness.wait(arn)

    # Then it failed through the failure path, not retried, and never created an instance
    assert described["status"] == "FAILED", harness.explain(arn)
    assert harness.failure(arn) == ("Rehearsal could not run", "MigsafeFailed")
    entered = harness.entered(arn)
    assert entered.count(workflows.CLONE_CLUSTER) == 1
    assert workflows.CREATE_CLUSTER_INSTANCE not in entered and workflows.REHEARSE not in entered
    assert [f"{workflows.PREPARE} failed", workflows.DELETE_AFTER_FAILURE, f"{workflows.DELETE_CLUSTER_AFTER_FAILURE}?",
            workflows.DELETE_CLUSTER_AFTER_FAILURE] == entered[entered.index(f"{workflows.PREPARE} failed"):][:4]
    # with one FAIL message naming the state and the error Step Functions' SDK integration names
    messages = harness.messages()
    assert len(messages) == 1
    context = chatbot(messages[0])["metadata"]["additionalContext"]
    assert context["state"] == workflows.PREPARE
    assert context["error"] == sdk_error_name("rds", "RestoreDBClusterToPointInTime",
                                              "InsufficientDBClusterCapacityFault")
    assert context["error"] == "Rds.InsufficientDbClusterCapacityException"
    assert "not enough capacity for the clone (raw)" in messages[0]["Message"]
    assert "the scratch deletion also failed" not in messages[0]["Message"]  # not found is fine
    _nothing_left(harness)
    assert sorted(p.name for p in runtime_dir.iterdir()) == clusters_before


def test_an_instance_that_never_becomes_available_ends_the_bounded_wait_and_the_cluster_is_deleted(
        harness: Harness, tmp_path: Path) -> None:
    # Given a clone whose instance stays "creating" forever
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    harness.stuck_instance_status = "creating"

    # When the pipeline starts an execution
    arn = harness.start(machine, execution_input(plan_path, sha, scratch=CLONE), name="i12-stuck")
    described = harness.wait(arn, deadline=900)

    # Then the wait ended at its deadline (scratchWaitMinutes at 30-s polls), never rehearsing
    assert described["status"] == "FAILED", harness.explain(arn)
    entered = harness.entered(arn)
    assert "Scratch deadline passed" in entered and workflows.REHEARSE not in entered
    polls = 90 * 60 // workflows.POLL_SECONDS  # cdk.json's scratchWaitMinutes
    assert entered.count("Describe scratch") == polls + 1
    context = chatbot(harness.messages()[0])["metadata"]["additionalContext"]
    assert (context["state"], context["error"]) == (workflows.PREPARE, "ScratchFailed")
    # and the instance, then the cluster, were deleted
    assert _deletions(harness) == ["delete_db_instance", "delete_db_cluster"]
    _nothing_left(harness)


def test_a_fault_after_the_scratch_exists_deletes_the_instance_before_the_cluster(harness: Harness,
                                                                                 tmp_path: Path) -> None:
    # Given a clone whose rehearsal task dies (a fault, not a verdict)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    harness.fail_next("ecs", "rehearse", RuntimeError("the task was stopped"))

    # When it runs
    arn = harness.start(machine, execution_input(plan_path, sha, scratch=CLONE), name="i12-fault")
    described = harness.wait(arn)

    # Then the failure path deleted the instance, then (moto refuses a cluster with a member) the cluster
    assert described["status"] == "FAILED", harness.explain(arn)
    entered = harness.entered(arn)
    after = entered[entered.index(f"{workflows.REHEARSE} failed"):]
    assert after.index(workflows.DELETE_AFTER_FAILURE) < after.index(workflows.DELETE_CLUSTER_AFTER_FAILURE)
    assert _deletions(harness) == ["delete_db_instance", "delete_db_cluster"]
    assert all(c.ok for c in harness.called("rds", "delete_db_cluster"))
    assert "the scratch deletion also failed" not in harness.messages()[0]["Message"]
    _nothing_left(harness)


def test_the_latest_cluster_snapshot_is_restored_when_asked(harness: Harness, tmp_path: Path) -> None:
    # Given a plan asking for the cluster's latest snapshot (cloning not allowed, or cross-account)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")

    # When it runs
    arn = harness.start(machine, execution_input(plan_path, sha, scratch={**CLONE, "kind": "aurora-snapshot"}),
                        name="i12-snapshot")
    described = harness.wait(arn)

    # Then the nightly cluster snapshot was restored into a scratch cluster, rehearsed on, and deleted
    assert described["status"] == "SUCCEEDED", harness.explain(arn)
    assert "Find latest cluster snapshot" in harness.entered(arn)
    (restored,) = _requests(harness, "restore_db_cluster_from_snapshot")
    assert restored["SnapshotIdentifier"] == f"{SOURCE_CLUSTER}-nightly"
    assert restored["DBClusterParameterGroupName"] == SOURCE_CLUSTER_PARAMETER_GROUP
    assert _requests(harness, "restore_db_cluster_to_point_in_time") == []
    assert _deletions(harness) == ["delete_db_instance", "delete_db_cluster"]
    _nothing_left(harness)


@pytest.mark.parametrize(("scratch", "says"), [
    ({"kind": "rds-snapshot", "cluster_identifier": SOURCE_CLUSTER}, 'kind = "rds-snapshot" restores an RDS instance'),
    ({"kind": "aurora-clone", "instance_identifier": SOURCE_INSTANCE}, "copies an Aurora cluster"),
    ({"cluster_identifier": "another-cluster"}, "deployed for the cluster 'migsafe-aurora-source'"),
])
def test_a_plan_whose_source_does_not_match_its_kind_is_refused_in_validation(
        harness: Harness, tmp_path: Path, scratch: dict[str, Any], says: str) -> None:
    # Given a plan naming a source its scratch kind cannot copy
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")

    # When the pipeline starts an execution
    arn = harness.start(machine, execution_input(plan_path, sha, scratch=scratch), name="i12-refused")
    described = harness.wait(arn)

    # Then validation refused it with a clear message, and nothing was created
    assert described["status"] == "FAILED", harness.explain(arn)
    assert workflows.PREPARE not in harness.entered(arn)
    messages = harness.messages()
    assert len(messages) == 1
    context = chatbot(messages[0])["metadata"]["additionalContext"]
    assert (context["state"], context["error"]) == (workflows.VALIDATE_PLAN, "PlanInvalid")
    assert says in _text(chatbot(messages[0]))
    assert harness.requests == [] or {op for op, _ in harness.requests} <= {"describe_db_instances"}
    _nothing_left(harness)


def test_an_instance_of_an_aurora_cluster_is_refused_as_the_source(harness: Harness) -> None:
    # Given a deploy whose source instance is the Aurora cluster's writer
    environ = {"MIGSAFE_SOURCE_INSTANCE_ID": f"{SOURCE_CLUSTER}-writer", "MIGSAFE_SOURCE_CLUSTER_ID": SOURCE_CLUSTER}
    for scratch in (Scratch(instance_identifier=f"{SOURCE_CLUSTER}-writer"),
                    Scratch(kind="rds-snapshot", instance_identifier=f"{SOURCE_CLUSTER}-writer")):
        # When validation resolves the plan's scratch / Then it names the cluster to use instead
        with pytest.raises(PlanInvalid, match=f'is an instance of the Aurora cluster {SOURCE_CLUSTER}: name the cluster'):
            steps.resolve_source(scratch, environ, harness.rds)
    # and the kinds resolve as documented: auto clones an Aurora source, restores an instance's snapshot
    assert steps.resolve_source(Scratch(), environ, harness.rds) == ("aurora-clone", SOURCE_CLUSTER, "")
    assert steps.resolve_source(Scratch(kind="aurora-snapshot"), environ, harness.rds)[0] == "aurora-snapshot"
    plain = {"MIGSAFE_SOURCE_INSTANCE_ID": SOURCE_INSTANCE}
    assert steps.resolve_source(Scratch(kind="auto"), plain, harness.rds) == ("rds-snapshot", "", SOURCE_INSTANCE)
    with pytest.raises(PlanInvalid, match="deployed without sourceClusterId"):
        steps.resolve_source(Scratch(kind="aurora-clone"), plain, harness.rds)


def test_the_plan_model_refuses_a_mismatched_scratch_source() -> None:
    # Given [scratch] sections a team might write / When parsed / Then the mismatches are one-line errors
    base = {"source": {"dsn_env": "X", "tables": ["public.users"]}}
    for scratch, says in [
        ({"kind": "rds-snapshot", "cluster_identifier": "prod"}, 'kind = "rds-snapshot" restores'),
        ({"kind": "aurora-snapshot", "instance_identifier": "prod"}, "copies an Aurora cluster"),
        ({"cluster_identifier": "prod", "instance_identifier": "prod-1"}, "not both"),
        ({"cluster_identifier": "prod--x"}, "is not an RDS identifier"),
        ({"instance_class": "t4g.medium"}, "is not a DB instance class"),
    ]:
        with pytest.raises(PlanInvalid, match=says):
            Plan.from_mapping({**base, "scratch": scratch})
    assert Plan.from_mapping({**base, "scratch": {"kind": "auto", "cluster_identifier": "prod",
                                                   "instance_class": "db.serverless"}}).scratch.kind == "auto"


def test_the_janitor_deletes_an_orphaned_scratch_cluster_after_its_instance(harness: Harness) -> None:
    from datetime import UTC, datetime, timedelta

    # Given a scratch cluster and its instance left by a killed execution, and one still in use
    tags = [{"Key": "migsafe:scratch", "Value": "killed"}]
    rds = harness.rds
    for ident, cluster_tags in (("migsafe-scratch-orphan", tags), ("migsafe-scratch-busy", tags)):
        rds.restore_db_cluster_to_point_in_time(DBClusterIdentifier=ident, SourceDBClusterIdentifier=SOURCE_CLUSTER,
                                                RestoreType="copy-on-write", UseLatestRestorableTime=True,
                                                Tags=cluster_tags)
    rds.create_db_instance(DBInstanceIdentifier="migsafe-scratch-orphan", DBClusterIdentifier="migsafe-scratch-orphan",
                           Engine="aurora-postgresql", DBInstanceClass="db.t4g.medium", Tags=tags)
    # (an instance of another name, outside the janitor's prefix, keeps the busy cluster)
    rds.create_db_instance(DBInstanceIdentifier="someone-elses", DBClusterIdentifier="migsafe-scratch-busy",
                           Engine="aurora-postgresql", DBInstanceClass="db.t4g.medium")
    calls: list[str] = []
    events = boto3._get_default_session().events

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    # When the janitor sweeps past the age limit
    events.register("before-call.rds", record)
    try:
        swept = steps.sweep_scratch(boto3.client("rds", region_name=REGION), max_age=timedelta(hours=9),
                                    now=datetime.now(UTC) + timedelta(hours=10))
    finally:
        events.unregister("before-call.rds", record)

    # Then the orphan's instance went first, then its cluster; the cluster with a member left is kept
    assert "instance:migsafe-scratch-orphan" in swept["deleted"] and "cluster:migsafe-scratch-orphan" in swept["deleted"]
    assert "cluster:migsafe-scratch-busy" in swept["kept"]
    deletions = [c for c in calls if c.startswith("Delete")]
    assert deletions == ["DeleteDBInstance", "DeleteDBCluster"]
    assert "migsafe-scratch-orphan" not in harness.rds_clusters() and "migsafe-scratch-busy" in harness.rds_clusters()


def test_a_serverless_v2_source_gets_a_serverless_scratch_with_its_scaling(harness: Harness, tmp_path: Path) -> None:
    # Given an Aurora source that scales as Serverless v2 (0.5-4 ACUs)
    harness.rds.modify_db_cluster(DBClusterIdentifier=SOURCE_CLUSTER, ApplyImmediately=True,
                                  ServerlessV2ScalingConfiguration={"MinCapacity": 0.5, "MaxCapacity": 4})
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")

    # When it runs
    arn = harness.start(machine, execution_input(plan_path, sha, scratch=CLONE), name="i12-serverless")
    described = harness.wait(arn)

    # Then the clone copied the scaling range and its instance is db.serverless
    assert described["status"] == "SUCCEEDED", harness.explain(arn)
    assert f"{workflows.CLONE_CLUSTER} (Serverless v2)" in harness.entered(arn)
    (clone,) = _requests(harness, "restore_db_cluster_to_point_in_time")
    assert clone["ServerlessV2ScalingConfiguration"] == {"MinCapacity": 0.5, "MaxCapacity": 4}
    (instance,) = _requests(harness, "create_db_instance")
    assert instance["DBInstanceClass"] == "db.serverless"
    _nothing_left(harness)
