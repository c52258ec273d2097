"""``[migration] command`` on AWS: the scratch's own DB parameter group, and the worker reading its csvlog.

The pre-migration state machine runs as in test_state_machines.py. A plan that migrates through its
own command gets a scratch parameter group (``migsafe-scratch-<id>``: a copy of the source's, with
``log_destination = csvlog`` and ``log_min_duration_statement = 0``), the restore attaches it, the
harness's scratch then logs as RDS would with it, and the worker reads the statements through
``DescribeDBLogFiles`` / ``DownloadDBLogFilePortion``. The group is deleted on every path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from e2e_harness import SOURCE_CLUSTER, SOURCE_INSTANCES, SOURCE_PARAMETER_GROUP, Harness, client_error
from test_state_machines import execution_input, project, push_bundle

from infra import workflows

# the example's alembic project, run through the alembic CLI as a project's own command would
COMMAND = [sys.executable, "-m", "alembic", "-c", "alembic.ini", "upgrade", "{revision}"]
DOWNGRADE = [sys.executable, "-m", "alembic", "-c", "alembic.ini", "downgrade", "{revision}"]
HEAD = "0002_uppercase_enums"  # the example's one revision to rehearse


def command_input(plan_path: Path, sha: str, **extra: Any) -> dict[str, Any]:
    payload = execution_input(plan_path, sha, **extra)
    payload["plan"]["migration"].update({"command": COMMAND, "downgrade_command": DOWNGRADE})
    return payload


def result_of(harness: Harness, execution: str) -> dict[str, Any]:
    body = harness.s3.get_object(Bucket=harness.bucket, Key=f"results/{execution}/result.json")["Body"].read()
    return dict(json.loads(body))


def requests(harness: Harness, operation: str) -> list[dict[str, Any]]:
    return [params for op, params in harness.requests if op == operation]


def test_a_command_plan_is_observed_through_the_scratch_parameter_group(harness: Harness, tmp_path: Path,
                                                                         source: Any) -> None:
    # Given the example migration run through the alembic CLI (the project's own command)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")

    # When the pipeline starts an execution
    arn = harness.start(machine, command_input(plan_path, sha), name="observe-pass")
    described = harness.wait(arn)

    # Then it passed, with the scratch's own parameter group made, set and attached
    assert described["status"] == "SUCCEEDED", harness.explain(arn, verbose=True)
    entered = harness.entered(arn)
    for state in (workflows.COPY_PARAMETER_GROUP, workflows.SET_SCRATCH_LOGGING, workflows.RESTORE_SCRATCH,
                  workflows.DELETE_SCRATCH, workflows.DELETE_PARAMETER_GROUP, "Migration is safe"):
        assert state in entered, state
    [copied] = requests(harness, "copy_db_parameter_group")
    group = copied["TargetDBParameterGroupIdentifier"]
    assert group.startswith("migsafe-scratch-") and copied["SourceDBParameterGroupIdentifier"] == SOURCE_PARAMETER_GROUP
    assert {"Key": "migsafe:scratch", "Value": "observe-pass"} in copied["Tags"]
    [modified] = requests(harness, "modify_db_parameter_group")
    assert {(p["ParameterName"], p["ParameterValue"], p["ApplyMethod"]) for p in modified["Parameters"]} == {
        ("log_destination", "csvlog", "immediate"), ("log_min_duration_statement", "0", "immediate")}
    [restored] = requests(harness, "restore_db_instance_from_db_snapshot")
    assert restored["DBParameterGroupName"] == group
    # the worker read the statements from the scratch's csvlog: observed at the server, per revision
    result = result_of(harness, "observe-pass")
    assert result["verdict"] == "PASS"
    assert result["observation"]["mode"] == "server-log", result["warnings"]
    assert [r["id"] for r in result["revision_runs"]] == [HEAD, HEAD]
    upgrade = next(r for r in result["revision_runs"] if r["phase"] == "upgrade")
    assert any("alter type" in s["sql"].lower() for s in upgrade["statements"]), upgrade["statements"]
    # and everything is gone: the scratch after its instance, the group after both
    order = [op for op, _ in harness.requests]
    assert order.index("delete_db_parameter_group") > order.index("delete_db_instance")
    assert group not in harness.parameter_groups() and SOURCE_PARAMETER_GROUP in harness.parameter_groups()
    assert harness.rds_instances() == SOURCE_INSTANCES and harness.scratches == {}


def test_a_plan_run_by_alembic_gets_no_parameter_group(harness: Harness, tmp_path: Path, source: Any) -> None:
    # Given the example migration run by alembic in-process (no command)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    # When / Then: the restore keeps the source's own group, and no group is made or deleted
    arn = harness.start(machine, execution_input(plan_path, sha), name="observe-none")
    assert harness.wait(arn)["status"] == "SUCCEEDED", harness.explain(arn)
    assert requests(harness, "copy_db_parameter_group") == requests(harness, "delete_db_parameter_group") == []
    [restored] = requests(harness, "restore_db_instance_from_db_snapshot")
    assert restored["DBParameterGroupName"] == SOURCE_PARAMETER_GROUP
    assert result_of(harness, "observe-none")["observation"]["mode"] == "in-process"


def test_the_scratch_parameter_group_is_deleted_when_the_rehearsal_cannot_run(harness: Harness, tmp_path: Path,
                                                                              source: Any) -> None:
    # Given a command plan whose rehearse task fails (the container exits 3)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    harness.fail_next("ecs", "rehearse", RuntimeError("the task died"))
    # When
    arn = harness.start(machine, command_input(plan_path, sha), name="observe-fault")
    described = harness.wait(arn)
    # Then the execution failed, and the failure path deleted the instance, then the group
    assert described["status"] == "FAILED", harness.explain(arn)
    entered = harness.entered(arn)
    assert workflows.DELETE_AFTER_FAILURE in entered and workflows.DELETE_PARAMETER_GROUP_AFTER_FAILURE in entered
    [copied] = requests(harness, "copy_db_parameter_group")
    assert copied["TargetDBParameterGroupIdentifier"] not in harness.parameter_groups()
    assert harness.rds_instances() == SOURCE_INSTANCES and harness.scratches == {}


def test_an_aurora_scratch_instance_gets_a_parameter_group_of_the_engines_family(harness: Harness, tmp_path: Path,
                                                                                 source: Any) -> None:
    # Given a command plan on the Aurora source (a clone)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    payload = command_input(plan_path, sha, scratch={"kind": "aurora-clone", "cluster_identifier": SOURCE_CLUSTER})
    # When
    arn = harness.start(machine, payload, name="observe-aurora")
    described = harness.wait(arn)
    # Then a group is created in the cluster engine's family, the scratch instance is created with it,
    # the worker observes at the server, and the group goes after the instance and the cluster
    assert described["status"] == "SUCCEEDED", harness.explain(arn, verbose=True)
    [created] = requests(harness, "create_db_parameter_group")
    assert created["DBParameterGroupFamily"] == "aurora-postgresql11"
    [instance] = [p for p in requests(harness, "create_db_instance") if p.get("DBClusterIdentifier")]
    assert instance["DBParameterGroupName"] == created["DBParameterGroupName"]
    assert result_of(harness, "observe-aurora")["observation"]["mode"] == "server-log"
    order = [op for op, _ in harness.requests]
    assert order.index("delete_db_parameter_group") > order.index("delete_db_cluster")
    assert created["DBParameterGroupName"] not in harness.parameter_groups()


def test_the_scratch_parameter_group_is_deleted_after_a_fail_verdict(harness: Harness, tmp_path: Path,
                                                                     source: Any) -> None:
    # Given a command plan whose newest revision the database refuses
    plan_path = project(tmp_path, broken=True)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    # When
    arn = harness.start(machine, command_input(plan_path, sha, downgrade_to="0001_baseline"), name="observe-fail")
    described = harness.wait(arn)
    # Then the verdict is FAIL, reached through the cleanup, which deleted the group after the instance
    assert described["status"] == "FAILED", harness.explain(arn)
    assert harness.failure(arn) == ("Migration failed rehearsal", "VerdictFail")
    assert workflows.DELETE_PARAMETER_GROUP in harness.entered(arn)
    [copied] = requests(harness, "copy_db_parameter_group")
    assert copied["TargetDBParameterGroupIdentifier"] not in harness.parameter_groups()
    # the failed upgrade's statements were still read from the scratch's log
    result = result_of(harness, "observe-fail")
    assert result["verdict"] == "FAIL" and result["observation"]["mode"] == "server-log", result["warnings"]
    assert harness.rds_instances() == SOURCE_INSTANCES and harness.scratches == {}


def test_a_parameter_group_that_cannot_be_set_only_costs_the_observation(harness: Harness, tmp_path: Path,
                                                                         source: Any) -> None:
    # Given RDS refusing to modify the scratch's parameter group (a quota, a value it rejects)
    plan_path = project(tmp_path)
    sha = push_bundle(harness, plan_path)
    machine = harness.create_state_machine("PreMigration")
    harness.fail_next("rds", "modify_db_parameter_group",
                      client_error("InvalidParameterValue", "log_destination: not allowed", "ModifyDBParameterGroup"))
    # When
    arn = harness.start(machine, command_input(plan_path, sha), name="observe-unset")
    described = harness.wait(arn)
    # Then the execution still passes: the scratch was restored with the source's own group, the
    # worker found no csvlog and rehearsed sampling only, saying why; the group is deleted all the same
    assert described["status"] == "SUCCEEDED", harness.explain(arn, verbose=True)
    [restored] = requests(harness, "restore_db_instance_from_db_snapshot")
    assert restored["DBParameterGroupName"] == SOURCE_PARAMETER_GROUP
    result = result_of(harness, "observe-unset")
    assert result["verdict"] == "PASS" and result["observation"]["mode"] == "sampling-only"
    assert any("not csvlog" in w for w in result["warnings"]), result["warnings"]
    [copied] = requests(harness, "copy_db_parameter_group")
    assert copied["TargetDBParameterGroupIdentifier"] not in harness.parameter_groups()
