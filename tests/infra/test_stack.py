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


# --- issue 8: defects 1, 4, 11 ------------------------------------------------------------------
def _resolve(value: Any, template: dict[str, Any], region: str, partition: str) -> Any:
    """A tiny CloudFormation evaluator: Ref to pseudo parameters, Fn::Join, Fn::If on Fn::Equals."""
    if isinstance(value, dict):
        if "Ref" in value:
            return {"AWS::Region": region, "AWS::Partition": partition}[value["Ref"]]
        if "Fn::Join" in value:
            sep, parts = value["Fn::Join"]
            return sep.join(_resolve(p, template, region, partition) for p in parts)
        if "Fn::If" in value:
            name, yes, no = value["Fn::If"]
            left, right = template["Conditions"][name]["Fn::Equals"]
            same = _resolve(left, template, region, partition) == _resolve(right, template, region, partition)
            return _resolve(yes if same else no, template, region, partition)
        raise ValueError(value)
    return value


def test_both_state_machines_may_use_the_results_topics_key(synth: Synth) -> None:
    # Given the results topic's customer-managed key and each state machine's role
    (topic,) = synth.resources("AWS::SNS::Topic").values()
    key = topic["Properties"]["KmsMasterKeyId"]
    roles = [m["Properties"]["RoleArn"]["Fn::GetAtt"][0] for m in synth.resources("AWS::StepFunctions::StateMachine").values()]
    assert len(roles) == 2
    for role in roles:
        # When we collect what the role's policies allow on that key
        allowed = {a for p in synth.resources("AWS::IAM::Policy").values() if {"Ref": role} in p["Properties"]["Roles"]
                   for s in p["Properties"]["PolicyDocument"]["Statement"] if s["Resource"] == key for a in _actions(s)}
        # Then SNS can encrypt the message on its behalf
        assert {"kms:GenerateDataKey*", "kms:Decrypt"} <= allowed, role


def test_chatbot_may_use_the_topic_key_only_for_this_account(synth: Synth) -> None:
    # Given the results topic's key policy
    keys = [k for k in synth.resources("AWS::KMS::Key").values() if k["Properties"]["Description"] == "migsafe results topic"]
    statements = keys[0]["Properties"]["KeyPolicy"]["Statement"]
    # When we pick the statement for AWS Chatbot
    (chatbot,) = [s for s in statements if s.get("Principal") == {"Service": "chatbot.amazonaws.com"}]
    # Then it is limited to this account
    assert chatbot["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def test_source_kms_keys_are_granted_through_rds_only_when_given() -> None:
    # Given a stack without and one with sourceKmsKeyArns
    key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    without = _kms_statements(cdk_app.cdk_json_context())
    given = _kms_statements({**cdk_app.cdk_json_context(), "sourceKmsKeyArns": key})
    # Then only the second grants CreateGrant/DescribeKey/Decrypt on that key, via RDS in the deploy region
    assert without == []
    (statement,) = given
    assert sorted(statement["Action"]) == ["kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey"]
    assert statement["Resource"] == key
    assert statement["Condition"] == {"StringEquals": {"kms:ViaService": {"Fn::Join": [
        "", ["rds.", {"Ref": "AWS::Region"}, ".amazonaws.com"]]}}}


def _kms_statements(context: dict[str, Any]) -> list[dict[str, Any]]:
    from infra.settings import DeploySettings
    from infra.stack import MigsafeStack

    app = cdk.App(context=context)
    stack = MigsafeStack(app, "Kms", settings=DeploySettings.from_node(app.node))
    template = Template.from_stack(stack).to_json()
    # a role's inline policy over IAM's size limit overflows into a managed policy (CDK splits it)
    return [s for r in template["Resources"].values() if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
            for s in r["Properties"]["PolicyDocument"]["Statement"] if "kms:CreateGrant" in _actions(s)]


def test_a_malformed_source_kms_key_arn_is_refused() -> None:
    # Given a context value that is a key id, not an ARN
    from infra.settings import DeploySettings

    app = cdk.App(context={"sourceKmsKeyArns": "1234abcd-12ab"})
    # When read / Then it is refused with a message naming the key
    try:
        DeploySettings.from_node(app.node)
    except ValueError as exc:
        assert "1234abcd-12ab" in str(exc)
    else:
        raise AssertionError("a malformed sourceKmsKeyArns was accepted")


def test_state_machine_log_groups_are_vended_log_groups(synth: Synth) -> None:
    # Given each state machine's logging destination
    groups = synth.resources("AWS::Logs::LogGroup")
    for machine in synth.resources("AWS::StepFunctions::StateMachine").values():
        (destination,) = machine["Properties"]["LoggingConfiguration"]["Destinations"]
        group = groups[destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]]
        # Then its name is under /aws/vendedlogs/states/ and names the stack
        assert group["Properties"]["LogGroupName"].startswith(f"/aws/vendedlogs/states/{synth.stack.stack_name}-")


