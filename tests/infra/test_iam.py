"""IAM coverage: each role allows what its Tasks and its code call, on the right resources."""

from __future__ import annotations

import copy
import json

import awscheck
import pytest
from infra_support import SOURCE_CLUSTER

# Representative values for the JSONPaths the Tasks read (what the validate Lambda produces): the
# actions must be allowed for each of them. A new path needs a sample here.
SCRATCH = "migsafe-scratch-0123456789abcdef"
SAMPLES: dict[str, list[str]] = {
    "$.scratch.instance_id": [SCRATCH],
    "$.scratch.snapshot_id": [SCRATCH],
    "$.source_instance_id": ["migsafe-source"],
    "$.snapshot.snapshot_id": ["rds:migsafe-source-2026-12-01-03-05", SCRATCH],  # automated, or created by the run
    "$.target": ["app-db"],
    # only the snapshot the run created is waited for
    "Describe snapshot|$.snapshot.snapshot_id": [SCRATCH],
    "Describe snapshot (fresh)|$.snapshot.snapshot_id": [SCRATCH],
    # the source's own groups, or the defaults (Read source settings)
    "$.source.parameter_group": ["app-postgres15", "default.postgres15"],
    "$.source.option_group": ["app-postgres15", "default:postgres-15"],
    # a migration.command plan's scratch parameter group (named like the scratch), and the family a
    # default source group (or an Aurora scratch instance) has it created in
    "$.scratch.parameter_group": [SCRATCH],
    "$.source.parameter_group_family": ["postgres15", "aurora-postgresql16"],
    # once made, the scratch's own group is what the Aurora scratch instance is created with
    "Create scratch cluster instance (own parameter group)|$.source.parameter_group": [SCRATCH],
    "$.scratch.secret_name": [f"migsafe-scratch/{SCRATCH}"],
    # Aurora: the scratch cluster is named like its instance; the source is the deploy's cluster
    "$.scratch.cluster_id": [SCRATCH],
    "$.source_cluster_id": [SOURCE_CLUSTER],
    "$.source.subnet_group": ["app-db-subnets", "default"],
    "$.source.cluster_parameter_group": ["app-aurora-postgresql16", "default.aurora-postgresql16"],
    # an automated or a manual cluster snapshot of the source
    "Restore scratch cluster|$.snapshot.snapshot_id": [f"rds:{SOURCE_CLUSTER}-2026-12-01-03-05", "nightly"],
    "Restore scratch cluster (Serverless v2)|$.snapshot.snapshot_id": [f"rds:{SOURCE_CLUSTER}-2026-12-01-03-05"],
}


def _machine_violations(template: awscheck.Template) -> list[str]:
    out: list[str] = []
    for machine, asl in template.definitions().items():
        role = template.role_of(machine, "RoleArn")
        assert role, machine
        for task in awscheck.tasks(machine, asl):
            out += awscheck.check_task_iam(task, template, role, SAMPLES)
    return out


def test_every_state_machine_role_allows_what_its_tasks_call(aws_template: awscheck.Template) -> None:
    # Given the synthesized template / When every Task's API calls are checked against its role
    violations = _machine_violations(aws_template)
    # Then nothing is missing (KMS for the encrypted topic, iam:PassRole for ECS included)
    assert violations == []


def _without(template: awscheck.Template, predicate) -> awscheck.Template:
    data = copy.deepcopy(template.data)
    for res in data["Resources"].values():
        if res["Type"] == "AWS::IAM::Policy":
            doc = res["Properties"]["PolicyDocument"]
            doc["Statement"] = [s for s in doc["Statement"] if not predicate(s)]
    return awscheck.Template(data)


def _actions(statement: dict) -> list[str]:
    action = statement.get("Action", [])
    return [action] if isinstance(action, str) else action


