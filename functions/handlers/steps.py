"""What the Lambda steps do, as plain functions over typed inputs (the handlers only wire them).

- :func:`validate_rehearsal` / :func:`validate_restore`: parse and check the execution input,
  name the scratch instance, build the worker's request;
- :func:`latest_snapshot`: the source instance's newest available snapshot;
- :func:`evaluate`: read ``result.json`` (or ``restore.json``) and return the verdict;
- :func:`format_message`: the Chatbot message for a verdict or for a caught failure;
- :func:`source_settings` / :func:`cluster_settings`: what the scratch copies from the source
  instance (parameter and option group, port) or cluster (cluster parameter group, subnet group,
  security groups, port, the instance class);
- :func:`latest_cluster_snapshot`: the source cluster's newest available snapshot;
- :func:`sweep_scratch`: the janitor (scratch instances and clusters, run snapshots and scratch
  secrets whose execution is over).
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
    RestoreRefused,
    ScratchFailed,
    TransientAwsError,
)
from migsafe.identifiers import QualifiedName
from migsafe.store import Store
from migsafe.worker import SCRATCH_TARGET, RehearsalRequest, RestoreRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCRATCH_PREFIX = "migsafe-scratch-"
SCRATCH_TAG = "migsafe:scratch"
EXECUTION_TAG = "migsafe:execution"  # the execution ARN: the janitor asks Step Functions whether it still runs
RESTORE_TARGET_TAG = "migsafe:restore-target"  # only instances tagged "true" may be restore targets
SECRET_PREFIX = "migsafe-scratch/"  # noqa: S105 - a name prefix: the scratch password is in migsafe-scratch/<id>
REQUEST_PREFIX = "requests/"  # beside bundles/: the worker's request (plan), too big for ECS overrides
RESTORE_MODES = ("replace", "merge", "diff")
_INSTANCE_ID = re.compile(r"^[A-Za-z](?!.*--)[A-Za-z0-9-]{0,62}(?<!-)$")
_THROTTLED = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- validate ---------------------------------------------------------------------------------
class RehearsalInput(_Event):
    """The pre-migration execution input.

    ``create_snapshot``: ``true`` snapshots the source first (deleted again by the execution);
    ``false`` restores its latest snapshot, and the rehearsal FAILs, naming both revisions, when
    that snapshot is at another alembic revision than the source; ``"if-stale"`` restores the
    latest snapshot and, in that case, snapshots the source and rehearses once more on a fresh copy.
    """

    plan: dict[str, Any]
    bundle_sha256: str | None = None
    create_snapshot: bool | Literal["if-stale"] = False


class RestoreInput(_Event):
    """The restore execution input (what an engineer pastes in the console)."""

    backup_id: str
    tables: list[str] | None = None
    target: str = SCRATCH_TARGET
    confirm: str | None = None
    mode: Literal["replace", "merge", "diff"] | None = None
    replace: bool = False  # the older spelling of mode = "replace"


class Wrapped(BaseModel):
    """What the state machine passes: the raw input and the execution's name."""

    input: dict[str, Any]
    execution: str = Field(min_length=1)
    execution_arn: str | None = None


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


def request_key(execution: str) -> str:
    """Where the worker's request lies in the store (ECS container overrides hold 8,192 characters)."""
    return f"{REQUEST_PREFIX}{execution}.json"


def scratch_secret_name(scratch_id: str) -> str:
    return SECRET_PREFIX + scratch_id


