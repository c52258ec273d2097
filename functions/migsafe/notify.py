"""Publish a verdict to SNS as an AWS Chatbot (Amazon Q Developer in chat applications) custom notification.

The SNS message body is a *custom notification* (schema version ``1.0``, ``source: custom``,
``textType: client-markdown``), so a Chatbot Slack channel subscribed to the results topic renders
it as one readable message: verdict, timings against thresholds, the reasons, the rollback path and
next steps. The ``verdict`` and ``plan`` message attributes let subscriptions filter (for example
"only FAILs"). Every string passes through :func:`migsafe.dsn.mask` before it leaves.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, ReadTimeoutError

from . import exceptions
from .dsn import mask, mask_tree
from .exceptions import NotifyFailed, TransientAwsError
from .report import (
    is_access_exclusive,
    longest_lock,
    masked,
    rollback_advice,
    seconds,
    threshold,
)
from .result import Result

TITLE_MAX = 120  # Slack shows the title as one bold line: keep it short
DESCRIPTION_MAX = 3500  # well under Chatbot's and Slack's limits for one message
ITEM_MAX = 400  # one reason, warning, next step or error
NEXT_STEPS_MAX = 8
KEYWORD_MAX = 40
CAUSE_MAX = 1500
SNS_MAX_BYTES = 256 * 1024
TRUNCATED = "\n_… truncated: see the full report for the rest._"

_TRANSIENT_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "RequestTimeout",
    "KMSThrottlingException",
}


# --- text helpers -----------------------------------------------------------------------------
def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (with an ellipsis), never leaving a code span open."""
    text = mask(text)
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - 2)].rstrip()
    if cut.count("`") % 2:
        cut = cut[: cut.rfind("`")].rstrip()
    return cut + " …"


def truncate_lines(text: str, limit: int = DESCRIPTION_MAX) -> str:
    """Keep whole lines of ``text`` up to ``limit`` characters, then say it was truncated."""
    if len(text) <= limit:
        return text
    budget = limit - len(TRUNCATED)
    kept: list[str] = []
    used = 0
    for line in text.split("\n"):
        if used + len(line) + 1 > budget:
            break
        kept.append(line)
        used += len(line) + 1
    # never leave a ``` block open
    if sum(line.startswith("```") for line in kept) % 2:
        while kept and not kept[-1].startswith("```"):
            kept.pop()
        if kept:
            kept.pop()
    return "\n".join(kept).rstrip() + TRUNCATED


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _timing(result: Result, step: str, limit_name: str) -> str:
    s = result.step(step)
    if s is None:
        return "not run"
    limit = threshold(result, limit_name)
    mark = ":white_check_mark:" if s.ok else ":x:"
    text = seconds(s.seconds)
    if limit is not None:
        over = s.seconds > limit
        mark = ":x:" if over or not s.ok else ":white_check_mark:"
        text += f" (limit {limit:g} s)"
    return f"{text} {mark}"


def _envelope(
    title: str,
    description: str,
    next_steps: list[str],
    keywords: list[str],
    *,
    event_id: str,
    summary: str,
    event_type: str,
    context: dict[str, str | None],
    related: list[str],
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "enableCustomActions": False,
        "summary": clip(summary, 200),
        "eventType": event_type,
        "additionalContext": {k: clip(v, 256) for k, v in context.items() if v},
    }
    if related:
        metadata["relatedResources"] = [clip(r, 512) for r in related]
    message = {
        "version": "1.0",
        "source": "custom",
        "id": clip(event_id, 128),
        "content": {
            "textType": "client-markdown",
            "title": clip(title, TITLE_MAX),
            "description": truncate_lines(description),
            "nextSteps": [clip(s, ITEM_MAX) for s in next_steps if s][:NEXT_STEPS_MAX],
            "keywords": [clip(k, KEYWORD_MAX) for k in keywords if k],
        },
        "metadata": metadata,
    }
    return mask_tree(message)  # type: ignore[no-any-return]


