"""SNS notifications in AWS Chatbot's custom-notification format, read back through SQS (moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from migsafe.exceptions import NotifyFailed, TransientAwsError
from migsafe.notify import DESCRIPTION_MAX, TITLE_MAX, chatbot_message, failure_message, publish
from migsafe.result import Result
from moto import mock_aws

EVENTS = Path(__file__).resolve().parent.parent / "events"
REGION = "eu-west-1"
SECRET = "hunter2-Zq9"

# AWS Chatbot / Amazon Q Developer in chat applications, "Custom notifications": event schema and
# parameter table (version must be "1.0", source must be "custom", only "client-markdown" textType,
# nextSteps and keywords are string lists, metadata has threadId, summary, eventType,
# relatedResources, additionalContext (string values) and enableCustomActions).
_STRINGS = {"type": "array", "items": {"type": "string", "minLength": 1}}
CHATBOT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "source", "content"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": "1.0"},
        "source": {"const": "custom"},
        "id": {"type": "string", "minLength": 1},
        "content": {
            "type": "object",
            "required": ["description"],
            "additionalProperties": False,
            "properties": {
                "textType": {"enum": ["client-markdown"]},
                "title": {"type": "string", "minLength": 1, "maxLength": TITLE_MAX},
                "description": {"type": "string", "minLength": 1, "maxLength": DESCRIPTION_MAX},
                "nextSteps": {**_STRINGS, "maxItems": 10},
                "keywords": {**_STRINGS, "maxItems": 10},
            },
        },
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "threadId": {"type": "string"},
                "summary": {"type": "string"},
                "eventType": {"type": "string"},
                "relatedResources": _STRINGS,
                "additionalContext": {"type": "object", "additionalProperties": {"type": "string"}},
                "enableCustomActions": {"type": "boolean"},
            },
        },
    },
}

_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """A small JSON-Schema subset validator: type, const, enum, required, properties,
    additionalProperties, items, minLength, maxLength, maxItems."""
    errors: list[str] = []
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "type" in schema and not isinstance(value, _TYPES[schema["type"]]):
        return [*errors, f"{path}: expected {schema['type']}, got {type(value).__name__}"]
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{path}: {len(value)} chars, over {schema['maxLength']}")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{path}: {len(value)} items, over {schema['maxItems']}")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        errors += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errors += schema_errors(v, props[k], f"{path}.{k}")
            elif extra is False:
                errors.append(f"{path}: unexpected {k}")
            elif isinstance(extra, dict):
                errors += schema_errors(v, extra, f"{path}.{k}")
    return errors


def load(name: str) -> Result:
    return Result.model_validate_json((EVENTS / name).read_text())


@dataclass
class Topic:
    arn: str
    sns: Any
    sqs: Any
    all_url: str
    fails_url: str

    def drain(self, url: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            resp = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = resp.get("Messages", [])
            if not messages:
                return out
            for m in messages:
                out.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


@pytest.fixture
def topic(monkeypatch: pytest.MonkeyPatch) -> Iterator[Topic]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        sns = boto3.client("sns", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        arn = sns.create_topic(Name="migsafe-results")["TopicArn"]
        urls = {}
        for name in ("all", "fails"):
            url = sqs.create_queue(QueueName=f"migsafe-{name}")["QueueUrl"]
            qarn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            attrs = {"RawMessageDelivery": "false"}
            if name == "fails":
                attrs["FilterPolicy"] = json.dumps({"verdict": ["FAIL"]})
            sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, Attributes=attrs)
            urls[name] = url
        yield Topic(arn, sns, sqs, urls["all"], urls["fails"])


def _publish(result: Result, topic: Topic, url: str | None = None) -> str:
    return publish(
        chatbot_message(result, url), topic.arn, verdict=result.verdict, plan=result.plan, client=topic.sns
    )


# --- through SNS and SQS ----------------------------------------------------------------------
def test_pass_and_fail_arrive_as_valid_chatbot_notifications_with_attributes(topic: Topic) -> None:
    # Given
    passed, failed = load("result_pass.json"), load("result_fail.json")
    # When
    ids = [_publish(passed, topic, "https://example.invalid/r/report.html"), _publish(failed, topic)]
    envelopes = topic.drain(topic.all_url)
    # Then
    assert [e["MessageId"] for e in envelopes] == ids
    for envelope, result in zip(envelopes, (passed, failed), strict=True):
        assert envelope["Type"] == "Notification" and envelope["TopicArn"] == topic.arn
        assert envelope["MessageAttributes"]["verdict"] == {"Type": "String", "Value": result.verdict}
        assert envelope["MessageAttributes"]["plan"] == {"Type": "String", "Value": result.plan}
        message = json.loads(envelope["Message"])
        assert schema_errors(message, CHATBOT_SCHEMA) == []
        assert message["content"]["keywords"] == [result.verdict, result.plan]
        assert message["metadata"]["enableCustomActions"] is False
    pass_msg, fail_msg = (json.loads(e["Message"])["content"] for e in envelopes)
    assert pass_msg["title"].startswith(":white_check_mark: PASS")
    assert fail_msg["title"].startswith(":x: FAIL")
    assert "*Upgrade* 41.8 s (limit 120 s) :white_check_mark:" in pass_msg["description"]
    assert "*Upgrade* 143.2 s (2 min 23 s) (limit 120 s) :x:" in fail_msg["description"]
    assert "137.9 s (2 min 18 s) on `public.user_application_access` (upgrade)" in fail_msg["description"]
    assert "• upgrade took 143.2 s, over the 120 s threshold" in fail_msg["description"]
    assert "alembic downgrade -1" in pass_msg["description"]
    # the downgrade first, then the restore (restore refuses a schema the upgrade changed)
    assert any(
        s.startswith("Rollback: alembic downgrade 3b1f0c2a9d4e && migsafe restore --store s3://acme-migsafe-backups/prod")
        for s in fail_msg["nextSteps"]
    ), fail_msg["nextSteps"]
    assert "Full report: https://example.invalid/r/report.html" in pass_msg["nextSteps"]


def test_a_fail_only_subscription_receives_only_the_fail(topic: Topic) -> None:
    # Given
    passed, failed = load("result_pass.json"), load("result_fail.json")
    # When
    _publish(passed, topic)
    fail_id = _publish(failed, topic)
    # Then
    fails = topic.drain(topic.fails_url)
    assert [e["MessageId"] for e in fails] == [fail_id]
    assert json.loads(fails[0]["Message"])["content"]["keywords"][0] == "FAIL"
    assert len(topic.drain(topic.all_url)) == 2


def test_a_dsn_password_in_the_input_never_leaves(topic: Topic) -> None:
    # Given: a result that (wrongly) carries passwords in several places
    result = load("result_fail.json")
    result.source = f"postgresql://app:{SECRET}@db.internal:5432/app"
    result.error = f"connection failed: host=db password={SECRET} user=app"
    result.failed_step = "upgrade"
    result.reasons.insert(0, f"alembic could not reach postgresql://admin:{SECRET}@db/app")
    result.next_steps.append(f"retry with password='{SECRET}'")
    # When
    _publish(result, topic, f"https://u:{SECRET}@reports.invalid/x")
    publish(
        failure_message(
            f"plan password={SECRET}", "Backup", "ToolFailed", f"pg_dump: postgresql://a:{SECRET}@h/d"
        ),
        topic.arn,
        verdict="FAIL",
        plan=f"postgresql://a:{SECRET}@h/d",
        client=topic.sns,
    )
    # Then
    raw = json.dumps(topic.drain(topic.all_url))
    assert raw.count("Notification") >= 2
    assert SECRET not in raw
    assert "postgresql://app:***@db.internal:5432/app" in raw


def test_failure_message_names_the_state_and_error_and_reads_lambda_and_ecs_causes(topic: Topic) -> None:
    # Given
    lambda_cause = json.dumps(
        {
            "errorType": "StoreUnreachable",
            "errorMessage": "S3 put s3://b/k: AccessDenied",
            "stackTrace": ["..."] * 50,
        }
    )
    ecs_cause = json.dumps(
        {
            "StoppedReason": "Essential container in task exited",
            "Containers": [{"Name": "worker", "ExitCode": 3, "Reason": "OutOfMemoryError"}],
        }
    )
    # When
    lam = failure_message("enum-uppercase", "Backup", "StoreUnreachable", lambda_cause)
    ecs = failure_message("enum-uppercase", "Rehearse", "States.TaskFailed", ecs_cause)
    long = failure_message("enum-uppercase", "Report", "States.Runtime", "x" * 20_000)
    publish(lam, topic.arn, verdict="FAIL", plan="enum-uppercase", client=topic.sns)
    # Then
    for message in (lam, ecs, long):
        assert schema_errors(message, CHATBOT_SCHEMA) == []
        assert message["content"]["title"] == ":x: FAIL migsafe pipeline: enum-uppercase"
        assert message["content"]["keywords"] == ["FAIL", "enum-uppercase"]
    assert "state `Backup` with `StoreUnreachable`" in lam["content"]["description"]
    assert "StoreUnreachable: S3 put s3://b/k: AccessDenied" in lam["content"]["description"]
    assert "stackTrace" not in lam["content"]["description"]
    assert "A dependency failed" in lam["content"]["nextSteps"][0]
    assert "container worker: exit 3 OutOfMemoryError" in ecs["content"]["description"]
    assert len(long["content"]["description"]) < 2000 and long["content"]["description"].endswith("```")
    (envelope,) = topic.drain(topic.fails_url)
    assert envelope["MessageAttributes"]["verdict"]["Value"] == "FAIL"


# --- limits -----------------------------------------------------------------------------------
def test_a_huge_result_is_truncated_safely_and_says_so() -> None:
    # Given
    result = load("result_fail.json")
    result.plan = "p" * 500
    result.reasons = [f"reason {i}: " + "`x` " * 200 for i in range(60)]
    result.next_steps = [f"step {i}" for i in range(40)]
    # When
    message = chatbot_message(result)
    # Then
    content = message["content"]
    assert schema_errors(message, CHATBOT_SCHEMA) == []
    assert len(content["title"]) <= TITLE_MAX
    assert len(content["description"]) <= DESCRIPTION_MAX
    assert content["description"].endswith("truncated: see the full report for the rest._")
    assert all(line.count("`") % 2 == 0 for line in content["description"].splitlines())
    assert len(content["nextSteps"]) <= 8


# --- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("Throttling", 400, TransientAwsError),
        ("InternalError", 500, TransientAwsError),
        ("ServiceUnavailable", 503, TransientAwsError),
        ("AuthorizationError", 403, NotifyFailed),
        ("InvalidParameter", 400, NotifyFailed),
    ],
)
def test_publish_maps_sns_errors(code: str, status: int, expected: type[Exception]) -> None:
    # Given
    client = boto3.client("sns", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_client_error(
        "publish", service_error_code=code, service_message=f"password={SECRET}", http_status_code=status
    )
    # When
    with stub, pytest.raises(expected) as info:
        publish(
            {"version": "1.0"},
            "arn:aws:sns:eu-west-1:123456789012:t",
            verdict="PASS",
            plan="p",
            client=client,
        )
    # Then
    assert isinstance(info.value.__cause__, ClientError)
    assert SECRET not in str(info.value)
    assert code in str(info.value)
    assert not isinstance(info.value, NotifyFailed if expected is TransientAwsError else TransientAwsError)


def test_publish_to_a_missing_topic_is_a_notify_failure(topic: Topic) -> None:
    # Given
    missing = topic.arn + "-gone"
    # When / Then
    with pytest.raises(NotifyFailed) as info:
        _publish(
            load("result_pass.json"), Topic(missing, topic.sns, topic.sqs, topic.all_url, topic.fails_url)
        )
    assert isinstance(info.value.__cause__, ClientError)
    assert topic.drain(topic.all_url) == []
