"""The synthesized state-machine definitions, asserted state by state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from infra_support import Synth

from infra import workflows as wf

CATCHING = {"Task", "Parallel"}


def _targets(state: dict[str, Any]) -> list[str]:
    """Where a state goes on success (Next, Choice branches, Default)."""
    out = [state["Next"]] if "Next" in state else []
    out += [c["Next"] for c in state.get("Choices", [])]
    out += [state["Default"]] if "Default" in state else []
    return out


def _reachable(states: dict[str, Any], start: str) -> list[str]:
    """States reachable from ``start`` along success edges only (not through a Catch)."""
    seen: list[str] = []
    todo = [start]
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.append(name)
        todo += _targets(states[name])
    return seen


def _through_passes(states: dict[str, Any], name: str) -> Iterator[str]:
    """The chain a Catch leads to: marker Pass states, then the first non-Pass state."""
    while True:
        yield name
        if states[name]["Type"] != "Pass":
            return
        name = states[name]["Next"]


def _catch_all(state: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in state.get("Catch", []) if c["ErrorEquals"] == ["States.ALL"]), None)


@pytest.fixture(scope="module")
def pre(synth: Synth) -> dict[str, Any]:
    return synth.definition("PreMigration")


@pytest.fixture(scope="module")
def restore(synth: Synth) -> dict[str, Any]:
    return synth.definition("Restore")


def test_pre_migration_runs_in_the_documented_order(pre: dict[str, Any]) -> None:
    # Given the pre-migration definition
    states = pre["States"]
    # When we follow the success path from the start
    path = _reachable(states, pre["StartAt"])
    # Then it validates, prepares (backup | scratch), rehearses, evaluates, publishes, deletes, decides
    main = [wf.VALIDATE_PLAN, wf.PREPARE, wf.REHEARSE, wf.EVALUATE, wf.FORMAT_RESULT, wf.PUBLISH_RESULT,
            wf.DELETE_SCRATCH, f"{wf.DELETE_CLUSTER}?", wf.DELETE_CLUSTER, f"{wf.DELETE_SNAPSHOT}?",
            wf.DELETE_SNAPSHOT, wf.DELETE_SECRET, f"{wf.DELETE_PARAMETER_GROUP}?", wf.DELETE_PARAMETER_GROUP]
    assert path[: len(main)] == main
    assert states[wf.DELETE_SECRET]["Next"] == f"{wf.DELETE_PARAMETER_GROUP}?"
    assert states[f"{wf.DELETE_PARAMETER_GROUP}?"]["Default"] == "Verdict?"
    assert states[wf.DELETE_PARAMETER_GROUP]["Next"] == "Verdict?"
    assert states[wf.PREPARE]["Type"] == "Parallel"
    branch_starts = [b["StartAt"] for b in states[wf.PREPARE]["Branches"]]
    assert branch_starts == [wf.BACKUP, wf.SOURCE_SETTINGS]
    assert states[wf.REHEARSE]["Resource"].endswith(":states:::ecs:runTask.sync")
    assert states[wf.PUBLISH_RESULT]["Resource"].endswith(":states:::sns:publish")
    verdict = states["Verdict?"]
    assert verdict["Choices"] == [{"Variable": "$.evaluation.verdict", "StringEquals": "PASS",
                                   "Next": "Migration is safe"}]
    assert states["Migration is safe"]["Type"] == "Succeed"
    assert states[verdict["Default"]]["Type"] == "Fail"


def test_every_state_after_the_scratch_restore_starts_catches_into_the_scratch_deletion(pre: dict[str, Any]) -> None:
    # Given the top-level states from Prepare (where the scratch restore starts) onwards
    states = pre["States"]
    after = [n for n in _reachable(states, wf.PREPARE) if states[n]["Type"] in CATCHING]
    assert after == [wf.PREPARE, wf.REHEARSE, wf.EVALUATE, wf.FORMAT_RESULT, wf.PUBLISH_RESULT, wf.DELETE_SCRATCH,
                     wf.DELETE_CLUSTER, wf.DELETE_SNAPSHOT, wf.DELETE_SECRET, wf.DELETE_PARAMETER_GROUP]
    for name in after:
        # When we follow each state's States.ALL catch
        catch = _catch_all(states[name])
        assert catch is not None, f"{name} has no Catch for States.ALL"
        chain = list(_through_passes(states, catch["Next"]))
        # Then it records the error, names the failing state, and reaches the scratch deletion
        assert catch["ResultPath"] == "$.error"
        marker = states[chain[0]]
        assert marker["Type"] == "Pass" and marker["Result"] == name and marker["ResultPath"] == "$.failed_state"
        if name == wf.REHEARSE:  # first: is it a stale scratch the input allows to replace? else the cleanup
            assert chain[-1] == "Fresh copy allowed?" and states[chain[-1]]["Default"] == wf.DELETE_AFTER_FAILURE
        else:
            assert chain[-1] == wf.DELETE_AFTER_FAILURE, f"{name} catches into {chain}"
        # and States.ALL is the last catcher (specific ones, like an already-deleted instance, come first)
        assert states[name]["Catch"][-1]["ErrorEquals"] == ["States.ALL"]


def test_no_state_after_the_scratch_exists_can_fail_with_an_uncatchable_runtime_error(pre: dict[str, Any],
                                                                                       restore: dict[str, Any]) -> None:
    # Given every state of both machines, branches included (States.Runtime, raised when a path is
    # absent, passes every Catch: such a state would skip the scratch deletion)
    def every(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, state in states.items():
            yield name, state
            for branch in state.get("Branches", []):
                yield from every(branch["States"])

    for definition in (pre, restore):
        for name, state in every(definition["States"]):
            # Then no Task reshapes a service's result with a ResultSelector (it may lack the path)
            if state["Type"] == "Task":
                assert "ResultSelector" not in state, name
            # and a Choice that compares a service result's status is one reached only after IsPresent
            if state["Type"] == "Choice":
                for choice in state["Choices"]:
                    text = str(choice)
                    if "_status." in text and "IsPresent" not in text:
                        assert name.startswith(("Scratch available?", "Snapshot available?",
                                                "Scratch cluster available?")), name
    # and the Choices that compare a status are reached only through an IsPresent test
    branch = pre["States"][wf.PREPARE]["Branches"][1]["States"]
    assert branch["Describe scratch"]["Next"] == "Scratch described?"
    assert branch["Scratch described?"]["Choices"][0]["IsPresent"] is True
    assert branch["Scratch described?"]["Choices"][0]["Next"] == "Scratch available?"
    assert branch["Scratch available?"]["Choices"][0]["Next"] == "Scratch endpoint known?"
    known = branch["Scratch endpoint known?"]["Choices"][0]
    assert all(c["IsPresent"] is True for c in known["And"]) and known["Next"] == "Scratch endpoint"
    snapshot = branch["Snapshot described?"]["Choices"][0]
    assert snapshot["IsPresent"] is True and snapshot["Next"] == "Snapshot available?"
    assert branch[wf.DESCRIBE_CLUSTER]["Next"] == "Scratch cluster described?"
    cluster = branch["Scratch cluster described?"]["Choices"][0]
    assert cluster["IsPresent"] is True and cluster["Next"] == "Scratch cluster available?"


def test_states_inside_prepare_let_errors_reach_the_parallel_catch(pre: dict[str, Any]) -> None:
    # Given the two branches of Prepare
    branches = pre["States"][wf.PREPARE]["Branches"]
    observing = (wf.CREATE_PARAMETER_GROUP, wf.COPY_PARAMETER_GROUP, wf.SET_SCRATCH_LOGGING)
    for branch in branches:
        for name, state in branch["States"].items():
            if name.startswith(observing):
                # the scratch parameter group only serves the observation: its failure goes on without it
                catch = _catch_all(state)
                assert catch is not None and catch["ResultPath"] == "$.observe_error", name
                assert catch["Next"] == wf.SCRATCH_KIND, name
                continue
            # Then no state swallows errors with States.ALL: failures propagate to Prepare's catch
            assert _catch_all(state) is None, name
            # and the only in-branch catch continues the branch (a retried restore that already went through)
            for catch in state.get("Catch", []):
                assert catch["ErrorEquals"] in ([wf.RDS_ALREADY_EXISTS], [wf.RDS_CLUSTER_ALREADY_EXISTS])
                assert catch["Next"] in branch["States"]
    scratch = branches[1]["States"]
    # and the deadlines fail with the package's ScratchFailed
    fails = {n: s for n, s in scratch.items() if s["Type"] == "Fail"}
    assert set(fails) == {"Scratch instance failed", "Scratch deadline passed", "Snapshot deadline passed",
                          "Snapshot failed", "Scratch cluster failed", "Scratch cluster deadline passed"}
    assert {s["Error"] for s in fails.values()} == {"ScratchFailed"}


def test_scratch_is_restored_tagged_private_into_the_given_network(pre: dict[str, Any]) -> None:
    # Given the restore state inside the scratch branch
    state = pre["States"][wf.PREPARE]["Branches"][1]["States"][wf.RESTORE_SCRATCH]
    params = state["Parameters"]
    # Then it is the RDS SDK integration, tagged migsafe:scratch, not public, in a subnet group and security group
    assert state["Resource"].endswith(":states:::aws-sdk:rds:restoreDBInstanceFromDBSnapshot")
    assert params["Tags"] == [{"Key": "migsafe:scratch", "Value.$": "$.execution"},
                              {"Key": "migsafe:execution", "Value.$": "$$.Execution.Id"}]
    assert params["PubliclyAccessible"] is False and params["DeletionProtection"] is False
    assert params["DbSubnetGroupName"] and params["VpcSecurityGroupIds"]
    assert params["DbInstanceIdentifier.$"] == "$.scratch.instance_id"


def test_scratch_copies_the_source_settings_and_pays_for_nothing_extra(pre: dict[str, Any]) -> None:
    # Given the scratch branch
    states = pre["States"][wf.PREPARE]["Branches"][1]["States"]
    params = states[wf.RESTORE_SCRATCH]["Parameters"]
    # Then the source's settings are read first, and the restore uses its groups and its port
    assert states[wf.SOURCE_SETTINGS]["Parameters"]["action"] == "source_settings"
    assert states[wf.SOURCE_SETTINGS]["ResultPath"] == "$.source"
    assert params["DbParameterGroupName.$"] == "$.source.parameter_group"
    assert params["OptionGroupName.$"] == "$.source.option_group"
    assert params["Port"] == 5432
    # and keeps no backups (no Performance Insights or monitoring either: the worker turns them off)
    assert params["BackupRetentionPeriod"] == 0 and params["MultiAZ"] is False


def test_scratch_wait_polls_with_a_deadline(pre: dict[str, Any]) -> None:
    # Given the scratch branch
    states = pre["States"][wf.PREPARE]["Branches"][1]["States"]
    # When we follow the poll loop
    assert states["Wait for scratch"]["Type"] == "Wait" and states["Wait for scratch"]["Next"] == "Describe scratch"
    assert states["Describe scratch"]["Next"] == "Scratch described?"
    available = states["Scratch available?"]
    status = "$.scratch_status.DbInstances[0].DbInstanceStatus"
    # Then available ends the branch with the endpoint, failure states fail, and the rest counts to a deadline
    assert available["Choices"][0] == {"Variable": status, "StringEquals": "available",
                                       "Next": "Scratch endpoint known?"}
    failing = {c["StringEquals"] for c in available["Choices"][1]["Or"]}
    assert available["Choices"][1]["Next"] == "Scratch instance failed"
    assert {"insufficient-capacity", "incompatible-restore", "incompatible-parameters", "storage-full",
            "failed"} <= failing
    assert all(c["Variable"] == status for c in available["Choices"][1]["Or"])
    assert states["Scratch endpoint"]["End"] is True
    assert available["Default"] == "Count scratch wait"
    deadline = states[states["Count scratch wait"]["Next"]]
    assert deadline["Choices"][0]["Next"] == "Scratch deadline passed"
    assert deadline["Choices"][0]["NumericGreaterThan"] == 90 * 60 // wf.POLL_SECONDS
    assert deadline["Default"] == "Wait for scratch"


def test_snapshot_wait_stops_on_a_failed_snapshot(pre: dict[str, Any]) -> None:
    # Given the snapshot poll loop
    states = pre["States"][wf.PREPARE]["Branches"][1]["States"]
    available = states["Snapshot available?"]
    # Then "failed" ends it at once with ScratchFailed instead of waiting for the deadline
    failed = [c for c in available["Choices"] if c["Next"] == "Snapshot failed"]
    assert failed and {c["StringEquals"] for c in failed[0]["Or"]} == {"failed"}
    assert states["Snapshot failed"]["Error"] == "ScratchFailed"


def test_scratch_deletion_after_failure_tolerates_a_missing_instance_and_always_reports(pre: dict[str, Any]) -> None:
    # Given the failure-path deletion
    states = pre["States"]
    delete = states[wf.DELETE_AFTER_FAILURE]
    # Then it skips the final snapshot, retries while the instance is busy, and every outcome reaches the message
    assert delete["Parameters"]["SkipFinalSnapshot"] is True
    assert delete["Resource"].endswith(":states:::aws-sdk:rds:deleteDBInstance")
    assert any(r["ErrorEquals"] == [wf.RDS_BUSY] for r in delete["Retry"])
    assert [c["ErrorEquals"] for c in delete["Catch"]] == [[wf.RDS_NOT_FOUND], ["States.ALL"]]
    # whatever happens, the scratch cluster (Aurora), the run's snapshot (when it made one) and the
    # scratch secret are deleted next
    has_cluster = f"{wf.DELETE_CLUSTER_AFTER_FAILURE}?"
    assert {c["Next"] for c in delete["Catch"]} == {has_cluster} and delete["Next"] == has_cluster
    taken = f"{wf.DELETE_SNAPSHOT_AFTER_FAILURE}?"
    assert states[has_cluster]["Default"] == taken
    assert states[has_cluster]["Choices"][0]["Next"] == wf.DELETE_CLUSTER_AFTER_FAILURE
    cluster = states[wf.DELETE_CLUSTER_AFTER_FAILURE]
    assert cluster["Resource"].endswith(":states:::aws-sdk:rds:deleteDBCluster")
    assert cluster["Parameters"] == {"DbClusterIdentifier.$": "$.scratch.cluster_id", "SkipFinalSnapshot": True}
    assert any(r["ErrorEquals"] == [wf.RDS_CLUSTER_BUSY] for r in cluster["Retry"])
    assert [c["ErrorEquals"] for c in cluster["Catch"]] == [[wf.RDS_CLUSTER_NOT_FOUND], ["States.ALL"]]
    assert {c["Next"] for c in cluster["Catch"]} == {taken} and cluster["Next"] == taken
    assert states[taken]["Default"] == wf.DELETE_SECRET_AFTER_FAILURE
    assert states[taken]["Choices"][0]["Next"] == wf.DELETE_SNAPSHOT_AFTER_FAILURE
    snapshot = states[wf.DELETE_SNAPSHOT_AFTER_FAILURE]
    assert snapshot["Resource"].endswith(":states:::aws-sdk:rds:deleteDBSnapshot")
    assert snapshot["Parameters"] == {"DbSnapshotIdentifier.$": "$.scratch.snapshot_id"}  # never the source's own
    assert {c["Next"] for c in snapshot["Catch"]} == {wf.DELETE_SECRET_AFTER_FAILURE}
    secret = states[wf.DELETE_SECRET_AFTER_FAILURE]
    assert secret["Resource"].endswith(":states:::aws-sdk:secretsmanager:deleteSecret")
    assert secret["Parameters"]["ForceDeleteWithoutRecovery"] is True
    has_group = f"{wf.DELETE_PARAMETER_GROUP_AFTER_FAILURE}?"
    assert {c["Next"] for c in secret["Catch"]} == {has_group} and secret["Next"] == has_group
    assert states[has_group]["Default"] == wf.FORMAT_FAILURE
    assert states[has_group]["Choices"][0]["Next"] == wf.DELETE_PARAMETER_GROUP_AFTER_FAILURE
    group = states[wf.DELETE_PARAMETER_GROUP_AFTER_FAILURE]
    assert group["Resource"].endswith(":states:::aws-sdk:rds:deleteDBParameterGroup")
    assert group["Parameters"] == {"DbParameterGroupName.$": "$.scratch.parameter_group"}  # never the source's
    assert any(r["ErrorEquals"] == [wf.RDS_PG_BUSY] for r in group["Retry"])  # until its instance is gone
    assert [c["ErrorEquals"] for c in group["Catch"]] == [[wf.RDS_PG_NOT_FOUND], ["States.ALL"]]
    assert {c["Next"] for c in group["Catch"]} == {wf.FORMAT_FAILURE} and group["Next"] == wf.FORMAT_FAILURE
    fmt = states[wf.FORMAT_FAILURE]
    assert fmt["Parameters"]["kind"] == "failure" and fmt["Parameters"]["detail.$"] == "$"
    assert fmt["Next"] == wf.PUBLISH_FAILURE and _catch_all(fmt)["Next"] == "Fallback failure message"
    assert states[states[wf.PUBLISH_FAILURE]["Next"]]["Type"] == "Fail"


def test_validation_failure_reports_without_touching_rds(pre: dict[str, Any]) -> None:
    # Given the first state
    states = pre["States"]
    catch = _catch_all(states[wf.VALIDATE_PLAN])
    # Then its failure goes straight to the failure message (no scratch exists yet)
    assert catch is not None
    assert list(_through_passes(states, catch["Next"]))[-1] == wf.FORMAT_FAILURE


def test_retries_match_the_package_exception_names(pre: dict[str, Any], restore: dict[str, Any]) -> None:
    # Given every Task state of both machines, branches included
    def tasks(states: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        for name, state in states.items():
            if state["Type"] == "Task":
                yield name, state
            for branch in state.get("Branches", []):
                yield from tasks(branch["States"])

    for definition in (pre, restore):
        for name, state in tasks(definition["States"]):
            # Then each retries transient errors with backoff, named as the package names them
            errors = [e for r in state.get("Retry", []) for e in r["ErrorEquals"]]
            resource = state["Resource"]
            if resource.endswith("ecs:runTask.sync"):
                assert "ECS.AmazonECSException" in errors, name  # capacity and throttling
                capacity = next(r for r in state["Retry"] if "ECS.AmazonECSException" in r["ErrorEquals"])
                # capacity comes back in minutes, not seconds: about half an hour of backoff
                waited = sum(capacity["IntervalSeconds"] * capacity["BackoffRate"] ** i
                             for i in range(capacity["MaxAttempts"]))
                assert capacity["IntervalSeconds"] >= 30 and waited >= 15 * 60, name
                assert "ECS.ThrottlingException" not in errors, name  # ECS models no such error
            elif ":aws-sdk:rds:" in resource:
                assert "Rds.RdsException" in errors, name  # RDS throttling (it has no ThrottlingException)
                assert "TransientAwsError" not in errors, name  # only the Lambdas raise it
            elif resource.endswith(":sns:publish"):
                assert "SNS.InternalErrorException" in errors, name
            elif resource.endswith(":lambda:invoke"):
                assert "TransientAwsError" in errors, name
            assert "Rds.ThrottlingException" not in errors, name
            assert all(r["BackoffRate"] >= 1 and r["MaxAttempts"] >= 3 for r in state["Retry"]), name


def test_restore_validates_first_and_reports_every_failure(restore: dict[str, Any]) -> None:
    # Given the restore definition
    states = restore["States"]
    # Then validation (confirm, allowlist, endpoint) comes first, before any target is touched
    assert restore["StartAt"] == wf.VALIDATE_RESTORE
    assert states[wf.VALIDATE_RESTORE]["Next"] == "Target is scratch?"
    # and every Task catches into the failure message naming the state
    for name, state in states.items():
        if state["Type"] not in CATCHING or name in {wf.FORMAT_FAILURE, wf.PUBLISH_FAILURE}:
            continue
        catch = _catch_all(state)
        assert catch is not None, name
        chain = list(_through_passes(states, catch["Next"]))
        assert states[chain[0]]["Result"] == name and chain[-1] == wf.FORMAT_FAILURE
    path = _reachable(states, wf.RESTORE_TABLES)
    assert path[:5] == [wf.RESTORE_TABLES, "Evaluate restore", "Format restore message", "Publish restore result",
                        "Restore verified?"]
    env = {e["Name"] for e in states[wf.RESTORE_TABLES]["Parameters"]["Overrides"]["ContainerOverrides"][0]["Environment"]}
    assert env == {"MIGSAFE_REQUEST_KEY", "MIGSAFE_EXECUTION", "MIGSAFE_EXECUTION_ARN", "MIGSAFE_TARGET_ENDPOINT"}


def test_a_real_target_waits_for_approval_which_times_out_to_a_rejection(restore: dict[str, Any]) -> None:
    # Given the restore definition
    states = restore["States"]
    # Then a real target goes through the approval state unless the mode only reads (diff)
    assert states["Target is scratch?"]["Choices"][0]["Next"] == wf.RESTORE_TABLES
    assert states["Target is scratch?"]["Default"] == "Needs approval?"
    assert states["Needs approval?"]["Choices"] == [{"Variable": "$.mode", "StringEquals": "diff",
                                                    "Next": wf.RESTORE_TABLES}]
    approval = states[wf.WAIT_FOR_APPROVAL]
    assert states["Needs approval?"]["Default"] == wf.WAIT_FOR_APPROVAL and approval["Next"] == wf.RESTORE_TABLES
    # which publishes the request with the task token, and the approve/reject commands
    assert approval["Resource"].endswith(":states:::sns:publish.waitForTaskToken")
    steps = approval["Parameters"]["Message"]["content"]["nextSteps.$"]
    assert "migsafe approve --region {} --token {}" in steps and "migsafe reject --region {} --token {}" in steps
    assert steps.count("$$.Task.Token") == 2
    assert "$.console_url" in approval["Parameters"]["Message"]["content"]["description.$"]
    # and times out; a timeout or a rejection ends in the FAIL message, never in the restore
    assert approval["TimeoutSeconds"] == wf.APPROVAL_MINUTES * 60
    refused = approval["Catch"][0]
    assert refused["ErrorEquals"] == [wf.RESTORE_REJECTED, "States.Timeout"]
    assert list(_through_passes(states, refused["Next"]))[-1] == wf.FORMAT_FAILURE
    assert wf.RESTORE_TABLES not in _reachable(states, refused["Next"])


def test_the_worker_gets_its_request_by_key_never_in_the_container_overrides(pre: dict[str, Any]) -> None:
    # Given both ECS tasks of the pre-migration machine
    ecs = [pre["States"][wf.REHEARSE], pre["States"][wf.PREPARE]["Branches"][0]["States"][wf.BACKUP]]
    for state in ecs:
        env = state["Parameters"]["Overrides"]["ContainerOverrides"][0]["Environment"]
        names = {e["Name"] for e in env}
        # Then the overrides carry the request's key, not the request (ECS caps overrides at 8,192 characters)
        assert "MIGSAFE_REQUEST_KEY" in names and "MIGSAFE_REQUEST" not in names
        assert all("Value.$" in e and not e["Value.$"].startswith("$.request\"") for e in env)


def test_every_message_carries_the_plan_attribute(pre: dict[str, Any], restore: dict[str, Any]) -> None:
    # Given every SNS publish of both machines
    for definition in (pre, restore):
        for name, state in definition["States"].items():
            if state["Type"] == "Task" and ":sns:publish" in state["Resource"]:
                attributes = state["Parameters"]["MessageAttributes"]
                # Then it sets the verdict and plan attributes docs/slack.md promises
                assert set(attributes) == {"verdict", "plan"}, name
                assert attributes["plan"]["DataType"] == "String"


def test_definitions_use_only_states_moto_can_interpret(pre: dict[str, Any], restore: dict[str, Any]) -> None:
    # Given both definitions, branches included
    def types(states: dict[str, Any]) -> Iterator[str]:
        for state in states.values():
            yield state["Type"]
            for branch in state.get("Branches", []):
                yield from types(branch["States"])

    # Then only the simple state types appear (no Map, no JSONata)
    found = set(types(pre["States"])) | set(types(restore["States"]))
    assert found <= {"Task", "Choice", "Wait", "Parallel", "Pass", "Succeed", "Fail"}
    assert "QueryLanguage" not in pre and "QueryLanguage" not in restore


def test_the_scratch_port_and_its_security_group_rule_follow_the_source_port() -> None:
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    import app as cdk_app
    from infra.definitions import find

    # Given a deploy whose source listens on 6432, not 5432
    app = cdk.App(context={**cdk_app.cdk_json_context(), "sourcePort": "6432"})
    app, stack = cdk_app.build(app)
    template = Template.from_stack(stack).to_json()
    # When we read the scratch security group's rule and the restore state
    ingress = [r["Properties"] for r in template["Resources"].values()
               if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    restore = find(template, "PreMigration")["States"][wf.PREPARE]["Branches"][1]["States"][wf.RESTORE_SCRATCH]
    # Then the worker is admitted on 6432 (only), and the scratch is restored on 6432
    assert [(r["FromPort"], r["ToPort"]) for r in ingress] == [(6432, 6432)]
    assert restore["Parameters"]["Port"] == 6432


def test_a_stale_scratch_is_replaced_once_and_every_step_of_that_path_reaches_the_cleanup(pre: dict[str, Any]) -> None:
    # Given the path a failed rehearsal takes
    states = pre["States"]
    allowed = states["Fresh copy allowed?"]
    # Then only an input that allowed it ("if-stale") and a worker that found ScratchStale replace the scratch
    assert allowed["Choices"][0]["Next"] == "Check for a stale scratch"
    assert states["Check for a stale scratch"]["Parameters"]["kind"] == "stale"
    assert states["Scratch stale?"]["Choices"][0]["Next"] == "Delete stale scratch"
    assert states["Scratch stale?"]["Default"] == wf.DELETE_AFTER_FAILURE
    # once: the fresh copy has its own name, a snapshot of its own, and no second chance
    path = _reachable(states, "Delete stale scratch")
    assert path[:7] == ["Delete stale scratch", "Name the fresh scratch", "Only one fresh copy", "Snapshot this time",
                        "Reset the scratch wait", "Reset the snapshot wait", "Prepare a fresh scratch"]
    assert states["Only one fresh copy"]["Result"] is False and states["Snapshot this time"]["Result"] is True
    assert states["Prepare a fresh scratch"]["Next"] == wf.REHEARSE
    # and every Task or Parallel on it catches into the scratch deletion
    for name in ("Check for a stale scratch", "Delete stale scratch", "Prepare a fresh scratch"):
        catch = _catch_all(states[name])
        assert catch is not None and list(_through_passes(states, catch["Next"]))[-1] == wf.DELETE_AFTER_FAILURE, name


def test_the_scratch_kind_chooses_a_clone_a_cluster_snapshot_or_an_instance_snapshot(pre: dict[str, Any]) -> None:
    # Given the scratch branch of Prepare
    branch = pre["States"][wf.PREPARE]["Branches"][1]["States"]
    # Then after the source settings the kind the validation resolved chooses the path
    assert branch[branch[wf.SOURCE_SETTINGS]["Next"]]["Default"] == wf.SCRATCH_KIND
    kind = branch[wf.SCRATCH_KIND]
    assert [(c["Variable"], c["StringEquals"]) for c in kind["Choices"]] == [
        ("$.scratch.kind", "aurora-clone"), ("$.scratch.kind", "aurora-snapshot")]
    assert kind["Default"] == "Snapshot requested?"
    # a clone is copy-on-write at the latest restorable time, with the source's groups, security groups
    # and port, never deletion-protected, tagged; a Serverless v2 source's scaling is copied
    choose = branch[kind["Choices"][0]["Next"]]
    provisioned, serverless = branch[choose["Default"]], branch[choose["Choices"][0]["Next"]]
    for clone in (provisioned, serverless):
        params = clone["Parameters"]
        assert clone["Resource"].endswith(":states:::aws-sdk:rds:restoreDBClusterToPointInTime")
        assert (params["RestoreType"], params["UseLatestRestorableTime"]) == ("copy-on-write", True)
        assert params["SourceDBClusterIdentifier.$"] == "$.source_cluster_id"
        assert params["DbClusterIdentifier.$"] == "$.scratch.cluster_id"
        assert params["VpcSecurityGroupIds.$"] == "$.source.security_groups"
        assert params["DbClusterParameterGroupName.$"] == "$.source.cluster_parameter_group"
        assert params["DbSubnetGroupName.$"] == "$.source.subnet_group" and params["Port.$"] == "$.source.port"
        assert params["DeletionProtection"] is False
        assert {t["Key"] for t in params["Tags"]} == {"migsafe:scratch", "migsafe:execution"}
        assert clone["Next"] == "Wait for scratch cluster"
    assert "ServerlessV2ScalingConfiguration.$" not in provisioned["Parameters"]
    assert serverless["Parameters"]["ServerlessV2ScalingConfiguration.$"] == "$.source.scaling"
    # the cluster snapshot path finds the latest snapshot first
    assert branch[kind["Choices"][1]["Next"]]["Parameters"]["action"] == "latest_cluster_snapshot"
    # once the cluster is available, one instance of the chosen class joins it, then the instance wait
    available = branch["Scratch cluster available?"]
    assert available["Choices"][0] == {"Variable": "$.cluster_status.DbClusters[0].Status",
                                       "StringEquals": "available",
                                       "Next": f"{wf.CREATE_CLUSTER_INSTANCE}: own parameter group?"}
    failed = {c["StringEquals"] for c in available["Choices"][1]["Or"]}
    assert failed == set(wf.CLUSTER_FAILED_STATUSES) and "cloning-failed" in failed
    create = branch[wf.CREATE_CLUSTER_INSTANCE]
    assert create["Parameters"]["DbClusterIdentifier.$"] == "$.scratch.cluster_id"
    assert create["Parameters"]["DbInstanceClass.$"] == "$.source.instance_class"
    assert create["Parameters"]["PubliclyAccessible"] is False
    assert create["Next"] == "Wait for scratch"


def test_the_cluster_wait_is_bounded(pre: dict[str, Any]) -> None:
    # Given the cluster poll
    branch = pre["States"][wf.PREPARE]["Branches"][1]["States"]
    deadline = branch["Scratch cluster deadline?"]
    # Then it counts its polls and fails with ScratchFailed past scratchWaitMinutes
    assert deadline["Choices"][0]["Variable"] == "$.cluster_wait.count"
    assert deadline["Choices"][0]["NumericGreaterThan"] == 90 * 60 // wf.POLL_SECONDS
    assert branch[deadline["Choices"][0]["Next"]]["Error"] == "ScratchFailed"
    assert deadline["Default"] == "Wait for scratch cluster"


def test_a_command_plans_scratch_gets_its_own_parameter_group_logging_to_csvlog(pre: dict[str, Any]) -> None:
    # Given the scratch branch of Prepare
    branch = pre["States"][wf.PREPARE]["Branches"][1]["States"]
    # Then after the source settings, only a plan that names a scratch parameter group (migration.command)
    # gets one; the others go straight to the scratch kind
    observe = branch[branch[wf.SOURCE_SETTINGS]["Next"]]
    assert observe["Default"] == wf.SCRATCH_KIND
    [when] = observe["Choices"]
    assert when["And"][0] == {"Variable": "$.scratch.parameter_group", "IsPresent": True}
    how = branch[when["Next"]]
    # a default source group (RDS copies none) or an Aurora instance: created in the family; else a copy
    assert how["Choices"][0]["Next"] == wf.CREATE_PARAMETER_GROUP and how["Default"] == wf.COPY_PARAMETER_GROUP
    create, copy = branch[wf.CREATE_PARAMETER_GROUP], branch[wf.COPY_PARAMETER_GROUP]
    assert create["Resource"].endswith(":states:::aws-sdk:rds:createDBParameterGroup")
    assert create["Parameters"]["DbParameterGroupName.$"] == "$.scratch.parameter_group"
    assert create["Parameters"]["DbParameterGroupFamily.$"] == "$.source.parameter_group_family"
    assert copy["Resource"].endswith(":states:::aws-sdk:rds:copyDBParameterGroup")
    assert copy["Parameters"]["SourceDBParameterGroupIdentifier.$"] == "$.source.parameter_group"
    assert copy["Parameters"]["TargetDBParameterGroupIdentifier.$"] == "$.scratch.parameter_group"
    for made in (create, copy):  # tagged like every scratch resource (the janitor finds orphans by it)
        assert {"Key": "migsafe:scratch", "Value.$": "$.execution"} in made["Parameters"]["Tags"]
        assert made["Next"] == wf.SET_SCRATCH_LOGGING
        assert made["Catch"][0] == {"ErrorEquals": [wf.RDS_PG_ALREADY_EXISTS], "ResultPath": None,
                                    "Next": wf.SET_SCRATCH_LOGGING}
    # the two settings RDS lets a parameter group change (log_line_prefix it does not), at once
    modify = branch[wf.SET_SCRATCH_LOGGING]
    assert modify["Resource"].endswith(":states:::aws-sdk:rds:modifyDBParameterGroup")
    assert modify["Parameters"]["Parameters"] == [
        {"ParameterName": "log_destination", "ParameterValue": "csvlog", "ApplyMethod": "immediate"},
        {"ParameterName": "log_min_duration_statement", "ParameterValue": "0", "ApplyMethod": "immediate"}]
    # then the group the restore attaches is the scratch's own
    use = branch[modify["Next"]]
    assert use["Type"] == "Pass" and use["InputPath"] == "$.scratch.parameter_group"
    assert use["ResultPath"] == "$.source.parameter_group" and use["Next"] == wf.SCRATCH_KIND
    assert branch[wf.RESTORE_SCRATCH]["Parameters"]["DbParameterGroupName.$"] == "$.source.parameter_group"
    # an Aurora scratch instance is created with it when there is one, with the engine's defaults otherwise
    choose = branch[f"{wf.CREATE_CLUSTER_INSTANCE}: own parameter group?"]
    own = branch[choose["Choices"][0]["Next"]]
    assert own["Parameters"]["DbParameterGroupName.$"] == "$.source.parameter_group"
    assert "DbParameterGroupName" not in str(branch[choose["Default"]]["Parameters"])


def test_the_fresh_copy_keeps_the_scratch_parameter_group(pre: dict[str, Any]) -> None:
    # Given the fresh-copy path (a stale snapshot replaced)
    states = pre["States"]
    rename = states["Name the fresh scratch"]
    fresh = states["Prepare a fresh scratch"]["Branches"][0]["States"]
    # Then the new scratch keeps the group's name, and its settings step makes (or finds) it again
    assert rename["Parameters"]["parameter_group.$"] == "$.scratch.parameter_group"
    observe = fresh[fresh[f"{wf.SOURCE_SETTINGS} (fresh)"]["Next"]]
    assert observe["Default"] == "Create snapshot (fresh)"
    assert fresh[f"{wf.COPY_PARAMETER_GROUP} (fresh)"]["Catch"][0]["ErrorEquals"] == [wf.RDS_PG_ALREADY_EXISTS]
