"""The ECS entry point: ``python -m migsafe.worker backup|rehearse|restore``.

The state machine starts the task with container overrides:

- ``MIGSAFE_REQUEST``: the JSON request the validate Lambda produced (:class:`RehearsalRequest`
  or :class:`RestoreRequest`); ``--request`` overrides it for a run by hand;
- ``MIGSAFE_EXECUTION``: the execution's name; results go under ``results/<execution>/``;
- ``MIGSAFE_SCRATCH_ENDPOINT`` (rehearse) / ``MIGSAFE_TARGET_ENDPOINT`` (restore): ``host:port``,
  or ``scratch`` for a throw-away cluster inside the task.

The task definition supplies the rest: ``MIGSAFE_STORE_URL``, ``MIGSAFE_RESULTS_URL``, the
source's ``MIGSAFE_SOURCE_HOST/PORT/DBNAME`` (the host is looked up from
``MIGSAFE_SOURCE_INSTANCE_ID`` when not given) and, as ECS secrets from Secrets Manager,
``MIGSAFE_SOURCE_USERNAME`` / ``MIGSAFE_SOURCE_PASSWORD``. A scratch instance restored from the
source's snapshot accepts the same credentials.

Each action writes its JSON to the results store (``backup.json``, ``result.json`` + reports,
``restore.json``; ``error.json`` on a fault) and prints a one-line JSON summary. Exit codes: 0 when
the step produced its result (a FAIL verdict included: the evaluate step decides), 2 bad input,
3 an environment fault.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .dsn import Dsn, mask
from .exceptions import InputError, MigsafeError, PlanInvalid, ScratchFailed

ACTIONS = ("backup", "rehearse", "restore")
SCRATCH_TARGET = "scratch"
# The AWS API calls the worker makes (the store: backups, results, bundles; the source's endpoint):
# the ECS task role must allow each (tests/infra/test_iam.py checks the role and the code).
AWS_CALLS = ("s3:GetObject", "s3:ListBucket", "s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject",
             "rds:DescribeDBInstances")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RehearsalRequest(_Request):
    """What the backup and rehearse tasks run: the plan (its store set to the stack's bucket)."""

    kind: Literal["rehearsal"] = "rehearsal"
    plan: dict[str, Any]
    bundle_sha256: str | None = None
    execution: str
    results_prefix: str


class RestoreRequest(_Request):
    kind: Literal["restore"] = "restore"
    backup_id: str
    tables: list[str] | None = None
    target: str  # "scratch" or an RDS instance identifier (confirmed by the validate step)
    replace: bool = False
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
        if not host:
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
                      plan_sha256=plan.digest(), pg_bindir=settings.pg_bindir),
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
    scratch = env.endpoint_dsn("MIGSAFE_SCRATCH_ENDPOINT")
    settings = _settings(env, {"MIGSAFE_SOURCE_DSN": source.conninfo(),
                               "MIGSAFE_RUNTIME_DIR": str(workdir / "clusters")})
    reports = workdir / "reports"
    backup_id = _backup_of_this_execution(env, request.results_prefix)
    try:
        result = rehearse(plan, settings, scratch_dsn=scratch, report_dir=reports, backup_id=backup_id)
    except MigsafeError as exc:
        partial = getattr(exc, "result", None)
        if partial is not None:  # a fault after the rehearsal started: keep what it found
            _upload_reports(env, request.results_prefix, write_reports(partial, reports))
        raise
    locations = _upload_reports(env, request.results_prefix, write_reports(result, reports))
    return {"action": "rehearse", "ok": True, "verdict": result.verdict, "reasons": result.reasons,
            "result": locations.get("result.json")}


def _backup_of_this_execution(env: WorkerEnv, prefix: str) -> str | None:
    """The backup the parallel branch took for this execution (so the source is not dumped twice)."""
    from .exceptions import ObjectMissing

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
    opts = RestoreOptions(tables=request.tables, replace=request.replace, no_owner=request.target == SCRATCH_TARGET,
                          pg_bindir=settings.pg_bindir)
    store = open_store(env.store_url)
    if request.target == SCRATCH_TARGET:
        with LocalCluster.create("restore", runtime_dir=workdir / "clusters") as cluster:
            report = run_restore(store, request.backup_id, cluster.dsn(), opts)
    else:
        report = run_restore(store, request.backup_id, env.endpoint_dsn("MIGSAFE_TARGET_ENDPOINT"), opts)
    body = {"ok": report.ok, "problems": report.problems(), "target": request.target,
            "backup_id": request.backup_id, "report": report.model_dump(mode="json")}
    location = _put_json(env, request.results_prefix, "restore.json", body)
    return {"action": "restore", "ok": report.ok, "backup_id": request.backup_id, "target": request.target,
            "tables": [t.name for t in report.tables], "result": location}


# --- entry point ------------------------------------------------------------------------------
def parse_request(action: str, text: str) -> RehearsalRequest | RestoreRequest:
    try:
        data = json.loads(text)
        if action == "restore":
            return RestoreRequest.model_validate(data)
        return RehearsalRequest.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise PlanInvalid(f"invalid {action} request: {mask(str(exc)).splitlines()[0]}") from None


def run(action: str, request_text: str, environ: Mapping[str, str], *, execution: str | None = None,
        workdir: Path | None = None) -> dict[str, Any]:
    """Run one action; return its summary. Raises MigsafeError subclasses."""
    if action not in ACTIONS:
        raise InputError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
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
