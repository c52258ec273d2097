"""What the Lambda steps do, as plain functions over typed inputs (the handlers only wire them).

- :func:`validate_rehearsal` / :func:`validate_restore`: parse and check the execution input,
  name the scratch instance, build the worker's request;
- :func:`latest_snapshot`: the source instance's newest available snapshot;
- :func:`evaluate`: read ``result.json`` (or ``restore.json``) and return the verdict;
- :func:`format_message`: the Chatbot message for a verdict or for a caught failure;
- :func:`sweep_scratch`: the janitor.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from migsafe.dsn import mask
from migsafe.exceptions import (
    BackupIncomplete,
    ConfirmationMismatch,
    InputError,
    ObjectMissing,
    PlanInvalid,
    ScratchFailed,
    TransientAwsError,
)
from migsafe.identifiers import QualifiedName
from migsafe.store import Store
from migsafe.worker import SCRATCH_TARGET, RehearsalRequest, RestoreRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCRATCH_PREFIX = "migsafe-scratch-"
SCRATCH_TAG = "migsafe:scratch"
_INSTANCE_ID = re.compile(r"^[A-Za-z](?!.*--)[A-Za-z0-9-]{0,62}(?<!-)$")
_THROTTLED = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- validate ---------------------------------------------------------------------------------
class RehearsalInput(_Event):
    """The pre-migration execution input."""

    plan: dict[str, Any]
    bundle_sha256: str | None = None
    create_snapshot: bool = False


class RestoreInput(_Event):
    """The restore execution input (what an engineer pastes in the console)."""

    backup_id: str
    tables: list[str] | None = None
    target: str = SCRATCH_TARGET
    confirm: str | None = None
    replace: bool = False


class Wrapped(BaseModel):
    """What the state machine passes: the raw input and the execution's name."""

    input: dict[str, Any]
    execution: str = Field(min_length=1)


def _parse(model: type[BaseModel], data: Mapping[str, Any], what: str) -> Any:
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or what}: {e['msg']}" for e in exc.errors())
        raise PlanInvalid(f"invalid {what}: {mask(problems)}") from None


def scratch_instance_id(execution: str) -> str:
    """A valid RDS identifier, unique per execution, starting with the prefix IAM allows to delete."""
    return SCRATCH_PREFIX + hashlib.sha256(execution.encode()).hexdigest()[:16]


def results_prefix(execution: str) -> str:
    return f"{execution}/"


def validate_rehearsal(event: Mapping[str, Any], environ: Mapping[str, str], store: Store) -> dict[str, Any]:
    from migsafe import bundle
    from migsafe.plan import Plan

    wrapped = _parse(Wrapped, event, "event")
    given = _parse(RehearsalInput, wrapped.input, "pre-migration input")
    data = dict(given.plan)
    data["store"] = {**dict(data.get("store") or {}), "url": environ["MIGSAFE_STORE_URL"]}
    data.pop("notify", None)  # the state machine publishes to the stack's topic
    plan = Plan.from_mapping(data)
    if plan.source.dsn and mask(plan.source.dsn) != plan.source.dsn:
        raise PlanInvalid("source.dsn carries a password: on AWS the credentials come from Secrets Manager "
                          "(source.secret_arn), never from the execution input")
    if not given.bundle_sha256:
        raise PlanInvalid("bundle_sha256 is required on AWS: push the alembic code with `migsafe bundle push`")
    key = bundle.bundle_key(given.bundle_sha256)
    if not store.exists(key):
        raise InputError(f"bundle {given.bundle_sha256} is not in {store.url}: run `migsafe bundle push` first")
    execution = wrapped.execution
    scratch_id = scratch_instance_id(execution)
    request = RehearsalRequest(plan=plan.model_dump(mode="json", exclude={"notify"}), bundle_sha256=given.bundle_sha256,
                               execution=execution, results_prefix=results_prefix(execution))
    return {
        "execution": execution,
        "plan_name": plan.display_name,
        "tables": plan.source.tables,
        "request": request.model_dump_json(),
        "results_prefix": request.results_prefix,
        "source_instance_id": environ["MIGSAFE_SOURCE_INSTANCE_ID"],
        "create_snapshot": given.create_snapshot,
        "scratch": {"instance_id": scratch_id, "snapshot_id": scratch_id,
                    "instance_class": environ.get("MIGSAFE_SCRATCH_INSTANCE_CLASS", "db.t4g.medium")},
        "snapshot_wait": {"count": 0},
        "scratch_wait": {"count": 0},
    }


