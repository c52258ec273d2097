"""``migsafe bundle``: push the plan's migration bundle to its store (the gate does it by itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from . import bundle
from .plan import Plan
from .store import open_store

bundle_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Migration bundles: the alembic code the AWS worker runs.")


@bundle_app.callback()
def _bundle() -> None:
    """Migration bundles: the alembic code the AWS worker runs, stored under its sha256."""


@bundle_app.command("push")
def push(
    plan: Annotated[Path, typer.Option("--plan", "-p", help="Plan file (TOML or JSON).")],
    store: Annotated[str | None, typer.Option("--store", help="Store URL (default: the plan's store).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
) -> None:
    """Tar the alembic directory and the plan's bundle paths; store it under its sha256; print the digest.

    \b
    Examples:
      migsafe bundle push --plan plan.toml
    """
    p = Plan.load(plan)
    target = open_store(store or p.store.url, p.base_dir)
    result = bundle.push(p, target)
    typer.echo(f"bundle {result.sha256}: {len(result.files)} files, {result.bytes} bytes "
               f"{'uploaded to' if result.uploaded else 'already in'} {target.location(result.key)}", err=True)
    if json_out:
        typer.echo(json.dumps({"sha256": result.sha256, "key": result.key, "url": target.location(result.key),
                               "bytes": result.bytes, "files": result.files, "uploaded": result.uploaded}))
    else:
        typer.echo(result.sha256)


def gate(
    state_machine: Annotated[str, typer.Option("--state-machine", help="The pre-migration state machine's ARN "
                                                                        "(stack output PreMigrationStateMachineArn).")],
    plan: Annotated[Path, typer.Option("--plan", "-p", help="Plan file (TOML or JSON).")],
    store: Annotated[str | None, typer.Option("--store", help="The stack's store, where the worker fetches bundles "
                                                             "(stack output StoreUrl; default: the plan's store).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the execution to its verdict.")] = False,
    timeout: Annotated[str, typer.Option("--timeout", help="How long --wait follows (e.g. 90s, 30m, 2h).")] = "30m",
    create_snapshot: Annotated[bool, typer.Option("--create-snapshot", help="Snapshot the source first instead "
                                                                            "of using its latest snapshot.")] = False,
    attempt: Annotated[int, typer.Option("--attempt", help="Rehearse the same change again (after a fault): "
                                                           "2, 3, ... give a new execution name.")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON on stdout.")] = False,
) -> None:
    """Gate a deploy on the pre-migration state machine: push the bundle, start (or follow) the
    execution for this change, print each state, exit 0 PASS / 1 FAIL / 2 bad input / 3 fault.

    \b
    Examples:
      migsafe gate --state-machine arn:aws:states:REGION:ACCOUNT:stateMachine:NAME --plan plan.toml --wait
    """
    import boto3

    from . import gate as gate_mod
    from .dsn import mask
    from .exceptions import MigsafeError

    def say(line: str) -> None:
        typer.echo(line, err=json_out)

    try:
        seconds = gate_mod.parse_duration(timeout)
        gate_mod.check_state_machine_arn(state_machine)
        p = Plan.load(plan)
        target = open_store(store or p.store.url, p.base_dir)
        if not target.url.startswith("s3://"):
            raise gate_mod.InputError(f"the gate pushes the bundle to the stack's S3 store; {target.url} is not one "
                                      "(pass --store s3://<bucket>/backups)")
        region = state_machine.split(":")[3]
        outcome = gate_mod.run_gate(p, target, boto3.client("stepfunctions", region_name=region), state_machine,
                                    wait=wait, timeout_seconds=seconds, say=say, create_snapshot=create_snapshot,
                                    attempt=attempt)
    except MigsafeError as exc:
        typer.echo(f"error: {type(exc).__name__}: {mask(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:  # boto3 without credentials/region, network: an environment fault
        typer.echo(f"error: {type(exc).__name__}: {mask(str(exc))}", err=True)
        raise typer.Exit(3) from None
    if outcome.report_url or outcome.result_url:
        say(f"report: {outcome.report_url or outcome.result_url}")
    if outcome.status == "RUNNING" and wait:
        say(f"timeout: the execution is still running after {timeout}: {outcome.execution_arn} "
            "(run the gate again to follow it)")
    elif outcome.status == "RUNNING":
        say(f"running: {outcome.execution_arn}")
    elif outcome.exit_code == 0:
        say("PASS")
    else:
        where = f" in {outcome.failed_state}" if outcome.failed_state else ""
        say(f"{outcome.verdict or 'FAIL'}: {outcome.status}{where}" + (f" ({outcome.error})" if outcome.error else ""))
    if json_out:
        typer.echo(json.dumps(outcome.summary()))
    raise typer.Exit(outcome.exit_code)


# --- restore approvals -------------------------------------------------------------------------
REJECTED = "RestoreRejected"  # the error the restore state machine catches (infra/workflows.py)


def answer_approval(sfn: Any, token: str, *, approve: bool, who: str, reason: str | None = None) -> None:
    """Answer a restore's approval request (its task token, from the Slack message)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from .exceptions import EnvironmentFault, InputError

    token = (token or "").strip()
    if not token:
        raise InputError("give the --token from the approval message")
    try:
        if approve:
            sfn.send_task_success(taskToken=token, output=json.dumps({"approved": True, "by": who}))
        else:
            sfn.send_task_failure(taskToken=token, error=REJECTED,
                                  cause=f"rejected by {who}" + (f": {reason}" if reason else ""))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"TaskDoesNotExist", "TaskTimedOut", "InvalidToken"}:
            raise InputError(f"this approval request is no longer open ({code}): nothing was changed") from exc
        raise EnvironmentFault(f"Step Functions {code}: {exc}") from exc
    except BotoCoreError as exc:
        raise EnvironmentFault(f"Step Functions unreachable: {type(exc).__name__}") from exc


def _answer(token: str, region: str | None, approve: bool, reason: str | None) -> None:
    import getpass

    import boto3

    from .dsn import mask
    from .exceptions import MigsafeError

    try:
        answer_approval(boto3.client("stepfunctions", region_name=region), token, approve=approve,
                        who=getpass.getuser(), reason=reason)
    except MigsafeError as exc:
        typer.echo(f"error: {type(exc).__name__}: {mask(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:  # no credentials/region, network: an environment fault
        typer.echo(f"error: {type(exc).__name__}: {mask(str(exc))}", err=True)
        raise typer.Exit(3) from None
    typer.echo("approved: the restore goes ahead" if approve else "rejected: nothing will be restored")


def approve(
    token: Annotated[str, typer.Option("--token", help="The task token from the approval message.")],
    region: Annotated[str | None, typer.Option("--region", help="The state machine's region.")] = None,
) -> None:
    """Approve a restore into a real instance (the approval message in Slack gives the command).

    \b
    Examples:
      migsafe approve --region eu-west-1 --token TOKEN
    """
    _answer(token, region, True, None)


def reject(
    token: Annotated[str, typer.Option("--token", help="The task token from the approval message.")],
    region: Annotated[str | None, typer.Option("--region", help="The state machine's region.")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (shown in the FAIL message).")] = None,
) -> None:
    """Reject a restore into a real instance: the execution ends without touching the target.

    \b
    Examples:
      migsafe reject --region eu-west-1 --token TOKEN --reason "wrong backup"
    """
    _answer(token, region, False, reason)