def validate_rehearsal(event: Mapping[str, Any], environ: Mapping[str, str], store: Store,
                       rds: Any = None) -> dict[str, Any]:
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
    kind, cluster_id, instance_id = resolve_source(plan.scratch, environ, rds)
    if kind != "rds-snapshot" and given.create_snapshot is not False:
        raise PlanInvalid(f"\"create_snapshot\" applies to RDS instance snapshots; scratch kind {kind} "
                          + ("clones the cluster at its state of now" if kind == "aurora-clone" else
                             "restores the cluster's latest snapshot") + ": leave it out")
    execution = wrapped.execution
    scratch_id = scratch_instance_id(execution)
    request = RehearsalRequest(plan=plan.model_dump(mode="json", exclude={"notify"}), bundle_sha256=given.bundle_sha256,
                               execution=execution, results_prefix=results_prefix(execution),
                               scratch_secret=scratch_secret_name(scratch_id))
    key = request_key(execution)
    store.put_bytes(key, request.model_dump_json().encode())
    return {
        "execution": execution,
        "plan_name": plan.display_name,
        "tables": plan.source.tables,
        "request_key": key,
        "results_prefix": request.results_prefix,
        "source_instance_id": instance_id or environ["MIGSAFE_SOURCE_INSTANCE_ID"],
        "source_cluster_id": cluster_id,
        "create_snapshot": given.create_snapshot is True,
        "refresh_allowed": given.create_snapshot == "if-stale",
        # the scratch cluster (Aurora kinds; "" otherwise) is named like its instance: the two
        # identifiers live in separate namespaces (ARNs ...:cluster:<id> and ...:db:<id>)
        "scratch": {"kind": kind, "instance_id": scratch_id, "cluster_id": scratch_id if cluster_id else "",
                    "snapshot_id": scratch_id, "secret_name": scratch_secret_name(scratch_id),
                    # a plan migrating through its own command is observed at the scratch server: the
                    # scratch gets a DB parameter group of its own, named like it, that logs to csvlog
                    "parameter_group": scratch_id if plan.migration.command else "",
                    "instance_class": plan.scratch.instance_class or (
                        "" if cluster_id else environ.get("MIGSAFE_SCRATCH_INSTANCE_CLASS", "db.t4g.medium"))},
        "snapshot_wait": {"count": 0},
        "scratch_wait": {"count": 0},
        "cluster_wait": {"count": 0},
    }


class _Lazy:
    """A boto3 client made on first use."""

    def __init__(self, factory: Any) -> None:
        self._factory, self._client = factory, None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            if self._factory is None:
                raise InputError("no RDS client to look the source up with")
            self._client = self._factory()
        return getattr(self._client, name)


def resolve_source(scratch: Any, environ: Mapping[str, str], rds: Any) -> tuple[str, str, str]:
    """``(kind, source cluster id, source instance id)``: the plan's ``[scratch]`` against the
    deploy's source and what RDS says that source is. Refuses (PlanInvalid, nothing created) a
    source other than the deploy's (its permissions and credentials are for that one only), an
    instance of an Aurora cluster, a cluster with ``rds-snapshot``, a non-Aurora cluster."""
    from migsafe.plan import AURORA_KINDS

    rds = _Lazy(rds) if rds is None or (callable(rds) and not hasattr(rds, "describe_db_instances")) else rds
    deploy_instance = environ.get("MIGSAFE_SOURCE_INSTANCE_ID", "")
    deploy_cluster = environ.get("MIGSAFE_SOURCE_CLUSTER_ID", "")
    kind = scratch.kind
    if kind == "dsn":
        raise PlanInvalid("scratch.kind = \"dsn\" names a server of its own; on AWS the state machine makes the "
                          "scratch: use \"auto\", \"rds-snapshot\", \"aurora-clone\" or \"aurora-snapshot\"")
    kind = "auto" if kind == "local" else kind
    cluster, instance = scratch.cluster_identifier, scratch.instance_identifier
    named = instance is not None
    if cluster is None and instance is None:  # the deploy's source
        if kind in AURORA_KINDS or (kind == "auto" and deploy_cluster):
            if not deploy_cluster:
                raise PlanInvalid(f"scratch.kind = \"{kind}\" copies an Aurora cluster, but this stack was deployed "
                                  "without sourceClusterId: redeploy with it, or use kind = \"rds-snapshot\"")
            cluster = deploy_cluster
        else:
            instance = deploy_instance
    if cluster is not None and cluster != deploy_cluster:
        raise PlanInvalid(f"scratch.cluster_identifier = {cluster!r}, but this stack was deployed for "
                          + (f"the cluster {deploy_cluster!r}" if deploy_cluster else "no Aurora cluster (sourceClusterId)")
                          + ": its permissions and source credentials cover that source only")
    if instance is not None and instance != deploy_instance:
        raise PlanInvalid(f"scratch.instance_identifier = {instance!r}, but this stack was deployed for the instance "
                          f"{deploy_instance!r}: its permissions and source credentials cover that source only")
    if cluster is not None:
        if kind == "rds-snapshot":
            raise PlanInvalid(f"kind = \"rds-snapshot\" restores an RDS instance's snapshot, but the source {cluster} "
                              "is an Aurora cluster: use kind = \"aurora-clone\", \"aurora-snapshot\" or \"auto\"")
        found = _rds_call(f"DescribeDBClusters {cluster}",
                          lambda: rds.describe_db_clusters(DBClusterIdentifier=cluster))["DBClusters"]
        engine = str((found[0] if found else {}).get("Engine", ""))
        if not engine.startswith("aurora-postgresql"):
            raise PlanInvalid(f"{cluster} is a {engine or 'unknown'} cluster, not Aurora PostgreSQL: only Aurora "
                              "PostgreSQL clusters are cloned or restored here")
        return ("aurora-clone" if kind == "auto" else kind), cluster, ""
    if named:  # the deploy's own instance is checked when its settings are read (source_settings)
        found = _rds_call(f"DescribeDBInstances {instance}",
                          lambda: rds.describe_db_instances(DBInstanceIdentifier=instance))["DBInstances"]
        member = (found[0] if found else {}).get("DBClusterIdentifier")
        if member:
            raise PlanInvalid(f"{instance} is an instance of the Aurora cluster {member}: name the cluster "
                              f"(scratch.cluster_identifier = \"{member}\"; the deploy's sourceClusterId) instead")
    if kind in AURORA_KINDS:
        raise PlanInvalid(f"kind = \"{kind}\" copies an Aurora cluster, but the source {instance} is an RDS "
                          "instance: use kind = \"rds-snapshot\" or \"auto\"")
    return "rds-snapshot", "", str(instance)