def test_publishing_without_the_topic_keys_kms_actions_is_reported(aws_template: awscheck.Template) -> None:
    # Given a copy of the template without the KMS statements for the results topic's key (the defect)
    broken = _without(aws_template, lambda s: any(a.startswith("kms:GenerateDataKey") for a in _actions(s))
                      and "NotificationsKey" in json.dumps(s["Resource"]))
    # When checked / Then every publish state lacks kms:GenerateDataKey on the key
    violations = _machine_violations(broken)
    assert any("Publish result" in v and "kms:GenerateDataKey" in v and "NotificationsKey" in v for v in violations)
    assert any("Publish restore result" in v and "kms:Decrypt" in v for v in violations)


def test_missing_pass_role_and_wrongly_scoped_rds_actions_are_reported(aws_template: awscheck.Template) -> None:
    # Given a copy without iam:PassRole and with rds:DescribeDBInstances scoped to another prefix
    data = copy.deepcopy(aws_template.data)
    for res in data["Resources"].values():
        if res["Type"] == "AWS::IAM::Policy":
            doc = res["Properties"]["PolicyDocument"]
            doc["Statement"] = [s for s in doc["Statement"] if "iam:PassRole" not in _actions(s)]
            for s in doc["Statement"]:
                if _actions(s) == ["rds:DescribeDBInstances"]:
                    s["Resource"] = json.loads(json.dumps(s["Resource"]).replace("migsafe-scratch-", "other-"))
    violations = _machine_violations(awscheck.Template(data))
    # Then both are reported, naming the roles ECS would be handed
    assert any("iam:PassRole" in v and "TaskRole" in v for v in violations)
    assert any("iam:PassRole" in v and "ExecutionRole" in v for v in violations)
    assert any("'Describe scratch'" in v and "rds:DescribeDBInstances" in v and SCRATCH in v for v in violations)


def test_a_path_without_a_sample_is_reported(aws_template: awscheck.Template) -> None:
    # Given the samples without the scratch instance id
    samples = {k: v for k, v in SAMPLES.items() if k != "$.scratch.instance_id"}
    machine, asl = next((m, a) for m, a in aws_template.definitions().items() if "PreMigration" in m)
    role = aws_template.role_of(machine, "RoleArn")
    assert role
    # When the Tasks are checked / Then the missing sample is named (the check never guesses)
    violations = [v for t in awscheck.tasks(machine, asl) for v in awscheck.check_task_iam(t, aws_template, role, samples)]
    assert any("no sample value for $.scratch.instance_id" in v for v in violations)


# --- the code's own calls -------------------------------------------------------------------------
def _code_principals(template: awscheck.Template) -> list[tuple[str, str, str | None, str]]:
    """``(what, module, handler, role)`` for every Lambda handler and the ECS worker."""
    out: list[tuple[str, str, str | None, str]] = []
    for logical_id, res in template.resources.items():
        if res["Type"] == "AWS::Lambda::Function" and "Handler" in res["Properties"]:
            module, _, handler = res["Properties"]["Handler"].rpartition(".")
            out.append((logical_id, module, handler, template.role_of(logical_id, "Role") or ""))
        if res["Type"] == "AWS::ECS::TaskDefinition":
            out.append((logical_id, "migsafe.worker", None, template.role_of(logical_id, "TaskRoleArn") or ""))
    return out


def _code_violations(template: awscheck.Template) -> list[str]:
    buckets = [k for k, r in template.resources.items() if r["Type"] == "AWS::S3::Bucket" and
               "KMSMasterKeyID" in json.dumps(r["Properties"].get("BucketEncryption", {}))]
    out = []
    for what, module, handler, role in _code_principals(template):
        for action in awscheck.declared_calls(module, handler):
            out += awscheck.check_code_call(template, role, action, buckets, f"{what} ({module})")
    return out


def test_every_lambda_and_the_worker_role_allow_the_calls_their_code_makes(aws_template: awscheck.Template) -> None:
    # Given each Lambda's handler module and the worker, with their declared AWS_CALLS
    principals = _code_principals(aws_template)
    assert len(principals) >= 6
    # When each declared call is checked against the principal's role (S3 on the bucket, with its KMS key)
    # Then every one is allowed
    assert _code_violations(aws_template) == []


