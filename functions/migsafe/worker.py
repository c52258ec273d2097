"""The ECS entry point: ``python -m migsafe.worker backup|rehearse|restore``.

The state machine starts the task with container overrides:

- ``MIGSAFE_REQUEST_KEY``: where, in the store, the validate Lambda put the JSON request
  (:class:`RehearsalRequest` or :class:`RestoreRequest`). ECS limits container overrides to 8,192
  characters, so a plan with many tables or checks never travels in them. ``MIGSAFE_REQUEST`` /
  ``--request`` (the JSON itself) override it for a run by hand;
- ``MIGSAFE_EXECUTION``: the execution's name; results go under ``results/<execution>/``;
  ``MIGSAFE_EXECUTION_ARN``: its ARN (tags what the worker creates, for the janitor);
- ``MIGSAFE_SCRATCH_ENDPOINT`` + ``MIGSAFE_SCRATCH_INSTANCE_ID`` (+ ``MIGSAFE_SCRATCH_CLUSTER_ID`` for
  an Aurora scratch, ``MIGSAFE_SCRATCH_KIND``, and ``MIGSAFE_SCRATCH_STATE_AT`` /
  ``MIGSAFE_EXECUTION_START``: the clone's age goes to ``scratch.json``) (rehearse) /
  ``MIGSAFE_TARGET_ENDPOINT`` (restore): ``host:port``, or ``scratch`` for a throw-away cluster
  inside the task.

The scratch instance is restored from a snapshot, so it keeps the master password of snapshot
time, which RDS-managed secrets rotate away (an Aurora clone: the source's, which the scratch must
not need). Before rehearsing, the worker sets a fresh master password that only this execution
knows (ModifyDBInstance; ModifyDBCluster for Aurora, whose password is the cluster's), keeps it in the secret
``migsafe-scratch/<scratch id>`` (which the state machine deletes on every path), and connects to
the scratch with it, never with the source's. It is generated here, not in the state machine,
because everything a state machine handles is visible in its execution history.

A plan with ``[migration] command`` is observed from the scratch's csvlog (its own parameter group
turns it on; :mod:`migsafe.rdslog`), read with ``DescribeDBLogFiles`` / ``DownloadDBLogFilePortion``;
``MIGSAFE_SCRATCH_LOG_WAIT_SECONDS`` (default 120) bounds the wait for each phase's lines. A log that
cannot be read leaves that rehearsal *sampling-only*, with the reason among its warnings.

The task definition supplies the rest: ``MIGSAFE_STORE_URL``, ``MIGSAFE_RESULTS_URL``, the
source's ``MIGSAFE_SOURCE_HOST/PORT/DBNAME`` (the host is looked up from
``MIGSAFE_SOURCE_INSTANCE_ID`` when not given) and, as ECS secrets from Secrets Manager,
``MIGSAFE_SOURCE_USERNAME`` / ``MIGSAFE_SOURCE_PASSWORD`` (used for the source only).

Each action writes its JSON to the results store (``backup.json``, ``result.json`` + reports,
``restore.json``; ``error.json`` on a fault) and prints a one-line JSON summary. Exit codes: 0 when
the step produced its result (a FAIL verdict included: the evaluate step decides), 2 bad input,
3 an environment fault.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .dsn import Dsn, mask
from .exceptions import InputError, MigsafeError, ObjectMissing, PlanInvalid, ScratchFailed, ScratchStale

ACTIONS = ("backup", "rehearse", "restore")
SCRATCH_TARGET = "scratch"
SCRATCH_TAG = "migsafe:scratch"
EXECUTION_TAG = "migsafe:execution"
# The AWS API calls the worker makes (the store: backups, results, bundles; the source's endpoint; the
# scratch's per-execution password): the ECS task role must allow each (tests/infra/test_iam.py checks).
AWS_CALLS = ("s3:GetObject", "s3:ListBucket", "s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject",
             "rds:DescribeDBInstances", "rds:ModifyDBInstance", "rds:DescribeDBClusters", "rds:ModifyDBCluster",
             "secretsmanager:CreateSecret", "secretsmanager:PutSecretValue", "secretsmanager:TagResource",
             "rds:DescribeDBLogFiles", "rds:DownloadDBLogFilePortion")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RehearsalRequest(_Request):
    """What the backup and rehearse tasks run: the plan (its store set to the stack's bucket)."""

    kind: Literal["rehearsal"] = "rehearsal"
    plan: dict[str, Any]
    bundle_sha256: str | None = None
    execution: str
    results_prefix: str
    scratch_secret: str | None = None  # where the per-execution scratch password is kept


class RestoreRequest(_Request):
    kind: Literal["restore"] = "restore"
    backup_id: str
    tables: list[str] | None = None
    target: str  # "scratch" or an RDS instance identifier (confirmed, allowlisted, approved)
    replace: bool = False
    mode: Literal["replace", "merge", "diff"] | None = None  # None: restore tables the target lacks
    execution: str
    results_prefix: str


@dataclass(frozen=True)
class WorkerEnv:
    store_url: str
    results_url: str
    execution: str
    environ: Mapping[str, str]

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], execution: str | None = None) -> WorkerEnv:
        missing = [k for k in ("MIGSAFE_STORE_URL", "MIGSAFE_RESULTS_URL") if not environ.get(k)]
        if missing:
            raise InputError(f"worker environment lacks {', '.join(missing)}")
        name = execution or environ.get("MIGSAFE_EXECUTION") or "manual"
        return cls(environ["MIGSAFE_STORE_URL"], environ["MIGSAFE_RESULTS_URL"], name, environ)

    def source_dsn(self, *, rds_client: Any = None) -> Dsn:
        """The source's DSN from the ECS secrets; the host from RDS when the deploy did not give one."""
        env = self.environ
        user, password = env.get("MIGSAFE_SOURCE_USERNAME"), env.get("MIGSAFE_SOURCE_PASSWORD")
        if not user or not password:
            raise InputError("the source's credentials (MIGSAFE_SOURCE_USERNAME/PASSWORD secrets) are not set")
        host, port = env.get("MIGSAFE_SOURCE_HOST"), env.get("MIGSAFE_SOURCE_PORT") or "5432"
        if not host and env.get("MIGSAFE_SOURCE_CLUSTER_ID"):
            host, found_port = _cluster_endpoint(env["MIGSAFE_SOURCE_CLUSTER_ID"], rds_client)
            port = str(found_port)
        elif not host:
            host, found_port = _instance_endpoint(env.get("MIGSAFE_SOURCE_INSTANCE_ID", ""), rds_client)
            port = str(found_port)
        return Dsn({"host": host, "port": str(port), "user": user, "password": password,
                    "dbname": env.get("MIGSAFE_SOURCE_DBNAME") or "postgres",
                    "sslmode": env.get("MIGSAFE_SOURCE_SSLMODE") or "require"})

    def endpoint_dsn(self, name: str, *, rds_client: Any = None) -> Dsn:
        """The source's credentials on another endpoint (``host:port`` from the state machine)."""
        endpoint = self.environ.get(name, "")
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise InputError(f"{name} must be host:port (got {endpoint!r})")
        source = self.source_dsn(rds_client=rds_client)
        return Dsn({**source.params, "host": host, "port": port})