def validate_restore(event: Mapping[str, Any], store: Store, rds: Any = None) -> dict[str, Any]:
    """The restore input, checked: a target other than ``scratch`` needs ``confirm == target`` and
    the tag ``migsafe:restore-target = true`` on the instance (the allowlist); its endpoint is
    looked up here, so no later state can fail on an instance without one."""
    from migsafe import inventory

    wrapped = _parse(Wrapped, event, "event")
    given = _parse(RestoreInput, wrapped.input, "restore input")
    target = given.target.strip()
    if given.mode is not None and given.replace and given.mode != "replace":
        raise InputError(f"\"replace\": true contradicts \"mode\": \"{given.mode}\"; give mode only")
    mode = given.mode or ("replace" if given.replace else None)
    endpoint = SCRATCH_TARGET
    if target != SCRATCH_TARGET:
        if not _INSTANCE_ID.match(target):
            raise InputError(f"target {target!r} is neither 'scratch' nor an RDS instance identifier")
        if given.confirm != target:
            raise ConfirmationMismatch(
                f"restoring into {target} changes a real database: set \"confirm\": \"{target}\" to proceed "
                "(nothing was changed)")
    elif mode is not None:
        raise InputError(f"mode {mode!r} applies to a real target; a scratch restore starts from an empty cluster")
    tables = [str(QualifiedName.parse(t)) for t in given.tables] if given.tables else None
    ref = inventory.find_backup(store, given.backup_id)
    if not ref.complete:
        raise BackupIncomplete(f"backup {given.backup_id} has no manifest (it died midway) and is never restored")
    if tables:
        missing = sorted(set(tables) - set(ref.tables))
        if missing:
            raise InputError(f"backup {given.backup_id} holds no {', '.join(missing)} (it has {', '.join(ref.tables)})")
    if target != SCRATCH_TARGET:
        endpoint = restore_target_endpoint(target, rds)
    execution = wrapped.execution
    request = RestoreRequest(backup_id=given.backup_id, tables=tables, target=target, replace=mode == "replace",
                             mode=mode, execution=execution, results_prefix=results_prefix(execution))
    key = request_key(execution)
    store.put_bytes(key, request.model_dump_json().encode())
    return {
        "execution": execution,
        "backup_id": given.backup_id,
        "tables": tables or ref.tables,
        "tables_text": ", ".join(tables or ref.tables),
        "target": target,
        "target_kind": "scratch" if target == SCRATCH_TARGET else "instance",
        "mode": mode or "restore",
        "target_endpoint": endpoint,
        "request_key": key,
        "results_prefix": request.results_prefix,
        **console(wrapped.execution_arn),
    }


