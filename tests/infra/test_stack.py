"""Template assertions on the synthesized stack (one synthesis per session, see conftest)."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Match, Template
from infra_support import Synth

import app as cdk_app
from infra.janitor import SCRATCH_TAG
from infra.network import Network
from infra.notifications import Notifications
from infra.storage import Storage


def _statements(synth: Synth) -> list[dict[str, Any]]:
    out = []
    for policy in synth.resources("AWS::IAM::Policy").values():
        out += policy["Properties"]["PolicyDocument"]["Statement"]
    return out


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement.get("Action", [])
    return [action] if isinstance(action, str) else list(action)


def test_backup_bucket_is_kms_encrypted_with_a_rotating_customer_key(synth: Synth) -> None:
    # Given the synthesized stack
    buckets = synth.resources("AWS::S3::Bucket")
    # When we look at the backup bucket (the one with a lifecycle for backups)
    backups = next(b for k, b in buckets.items() if k.startswith("StorageBackups"))
    # Then it is SSE-KMS with the stack's key, and the key rotates
    rule = backups["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    key_ref = rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"]["Fn::GetAtt"][0]
    assert synth.template_json["Resources"][key_ref]["Properties"]["EnableKeyRotation"] is True
    assert backups["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    assert backups["Properties"]["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": Match.any_value()} or \
        "Ref" in backups["Properties"]["LoggingConfiguration"]["DestinationBucketName"]


def test_buckets_block_public_access_and_refuse_plain_http(synth: Synth) -> None:
    # Given / When the synthesized buckets and their policies
    buckets = synth.resources("AWS::S3::Bucket")
    policies = synth.resources("AWS::S3::BucketPolicy")
    # Then every bucket blocks all public access
    for bucket in buckets.values():
        assert bucket["Properties"]["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True}
    # and every bucket policy denies requests without TLS
    assert len(policies) == len(buckets)
    for policy in policies.values():
        denies = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in denies)


def test_backup_lifecycle_expires_backups_noncurrent_versions_and_multipart_uploads(synth: Synth) -> None:
    # Given the default context (retentionDays = 30)
    # When we read the backup bucket's lifecycle
    synth.template.has_resource_properties("AWS::S3::Bucket", {
        "LifecycleConfiguration": {"Rules": [{
            "Id": "expire-backups-and-results",
            "Status": "Enabled",
            "ExpirationInDays": 30,
            "NoncurrentVersionExpiration": {"NoncurrentDays": 7},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }]},
    })
    # Then (above) backups expire after retention_days, old versions after 7 days, uploads after 1 day


def test_object_lock_is_governance_mode_when_asked() -> None:
    # Given a storage construct built with object_lock
    stack = cdk.Stack(cdk.App(context=cdk_app.cdk_json_context()), "Lock")
    Storage(stack, "Storage", retention_days=14, object_lock=True)
    # When synthesized
    template = Template.from_stack(stack)
    # Then the bucket has Object Lock on with a governance default retention
    template.has_resource_properties("AWS::S3::Bucket", {
        "ObjectLockEnabled": True,
        "ObjectLockConfiguration": {"ObjectLockEnabled": "Enabled",
                                    "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 14}}},
    })


def test_object_lock_is_off_by_default(synth: Synth) -> None:
    # Given / When the default synthesis
    buckets = synth.resources("AWS::S3::Bucket").values()
    # Then no bucket has Object Lock
    assert all("ObjectLockEnabled" not in b["Properties"] for b in buckets)


def test_results_topic_is_kms_encrypted(synth: Synth) -> None:
    # Given / When the topic
    topics = synth.resources("AWS::SNS::Topic")
    # Then it is encrypted with a customer-managed key that rotates
    assert len(topics) == 1
    (topic,) = topics.values()
    key_id = topic["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0]
    assert synth.template_json["Resources"][key_id]["Properties"]["EnableKeyRotation"] is True


def test_slack_channel_is_configured_only_when_context_names_one(synth: Synth) -> None:
    # Given the default synthesis (no Slack context) and a construct with a workspace and channel
    stack = cdk.Stack(cdk.App(context=cdk_app.cdk_json_context()), "Slack")
    Notifications(stack, "Notifications", slack_workspace_id="T0123", slack_channel_id="C0456")
    # When synthesized
    template = Template.from_stack(stack)
    # Then only the second has an AWS Chatbot Slack channel subscribed to the topic
    assert not synth.resources("AWS::Chatbot::SlackChannelConfiguration")
    template.has_resource_properties("AWS::Chatbot::SlackChannelConfiguration", {
        "SlackWorkspaceId": "T0123", "SlackChannelId": "C0456",
        "SnsTopicArns": [{"Ref": Match.string_like_regexp("NotificationsResults")}],
    })


def test_scratch_delete_permission_is_limited_by_the_scratch_tag(synth: Synth) -> None:
    # Given every IAM statement in the stack
    statements = _statements(synth)
    # When we pick those allowing rds:DeleteDBInstance
    deletes = [s for s in statements if any(a.lower() == "rds:deletedbinstance" for a in _actions(s))]
    # Then there are some (state machine and janitor) and each carries the tag condition
    assert len(deletes) >= 2
    for s in deletes:
        assert s["Condition"] == {"StringLike": {f"rds:db-tag/{SCRATCH_TAG}": "*"}}, s
        assert "migsafe-scratch-*" in json.dumps(s["Resource"])


def test_worker_task_uses_the_dockerfile_asset_and_the_source_secret(synth: Synth) -> None:
    # Given the task definition
    (task,) = synth.resources("AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    # Then the image is the staged asset, built from functions/Dockerfile with the PG major build arg
    assert "container-assets" in json.dumps(container["Image"])
    assets = json.loads((synth.outdir / f"{synth.stack.artifact_id}.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    assert image["source"]["dockerFile"] == "Dockerfile"
    assert image["source"]["dockerBuildArgs"] == {"PG_MAJOR": "16"}
    staged = synth.outdir / image["source"]["directory"]
    assert (staged / "Dockerfile").is_file() and (staged / "migsafe" / "worker.py").is_file()
    # and the credentials come from Secrets Manager as ECS secrets, never as plain environment
    secrets = {s["Name"]: s["ValueFrom"] for s in container["Secrets"]}
    assert set(secrets) == {"MIGSAFE_SOURCE_USERNAME", "MIGSAFE_SOURCE_PASSWORD"}
    assert ":password::" in json.dumps(secrets["MIGSAFE_SOURCE_PASSWORD"])
    plain = {e["Name"] for e in container["Environment"]}
    assert not any("PASSWORD" in name or name == "MIGSAFE_SOURCE_DSN" for name in plain)
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"


def test_lambda_assets_need_no_docker_and_use_the_powertools_layer(synth: Synth) -> None:
    # Given the synthesized functions and the asset manifest
    functions = synth.resources("AWS::Lambda::Function")
    assets = json.loads((synth.outdir / f"{synth.stack.artifact_id}.assets.json").read_text())
    # Then each is a zip of the staged functions/ folder (no bundling image), traced, with the layer
    file_assets = [a for a in assets["files"].values() if a["source"].get("packaging") == "zip"]
    assert file_assets
    for asset in file_assets:
        staged = synth.outdir / asset["source"]["path"]
        assert (staged / "handlers").is_dir() and (staged / "migsafe").is_dir()
        assert not (staged / "Dockerfile").exists()
    assert len(functions) == 6
    for fn in functions.values():
        props = fn["Properties"]
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert "AWSLambdaPowertoolsPythonV3" in json.dumps(props["Layers"])
        assert props["Handler"].startswith("handlers.")


def test_both_state_machines_are_standard_with_all_logging_and_xray(synth: Synth) -> None:
    # Given the state machines
    machines = synth.resources("AWS::StepFunctions::StateMachine")
    # Then there are two, each Standard, logging ALL with execution data, X-Ray on
    assert sorted(k.split("StateMachine")[0] for k in machines) == ["WorkflowsPreMigration", "WorkflowsRestore"]
    for machine in machines.values():
        props = machine["Properties"]
        assert props["StateMachineType"] == "STANDARD"
        assert props["LoggingConfiguration"]["Level"] == "ALL"
        assert props["LoggingConfiguration"]["IncludeExecutionData"] is True
        assert props["TracingConfiguration"] == {"Enabled": True}


def test_janitor_runs_on_a_schedule_with_the_max_age_from_context(synth: Synth) -> None:
    # Given the janitor's rule and function
    rules = synth.resources("AWS::Events::Rule")
    (rule,) = rules.values()
    janitor = next(f for k, f in synth.resources("AWS::Lambda::Function").items() if k.startswith("Janitor"))
    # Then it runs hourly against the janitor function; its age limit is never below the state
    # machines' 8-hour timeout plus a margin (the context's 6 hours would cut a long execution short)
    assert rule["Properties"]["ScheduleExpression"] == "rate(1 hour)"
    target_ref = rule["Properties"]["Targets"][0]["Arn"]["Fn::GetAtt"][0]
    assert target_ref.startswith("JanitorFunction")
    assert janitor["Properties"]["Environment"]["Variables"]["MIGSAFE_SCRATCH_MAX_AGE_HOURS"] == "9"
    assert janitor["Properties"]["Handler"] == "handlers.janitor.handler"


def test_an_existing_vpc_is_imported_without_lookups() -> None:
    # Given a network construct pointed at an existing VPC, subnets, groups and a DB subnet group
    stack = cdk.Stack(cdk.App(context=cdk_app.cdk_json_context()), "Existing")
    net = Network(stack, "Network", vpc_id="vpc-0123", subnet_ids=["subnet-a", "subnet-b"],
                  availability_zones=["eu-west-1a", "eu-west-1b"], worker_security_group_id="sg-worker",
                  db_subnet_group_name="dbsubnets", scratch_security_group_id="sg-scratch")
    # When synthesized
    template = Template.from_stack(stack)
    # Then nothing network-related is created and the given ids are used
    template.resource_count_is("AWS::EC2::VPC", 0)
    template.resource_count_is("AWS::EC2::SecurityGroup", 0)
    template.resource_count_is("AWS::RDS::DBSubnetGroup", 0)
    assert net.db_subnet_group_name == "dbsubnets" and net.scratch_security_group_id == "sg-scratch"
    assert net.assign_public_ip is False