# --- messages ---------------------------------------------------------------------------------
def chatbot_message(result: Result, report_url: str | None = None, state: str | None = None) -> dict[str, Any]:
    """The Chatbot custom notification for a rehearsal's result.

    ``state`` names the Step Functions state that ran the rehearsal, so a FAIL on AWS says where.
    """
    r = masked(result)
    icon = ":white_check_mark:" if r.verdict == "PASS" else ":x:"
    rev = r.revisions
    lines = [
        f"*Plan* {_code(clip(r.plan, 80))} · *source* {_code(clip(r.source, 160))}",
        f"*Revisions* {_code(rev.source or '?')} → {_code(rev.upgrade_to)} → {_code(rev.downgrade_to)}",
        f"*Upgrade* {_timing(r, 'upgrade', 'upgrade_seconds')} · "
        f"*downgrade* {_timing(r, 'downgrade', 'downgrade_seconds')}",
    ]
    lock = longest_lock(r)
    lock_limit = threshold(r, "lock_seconds")
    if lock:
        relation, held, phase = lock
        over = lock_limit is not None and held > lock_limit
        lines.append(
            f"*Longest ACCESS EXCLUSIVE lock* {seconds(held)} on {_code(clip(relation, 120))} ({phase})"
            + (
                f" (limit {lock_limit:g} s) {':x:' if over else ':white_check_mark:'}"
                if lock_limit is not None
                else ""
            )
        )
    elif r.locks or r.tables:
        lines.append("*Longest ACCESS EXCLUSIVE lock* none held")
    rewritten = [t.name for t in r.tables if t.rewritten]
    if rewritten:
        lines.append("*Rewritten by the upgrade* " + ", ".join(_code(clip(n, 120)) for n in rewritten[:10]))
    extra = f" · *backup* {_code(r.backup.id)} ({_human_bytes(r.backup.bytes)})" if r.backup else ""
    if r.scratch.kind == "dsn":  # on AWS the state machine deletes the instance right after this message
        destroyed = "deleted by the state machine next"
    else:
        destroyed = "destroyed" if r.scratch.destroyed else "*NOT destroyed*"
    lines.append(f"*Total* {seconds(r.seconds)}{extra} · *scratch* {r.scratch.kind} {destroyed}")
    if state and r.verdict == "FAIL":
        lines.append(f"*Failed in state* {_code(clip(state, 80))}")
    if r.failed_step or r.error:
        lines.append(
            f"*Failed step* {_code(r.failed_step or '?')}: {clip(r.error or '', ITEM_MAX)}".rstrip(": ")
        )
    if r.reasons:
        lines += ["", f"*Why {r.verdict}*"] + [f"• {clip(x, ITEM_MAX)}" for x in r.reasons]
    if r.accepted:  # a PASS that would be a FAIL without the plan's [[expect]]: never silently
        lines += ["", "*Accepted differences* (the plan's [[expect]])"] + [f"• {clip(x, ITEM_MAX)}" for x in r.accepted]
    if r.warnings:
        lines += ["", "*Warnings*"] + [f"• {clip(x, ITEM_MAX)}" for x in r.warnings]
    sentence, command = rollback_advice(r)
    lines += ["", f"*Rollback* {clip(sentence, 600)}"]
    if command:
        lines.append(_code(command))
    if report_url:
        lines += ["", f"*Report* {clip(report_url, 500)}"]

    steps: list[str] = []
    if command:
        steps.append(f"Rollback: {command}")
    elif r.rollback == "downgrade":
        steps.append(f"Rollback: {r.rollback_downgrade()} (restores the data exactly)")
    steps += r.next_steps
    if report_url:
        steps.append(f"Full report: {report_url}")

    held_ae = any(is_access_exclusive(h.mode) for h in r.locks)
    return _envelope(
        f"{icon} {r.verdict} migsafe rehearsal: {clip(r.plan, 80)}",
        "\n".join(lines),
        steps,
        [r.verdict, r.plan],
        event_id=f"migsafe-{r.plan}-{r.started:%Y%m%dT%H%M%SZ}",
        summary=f"migsafe {r.verdict}: {r.plan}" + (f" ({r.reasons[0]})" if r.reasons else ""),
        event_type="migsafe.rehearsal",
        context={
            "verdict": r.verdict,
            "plan": r.plan,
            "rollback": r.rollback,
            "backupId": r.backup.id if r.backup else None,
            "accessExclusive": "yes" if held_ae else "no",
            "reportUrl": report_url,
        },
        related=[u for u in (report_url, r.backup.url if r.backup else None) if u],
    )


def _describe_cause(cause: str | None) -> str:
    """The useful part of a Step Functions ``Cause`` (Lambda error JSON, ECS task JSON or text)."""
    if not cause:
        return ""
    try:
        data = json.loads(cause)
    except ValueError:
        return cause
    if not isinstance(data, dict):
        return cause
    if "errorMessage" in data:  # Lambda
        kind = data.get("errorType")
        return f"{kind}: {data['errorMessage']}" if kind else str(data["errorMessage"])
    if "StoppedReason" in data or "Containers" in data:  # ECS RunTask .sync
        parts = [str(data.get("StoppedReason", "task stopped"))]
        for c in data.get("Containers", []) or []:
            if isinstance(c, dict):
                parts.append(
                    f"container {c.get('Name', '?')}: exit {c.get('ExitCode', '?')} {c.get('Reason', '')}"
                )
        return "; ".join(p.strip() for p in parts)
    if "Error" in data or "Cause" in data:  # nested Step Functions error
        return f"{data.get('Error', '')}: {_describe_cause(str(data.get('Cause', '')))}".strip(": ")
    return cause