def console(execution_arn: str | None) -> dict[str, str]:
    """The execution's region and its page in the Step Functions console (for the approval request)."""
    parts = (execution_arn or "").split(":")
    if len(parts) < 7 or parts[2] != "states":
        return {"region": "<region>", "console_url": "(the Step Functions console)"}
    region, partition = parts[3], parts[1]
    domain = {"aws-cn": "console.amazonaws.cn", "aws-us-gov": "console.amazonaws-us-gov.com"}.get(
        partition, "console.aws.amazon.com")
    return {"region": region,
            "console_url": f"https://{region}.{domain}/states/home?region={region}#/v2/executions/details/{execution_arn}"}


def _rds_call(what: str, call: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _THROTTLED:
            raise TransientAwsError(f"RDS {what}: {code} (retry)") from exc
        if code in ("DBInstanceNotFound", "DBInstanceNotFoundFault"):
            raise InputError(f"RDS instance not found: {what}") from exc
        if code in ("DBClusterNotFoundFault", "DBClusterNotFound"):
            raise InputError(f"RDS cluster not found: {what}") from exc
        raise ScratchFailed(f"RDS {what}: {code}") from exc
    except BotoCoreError as exc:
        raise TransientAwsError(f"RDS {what}: {type(exc).__name__} (retry)") from exc


def restore_target_endpoint(target: str, rds: Any) -> str:
    """``host:port`` of an allowlisted target; refused (nothing done) unless tagged restore-target=true."""
    if rds is None:
        raise InputError("no RDS client to look the restore target up with")
    if callable(rds) and not hasattr(rds, "describe_db_instances"):
        rds = rds()  # a factory: the client is made only when a real target needs it
    found = _rds_call(f"DescribeDBInstances {target}",
                      lambda: rds.describe_db_instances(DBInstanceIdentifier=target))["DBInstances"]
    db = found[0] if found else {}
    tags = {t.get("Key"): str(t.get("Value", "")).lower() for t in db.get("TagList", [])}
    if tags.get(RESTORE_TARGET_TAG) != "true":
        raise RestoreRefused(f"{target} is not a restore target: only instances tagged {RESTORE_TARGET_TAG}=true "
                             "may be restored into (nothing was changed)")
    endpoint = db.get("Endpoint") or {}
    if not endpoint.get("Address") or not endpoint.get("Port"):
        raise RestoreRefused(f"{target} has no endpoint (status {db.get('DBInstanceStatus', 'unknown')}): "
                             "nothing was changed")
    return f"{endpoint['Address']}:{endpoint['Port']}"


def source_settings(instance_id: str, rds: Any, *, port: int) -> dict[str, Any]:
    """What the scratch copies from the source: its parameter group and option group (so the
    rehearsal runs with production's settings), checked against the port the deploy admits."""
    found = _rds_call(f"DescribeDBInstances {instance_id}",
                      lambda: rds.describe_db_instances(DBInstanceIdentifier=instance_id))["DBInstances"]
    if not found:
        raise ScratchFailed(f"source instance {instance_id} not found")
    db = found[0]
    if db.get("DBClusterIdentifier"):
        raise ScratchFailed(f"the source {instance_id} is an instance of the Aurora cluster {db['DBClusterIdentifier']}: "
                            "deploy with sourceClusterId and name the cluster (scratch.cluster_identifier)")
    groups = [g["DBParameterGroupName"] for g in db.get("DBParameterGroups", []) if g.get("DBParameterGroupName")]
    options = [g["OptionGroupName"] for g in db.get("OptionGroupMemberships", []) if g.get("OptionGroupName")]
    actual = (db.get("Endpoint") or {}).get("Port") or db.get("DbInstancePort") or port
    if int(actual) != port:
        raise ScratchFailed(f"the source listens on port {actual} but the stack admits {port} to the scratch: "
                            "redeploy with sourcePort set to it")
    if not groups or not options:
        raise ScratchFailed(f"source instance {instance_id} names no parameter group or option group to copy")
    return {"port": port, "engine": db.get("Engine", "postgres"), "parameter_group": groups[0],
            "parameter_group_family": default_family(groups[0]), "option_group": options[0], "state_at": ""}


def default_family(group: str) -> str:
    """The family of a default DB parameter group (``default.postgres15`` -> ``postgres15``), which
    RDS cannot copy: a scratch group is created in that family instead. "" for a custom group."""
    return group[len("default."):] if group.startswith("default.") else ""


def cluster_settings(cluster_id: str, rds: Any, *, instance_class: str = "") -> dict[str, Any]:
    """What the scratch cluster copies from the source cluster: its cluster parameter group, DB
    subnet group, security groups (they admit the worker, which reaches the source already) and
    port; the scratch instance's class (the plan's; ``db.serverless`` for a Serverless v2 source;
    else the smallest class RDS offers for the engine version); and ``state_at``, the source's
    latest restorable time (a clone's state: the rehearsal reports its age)."""
    found = _rds_call(f"DescribeDBClusters {cluster_id}",
                      lambda: rds.describe_db_clusters(DBClusterIdentifier=cluster_id))["DBClusters"]
    if not found:
        raise ScratchFailed(f"source cluster {cluster_id} not found")
    c = found[0]
    engine, version = str(c.get("Engine", "")), str(c.get("EngineVersion", ""))
    scaling = c.get("ServerlessV2ScalingConfiguration") or {}
    serverless = bool(scaling.get("MaxCapacity"))
    groups = [g["VpcSecurityGroupId"] for g in c.get("VpcSecurityGroups", [])
              if g.get("VpcSecurityGroupId") and g.get("Status", "active") == "active"]
    subnet, parameters, port = c.get("DBSubnetGroup"), c.get("DBClusterParameterGroup"), c.get("Port")
    if not (subnet and parameters and port and groups):
        raise ScratchFailed(f"source cluster {cluster_id} names no DB subnet group, cluster parameter group, port or "
                            "security group to copy")
    chosen = instance_class or ("db.serverless" if serverless else smallest_instance_class(engine, version, rds))
    latest = c.get("LatestRestorableTime")
    return {"port": int(port), "engine": engine, "engine_version": version, "subnet_group": subnet,
            "security_groups": groups, "cluster_parameter_group": parameters, "instance_class": chosen,
            # the scratch instance's own DB parameter group (migration.command) is created in the
            # engine's family: the cluster's settings stay in its cluster parameter group
            "parameter_group": "", "parameter_group_family": f"aurora-postgresql{version.split('.')[0]}",
            "serverless_v2": serverless,
            "scaling": {"MinCapacity": scaling.get("MinCapacity"), "MaxCapacity": scaling.get("MaxCapacity")}
            if serverless else {},
            "state_at": latest.isoformat() if isinstance(latest, datetime) else str(latest or "")}


_SIZES = {"micro": 0, "small": 1, "medium": 2, "large": 3, "xlarge": 4}
_FAMILIES = ["t4g", "t3", "r8g", "r7g", "r7i", "r6g", "r6i", "r6id", "r5", "x2g"]  # cheapest first, same size


def _class_rank(name: str) -> tuple[int, int, str]:
    parts = name.split(".")
    family, size = (parts[1], parts[2]) if len(parts) == 3 else ("", name)
    if size in _SIZES:
        weight = _SIZES[size]
    elif size.endswith("xlarge") and size[: -len("xlarge")].isdigit():
        weight = 4 + int(size[: -len("xlarge")])
    else:
        weight = 1000  # metal and the unknown: never the smallest
    return weight, _FAMILIES.index(family) if family in _FAMILIES else len(_FAMILIES), name


def smallest_instance_class(engine: str, version: str, rds: Any) -> str:
    """The smallest provisioned class RDS offers for ``engine`` ``version`` in this region."""
    classes = {o["DBInstanceClass"] for o in _pages(
        rds.get_paginator("describe_orderable_db_instance_options"), "OrderableDBInstanceOptions",
        f"DescribeOrderableDBInstanceOptions {engine} {version}", Engine=engine, EngineVersion=version)
        if o.get("DBInstanceClass") and o["DBInstanceClass"] != "db.serverless"}
    if not classes:
        raise ScratchFailed(f"RDS offers no instance class for {engine} {version} here: set [scratch] instance_class")
    return min(classes, key=_class_rank)


def _pages(paginator: Any, key: str, what: str, **params: Any) -> list[dict[str, Any]]:
    from botocore.exceptions import BotoCoreError, ClientError

    out: list[dict[str, Any]] = []
    try:
        for page in paginator.paginate(**params):
            out += page[key]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _THROTTLED:
            raise TransientAwsError(f"RDS {what}: {code} (retry)") from exc
        raise ScratchFailed(f"RDS {what}: {code}") from exc
    except BotoCoreError as exc:
        raise TransientAwsError(f"RDS {what}: {type(exc).__name__} (retry)") from exc
    return out


def latest_cluster_snapshot(cluster_id: str, rds: Any) -> dict[str, str]:
    """The newest *available* cluster snapshot (automated or manual) of ``cluster_id``."""
    snapshots = _pages(rds.get_paginator("describe_db_cluster_snapshots"), "DBClusterSnapshots",
                       f"DescribeDBClusterSnapshots {cluster_id}", DBClusterIdentifier=cluster_id)
    ready = [s for s in snapshots if s.get("Status") == "available" and s.get("SnapshotCreateTime")]
    if not ready:
        raise ScratchFailed(f"{cluster_id} has no available cluster snapshot: use scratch.kind = \"aurora-clone\"")
    newest = max(ready, key=lambda s: s["SnapshotCreateTime"])
    return {"snapshot_id": newest["DBClusterSnapshotIdentifier"], "created": newest["SnapshotCreateTime"].isoformat()}


# --- snapshots --------------------------------------------------------------------------------
def latest_snapshot(instance_id: str, rds: Any) -> dict[str, str]:
    """The newest *available* snapshot (automated or manual) of ``instance_id``."""
    snapshots = _pages(rds.get_paginator("describe_db_snapshots"), "DBSnapshots",
                       f"DescribeDBSnapshots {instance_id}", DBInstanceIdentifier=instance_id)
    ready = [s for s in snapshots if s.get("Status") == "available" and s.get("SnapshotCreateTime")]
    if not ready:
        raise ScratchFailed(f"{instance_id} has no available snapshot: start with \"create_snapshot\": true")
    newest = max(ready, key=lambda s: s["SnapshotCreateTime"])
    return {"snapshot_id": newest["DBSnapshotIdentifier"], "created": newest["SnapshotCreateTime"].isoformat()}


# --- evaluate ---------------------------------------------------------------------------------
class EvaluateEvent(_Event):
    kind: Literal["rehearsal", "restore", "stale"]
    results_prefix: str


def stale_scratch(event: Mapping[str, Any], results: Store) -> dict[str, Any]:
    """Did the rehearsal stop because the scratch is at another revision than the source?"""
    given = _parse(EvaluateEvent, event, "stale-scratch event")
    found = _worker_error(results, given.results_prefix) or {}
    return {"stale": found.get("error") == "ScratchStale", "message": mask(str(found.get("message") or ""))}


class Evaluation(BaseModel):
    verdict: Literal["PASS", "FAIL"]
    reasons: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    plan: str | None = None
    result_url: str
    report_url: str | None = None
    undo_backup_id: str | None = None  # a restore into an instance: the target's tables, taken first
    mode: str | None = None  # a restore's mode: replace, merge, diff (None: tables the target lacks)
    summary: list[str] = Field(default_factory=list)  # a diff: one line per table


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
                      result_url=results.location(key), undo_backup_id=(body.get("undo") or {}).get("backup_id"),
                      mode=body.get("mode"), summary=[mask(str(line)) for line in body.get("summary", [])])


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
    plan: str  # the SNS message attribute subscriptions filter on (docs/slack.md)


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
    diff = evaluation.mode == "diff"
    lines = [f"*Backup* `{detail.get('backup_id')}` {'compared with' if diff else 'into'} `{detail.get('target')}`: "
             f"{tables}."]
    if evaluation.summary:  # a diff: what changed since the backup, per table (live tables only read)
        lines += ["", "*Compared by primary key*"] + [f"- {line}" for line in evaluation.summary[:50]]
    if not ok:
        lines += ["The restore was rolled back: nothing changed on the target.", "", "*Problems*"]
        lines += [f"- {mask(r)}" for r in evaluation.reasons[:10]]
    return {
        "version": "1.0",
        "source": "custom",
        "id": f"migsafe-restore-{detail.get('execution', '')}",
        "content": {
            "textType": "client-markdown",
            "title": f"{':white_check_mark: PASS' if ok else ':x: FAIL'} migsafe {'diff' if diff else 'restore'} "
                     f"{detail.get('backup_id')}",
            "description": "\n".join(lines),
            "nextSteps": [f"Result: {evaluation.result_url}"] + (
                [f"Undo: migsafe restore {evaluation.undo_backup_id} (the target's tables before this restore)"]
                if evaluation.undo_backup_id else []),
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
        return Message(text=json.dumps(message), subject=_subject("FAIL", label), verdict="FAIL",
                       plan=_attribute(label))
    evaluation = Evaluation.model_validate(detail.get("evaluation") or {})
    if "backup_id" in detail and "plan_name" not in detail:
        body = _restore_message(evaluation, {**detail, "execution": given.execution})
        return Message(text=json.dumps(body), subject=_subject(evaluation.verdict, label), verdict=evaluation.verdict,
                       plan=_attribute(label))
    result = Result.model_validate_json(results.get_bytes(str(detail["results_prefix"]) + "result.json"))
    message = notify.chatbot_message(result, evaluation.report_url, state=given.state)
    line = _scratch_line(results, str(detail["results_prefix"]))
    if line and isinstance(message.get("content"), dict):
        message["content"]["description"] = f"{message['content'].get('description', '')}\n{line}"
    return Message(text=json.dumps(message), subject=_subject(result.verdict, label), verdict=result.verdict,
                   plan=_attribute(label))


def _scratch_line(results: Store, prefix: str) -> str | None:
    """What the scratch was and, for a clone, how old its data was (``scratch.json``, by the worker)."""
    try:
        body = json.loads(results.get_bytes(prefix + "scratch.json"))
    except (ObjectMissing, ValueError, OSError):
        return None
    age = body.get("age") or {}
    if body.get("kind") != "aurora-clone" or age.get("age_seconds") is None:
        return None
    seconds = float(age["age_seconds"])
    when = f"{abs(seconds):.0f} s {'before' if seconds >= 0 else 'after'} the execution started"
    return f"*Scratch* Aurora clone, production's state as of {age.get('state_at')} ({when})"


def _attribute(label: str) -> str:
    """An SNS string attribute: never empty, printable, bounded."""
    text = "".join(c if c.isprintable() else " " for c in label).strip()
    return (text or "unknown plan")[:256]


# --- janitor ----------------------------------------------------------------------------------
class Sweep(BaseModel):
    deleted: list[str] = Field(default_factory=list)
    kept: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)


def _tags(tag_list: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in tag_list or []}


def _execution_over(sfn: Any, tags: Mapping[str, str], created: datetime | None, now: datetime,
                    max_age: timedelta) -> bool:
    """True when nothing can still use a resource of this execution: its execution is no longer
    RUNNING, or (untagged, or Step Functions unsure) it is older than the state machine's timeout
    plus a margin (``max_age``)."""
    if created is None:
        return False
    old = now - created >= max_age
    arn = tags.get(EXECUTION_TAG)
    if not arn or sfn is None:
        return old
    from botocore.exceptions import ClientError

    try:
        status = sfn.describe_execution(executionArn=arn)["status"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
            return old  # history expired (90 days) or a foreign ARN: only age decides
        raise
    return status != "RUNNING" or old


def _execution_finished(sfn: Any, tags: Mapping[str, str], created: datetime | None, now: datetime,
                        max_age: timedelta) -> bool:
    """For a resource without a creation time: True only when Step Functions says its execution is
    no longer RUNNING (or no longer exists)."""
    arn = tags.get(EXECUTION_TAG)
    if not arn or sfn is None:
        return False
    from botocore.exceptions import ClientError

    try:
        return str(sfn.describe_execution(executionArn=arn)["status"]) != "RUNNING"
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
            return True
        raise


def sweep_scratch(rds: Any, *, max_age: timedelta, sfn: Any = None, secrets: Any = None,
                  now: datetime | None = None, tag: str = SCRATCH_TAG, prefix: str = SCRATCH_PREFIX,
                  log: Any = None) -> dict[str, list[str]]:
    """Delete what executions left behind: instances, clusters and manual snapshots named ``prefix*`` *and*
    tagged ``tag``, and scratch secrets, whose execution (tag ``migsafe:execution``) is no longer
    RUNNING, or that are older than ``max_age`` (the state machine's timeout plus a margin).

    One that cannot be deleted is reported in ``failed`` and the sweep goes on."""
    now = now or datetime.now(UTC)
    out = Sweep()

    def consider(kind: str, ident: str, tags: Mapping[str, str], created: datetime | None, busy: bool,
                 delete: Any, over: Any = None) -> None:
        name = f"{kind}:{ident}"
        try:
            if busy or not (over or _execution_over)(sfn, tags, created, now, max_age):
                out.kept.append(name)
                return
            delete()
            out.deleted.append(name)
        except Exception as exc:  # one stuck resource must not stop the sweep
            out.failed.append(name)
            if log is not None:
                log(f"cannot delete {name}: {type(exc).__name__}: {mask(str(exc))}")

    in_use: set[str] = set()  # DB parameter groups some instance still has
    for page in rds.get_paginator("describe_db_instances").paginate():
        for db in page["DBInstances"]:
            ident = db["DBInstanceIdentifier"]
            in_use |= {str(g.get("DBParameterGroupName")) for g in db.get("DBParameterGroups", [])}
            tags = _tags(db.get("TagList"))
            if tag not in tags or not ident.startswith(prefix):
                continue
            consider("instance", ident, tags, db.get("InstanceCreateTime"), db.get("DBInstanceStatus") == "deleting",
                     lambda ident=ident: rds.delete_db_instance(DBInstanceIdentifier=ident, SkipFinalSnapshot=True,
                                                                DeleteAutomatedBackups=True))
    # clusters after their instances: a cluster with a member left is kept for the next sweep
    for page in rds.get_paginator("describe_db_clusters").paginate():
        for cluster in page["DBClusters"]:
            ident = cluster["DBClusterIdentifier"]
            tags = _tags(cluster.get("TagList"))
            if tag not in tags or not ident.startswith(prefix):
                continue
            consider("cluster", ident, tags, cluster.get("ClusterCreateTime"),
                     cluster.get("Status") == "deleting" or bool(cluster.get("DBClusterMembers")),
                     lambda ident=ident: rds.delete_db_cluster(DBClusterIdentifier=ident, SkipFinalSnapshot=True))
    for page in rds.get_paginator("describe_db_snapshots").paginate(SnapshotType="manual"):
        for snap in page["DBSnapshots"]:
            ident = snap["DBSnapshotIdentifier"]
            tags = _tags(snap.get("TagList"))
            if tag not in tags or not ident.startswith(prefix):
                continue
            consider("snapshot", ident, tags, snap.get("SnapshotCreateTime") or snap.get("OriginalSnapshotCreateTime"),
                     snap.get("Status") in {"creating", "deleting"},
                     lambda ident=ident: rds.delete_db_snapshot(DBSnapshotIdentifier=ident))
    # a migration.command plan's scratch parameter group: once no instance has it and its execution is
    # over (a group has no creation time: without an execution that says so, it is kept)
    for page in rds.get_paginator("describe_db_parameter_groups").paginate():
        for group in page["DBParameterGroups"]:
            ident = group["DBParameterGroupName"]
            if not ident.startswith(prefix):
                continue
            tags = _tags(rds.list_tags_for_resource(ResourceName=group["DBParameterGroupArn"]).get("TagList"))
            if tag not in tags:
                continue
            consider("parameter-group", ident, tags, None, ident in in_use,
                     lambda ident=ident: rds.delete_db_parameter_group(DBParameterGroupName=ident),
                     over=_execution_finished)
    if secrets is not None:
        for page in secrets.get_paginator("list_secrets").paginate(
                Filters=[{"Key": "tag-key", "Values": [tag]}, {"Key": "name", "Values": [SECRET_PREFIX]}]):
            for secret in page["SecretList"]:
                name = secret["Name"]
                if not name.startswith(SECRET_PREFIX):
                    continue
                consider("secret", name, _tags(secret.get("Tags")), secret.get("CreatedDate"), False,
                         lambda arn=secret["ARN"]: secrets.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True))
    return out.model_dump()