def set_scratch_password(instance_id: str, secret_name: str, *, username: str, execution: str,
                         execution_arn: str | None, rds: Any, secretsmanager: Any, deadline_seconds: float = 1800,
                         poll_seconds: float = 15, cluster_id: str = "") -> str:
    """A fresh master password for the scratch instance (or, for Aurora, its cluster: the master
    password is the cluster's), kept in ``secret_name``; returns it once RDS has applied it (the
    instance or cluster is ``available`` with nothing pending). It never leaves this process except
    into Secrets Manager and RDS."""
    from botocore.exceptions import BotoCoreError, ClientError

    password = secrets.token_urlsafe(32)  # letters, digits, - and _: nothing RDS refuses
    body = json.dumps({"username": username, "password": password, "dbInstanceIdentifier": instance_id})
    tags = [{"Key": SCRATCH_TAG, "Value": execution}]
    if execution_arn:
        tags.append({"Key": EXECUTION_TAG, "Value": execution_arn})
    try:
        try:
            secretsmanager.create_secret(Name=secret_name, SecretString=body, Tags=tags,
                                         Description="migsafe: this execution's scratch master password")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceExistsException":
                raise
            secretsmanager.put_secret_value(SecretId=secret_name, SecretString=body)  # a retried task
        if cluster_id:
            rds.modify_db_cluster(DBClusterIdentifier=cluster_id, MasterUserPassword=password, ApplyImmediately=True)
        else:
            rds.modify_db_instance(DBInstanceIdentifier=instance_id, MasterUserPassword=password,
                                   ApplyImmediately=True, EnablePerformanceInsights=False, MonitoringInterval=0)
        end = time.monotonic() + deadline_seconds
        time.sleep(min(poll_seconds, 5))  # let RDS start the change before reading the status
        while True:
            if cluster_id:
                db = rds.describe_db_clusters(DBClusterIdentifier=cluster_id)["DBClusters"][0]
                status = db.get("Status")
            else:
                db = rds.describe_db_instances(DBInstanceIdentifier=instance_id)["DBInstances"][0]
                status = db.get("DBInstanceStatus")
            pending = db.get("PendingModifiedValues") or {}
            if status == "available" and "MasterUserPassword" not in pending:
                return password
            if time.monotonic() > end:
                raise ScratchFailed(f"the scratch {cluster_id or instance_id} did not apply its new password within "
                                    f"{deadline_seconds:.0f} s (status {status})")
            time.sleep(poll_seconds)
    except (ClientError, BotoCoreError) as exc:
        raise ScratchFailed(f"cannot set the scratch {instance_id}'s password: {type(exc).__name__}: "
                            f"{mask(str(exc))}") from exc