@pytest.mark.parametrize("module", ["handlers.validate", "handlers.snapshots", "handlers.evaluate",
                                    "handlers.notification", "handlers.janitor", "migsafe.worker"])
def test_the_declared_calls_match_the_code(module: str) -> None:
    # Given a module's AWS_CALLS and the boto3 calls an AST scan finds
    declared = set(awscheck.declared_calls(module))
    direct = awscheck.direct_boto3_calls(module)
    reachable = awscheck.boto3_calls(module)
    # Then every call the module's own code makes is declared, and every declared call is real
    assert direct <= declared, f"undeclared: {sorted(direct - declared)}"
    assert declared <= reachable, f"declared but never made: {sorted(declared - reachable)}"


def test_a_role_missing_a_declared_call_is_reported(aws_template: awscheck.Template) -> None:
    # Given a copy of the template without the janitor's delete permission
    broken = _without(aws_template, lambda s: _actions(s) == ["rds:DeleteDBInstance"])
    # When checked / Then the janitor is reported
    assert any("handlers.janitor" in v and "rds:DeleteDBInstance" in v for v in _code_violations(broken))


def test_a_bucket_read_without_the_keys_decrypt_is_reported(aws_template: awscheck.Template) -> None:
    # Given a copy of the template without kms:Decrypt on the bucket key
    def decrypts(s: dict) -> bool:
        return "kms:Decrypt" in _actions(s) and "StorageKey" in json.dumps(s["Resource"])
    broken = _without(aws_template, decrypts)
    # When checked / Then the Lambdas that read the store are reported
    assert any("handlers.evaluate" in v and "kms:Decrypt" in v for v in _code_violations(broken))


def test_the_worker_execution_role_can_read_its_container_secrets(aws_template: awscheck.Template) -> None:
    # Given the task definitions' container secrets / When checked against the execution role
    # Then every secret can be read before the container starts
    assert awscheck.check_container_secrets(aws_template) == []


def test_an_unreadable_container_secret_is_reported(aws_template: awscheck.Template) -> None:
    # Given a copy without secretsmanager:GetSecretValue
    broken = _without(aws_template, lambda s: "secretsmanager:GetSecretValue" in _actions(s))
    # When checked / Then both worker secrets are reported
    violations = awscheck.check_container_secrets(broken)
    assert any("MIGSAFE_SOURCE_PASSWORD" in v and "ExecutionRole" in v for v in violations)


def _s3_task(template: awscheck.Template, action: str) -> awscheck.Task:
    bucket = next(k for k, r in template.resources.items() if r["Type"] == "AWS::S3::Bucket" and k.startswith("StorageBackups"))
    return awscheck.Task("Synthetic", f"S3 {action}", {
        "Type": "Task", "Resource": f"arn:aws:states:::aws-sdk:s3:{action}",
        "Parameters": {"Bucket": bucket, "Key.$": "$.plan_key"}, "End": True})


def test_an_s3_task_needs_the_bucket_and_its_kms_key(aws_template: awscheck.Template) -> None:
    # Given a Task reading an object of the SSE-KMS backup bucket (as a state machine might)
    task = _s3_task(aws_template, "getObject")
    samples = {"$.plan_key": ["backups/plans/exec-1.json"]}
    machine_role = next(aws_template.role_of(m, "RoleArn") for m in aws_template.definitions())
    worker_role = next(aws_template.role_of(k, "TaskRoleArn") for k, r in aws_template.resources.items()
                       if r["Type"] == "AWS::ECS::TaskDefinition")
    assert machine_role and worker_role
    # When checked against a role without S3 access and against the worker's (read/write on the bucket)
    denied = awscheck.check_task_iam(task, aws_template, machine_role, samples)
    allowed = awscheck.check_task_iam(task, aws_template, worker_role, samples)
    # Then the first lacks both s3:GetObject and kms:Decrypt on the bucket key, the second nothing
    assert any("s3:GetObject" in v for v in denied)
    assert any("kms:Decrypt" in v and "StorageKey" in v for v in denied)
    assert allowed == []