def validate_restore(event: Mapping[str, Any], store: Store) -> dict[str, Any]:
    """The restore input, checked: a target other than ``scratch`` needs ``confirm == target``."""
    from migsafe import inventory

    wrapped = _parse(Wrapped, event, "event")
    given = _parse(RestoreInput, wrapped.input, "restore input")
    target = given.target.strip()
    if target != SCRATCH_TARGET:
        if not _INSTANCE_ID.match(target):
            raise InputError(f"target {target!r} is neither 'scratch' nor an RDS instance identifier")
        if given.confirm != target:
            raise ConfirmationMismatch(
                f"restoring into {target} changes a real database: set \"confirm\": \"{target}\" to proceed "
                "(nothing was changed)")
    elif given.replace:
        raise InputError("replace applies to a real target; a scratch restore starts from an empty cluster")
    tables = [str(QualifiedName.parse(t)) for t in given.tables] if given.tables else None
    ref = inventory.find_backup(store, given.backup_id)
    if not ref.complete:
        raise BackupIncomplete(f"backup {given.backup_id} has no manifest (it died midway) and is never restored")
    if tables:
        missing = sorted(set(tables) - set(ref.tables))
        if missing:
            raise InputError(f"backup {given.backup_id} holds no {', '.join(missing)} (it has {', '.join(ref.tables)})")
    execution = wrapped.execution
    request = RestoreRequest(backup_id=given.backup_id, tables=tables, target=target, replace=given.replace,
                             execution=execution, results_prefix=results_prefix(execution))
    return {
        "execution": execution,
        "backup_id": given.backup_id,
        "tables": tables or ref.tables,
        "target": target,
        "target_kind": "scratch" if target == SCRATCH_TARGET else "instance",
        "request": request.model_dump_json(),
        "results_prefix": request.results_prefix,
    }