def check_revisions(source: Dsn, scratch: Dsn) -> tuple[str, str]:
    """The alembic revision of the source (read-only) and of the scratch; ScratchStale when they
    differ: the snapshot predates a migration that has shipped since."""
    import psycopg

    def revision(dsn: Dsn, read_only: bool) -> str:
        options = "-c default_transaction_read_only=on" if read_only else ""
        try:
            with psycopg.connect(dsn.conninfo(), options=options, connect_timeout=30, autocommit=True) as conn:
                exists = conn.execute("select to_regclass('alembic_version') is not null").fetchone()
                if not exists or not exists[0]:
                    return "(none)"
                rows = conn.execute("select version_num from alembic_version order by 1").fetchall()
        except psycopg.Error as exc:
            from .exceptions import DatabaseUnreachable

            raise DatabaseUnreachable(f"cannot read the alembic revision of {mask(dsn.conninfo())}: "
                                      f"{type(exc).__name__}") from exc
        return ",".join(str(r[0]) for r in rows) or "(none)"

    at_source, at_scratch = revision(source, True), revision(scratch, False)
    if at_source != at_scratch:
        raise ScratchStale(f"the scratch is at alembic revision {at_scratch} but the source is at {at_source}: the "
                           "snapshot predates a migration; start again with \"create_snapshot\": true")
    return at_source, at_scratch


def _instance_endpoint(instance_id: str, client: Any = None) -> tuple[str, int]:
    if not instance_id:
        raise InputError("neither MIGSAFE_SOURCE_HOST nor MIGSAFE_SOURCE_INSTANCE_ID is set")
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if client is None:
            import boto3

            client = boto3.client("rds")
        instance = client.describe_db_instances(DBInstanceIdentifier=instance_id)["DBInstances"][0]
        return str(instance["Endpoint"]["Address"]), int(instance["Endpoint"]["Port"])
    except (ClientError, BotoCoreError, KeyError, IndexError) as exc:
        raise ScratchFailed(f"cannot find the endpoint of RDS instance {instance_id}: {exc}") from exc


