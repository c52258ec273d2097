"""The Lambda steps, called as Lambda calls them (Powertools decorators included).

Stores are real (``file://`` folders); RDS is moto at the boto3 boundary; the restore check uses a
real backup of a real PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "migsafe-tests")

from handlers import evaluate, janitor, notification, snapshots, steps, validate
from migsafe import bundle, worker
from migsafe.backup import run_backup
from migsafe.exceptions import ConfirmationMismatch, InputError, PlanInvalid, RestoreRefused, ScratchFailed
from migsafe.identifiers import QualifiedName
from migsafe.plan import Plan
from migsafe.result import Result, Revisions, ScratchInfo
from migsafe.store import FileStore, open_store
from migsafe.worker import RehearsalRequest, RestoreRequest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "enum_uppercase"
EVENTS = Path(__file__).resolve().parents[1] / "events"


def _event(name: str, **replace: str) -> dict[str, Any]:
    """A sample event from tests/events, with its ``<placeholders>`` filled in."""
    text = (EVENTS / name).read_text()
    for key, value in replace.items():
        text = text.replace(f"<{key.replace('_', ' ')}>", value)
    return dict(json.loads(text))


@dataclass
class FakeContext:
    function_name: str = "migsafe-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:migsafe-test"
    aws_request_id: str = "req-1"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    stores = {"store": tmp_path / "store", "results": tmp_path / "results"}
    for path in stores.values():
        path.mkdir()
    monkeypatch.setenv("MIGSAFE_STORE_URL", f"file://{stores['store']}")
    monkeypatch.setenv("MIGSAFE_RESULTS_URL", f"file://{stores['results']}")
    monkeypatch.setenv("MIGSAFE_SOURCE_INSTANCE_ID", "prod-db")
    monkeypatch.setenv("MIGSAFE_SCRATCH_INSTANCE_CLASS", "db.t4g.large")
    return stores


@pytest.fixture
def pushed(env: dict[str, Path], tmp_path: Path) -> str:
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "backups"))
    plan = Plan.from_mapping({"source": {"dsn_env": "X", "tables": ["public.users"]}}, project)
    return bundle.push(plan, FileStore(env["store"])).sha256


def _plan_input(**source: Any) -> dict[str, Any]:
    return {
        "name": "us-6",
        "source": source or {"secret_arn": "arn:aws:secretsmanager:eu-west-1:1:secret:db", "tables": ["public.users"]},
        "store": {"url": "s3://somewhere-else/prefix"},
        "notify": {"sns_topic_arn": "arn:aws:sns:eu-west-1:1:other"},
    }


# --- validate: pre-migration -------------------------------------------------------------------
def test_validate_plan_names_the_scratch_and_builds_the_worker_request(env: dict[str, Path], pushed: str) -> None:
    # Given a pre-migration input with a pushed bundle
    event = {"input": {"plan": _plan_input(), "bundle_sha256": pushed}, "execution": "deploy-42"}
    # When the validate step runs
    out = validate.plan_handler(event, FakeContext())
    # Then the scratch instance has a deletable, valid, per-execution name
    scratch = out["scratch"]["instance_id"]
    assert scratch.startswith("migsafe-scratch-") and len(scratch) <= 63 and "--" not in scratch
    assert scratch == steps.scratch_instance_id("deploy-42") != steps.scratch_instance_id("deploy-43")
    assert out["scratch"]["instance_class"] == "db.t4g.large"
    # and the worker's request lies in the stack's store (not in the ECS overrides), uses that store,
    # carries no notify, and names the results folder and the scratch secret
    assert out["request_key"] == "requests/deploy-42.json" and "request" not in out
    request = RehearsalRequest.model_validate_json((env["store"] / out["request_key"]).read_bytes())
    assert request.scratch_secret == out["scratch"]["secret_name"] == f"migsafe-scratch/{scratch}"
    assert request.plan["store"]["url"] == f"file://{env['store']}"
    assert "notify" not in request.plan and request.bundle_sha256 == pushed
    assert out["results_prefix"] == request.results_prefix == "deploy-42/"
    assert out["source_instance_id"] == "prod-db" and out["create_snapshot"] is False
    assert out["scratch_wait"] == {"count": 0} and out["snapshot_wait"] == {"count": 0}
    assert out["plan_name"] == "us-6"


def test_validate_plan_refuses_bad_input_before_anything_starts(env: dict[str, Path], pushed: str) -> None:
    # Given inputs that are wrong in different ways
    no_bundle = {"input": {"plan": _plan_input()}, "execution": "e"}
    unpushed = {"input": {"plan": _plan_input(), "bundle_sha256": "b" * 64}, "execution": "e"}
    password = {"input": {"plan": _plan_input(dsn="postgresql://app:hunter2@db/app", tables=["public.users"]),
                          "bundle_sha256": pushed}, "execution": "e"}
    unknown = {"input": {"plan": _plan_input(), "bundle_sha256": pushed, "tabels": []}, "execution": "e"}
    # When each is validated, then each is refused as bad input
    with pytest.raises(PlanInvalid, match="bundle push"):
        validate.plan_handler(no_bundle, FakeContext())
    with pytest.raises(InputError, match="not in"):
        validate.plan_handler(unpushed, FakeContext())
    with pytest.raises(PlanInvalid, match="Secrets Manager") as exc:
        validate.plan_handler(password, FakeContext())
    assert "hunter2" not in str(exc.value)
    with pytest.raises(PlanInvalid, match="tabels"):
        validate.plan_handler(unknown, FakeContext())


# --- validate: restore (the confirm rule) -------------------------------------------------------
@pytest.fixture
def backup_id(env: dict[str, Path], seeded: Any) -> str:
    result = run_backup(seeded.dsn, FileStore(env["store"]), [QualifiedName.parse("public.users")])
    return result.backup_id


@pytest.mark.parametrize("confirm", [None, "", "prod-db-2", "PROD-DB"])
def test_restore_into_an_instance_needs_confirm_equal_to_the_target(env: dict[str, Path], confirm: str | None) -> None:
    # Given a restore into a real instance with a missing or wrong confirm (and an empty store)
    event = {"input": {"backup_id": "20250101T000000Z-abcdef", "target": "prod-db", "confirm": confirm},
             "execution": "r1"}
    # When validated, then it fails fast with ConfirmationMismatch, before the store is even read
    with pytest.raises(ConfirmationMismatch, match='"confirm": "prod-db"'):
        validate.restore_handler(event, FakeContext())


def _request(env: dict[str, Path], out: dict[str, Any]) -> RestoreRequest:
    return RestoreRequest.model_validate_json((env["store"] / out["request_key"]).read_bytes())


def test_restore_with_the_right_confirm_into_an_allowlisted_instance_or_into_scratch_is_accepted(
        env: dict[str, Path], backup_id: str, rds: Any) -> None:
    # Given a real, complete backup, and an instance tagged as a restore target
    _instance(rds, "prod-db", {"migsafe:restore-target": "true"})
    confirmed = _event("restore_into_instance.json", backup_id=backup_id)
    scratch = {"input": {"backup_id": backup_id, "target": "scratch", "tables": ["users"]}, "execution": "r3"}
    # When validated
    out = validate.restore_handler(confirmed, FakeContext())
    out_scratch = validate.restore_handler(scratch, FakeContext())
    # Then the instance restore goes to the instance's endpoint, the scratch one to a throw-away cluster
    assert out["target_kind"] == "instance" and out["target"] == "prod-db" and out["mode"] == "replace"
    assert out["target_endpoint"].endswith(":5432")
    assert out["region"] == "eu-west-1" and out["console_url"].endswith("execution:restore:r2")
    assert _request(env, out).replace is True
    assert out_scratch["target_kind"] == "scratch" and out_scratch["tables"] == ["public.users"]
    assert out_scratch["target_endpoint"] == "scratch"
    assert _request(env, out_scratch).results_prefix == "r3/"


@pytest.mark.parametrize("tags", [{}, {"migsafe:restore-target": "false"}, {"migsafe:restore-target": "yes"}])
def test_restore_into_an_instance_not_on_the_allowlist_is_refused(env: dict[str, Path], backup_id: str, rds: Any,
                                                                  tags: dict[str, str]) -> None:
    # Given a confirmed restore into an instance that lacks migsafe:restore-target=true
    _instance(rds, "prod-db", tags)
    event = {"input": {"backup_id": backup_id, "target": "prod-db", "confirm": "prod-db", "mode": "replace"},
             "execution": "r4"}
    # When validated, then it is refused as bad input, and no request was written
    with pytest.raises(RestoreRefused, match="migsafe:restore-target=true"):
        validate.restore_handler(event, FakeContext())
    assert not (env["store"] / "requests").exists()


def test_restore_modes_apply_to_real_targets_only(env: dict[str, Path], backup_id: str) -> None:
    # Given a scratch restore asking for replace, and a contradictory input
    replace = {"input": {"backup_id": backup_id, "target": "scratch", "mode": "replace"}, "execution": "r5"}
    both = {"input": {"backup_id": backup_id, "target": "prod-db", "confirm": "prod-db", "mode": "diff",
                      "replace": True}, "execution": "r6"}
    # When validated, then both are bad input
    with pytest.raises(InputError, match="real target"):
        validate.restore_handler(replace, FakeContext())
    with pytest.raises(InputError, match="contradicts"):
        validate.restore_handler(both, FakeContext())


def test_restore_of_an_unknown_backup_or_table_is_bad_input(env: dict[str, Path], backup_id: str) -> None:
    # Given requests naming a backup or a table that is not there
    missing = {"input": {"backup_id": "20200101T000000Z-000000", "target": "scratch"}, "execution": "r"}
    table = {"input": {"backup_id": backup_id, "target": "scratch", "tables": ["public.orders"]}, "execution": "r"}
    # When validated, then both are refused
    with pytest.raises(InputError, match="no backup"):
        validate.restore_handler(missing, FakeContext())
    with pytest.raises(InputError, match=r"public\.orders"):
        validate.restore_handler(table, FakeContext())


# --- evaluate ---------------------------------------------------------------------------------
def _result(verdict: str = "FAIL") -> Result:
    now = datetime.now(UTC)
    return Result(plan="us-6", verdict=verdict, reasons=["upgrade took 300 s (limit 120 s)"] if verdict == "FAIL" else [],
                  started=now, finished=now, seconds=1.0, source="host=db port=5432 dbname=app",
                  revisions=Revisions(upgrade_to="head", downgrade_to="-1"), scratch=ScratchInfo(kind="dsn"))


def test_evaluate_reads_the_rehearsal_verdict_and_report_location(env: dict[str, Path]) -> None:
    # Given the worker's result.json and report.md for an execution
    results = FileStore(env["results"])
    results.put_bytes("e1/result.json", _result("FAIL").model_dump_json().encode())
    results.put_bytes("e1/report.md", b"# report\n")
    # When the evaluate step runs
    out = evaluate.handler({"kind": "rehearsal", "results_prefix": "e1/"}, FakeContext())
    # Then it returns the verdict, the reasons and where the report is
    assert out["verdict"] == "FAIL" and out["reasons"] == ["upgrade took 300 s (limit 120 s)"]
    assert out["report_url"].endswith("e1/report.md") and out["result_url"].endswith("e1/result.json")


def test_evaluate_a_restore_and_a_missing_result(env: dict[str, Path]) -> None:
    # Given a restore result with problems, and an execution with no result at all
    FileStore(env["results"]).put_bytes("r1/restore.json", json.dumps(
        {"ok": False, "problems": ["users: 9 rows, manifest says 10"], "backup_id": "b", "target": "scratch"}).encode())
    # When evaluated
    out = evaluate.handler({"kind": "restore", "results_prefix": "r1/"}, FakeContext())
    # Then the restore FAILs with its problems; the missing result is an error the state machine catches
    assert out["verdict"] == "FAIL" and out["reasons"] == ["users: 9 rows, manifest says 10"]
    with pytest.raises(Exception) as exc:
        evaluate.handler({"kind": "rehearsal", "results_prefix": "nothing/"}, FakeContext())
    assert type(exc.value).__name__ == "ObjectMissing"


# --- format-notification ------------------------------------------------------------------------
def test_result_message_is_a_chatbot_notification(env: dict[str, Path]) -> None:
    # Given an evaluated rehearsal
    FileStore(env["results"]).put_bytes("e2/result.json", _result("PASS").model_dump_json().encode())
    detail = {"plan_name": "us-6", "results_prefix": "e2/",
              "evaluation": {"verdict": "PASS", "result_url": "file:///r/e2/result.json"}}
    # When the message is formatted
    out = notification.handler({"kind": "result", "execution": "e2", "detail": detail}, FakeContext())
    # Then SNS gets a Chatbot custom notification, an ASCII subject and the verdict
    body = json.loads(out["text"])
    assert body["version"] == "1.0" and body["source"] == "custom" and "PASS" in body["content"]["title"]
    assert out["subject"] == "migsafe PASS: us-6" and out["verdict"] == "PASS"


def test_failure_message_names_the_state_and_the_worker_error_without_passwords(env: dict[str, Path]) -> None:
    # Given a caught ECS failure whose worker recorded the package's exception
    FileStore(env["results"]).put_bytes("e3/error-rehearse.json", json.dumps(
        {"error": "ScratchFailed", "message": "cannot connect to postgresql://app:hunter2@scratch/app"}).encode())
    detail = {"plan_name": "us-6", "results_prefix": "e3/", "failed_state": "Rehearse on scratch",
              "error": {"Error": "States.TaskFailed", "Cause": "{\"StopCode\": \"EssentialContainerExited\"}"},
              "cleanup_error": {"Error": "Rds.InvalidDbInstanceStateException", "Cause": "busy"}}
    # When the failure message is formatted
    out = notification.handler({"kind": "failure", "execution": "e3", "detail": detail}, FakeContext())
    # Then it is a FAIL naming the state and the worker's error, mentions the cleanup, and masks the password
    assert out["verdict"] == "FAIL" and out["subject"] == "migsafe FAIL: us-6"
    assert "Rehearse on scratch" in out["text"] and "ScratchFailed" in out["text"]
    assert "janitor" in out["text"] and "hunter2" not in out["text"]


def test_failure_before_validation_still_names_the_plan(env: dict[str, Path]) -> None:
    # Given validation failed: the detail is the raw input plus the error
    detail = {"plan": _plan_input(), "failed_state": "Validate plan",
              "error": {"Error": "PlanInvalid", "Cause": "unknown key 'tabels'"}}
    # When formatted
    out = notification.handler({"kind": "failure", "execution": "e4", "detail": detail}, FakeContext())
    # Then the message names the plan, the state and the error
    assert out["subject"] == "migsafe FAIL: us-6"
    assert "Validate plan" in out["text"] and "PlanInvalid" in out["text"]


# --- RDS: snapshots and the janitor (moto) -------------------------------------------------------
def _instance(rds: Any, ident: str, tags: dict[str, str]) -> None:
    rds.create_db_instance(DBInstanceIdentifier=ident, DBInstanceClass="db.t4g.micro", Engine="postgres",
                           AllocatedStorage=20, MasterUsername="app", MasterUserPassword="password1",
                           Tags=[{"Key": k, "Value": v} for k, v in tags.items()])


@pytest.fixture
def rds(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        yield boto3.client("rds", region_name="eu-west-1")


def test_latest_snapshot_of_the_source(rds: Any) -> None:
    # Given a source instance with a snapshot, and an instance id with none
    _instance(rds, "prod-db", {})
    rds.create_db_snapshot(DBInstanceIdentifier="prod-db", DBSnapshotIdentifier="prod-db-snap-1")
    available = {s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(DBInstanceIdentifier="prod-db")
                 ["DBSnapshots"] if s["Status"] == "available"}
    # When the snapshot step runs
    out = snapshots.handler({"instance_id": "prod-db"}, FakeContext())
    # Then it names an available snapshot of that instance; an instance without one is a ScratchFailed
    assert "prod-db-snap-1" in available and out["snapshot_id"] in available
    with pytest.raises(ScratchFailed, match="no-such-db"):
        snapshots.handler({"instance_id": "no-such-db"}, FakeContext())


def test_source_settings_name_the_groups_the_scratch_copies_and_check_the_port(rds: Any) -> None:
    # Given a source with its own parameter group and option group, on port 5432
    rds.create_db_parameter_group(DBParameterGroupName="prod-pg", DBParameterGroupFamily="postgres13",
                                  Description="production")
    rds.create_option_group(OptionGroupName="prod-og", EngineName="postgres", MajorEngineVersion="13",
                            OptionGroupDescription="production")
    rds.create_db_instance(DBInstanceIdentifier="prod-db", DBInstanceClass="db.t4g.micro", Engine="postgres",
                           EngineVersion="13.7", AllocatedStorage=20, MasterUsername="app",
                           MasterUserPassword="password1", DBParameterGroupName="prod-pg", OptionGroupName="prod-og")
    # When the scratch's settings are read for a stack that admits 5432, and for one that admits 6432
    out = snapshots.handler(_event("source_settings.json"), FakeContext())
    # Then they are the source's groups and port; a port the stack does not admit is refused
    assert out == {"port": 5432, "engine": "postgres", "parameter_group": "prod-pg", "option_group": "prod-og",
                   "parameter_group_family": "",  # a custom group: the scratch's own is a copy of it
                   "state_at": ""}  # a snapshot's state time is not known here (an Aurora clone's is)
    with pytest.raises(ScratchFailed, match="port 5432 but the stack admits 6432"):
        steps.source_settings("prod-db", rds, port=6432)


def test_janitor_deletes_only_old_tagged_scratch_instances(rds: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a tagged scratch instance, an untagged one with the scratch name, and a tagged non-scratch name
    _instance(rds, "migsafe-scratch-0123456789abcdef", {"migsafe:scratch": "exec"})
    _instance(rds, "migsafe-scratch-untagged", {})
    _instance(rds, "prod-db", {"migsafe:scratch": "exec"})
    # When the sweep runs now (young) and seven hours later (old)
    young = steps.sweep_scratch(rds, max_age=timedelta(hours=6))
    old = steps.sweep_scratch(rds, max_age=timedelta(hours=6), now=datetime.now(UTC) + timedelta(hours=7))
    # Then nothing young is deleted, and later only the tagged scratch instance goes
    assert young == {"deleted": [], "kept": ["instance:migsafe-scratch-0123456789abcdef"], "failed": []}
    assert old["deleted"] == ["instance:migsafe-scratch-0123456789abcdef"]
    left = {d["DBInstanceIdentifier"] for d in rds.describe_db_instances()["DBInstances"]}
    assert left == {"migsafe-scratch-untagged", "prod-db"}


def test_janitor_handler_reads_its_age_from_the_environment(rds: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a fresh tagged scratch instance and a max age of zero hours
    _instance(rds, "migsafe-scratch-aaaa", {"migsafe:scratch": "exec"})
    monkeypatch.setenv("MIGSAFE_SCRATCH_MAX_AGE_HOURS", "0")
    # When the scheduled handler runs
    out = janitor.handler({}, FakeContext())
    # Then it deletes it
    assert out["deleted"] == ["instance:migsafe-scratch-aaaa"]


@pytest.fixture
def sfn(rds: Any) -> Any:
    return boto3.client("stepfunctions", region_name="eu-west-1")


def _execution(sfn: Any, name: str) -> str:
    machine = sfn.create_state_machine(
        name=f"m-{name}", roleArn="arn:aws:iam::123456789012:role/sfn",
        definition=json.dumps({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 3600, "End": True}}}))
    return str(sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name=name)["executionArn"])


def test_janitor_keeps_the_scratch_of_a_running_execution_until_past_the_timeout(rds: Any, sfn: Any) -> None:
    # Given two scratch instances tagged with their executions' ARNs: one still RUNNING, one stopped
    running, stopped = _execution(sfn, "running"), _execution(sfn, "stopped")
    sfn.stop_execution(executionArn=stopped)
    _instance(rds, "migsafe-scratch-running", {"migsafe:scratch": "running", "migsafe:execution": running})
    _instance(rds, "migsafe-scratch-stopped", {"migsafe:scratch": "stopped", "migsafe:execution": stopped})
    later = datetime.now(UTC) + timedelta(hours=7)  # older than the old 6-hour rule, younger than 9 h
    # When the sweep runs seven hours later
    out = steps.sweep_scratch(rds, sfn=sfn, max_age=timedelta(hours=9), now=later)
    # Then the running execution keeps its scratch, the stopped one's is deleted
    assert out["kept"] == ["instance:migsafe-scratch-running"]
    assert out["deleted"] == ["instance:migsafe-scratch-stopped"]
    # and past the state machine's timeout plus the margin, even a "running" one goes
    past = steps.sweep_scratch(rds, sfn=sfn, max_age=timedelta(hours=9), now=datetime.now(UTC) + timedelta(hours=10))
    assert past["deleted"] == ["instance:migsafe-scratch-running"]


def test_janitor_goes_on_when_one_deletion_fails_and_sweeps_run_snapshots(rds: Any, sfn: Any,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two finished executions' scratch instances, one of which RDS refuses to delete, and an
    # orphaned run snapshot (plus the source's own snapshot, untagged)
    stopped = _execution(sfn, "done")
    sfn.stop_execution(executionArn=stopped)
    tags = {"migsafe:scratch": "done", "migsafe:execution": stopped}
    _instance(rds, "migsafe-scratch-stuck", tags)
    _instance(rds, "migsafe-scratch-free", tags)
    _instance(rds, "prod-db", {})
    rds.create_db_snapshot(DBInstanceIdentifier="prod-db", DBSnapshotIdentifier="migsafe-scratch-snap",
                           Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    rds.create_db_snapshot(DBInstanceIdentifier="prod-db", DBSnapshotIdentifier="prod-db-nightly")
    secrets = boto3.client("secretsmanager", region_name="eu-west-1")
    secrets.create_secret(Name="migsafe-scratch/migsafe-scratch-free", SecretString="{}",
                          Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    secrets.create_secret(Name="app/other", SecretString="{}", Tags=[{"Key": "migsafe:scratch", "Value": "x"}])
    real_delete = rds.delete_db_instance

    def delete(**kwargs: Any) -> Any:
        if kwargs["DBInstanceIdentifier"] == "migsafe-scratch-stuck":
            raise RuntimeError("InvalidDBInstanceState: the instance is being modified")
        return real_delete(**kwargs)

    monkeypatch.setattr(rds, "delete_db_instance", delete)
    # When the sweep runs
    out = steps.sweep_scratch(rds, sfn=sfn, secrets=secrets, max_age=timedelta(hours=9))
    # Then the stuck one is reported, the others are deleted, the source's snapshot is left alone
    assert out["failed"] == ["instance:migsafe-scratch-stuck"]
    assert sorted(out["deleted"]) == ["instance:migsafe-scratch-free", "secret:migsafe-scratch/migsafe-scratch-free",
                                      "snapshot:migsafe-scratch-snap"]
    assert [s["Name"] for s in secrets.list_secrets()["SecretList"]] == ["app/other"]
    snapshots_left = {s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots()["DBSnapshots"]}
    assert "prod-db-nightly" in snapshots_left and "migsafe-scratch-snap" not in snapshots_left


def test_handlers_use_the_stores_named_by_the_environment(env: dict[str, Path]) -> None:
    # Given the environment the stack sets
    # When a store is opened as the handlers do
    store = open_store(os.environ["MIGSAFE_STORE_URL"])
    # Then it is the configured folder
    assert Path(store.url.removeprefix("file://")) == env["store"].resolve()




# --- the ECS worker the validate step hands its request to ---------------------------------------
def test_worker_backup_runs_the_validated_request_and_records_it(env: dict[str, Path], pushed: str, seeded: Any,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Given the request the validate step built, and the task's environment (secrets as env vars)
    out = validate.plan_handler({"input": {"plan": _plan_input(), "bundle_sha256": pushed}, "execution": "w1"},
                                FakeContext())
    params = seeded.dsn.params
    environ = {"MIGSAFE_STORE_URL": os.environ["MIGSAFE_STORE_URL"],
               "MIGSAFE_RESULTS_URL": os.environ["MIGSAFE_RESULTS_URL"],
               "MIGSAFE_REQUEST_KEY": out["request_key"], "MIGSAFE_EXECUTION": "w1",
               "MIGSAFE_SOURCE_USERNAME": params.get("user", "postgres"), "MIGSAFE_SOURCE_PASSWORD": "s3cret-unused",
               "MIGSAFE_SOURCE_HOST": params["host"], "MIGSAFE_SOURCE_PORT": params["port"],
               "MIGSAFE_SOURCE_DBNAME": params["dbname"], "MIGSAFE_SOURCE_SSLMODE": "disable"}
    # When `python -m migsafe.worker backup` runs
    code = worker.main(["backup"], environ)
    # Then it exits 0, prints one JSON line, and backup.json is in the results folder
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["ok"] is True and summary["action"] == "backup"
    recorded = json.loads((env["results"] / "w1" / "backup.json").read_text())
    assert recorded["backup_id"] == summary["backup_id"]
    assert "s3cret-unused" not in json.dumps(recorded)


def test_worker_bad_request_exits_2_and_records_the_error(env: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Given a restore request missing its backup id
    environ = {"MIGSAFE_STORE_URL": os.environ["MIGSAFE_STORE_URL"],
               "MIGSAFE_RESULTS_URL": os.environ["MIGSAFE_RESULTS_URL"],
               "MIGSAFE_REQUEST": json.dumps({"target": "scratch", "execution": "w2", "results_prefix": "w2/"})}
    # When the worker runs it
    code = worker.main(["restore"], environ)
    # Then it exits 2 with a one-line JSON summary naming the package's exception
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 2 and summary == {**summary, "ok": False, "error": "PlanInvalid"}
    assert json.loads((env["results"] / "w2" / "error-restore.json").read_text())["error"] == "PlanInvalid"


def test_a_default_parameter_group_names_the_family_to_create_the_scratch_group_in() -> None:
    # Given default and custom DB parameter group names (RDS cannot copy a default group)
    # When / Then: the family for a default one, nothing for a custom one (that one is copied)
    assert steps.default_family("default.postgres15") == "postgres15"
    assert steps.default_family("default.aurora-postgresql16") == "aurora-postgresql16"
    assert steps.default_family("prod-pg") == ""


def test_janitor_deletes_a_scratch_parameter_group_once_unused_and_its_execution_over(rds: Any, sfn: Any) -> None:
    # Given scratch DB parameter groups (migration.command plans): one of a stopped execution, one of a
    # running execution, one still attached to an instance, one untagged; and production's own group
    running, stopped = _execution(sfn, "pg-running"), _execution(sfn, "pg-stopped")
    sfn.stop_execution(executionArn=stopped)

    def group(name: str, tags: dict[str, str]) -> None:
        rds.create_db_parameter_group(DBParameterGroupName=name, DBParameterGroupFamily="postgres15",
                                      Description="test", Tags=[{"Key": k, "Value": v} for k, v in tags.items()])

    group("migsafe-scratch-done", {"migsafe:scratch": "pg-stopped", "migsafe:execution": stopped})
    group("migsafe-scratch-live", {"migsafe:scratch": "pg-running", "migsafe:execution": running})
    group("migsafe-scratch-attached", {"migsafe:scratch": "pg-stopped", "migsafe:execution": stopped})
    group("migsafe-scratch-untagged", {})
    group("app-postgres15", {"migsafe:scratch": "pg-stopped", "migsafe:execution": stopped})
    rds.create_db_instance(DBInstanceIdentifier="other-db", DBInstanceClass="db.t4g.micro", Engine="postgres",
                           AllocatedStorage=20, MasterUsername="app", MasterUserPassword="password1",
                           DBParameterGroupName="migsafe-scratch-attached")
    # When the janitor sweeps
    out = steps.sweep_scratch(rds, sfn=sfn, max_age=timedelta(hours=9))
    # Then only the unused group of the finished execution is deleted; the others are kept or ignored
    assert out["deleted"] == ["parameter-group:migsafe-scratch-done"]
    assert sorted(k for k in out["kept"] if k.startswith("parameter-group:")) == [
        "parameter-group:migsafe-scratch-attached", "parameter-group:migsafe-scratch-live"]
    left = {g["DBParameterGroupName"] for g in rds.describe_db_parameter_groups()["DBParameterGroups"]}
    assert {"migsafe-scratch-live", "migsafe-scratch-attached", "migsafe-scratch-untagged", "app-postgres15"} <= left
    assert "migsafe-scratch-done" not in left
