"""Every Retry/Catch error name is one Step Functions can emit for that state."""

from __future__ import annotations

import copy

import awscheck


def _violations(template: awscheck.Template, definitions: dict[str, dict]) -> list[str]:
    out: list[str] = []
    for machine, asl in definitions.items():
        out += awscheck.check_error_names(machine, asl, template.handlers())
    return out


def _state(definitions: dict[str, dict], resource_part: str) -> dict:
    for machine, asl in definitions.items():
        for task in awscheck.tasks(machine, asl):
            if resource_part in task.resource:
                return task.state
    raise LookupError(resource_part)


def test_every_retry_and_catch_names_an_error_the_task_can_raise(aws_template: awscheck.Template) -> None:
    # Given both synthesized definitions
    definitions = aws_template.definitions()
    # When every Retry/Catch ErrorEquals is compared with what the Task can emit
    violations = _violations(aws_template, definitions)
    # Then none is dead (a dead name silently turns a retry into a failure)
    assert violations == []


def test_java_exception_names_follow_the_sdk_v2_rule() -> None:
    # Given botocore error shapes / When named the Step Functions way / Then they match the docs
    assert awscheck.java_exception("DBInstanceNotFoundFault") == "DbInstanceNotFoundException"
    assert awscheck.java_exception("InvalidDBInstanceStateFault") == "InvalidDbInstanceStateException"
    assert awscheck.java_exception("KMSThrottlingException") == "KmsThrottlingException"
    assert awscheck.pascal("ACM PCA") == "AcmPca"


def test_a_dead_rds_error_name_is_reported(aws_template: awscheck.Template) -> None:
    # Given a copy where an RDS task retries on Rds.ThrottlingException (RDS never raises it)
    broken = copy.deepcopy(aws_template.definitions())
    state = _state(broken, "aws-sdk:rds:deleteDBInstance")
    state.setdefault("Retry", []).append({"ErrorEquals": ["Rds.ThrottlingException"], "MaxAttempts": 2})
    # When checked / Then it is reported
    assert any("Rds.ThrottlingException is never emitted" in v for v in _violations(aws_template, broken))


def test_a_migsafe_name_counts_only_where_that_code_raises_it(aws_template: awscheck.Template) -> None:
    # Given a copy where an SNS publish retries on a migsafe exception (no migsafe code runs there)
    # and a Lambda catches a migsafe class that its code never raises
    broken = copy.deepcopy(aws_template.definitions())
    _state(broken, ":sns:publish").setdefault("Retry", []).append({"ErrorEquals": ["TransientAwsError"]})
    _state(broken, "function:StepsEvaluate").setdefault("Retry", []).append({"ErrorEquals": ["RestoreRefusedTypo"]})
    # When checked
    violations = _violations(aws_template, broken)
    # Then both are reported
    assert any("TransientAwsError is never emitted by" in v and "sns:publish" in v for v in violations)
    assert any("RestoreRefusedTypo is never emitted" in v for v in violations)


def test_a_modeled_error_and_the_service_base_exception_are_accepted(aws_template: awscheck.Template) -> None:
    # Given a copy whose RDS delete catches a modeled error and the base exception
    broken = copy.deepcopy(aws_template.definitions())
    state = _state(broken, "aws-sdk:rds:deleteDBInstance")
    state["Retry"] = [{"ErrorEquals": ["Rds.InvalidDbInstanceStateException", "Rds.RdsException", "States.Timeout"]}]
    # When checked / Then that state reports nothing
    assert not [v for v in _violations(aws_template, broken) if "'Delete scratch instance'" in v]


def test_a_callback_error_counts_only_if_migsafe_sends_it(aws_template: awscheck.Template) -> None:
    # Given a copy where a publish waits for a task token and catches a name no code sends
    broken = copy.deepcopy(aws_template.definitions())
    state = _state(broken, ":sns:publish")
    state["Resource"] += ".waitForTaskToken"
    state["Catch"] = [{"ErrorEquals": ["NobodySendsThis", "States.Timeout"], "Next": state.get("Next", "x")}]
    # When checked / Then the unsent name is reported, the timeout is not
    violations = _violations(aws_template, broken)
    assert any("NobodySendsThis is never emitted" in v for v in violations)
    assert not any("States.Timeout is never emitted" in v for v in violations)
