"""Every Task's Parameters and ResultSelector against botocore's shapes (Step Functions naming)."""

from __future__ import annotations

import copy

import awscheck
import pytest


def _violations(definitions: dict[str, dict]) -> list[str]:
    out: list[str] = []
    for machine, asl in definitions.items():
        for task in awscheck.tasks(machine, asl):
            out += awscheck.check_task_shapes(task)
    return out


def _first(definitions: dict[str, dict], resource_part: str) -> dict:
    for machine, asl in definitions.items():
        for task in awscheck.tasks(machine, asl):
            if resource_part in task.resource:
                return task.state
    raise LookupError(resource_part)


def test_every_task_parameter_and_result_selector_matches_botocore(aws_template: awscheck.Template) -> None:
    # Given both synthesized definitions
    definitions = aws_template.definitions()
    assert len(definitions) >= 2
    # When every aws-sdk and optimized-integration Task is checked against its botocore shapes
    violations = _violations(definitions)
    # Then there is no unknown, miscased or missing member and no ResultSelector path AWS does not return
    assert violations == []


@pytest.mark.parametrize(("name", "expected"), [
    ("DBInstanceIdentifier", "DbInstanceIdentifier"), ("MultiAZ", "MultiAZ"), ("VpcSecurityGroupIds", "VpcSecurityGroupIds"),
    ("SSEKMSKeyId", "SsekmsKeyId"), ("taskDefinition", "TaskDefinition"), ("awsvpcConfiguration", "AwsvpcConfiguration"),
    ("TopicArn", "TopicArn"), ("DBSubnetGroupName", "DbSubnetGroupName"),
])
def test_member_names_follow_the_java_v2_rule(name: str, expected: str) -> None:
    # Given a botocore member name / When Step Functions names it / Then it is Java v2's, capitalized
    assert awscheck.sfn_member(name) == expected


def test_a_key_that_matches_only_case_insensitively_is_an_error(aws_template: awscheck.Template) -> None:
    # Given a copy of the definitions where an RDS parameter is spelled as in botocore (DBInstance...)
    broken = copy.deepcopy(aws_template.definitions())
    state = _first(broken, "aws-sdk:rds:deleteDBInstance")
    state["Parameters"]["DBInstanceIdentifier.$"] = state["Parameters"].pop("DbInstanceIdentifier.$")
    # When checked / Then the miscased key is reported, and so is the now missing required member
    violations = _violations(broken)
    assert any("DBInstanceIdentifier: only a case-insensitive match of DbInstanceIdentifier" in v for v in violations)
    assert any("required member DbInstanceIdentifier" in v for v in violations)


def test_unknown_nested_keys_and_bad_result_selector_paths_are_errors(aws_template: awscheck.Template) -> None:
    # Given a copy with an unknown key deep in the ECS overrides and a ResultSelector path AWS never returns
    broken = copy.deepcopy(aws_template.definitions())
    run_task = _first(broken, ":ecs:runTask")
    run_task["Parameters"]["Overrides"]["ContainerOverrides"][0]["Enviroment"] = []
    describe = _first(broken, "aws-sdk:rds:describeDBInstances")
    describe["ResultSelector"] = {"status.$": "$.DbInstances[0].DBInstanceStatus"}
    # When checked
    violations = _violations(broken)
    # Then both are reported
    assert any("Enviroment: not a member of ContainerOverride" in v for v in violations)
    assert any("has no DBInstanceStatus (case-insensitive match DbInstanceStatus" in v for v in violations)


def test_an_unknown_action_is_an_error(aws_template: awscheck.Template) -> None:
    # Given a copy that calls rds:deleteDbInstance (the Java v2 method is deleteDBInstance)
    broken = copy.deepcopy(aws_template.definitions())
    state = _first(broken, "aws-sdk:rds:deleteDBInstance")
    state["Resource"] = state["Resource"].replace("deleteDBInstance", "deleteDbInstance")
    # When checked / Then it is reported with the right spelling
    assert any("did you mean deleteDBInstance" in v for v in _violations(broken))