# --- snapshots --------------------------------------------------------------------------------
def latest_snapshot(instance_id: str, rds: Any) -> dict[str, str]:
    """The newest *available* snapshot (automated or manual) of ``instance_id``."""
    from botocore.exceptions import BotoCoreError, ClientError

    snapshots: list[dict[str, Any]] = []
    try:
        for page in rds.get_paginator("describe_db_snapshots").paginate(DBInstanceIdentifier=instance_id):
            snapshots += page["DBSnapshots"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _THROTTLED:
            raise TransientAwsError(f"RDS DescribeDBSnapshots: {code} (retry)") from exc
        raise ScratchFailed(f"cannot list the snapshots of {instance_id}: {code}") from exc
    except BotoCoreError as exc:
        raise TransientAwsError(f"RDS DescribeDBSnapshots: {type(exc).__name__} (retry)") from exc
    ready = [s for s in snapshots if s.get("Status") == "available" and s.get("SnapshotCreateTime")]
    if not ready:
        raise ScratchFailed(f"{instance_id} has no available snapshot: start with \"create_snapshot\": true")
    newest = max(ready, key=lambda s: s["SnapshotCreateTime"])
    return {"snapshot_id": newest["DBSnapshotIdentifier"], "created": newest["SnapshotCreateTime"].isoformat()}


# --- evaluate ---------------------------------------------------------------------------------
class EvaluateEvent(_Event):
    kind: Literal["rehearsal", "restore"]
    results_prefix: str


class Evaluation(BaseModel):
    verdict: Literal["PASS", "FAIL"]
    reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    plan: str | None = None
    result_url: str
    report_url: str | None = None


def evaluate(event: Mapping[str, Any], results: Store) -> Evaluation:
    from migsafe.result import Result

    given = _parse(EvaluateEvent, event, "evaluate event")
    if given.kind == "rehearsal":
        key = given.results_prefix + "result.json"
        result = Result.model_validate_json(results.get_bytes(key))
        report = given.results_prefix + "report.md"
        return Evaluation(verdict=result.verdict, reasons=result.reasons, warnings=result.warnings,
                          plan=result.plan, result_url=results.location(key),
                          report_url=results.location(report) if results.exists(report) else None)
    key = given.results_prefix + "restore.json"
    body = json.loads(results.get_bytes(key))
    return Evaluation(verdict="PASS" if body.get("ok") else "FAIL", reasons=list(body.get("problems", [])),
                      plan=f"restore {body.get('backup_id')} into {body.get('target')}",
                      result_url=results.location(key))


# --- notification -----------------------------------------------------------------------------
class NotificationEvent(_Event):
    kind: Literal["result", "failure"]
    execution: str
    detail: dict[str, Any]
    state: str | None = None  # the state that produced the result (named in a FAIL message)


class Message(BaseModel):
    text: str  # the Chatbot custom notification, as SNS's Message
    subject: str
    verdict: Literal["PASS", "FAIL"]


def _subject(verdict: str, label: str) -> str:
    text = f"migsafe {verdict}: {label}".encode("ascii", "replace").decode()
    return "".join(c if c.isprintable() else " " for c in text)[:99]


def _label(detail: Mapping[str, Any]) -> str:
    if detail.get("plan_name"):
        return str(detail["plan_name"])
    raw: Mapping[str, Any] = detail["input"] if isinstance(detail.get("input"), dict) else detail
    plan = raw.get("plan")
    if isinstance(plan, dict):
        if plan.get("name"):
            return str(plan["name"])
        tables = (plan.get("source") or {}).get("tables")
        if tables:
            return ",".join(map(str, tables))
    if detail.get("backup_id") or raw.get("backup_id"):
        return f"restore {detail.get('backup_id') or raw.get('backup_id')}"
    return "unknown plan"


def _worker_error(results: Store, prefix: str | None) -> dict[str, Any] | None:
    if not prefix:
        return None
    try:
        errors = [o for o in results.list(prefix) if o.key.rsplit("/", 1)[-1].startswith("error-")]
        if not errors:
            return None
        newest = max(errors, key=lambda o: o.modified)
        return dict(json.loads(results.get_bytes(newest.key)))
    except (ObjectMissing, ValueError, OSError):
        return None


def _restore_message(evaluation: Evaluation, detail: Mapping[str, Any]) -> dict[str, Any]:
    ok = evaluation.verdict == "PASS"
    tables = ", ".join(map(str, detail.get("tables") or [])) or "all tables"
    lines = [f"*Backup* `{detail.get('backup_id')}` into `{detail.get('target')}`: {tables}."]
    if not ok:
        lines += ["The restore was rolled back: nothing changed on the target.", "", "*Problems*"]
        lines += [f"- {mask(r)}" for r in evaluation.reasons[:10]]
    return {
        "version": "1.0",
        "source": "custom",
        "id": f"migsafe-restore-{detail.get('execution', '')}",
        "content": {
            "textType": "client-markdown",
            "title": f"{':white_check_mark: PASS' if ok else ':x: FAIL'} migsafe restore {detail.get('backup_id')}",
            "description": "\n".join(lines),
            "nextSteps": [f"Result: {evaluation.result_url}"],
        },
        "metadata": {"summary": f"migsafe restore {evaluation.verdict}", "eventType": "migsafe.restore",
                     "additionalContext": {"verdict": evaluation.verdict}},
    }


def format_message(event: Mapping[str, Any], results: Store) -> Message:
    from migsafe import notify
    from migsafe.result import Result

    given = _parse(NotificationEvent, event, "notification event")
    detail = given.detail
    label = _label(detail)
    if given.kind == "failure":
        error = detail.get("error") if isinstance(detail.get("error"), dict) else {}
        name, cause = str(error.get("Error") or "States.TaskFailed"), error.get("Cause")
        found = _worker_error(results, detail.get("results_prefix"))
        if found:
            name, cause = str(found.get("error") or name), str(found.get("message") or cause)
        cleanup = detail.get("cleanup_error")
        if isinstance(cleanup, dict):
            cause = f"{cause or ''}\n(the scratch deletion also failed: {cleanup.get('Error')}; the janitor will retry)"
        message = notify.failure_message(label, str(detail.get("failed_state") or "unknown state"), name,
                                         None if cause is None else str(cause))
        return Message(text=json.dumps(message), subject=_subject("FAIL", label), verdict="FAIL")
    evaluation = Evaluation.model_validate(detail.get("evaluation") or {})
    if "backup_id" in detail and "plan_name" not in detail:
        body = _restore_message(evaluation, {**detail, "execution": given.execution})
        return Message(text=json.dumps(body), subject=_subject(evaluation.verdict, label), verdict=evaluation.verdict)
    result = Result.model_validate_json(results.get_bytes(str(detail["results_prefix"]) + "result.json"))
    message = notify.chatbot_message(result, evaluation.report_url, state=given.state)
    return Message(text=json.dumps(message), subject=_subject(result.verdict, label), verdict=result.verdict)


# --- janitor ----------------------------------------------------------------------------------
def sweep_scratch(rds: Any, *, max_age: timedelta, now: datetime | None = None, tag: str = SCRATCH_TAG,
                  prefix: str = SCRATCH_PREFIX) -> dict[str, list[str]]:
    """Delete instances named ``prefix*`` *and* tagged ``tag`` created more than ``max_age`` ago."""
    now = now or datetime.now(UTC)
    deleted: list[str] = []
    kept: list[str] = []
    for page in rds.get_paginator("describe_db_instances").paginate():
        for db in page["DBInstances"]:
            ident = db["DBInstanceIdentifier"]
            tags = {t["Key"] for t in db.get("TagList", [])}
            if tag not in tags or not ident.startswith(prefix):
                continue
            created = db.get("InstanceCreateTime")
            if db.get("DBInstanceStatus") == "deleting" or created is None or now - created < max_age:
                kept.append(ident)
                continue
            rds.delete_db_instance(DBInstanceIdentifier=ident, SkipFinalSnapshot=True, DeleteAutomatedBackups=True)
            deleted.append(ident)
    return {"deleted": deleted, "kept": kept}
