"""``migsafe gate`` against moto: the real pre-migration state machine, executed as in
test_state_machines (same harness and seams), started and followed by the gate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from e2e_harness import EXAMPLE, SOURCE_INSTANCE, Harness
from migsafe import cli_aws, gate
from migsafe.exceptions import InputError
from migsafe.plan import Plan
from migsafe.store import open_store
from typer.testing import CliRunner

ARN = "arn:aws:states:us-east-1:123456789012:stateMachine:migsafe-premigration"


def plan_for(tmp_path: Path, h: Harness) -> Plan:
    """The example plan as a team commits it, pointing at the stack's store."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__", "backups"))
    text = (root / "plan.toml").read_text().replace('url = "file://./backups"', f'url = "s3://{h.bucket}/backups"')
    # the RDS instance (the e2e stack is deployed with an Aurora cluster too, which "auto" would prefer)
    text = text.replace('[scratch]\nkind = "local"', f'[scratch]\nkind = "local"\ninstance_identifier = "{SOURCE_INSTANCE}"')
    assert SOURCE_INSTANCE in text
    (root / "plan.toml").write_text(text)
    return Plan.load(root / "plan.toml")


@pytest.fixture
def lines() -> Iterator[list[str]]:
    yield []


def run(h: Harness, plan: Plan, machine: str, lines: list[str], **kwargs: Any) -> gate.Outcome:
    return gate.run_gate(plan, open_store(plan.store.url), h.sfn, machine, say=lines.append,
                         poll_seconds=0.2, **{"wait": True, "timeout_seconds": 300, **kwargs})


def test_gate_passes_and_prints_each_state_and_the_report(harness: Harness, tmp_path: Path,
                                                          lines: list[str]) -> None:
    # Given the deployed pre-migration state machine and the team's plan
    machine = harness.create_state_machine("PreMigration")
    plan = plan_for(tmp_path, harness)

    # When the pipeline runs the gate and waits
    outcome = run(harness, plan, machine, lines)

    # Then it passed, having printed every state as it was entered, and names the report
    assert (outcome.status, outcome.exit_code, outcome.verdict) == ("SUCCEEDED", 0, "PASS"), lines
    assert outcome.started_new
    entered = [line.removeprefix("→ ") for line in lines if line.startswith("→ ")]
    assert entered == harness.entered(outcome.execution_arn)
    assert entered[0] == "Validate plan" and entered[-1] == "Migration is safe"
    name = outcome.execution_arn.rsplit(":", 1)[-1]
    assert outcome.report_url == f"s3://{harness.bucket}/results/{name}/report.md"
    assert any("uploaded to" in line for line in lines)
    # the execution's input carries no DSN: the source is the stack's secret
    started = json.loads(harness.sfn.describe_execution(executionArn=outcome.execution_arn)["input"])
    assert started["plan"]["source"] == {"secret_arn": gate.STACK_SECRET, "tables": plan.source.tables}


def test_a_retried_job_follows_the_same_execution_and_uploads_nothing(harness: Harness, tmp_path: Path,
                                                                      lines: list[str]) -> None:
    # Given a gate that already ran for this change
    machine = harness.create_state_machine("PreMigration")
    plan = plan_for(tmp_path, harness)
    first = run(harness, plan, machine, [])
    executions_before = harness.sfn.list_executions(stateMachineArn=machine)["executions"]
    bundles_before = harness.keys("backups/bundles/")

    # When the pipeline job is retried with the same plan and code
    again = run(harness, plan, machine, lines)

    # Then no second execution started: it followed the first one, to the same verdict
    assert not again.started_new
    assert again.execution_arn == first.execution_arn
    assert (again.exit_code, again.verdict) == (0, "PASS")
    assert harness.sfn.list_executions(stateMachineArn=machine)["executions"] == executions_before
    assert len(executions_before) == 1
    # and the unchanged bundle was not uploaded again
    assert harness.keys("backups/bundles/") == bundles_before
    assert any("already in" in line for line in lines) and not any("uploaded to" in line for line in lines)
    assert any("following the existing execution" in line for line in lines)


def test_a_changed_revision_is_a_new_execution(harness: Harness, tmp_path: Path) -> None:
    # Given a plan gated once
    plan = plan_for(tmp_path, harness)
    sha_before = gate.bundle.push(plan, open_store(plan.store.url)).sha256

    # When a revision file changes
    revision = plan.base_dir / "migrations" / "versions" / "0002_uppercase_enums.py"
    revision.write_text(revision.read_text() + "\n# reviewed\n")
    sha_after = gate.bundle.push(plan, open_store(plan.store.url)).sha256

    # Then the execution name changes with it (and stays valid for Step Functions)
    names = {gate.execution_name(plan, sha_before), gate.execution_name(plan, sha_after)}
    assert len(names) == 2
    assert all(len(n) <= 80 and n.replace("-", "").replace("_", "").isalnum() for n in names)