def _cluster_endpoint(cluster_id: str, client: Any = None) -> tuple[str, int]:
    """The writer endpoint of an Aurora source cluster."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if client is None:
            import boto3

            client = boto3.client("rds")
        cluster = client.describe_db_clusters(DBClusterIdentifier=cluster_id)["DBClusters"][0]
        return str(cluster["Endpoint"]), int(cluster["Port"])
    except (ClientError, BotoCoreError, KeyError, IndexError) as exc:
        raise ScratchFailed(f"cannot find the endpoint of Aurora cluster {cluster_id}: {exc}") from exc


def scratch_age(state_at: str, execution_start: str) -> dict[str, Any] | None:
    """How old the scratch's data is when the execution started: a clone's state is the source's
    latest restorable time (``state_at``); negative when the clone was taken after the start.
    None when either time is unknown (a snapshot restore reports its snapshot instead)."""
    from datetime import datetime

    def parse(text: str) -> datetime | None:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
        except ValueError:
            return None

    at, start = parse(state_at), parse(execution_start)
    if at is None or start is None:
        return None
    return {"state_at": at.isoformat(), "execution_start": start.isoformat(),
            "age_seconds": round((start - at).total_seconds(), 1)}


def _results_store(env: WorkerEnv) -> Any:
    from .store import open_store

    return open_store(env.results_url)


def _put_json(env: WorkerEnv, prefix: str, name: str, data: Any) -> str:
    store = _results_store(env)
    key = prefix + name
    store.put_bytes(key, (json.dumps(data, indent=2, default=str) + "\n").encode())
    return str(store.location(key))


def _settings(env: WorkerEnv, extra: Mapping[str, str]) -> Any:
    from .config import Settings

    return Settings.from_environ({**env.environ, **extra})


def _plan(request: RehearsalRequest, base_dir: Path) -> Any:
    from .plan import Plan

    data = dict(request.plan)
    data.pop("notify", None)  # the state machine publishes the verdict itself
    return Plan.from_mapping(data, base_dir)


# --- actions ----------------------------------------------------------------------------------
def do_backup(request: RehearsalRequest, env: WorkerEnv) -> dict[str, Any]:
    from .backup import BackupOptions, run_backup
    from .store import open_store

    plan = _plan(request, Path.cwd())
    settings = _settings(env, {})
    result = run_backup(
        env.source_dsn(), open_store(env.store_url), plan.source.qualified_tables,
        BackupOptions(compression=plan.backup.compression, zstd_level=plan.backup.zstd_level, jobs=plan.backup.jobs,
                      plan_sha256=plan.digest(), pg_bindir=settings.pg_bindir,
                      stall_timeout_s=plan.source.stall_timeout_seconds),
    )
    location = _put_json(env, request.results_prefix, "backup.json", result.model_dump(mode="json"))
    return {"action": "backup", "ok": True, "backup_id": result.backup_id, "bytes": result.bytes,
            "url": result.url, "result": location}


def do_rehearse(request: RehearsalRequest, env: WorkerEnv, workdir: Path) -> dict[str, Any]:
    from . import bundle
    from .rehearse import rehearse
    from .report import write_reports
    from .store import open_store

    base = workdir / "bundle"
    base.mkdir(parents=True, exist_ok=True)
    python: Path | None = None
    if request.bundle_sha256:
        bundle.fetch(open_store(env.store_url), request.bundle_sha256, base)
        python = bundle.install_requirements(base, workdir / "venv")
    plan = _plan(request, base)
    update: dict[str, Any] = {"scratch": plan.scratch.model_copy(update={"kind": "dsn", "dsn": None})}
    if python is not None:
        update["migration"] = plan.migration.model_copy(update={"python": str(python)})
    plan = type(plan).from_mapping({**plan.model_dump(mode="json"),
                                    **{k: v.model_dump(mode="json") for k, v in update.items()}}, base)
    source = env.source_dsn()
    scratch = scratch_dsn(request, env, source)
    revisions = check_revisions(source, scratch)
    age = scratch_age(env.environ.get("MIGSAFE_SCRATCH_STATE_AT", ""), env.environ.get("MIGSAFE_EXECUTION_START", ""))
    _put_json(env, request.results_prefix, "scratch.json", {
        "kind": env.environ.get("MIGSAFE_SCRATCH_KIND") or "rds-snapshot",
        "instance_id": env.environ.get("MIGSAFE_SCRATCH_INSTANCE_ID"),
        "cluster_id": env.environ.get("MIGSAFE_SCRATCH_CLUSTER_ID") or None,
        "revision": revisions[1], "age": age})
    settings = _settings(env, {"MIGSAFE_SOURCE_DSN": source.conninfo(),
                               "MIGSAFE_RUNTIME_DIR": str(workdir / "clusters")})
    reports = workdir / "reports"
    backup_id = _backup_of_this_execution(env, request.results_prefix)
    try:
        result = rehearse(plan, settings, scratch_dsn=scratch, report_dir=reports, backup_id=backup_id,
                          server_log=scratch_log(plan, env, scratch))
    except MigsafeError as exc:
        partial = getattr(exc, "result", None)
        if partial is not None:  # a fault after the rehearsal started: keep what it found
            _upload_reports(env, request.results_prefix, write_reports(partial, reports))
        raise
    locations = _upload_reports(env, request.results_prefix, write_reports(result, reports))
    return {"action": "rehearse", "ok": True, "verdict": result.verdict, "reasons": result.reasons,
            "scratch_age_seconds": (age or {}).get("age_seconds"), "result": locations.get("result.json")}


def scratch_dsn(request: RehearsalRequest, env: WorkerEnv, source: Dsn) -> Dsn:
    """The scratch endpoint with the source's user name and this execution's own password."""
    endpoint = env.endpoint_dsn("MIGSAFE_SCRATCH_ENDPOINT")
    instance_id = env.environ.get("MIGSAFE_SCRATCH_INSTANCE_ID", "")
    if not instance_id or not request.scratch_secret:
        raise InputError("the scratch instance id (MIGSAFE_SCRATCH_INSTANCE_ID) and its secret name are required")
    import boto3

    # clients named literally: tests/infra/test_iam.py finds the calls (and AWS_CALLS) by reading this code
    password = set_scratch_password(instance_id, request.scratch_secret, username=source.user or "postgres",
                                    execution=request.execution, execution_arn=env.environ.get("MIGSAFE_EXECUTION_ARN"),
                                    rds=boto3.client("rds"), secretsmanager=boto3.client("secretsmanager"),
                                    cluster_id=env.environ.get("MIGSAFE_SCRATCH_CLUSTER_ID", ""))
    return Dsn({**endpoint.params, "password": password})


def scratch_log(plan: Any, env: WorkerEnv, scratch: Dsn) -> Any:
    """Where a ``migration.command`` plan's statements are read: the scratch instance's csvlog
    (its parameter group turns it on; :mod:`migsafe.rdslog`). None for a plan alembic runs in-process."""
    if not plan.migration.command:
        return None
    import boto3

    from .rdslog import RdsCsvLog

    instance_id = env.environ.get("MIGSAFE_SCRATCH_INSTANCE_ID", "")
    wait = float(env.environ.get("MIGSAFE_SCRATCH_LOG_WAIT_SECONDS") or 120)
    return RdsCsvLog(instance_id, boto3.client("rds"), scratch, wait_seconds=wait)


def _backup_of_this_execution(env: WorkerEnv, prefix: str) -> str | None:
    """The backup the parallel branch took for this execution (so the source is not dumped twice)."""
    try:
        data = json.loads(_results_store(env).get_bytes(prefix + "backup.json"))
    except ObjectMissing:
        return None
    return str(data["backup_id"])


def _upload_reports(env: WorkerEnv, prefix: str, files: Mapping[str, Path]) -> dict[str, str]:
    store = _results_store(env)
    out = {}
    for name, path in files.items():
        store.put_bytes(prefix + name, Path(path).read_bytes())
        out[name] = str(store.location(prefix + name))
    return out


def do_restore(request: RestoreRequest, env: WorkerEnv, workdir: Path) -> dict[str, Any]:
    from .localpg import LocalCluster
    from .restore import RestoreOptions, run_restore
    from .store import open_store

    settings = _settings(env, {})
    endpoint = env.environ.get("MIGSAFE_TARGET_ENDPOINT", "")
    if (endpoint == SCRATCH_TARGET) != (request.target == SCRATCH_TARGET):
        raise InputError(f"target {request.target!r} and endpoint {endpoint!r} disagree; nothing was restored")
    if request.mode in ("merge", "diff") and request.target == SCRATCH_TARGET:
        raise InputError(f"mode {request.mode!r} needs a real target; a scratch starts empty. Nothing was changed")
    store = open_store(env.store_url)
    if request.mode == "diff":
        return _diff(store, request, env, settings.pg_bindir)
    opts = RestoreOptions(tables=request.tables, replace=request.replace, no_owner=request.target == SCRATCH_TARGET,
                          merge="keep" if request.mode == "merge" else None, pg_bindir=settings.pg_bindir)
    undo: dict[str, Any] | None = None
    if request.target == SCRATCH_TARGET:
        with LocalCluster.create("restore", runtime_dir=workdir / "clusters") as cluster:
            report = run_restore(store, request.backup_id, cluster.dsn(), opts)
    else:
        target = env.endpoint_dsn("MIGSAFE_TARGET_ENDPOINT")
        undo = backup_target_first(store, request, target, settings.pg_bindir)
        _put_json(env, request.results_prefix, "undo.json", undo)
        report = run_restore(store, request.backup_id, target, opts)
    body = {"ok": report.ok, "problems": report.problems(), "target": request.target,
            "backup_id": request.backup_id, "undo": undo, "report": report.model_dump(mode="json")}
    location = _put_json(env, request.results_prefix, "restore.json", body)
    return {"action": "restore", "ok": report.ok, "backup_id": request.backup_id, "target": request.target,
            "tables": [t.name for t in report.tables], "undo_backup_id": (undo or {}).get("backup_id"),
            "result": location}


def diff_summary(tables: list[Any]) -> list[str]:
    """One line per table of a diff, for the result and the Slack message."""
    out = []
    for t in tables:
        out.append(f"{t.name}: equal" if t.equal else
                   f"{t.name}: {t.only_in_backup:,} only in the backup (deleted since), "
                   f"{t.only_in_target:,} only in the target (written since), {t.changed:,} changed")
    return out


def _diff(store: Any, request: RestoreRequest, env: WorkerEnv, pg_bindir: str | None) -> dict[str, Any]:
    """Compare the backup with the target by primary key: the live tables are only read (the backup is
    loaded into a staging schema of the target, dropped afterwards)."""
    from .diff import run_diff

    report = run_diff(store, request.backup_id, env.endpoint_dsn("MIGSAFE_TARGET_ENDPOINT"), request.tables,
                      pg_bindir=pg_bindir)
    body = {"ok": True, "mode": "diff", "equal": report.equal, "problems": [], "summary": diff_summary(report.tables),
            "target": request.target, "backup_id": request.backup_id, "undo": None,
            "report": report.model_dump(mode="json")}
    location = _put_json(env, request.results_prefix, "restore.json", body)
    return {"action": "diff", "ok": True, "equal": report.equal, "backup_id": request.backup_id,
            "target": request.target, "tables": [t.name for t in report.tables], "undo_backup_id": None,
            "result": location}


def backup_target_first(store: Any, request: RestoreRequest, target: Dsn, pg_bindir: str | None) -> dict[str, Any]:
    """A fresh backup of the target's tables the restore will touch, taken before it touches them,
    so the restore can always be undone (``migsafe restore <undo backup id>``)."""
    import psycopg

    from . import inventory
    from .backup import BackupOptions, run_backup
    from .catalog import existing_tables
    from .identifiers import QualifiedName

    names = [QualifiedName.parse(t) for t in (request.tables or inventory.find_backup(store, request.backup_id).tables)]
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        present = sorted(existing_tables(conn, names), key=str)
    if not present:
        return {"backup_id": None, "tables": [], "reason": "the target has none of the tables: nothing to undo"}
    result = run_backup(target, store, present, BackupOptions(pg_bindir=pg_bindir))
    return {"backup_id": result.backup_id, "tables": [str(t) for t in present], "url": result.url}


# --- entry point ------------------------------------------------------------------------------
def parse_request(action: str, text: str) -> RehearsalRequest | RestoreRequest:
    try:
        data = json.loads(text)
        if action == "restore":
            return RestoreRequest.model_validate(data)
        return RehearsalRequest.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise PlanInvalid(f"invalid {action} request: {mask(str(exc)).splitlines()[0]}") from None


def read_request(environ: Mapping[str, str]) -> str:
    """The request the validate step stored at ``MIGSAFE_REQUEST_KEY`` in the store."""
    from .store import open_store

    url = environ.get("MIGSAFE_STORE_URL")
    if not url:
        raise InputError("worker environment lacks MIGSAFE_STORE_URL")
    try:
        return open_store(url).get_bytes(environ["MIGSAFE_REQUEST_KEY"]).decode()
    except ObjectMissing as exc:
        raise InputError(f"no request at {environ['MIGSAFE_REQUEST_KEY']} in {url}") from exc


def run(action: str, request_text: str, environ: Mapping[str, str], *, execution: str | None = None,
        workdir: Path | None = None) -> dict[str, Any]:
    """Run one action; return its summary. Raises MigsafeError subclasses."""
    if action not in ACTIONS:
        raise InputError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    if not request_text and environ.get("MIGSAFE_REQUEST_KEY"):
        request_text = read_request(environ)
    request = parse_request(action, request_text)
    env = WorkerEnv.from_environ(environ, execution or request.execution)
    with tempfile.TemporaryDirectory(prefix="migsafe-worker-", dir=workdir) as tmp:
        # the container runs as root and a throw-away cluster's server as `postgres`, which must
        # traverse this (0700) folder to reach its data directory under clusters/
        os.chmod(tmp, 0o711)
        if isinstance(request, RestoreRequest):
            return do_restore(request, env, Path(tmp))
        if action == "backup":
            return do_backup(request, env)
        return do_rehearse(request, env, Path(tmp))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(prog="python -m migsafe.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--request", help="the JSON request (default: $MIGSAFE_REQUEST)")
    parser.add_argument("--execution", help="the execution name (default: $MIGSAFE_EXECUTION)")
    args = parser.parse_args(argv)
    request_text = args.request or environ.get("MIGSAFE_REQUEST", "")
    try:
        if not request_text and environ.get("MIGSAFE_REQUEST_KEY"):
            request_text = read_request(environ)
        summary = run(args.action, request_text, environ, execution=args.execution)
    except MigsafeError as exc:
        summary = {"action": args.action, "ok": False, "error": type(exc).__name__, "message": mask(str(exc))}
        _record_error(args.action, request_text, environ, summary)
        print(json.dumps(summary), flush=True)
        return exc.exit_code
    except Exception as exc:  # a bug: still one line, still recorded, never a password
        summary = {"action": args.action, "ok": False, "error": type(exc).__name__, "message": mask(str(exc))}
        print(mask(traceback.format_exc()), file=sys.stderr)
        _record_error(args.action, request_text, environ, summary)
        print(json.dumps(summary), flush=True)
        return 3
    print(json.dumps(summary, default=str), flush=True)
    return 0


def _record_error(action: str, request_text: str, environ: Mapping[str, str], summary: dict[str, Any]) -> None:
    """Best effort: ``error.json`` next to the results, so the failure message can name the error."""
    try:
        prefix = json.loads(request_text)["results_prefix"]
        env = WorkerEnv.from_environ(environ)
        _put_json(env, prefix, f"error-{action}.json", summary)
    except Exception:  # noqa: S110 - reporting the error must not hide it
        pass


if __name__ == "__main__":
    sys.exit(main())