def _hint(error: str) -> str:
    cls = getattr(exceptions, error, None)
    if isinstance(cls, type) and issubclass(cls, exceptions.InputError):
        return "The input is invalid and nothing was done: fix the plan or the execution input, then retry."
    if isinstance(cls, type) and issubclass(cls, exceptions.EnvironmentFault):
        return "A dependency failed (database, store, AWS or a PostgreSQL tool): check it, then retry."
    if error == "States.Timeout":
        return "A state timed out: check the worker's logs and the state's timeout, then start again."
    if error.startswith("States.") or error.startswith("Lambda.") or error.startswith("ECS."):
        return "The workflow itself failed: check the execution's event history and the task's logs."
    return "Check the execution's event history and logs, fix the cause, then start the rehearsal again."


def failure_message(plan: str, state: str, error: str, cause: str | None) -> dict[str, Any]:
    """A FAIL notification for a pipeline that stopped outside the rehearsal (Step Functions Catch)."""
    plan, state, error = mask(plan), mask(state), mask(error)
    detail = clip(_describe_cause(cause).replace("```", "'''"), CAUSE_MAX)
    lines = [
        f"*Plan* {_code(clip(plan, 80))}",
        f"The pipeline stopped in state {_code(clip(state, 120))} with {_code(clip(error, 200))} "
        "before a verdict was reached: the migration is *not* cleared to ship.",
        "A rehearsal never migrates or writes the source database.",
    ]
    if detail:
        lines += ["", "*Cause*", "```", detail, "```"]
    return _envelope(
        f":x: FAIL migsafe pipeline: {clip(plan, 80)}",
        "\n".join(lines),
        [
            _hint(error),
            f"Open the execution in the Step Functions console and look at the {state} state.",
            "Make sure the scratch database was destroyed (the cleanup state runs on every path).",
        ],
        ["FAIL", plan],
        event_id=f"migsafe-{plan}-{state}-failed",
        summary=f"migsafe FAIL: {plan} stopped in {state} ({error})",
        event_type="migsafe.pipeline-failed",
        context={"verdict": "FAIL", "plan": plan, "state": state, "error": error},
        related=[],
    )


# --- SNS --------------------------------------------------------------------------------------
def _subject(verdict: str, plan: str) -> str:
    """An SNS Subject (for e-mail subscribers): ASCII, one line, under 100 characters."""
    text = f"migsafe {verdict}: {plan}".encode("ascii", "replace").decode()
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:99]


def publish(
    message: dict[str, Any],
    topic_arn: str,
    *,
    verdict: str,
    plan: str,
    client: Any = None,
) -> str:
    """Publish ``message`` (a Chatbot custom notification) to ``topic_arn``; return the MessageId.

    Throttling and 5xx answers raise :class:`TransientAwsError` (retry); anything else raises
    :class:`NotifyFailed`.
    """
    body = json.dumps(mask_tree(message), ensure_ascii=False)
    if len(body.encode()) > SNS_MAX_BYTES:
        raise NotifyFailed(f"notification is {len(body.encode())} bytes, over SNS's {SNS_MAX_BYTES}")
    verdict, plan = mask(verdict), mask(plan)
    if client is None:
        import boto3

        client = boto3.client("sns")
    attributes = {
        "verdict": {"DataType": "String", "StringValue": verdict or "-"},
        "plan": {"DataType": "String", "StringValue": clip(plan, 256) or "-"},
    }
    try:
        resp = client.publish(
            TopicArn=topic_arn,
            Message=body,
            Subject=_subject(verdict, plan),
            MessageAttributes=attributes,
        )
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _TRANSIENT_CODES or status >= 500:
            raise TransientAwsError(f"SNS publish to {topic_arn}: {code or status} (retry)") from exc
        raise NotifyFailed(
            f"SNS publish to {topic_arn}: {code or status}: {mask(_client_message(exc))}"
        ) from exc
    except (ConnectionError, ReadTimeoutError) as exc:
        raise TransientAwsError(f"SNS publish to {topic_arn}: {type(exc).__name__} (retry)") from exc
    except BotoCoreError as exc:
        raise NotifyFailed(f"SNS publish to {topic_arn}: {type(exc).__name__}") from exc
    return str(resp["MessageId"])


def _client_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))[:300]


__all__ = ["chatbot_message", "clip", "failure_message", "publish", "truncate_lines"]