def test_a_failing_migration_exits_1_naming_the_failed_state(harness: Harness, tmp_path: Path,
                                                             lines: list[str]) -> None:
    # Given a project whose new revision the database refuses
    plan = plan_for(tmp_path, harness)
    versions = plan.base_dir / "migrations" / "versions"
    (versions / "0002_uppercase_enums.py").write_text(
        (versions / "0002_uppercase_enums.py").read_text().replace(
            "def upgrade() -> None:", "def upgrade() -> None:\n    op.execute('update users set email = null')", 1))
    machine = harness.create_state_machine("PreMigration")

    # When the gate runs
    outcome = run(harness, plan, machine, lines)

    # Then it exits 1 on the FAIL verdict, with the report's location
    assert (outcome.status, outcome.exit_code, outcome.verdict) == ("FAILED", 1, "FAIL"), lines
    assert outcome.report_url is not None and outcome.report_url.endswith("/report.md")


def test_an_environment_fault_exits_3(harness: Harness, tmp_path: Path, lines: list[str]) -> None:
    # Given RDS unable to restore the scratch instance
    from e2e_harness import client_error

    harness.fail_next("rds", "restore_db_instance_from_db_snapshot", client_error(
        "InsufficientDBInstanceCapacity", "no capacity", "RestoreDBInstanceFromDBSnapshot"))
    machine = harness.create_state_machine("PreMigration")

    # When the gate runs
    outcome = run(harness, plan_for(tmp_path, harness), machine, lines)

    # Then it is an environment fault, in the state that failed
    assert (outcome.status, outcome.exit_code) == ("FAILED", 3), lines
    assert outcome.failed_state == "Prepare"
    assert outcome.error == "Rds.InsufficientDbInstanceCapacityException"


def test_a_timeout_exits_3_and_says_the_execution_is_still_running(harness: Harness, tmp_path: Path,
                                                                   lines: list[str]) -> None:
    # Given an execution that has not finished when the gate's time is up
    machine = harness.create_state_machine("PreMigration")
    plan = plan_for(tmp_path, harness)
    ticks = iter(range(1000))

    # When the gate's clock runs out after the first poll
    outcome = run(harness, plan, machine, lines, clock=lambda: float(next(ticks)) * 1000, timeout_seconds=1)

    # Then it exits 3, and the execution was not stopped: a later gate follows it to its verdict
    assert (outcome.status, outcome.exit_code, outcome.error) == ("RUNNING", 3, "GateTimeout")
    later = run(harness, plan, machine, [])
    assert not later.started_new and later.execution_arn == outcome.execution_arn
    assert later.exit_code == 0


@pytest.mark.parametrize("arn", ["arn:aws:lambda:us-east-1:123456789012:function:x", "", ARN + ":v1"])
def test_a_bad_state_machine_arn_is_bad_input(arn: str) -> None:
    # Given a malformed ARN / When the gate checks it / Then it is bad input (exit 2)
    with pytest.raises(InputError) as caught:
        gate.check_state_machine_arn(arn)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("90s", 90), ("2h", 7200), ("45", 45)])
def test_timeouts_read_as_durations(text: str, seconds: float) -> None:
    # Given / When / Then
    assert gate.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0s", "-5m", ""])
def test_a_bad_timeout_is_bad_input(text: str) -> None:
    # Given a timeout that is not a positive duration / When parsed / Then bad input (exit 2)
    with pytest.raises(InputError) as caught:
        gate.parse_duration(text)
    assert caught.value.exit_code == 2


def cli() -> typer.Typer:
    """The gate command mounted as cli.py mounts it (``app.command("gate")(gate)``)."""
    app = typer.Typer()
    app.command("gate")(cli_aws.gate)
    app.command("bundle-push")(cli_aws.push)  # a second command: typer keeps "gate" as a subcommand
    return app


def test_cli_gate_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    # Given the example plan (its store is a local folder, not the stack's S3 store)
    plan = tmp_path / "plan.toml"
    shutil.copy(EXAMPLE / "plan.toml", plan)
    runner = CliRunner()

    # When the gate is given a bad ARN, a bad timeout, or a store that is not S3
    bad_arn = runner.invoke(cli(), ["gate", "--state-machine", "nope", "--plan", str(plan)])
    bad_timeout = runner.invoke(cli(), ["gate", "--state-machine", ARN, "--plan", str(plan), "--timeout", "soon"])
    local = runner.invoke(cli(), ["gate", "--state-machine", ARN, "--plan", str(plan)])

    # Then each is bad input (2), saying why, and nothing was started
    assert (bad_arn.exit_code, bad_timeout.exit_code, local.exit_code) == (2, 2, 2)
    assert "state machine ARN" in bad_arn.output
    assert "not a duration" in bad_timeout.output
    assert "--store s3://" in local.output


def test_cli_gate_waits_and_exits_0_on_pass(harness: Harness, tmp_path: Path) -> None:
    # Given the deployed state machine and the team's plan
    machine = harness.create_state_machine("PreMigration")
    plan = plan_for(tmp_path, harness)

    # When the pipeline runs `migsafe gate --wait --json`
    result = CliRunner().invoke(cli(), ["gate", "--state-machine", machine, "--plan", str(plan.base_dir / "plan.toml"),
                                        "--wait", "--timeout", "5m", "--json"])

    # Then it exits 0 and prints the outcome as JSON (states on stderr)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["verdict"] == "PASS" and summary["status"] == "SUCCEEDED"
    assert summary["report_url"].endswith("/report.md")
    assert summary["states"][0] == "Validate plan"