def test_powertools_layer_arn_follows_partition_and_region(synth: Synth) -> None:
    # Given the environment-agnostic template's layer reference
    layers = {json.dumps(f["Properties"]["Layers"]) for f in synth.resources("AWS::Lambda::Function").values()
              if "Layers" in f["Properties"]}
    assert len(layers) == 1
    (layer,) = json.loads(layers.pop())
    # When resolved for a commercial, a GovCloud and a China region
    arns = {r: _resolve(layer, synth.template_json, r, p)
            for r, p in [("eu-west-1", "aws"), ("us-gov-west-1", "aws-us-gov"), ("cn-north-1", "aws-cn")]}
    # Then each is in its partition, published by that partition's account
    assert arns["eu-west-1"].startswith("arn:aws:lambda:eu-west-1:017000801446:layer:AWSLambdaPowertoolsPythonV3")
    assert arns["us-gov-west-1"].startswith("arn:aws-us-gov:lambda:us-gov-west-1:165093116878:layer:")
    assert arns["cn-north-1"].startswith("arn:aws-cn:lambda:cn-north-1:498634801083:layer:")


def test_powertools_layer_arn_is_literal_for_a_known_region() -> None:
    # Given a stack deployed to a known GovCloud region
    from infra.lambdas import powertools_layer_arn

    stack = cdk.Stack(cdk.App(context=cdk_app.cdk_json_context()), "Gov",
                      env=cdk.Environment(account="123456789012", region="us-gov-east-1"))
    # When the layer ARN is built / Then it is GovCloud's, without conditions
    assert stack.resolve(powertools_layer_arn(stack, 27)) == \
        "arn:aws-us-gov:lambda:us-gov-east-1:165087284144:layer:AWSLambdaPowertoolsPythonV3-python311-x86_64:27"


def test_chatbot_configuration_name_is_unique_per_stack() -> None:
    # Given two stacks with Slack configured
    names = []
    for stack_name in ("MigsafeStaging", "MigsafeProd"):
        stack = cdk.Stack(cdk.App(context=cdk_app.cdk_json_context()), stack_name)
        Notifications(stack, "Notifications", slack_workspace_id="T0123", slack_channel_id="C0456")
        (config,) = Template.from_stack(stack).find_resources("AWS::Chatbot::SlackChannelConfiguration").values()
        names.append(config["Properties"]["ConfigurationName"])
    # Then their Chatbot configuration names differ and name the stack
    assert names == ["migsafe-results-MigsafeStaging", "migsafe-results-MigsafeProd"]


def test_deploy_docs_say_the_sources_security_group_must_admit_the_worker() -> None:
    # Given docs/deploy.md / Then it tells the deployer to open the source's security group to the worker
    text = (cdk_app.ROOT / "docs" / "deploy.md").read_text()
    assert "source's security group must admit the worker" in text
