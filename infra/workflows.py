"""The two Standard state machines: the pre-migration gate and the console restore.

Both are plain ASL (Task, Choice, Wait, Parallel, Pass, Succeed, Fail) so the synthesized
definitions can be executed by moto's Step Functions interpreter in tests. Retry and Catch match the
package's exception names (``TransientAwsError``, ``ScratchFailed``, ...) plus the services' own
throttling errors.

Pre-migration (input: ``{"plan": {...}, "bundle_sha256"?: "...", "create_snapshot"?: false}``)::

    Validate plan -> Prepare (parallel: Back up tables | Read source settings -> snapshot ->
    Restore scratch instance -> wait until available) -> Rehearse on scratch -> Evaluate verdict ->
    Format result message -> Publish result -> Delete scratch instance -> Delete run snapshot ->
    Delete scratch secret -> Succeed / Fail on the verdict

From ``Prepare`` on, every Task and Parallel state catches ``States.ALL`` into a ``<state> failed``
marker that records the state's name and leads to ``Delete scratch after failure`` (which
tolerates an instance that was never created), the run's snapshot and the scratch secret, then a
FAIL message naming the state and the error.

``States.Runtime`` (a path that is absent from a state's input or result) is the one error no
Catch sees, so no state that can run after the scratch exists reads a path the service may leave
out: no ResultSelector on service results, and Choice states test ``IsPresent`` before comparing.

Restore (input: ``{"backup_id": "...", "tables"?: [...], "target": "scratch" | "<instance id>",
"confirm"?: "<instance id>", "mode"?: "replace" | "merge" | "diff"}``)::

    Validate restore request (confirm, allowlist tag, endpoint) -> (scratch | Needs approval? ->
    Wait for approval) -> Restore tables (the worker backs up the target's tables first) ->
    Evaluate restore -> Format restore message -> Publish restore result -> Succeed / Fail
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from cdk_nag import NagSuppressions
from constructs import Construct

from .janitor import (
    EXECUTION_TAG,
    EXECUTION_TIMEOUT_HOURS,
    SCRATCH_PREFIX,
    SCRATCH_TAG,
    SECRET_PREFIX,
    scratch_cleanup_statements,
    scratch_delete_statement,
)
from .network import Network
from .worker import Worker

JsonPath = sfn.JsonPath

LAMBDA_TRANSIENT = ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                    "Lambda.TooManyRequestsException", "TransientAwsError"]
# Only names Step Functions can emit for these Tasks (tests/infra/test_errors.py checks them against
# botocore): RDS throttling arrives as the base Rds.RdsException (RDS models no ThrottlingException)
# and is retried on purpose, with backoff; migsafe's own exception names only come from the Lambdas.
RDS_TRANSIENT = ["Rds.RdsException"]
# capacity (RunTask "failures": RESOURCE:*, AGENT, ...) and throttling both arrive as the base
# exception or ServerException: retried with a long backoff, the capacity comes back in minutes
ECS_TRANSIENT = ["ECS.AmazonECSException", "ECS.ServerException"]
SNS_TRANSIENT = ["SNS.InternalErrorException", "SNS.KmsThrottlingException", "SNS.AmazonSNSException",
                 "SNS.SnsException"]
SECRETS_TRANSIENT = ["SecretsManager.InternalServiceErrorException", "SecretsManager.SecretsManagerException"]
RDS_NOT_FOUND = "Rds.DbInstanceNotFoundException"
RDS_SNAPSHOT_NOT_FOUND = "Rds.DbSnapshotNotFoundException"
RDS_SNAPSHOT_BUSY = "Rds.InvalidDbSnapshotStateException"
RDS_ALREADY_EXISTS = "Rds.DbInstanceAlreadyExistsException"
RDS_BUSY = "Rds.InvalidDbInstanceStateException"
SECRET_NOT_FOUND = "SecretsManager.ResourceNotFoundException"  # noqa: S105 - an error name
RESTORE_REJECTED = "RestoreRejected"  # what `migsafe reject` sends (SendTaskFailure's error)
SCRATCH_FAILED_STATUSES = ["failed", "insufficient-capacity", "incompatible-restore", "incompatible-parameters",
                           "incompatible-network", "incompatible-option-group", "storage-full",
                           "inaccessible-encryption-credentials", "restore-error"]
SNAPSHOT_FAILED_STATUSES = ["failed"]
# DB cluster statuses (Aurora User Guide, "Viewing cluster status") a scratch cluster never leaves by itself
CLUSTER_FAILED_STATUSES = ["failed", "cloning-failed", "migration-failed", "restore-failed",
                           "inaccessible-encryption-credentials", "inaccessible-encryption-credentials-recoverable",
                           "incompatible-network", "incompatible-parameters", "incompatible-restore"]
RDS_CLUSTER_NOT_FOUND = "Rds.DbClusterNotFoundException"
RDS_CLUSTER_ALREADY_EXISTS = "Rds.DbClusterAlreadyExistsException"
RDS_CLUSTER_BUSY = "Rds.InvalidDbClusterStateException"
RDS_PG_NOT_FOUND = "Rds.DbParameterGroupNotFoundException"
RDS_PG_ALREADY_EXISTS = "Rds.DbParameterGroupAlreadyExistsException"
RDS_PG_BUSY = "Rds.InvalidDbParameterGroupStateException"  # still attached to an instance being deleted
# what the scratch's own DB parameter group sets for a migration.command plan (functions/migsafe/rdslog.py
# reads the result): RDS fixes log_line_prefix, so the fields come from csvlog's columns instead
SCRATCH_LOGGING = {"log_destination": "csvlog", "log_min_duration_statement": "0"}
SCRATCH_KINDS = ("rds-snapshot", "aurora-clone", "aurora-snapshot")  # what "Validate plan" resolves [scratch] kind to
POLL_SECONDS = 30
SNAPSHOT_POLL_SECONDS = 60
APPROVAL_MINUTES = 60
WORKER_COMMAND = ["python", "-m", "migsafe.worker"]
STATES_LOG_PREFIX = "/aws/vendedlogs/states/"

# state names: a contract with tests (tests/infra) and with docs/architecture.md
VALIDATE_PLAN = "Validate plan"
PREPARE = "Prepare"
BACKUP = "Back up tables"
SOURCE_SETTINGS = "Read source settings"
RESTORE_SCRATCH = "Restore scratch instance"
SCRATCH_KIND = "Scratch kind?"
CLONE_CLUSTER = "Clone source cluster"
RESTORE_CLUSTER = "Restore scratch cluster"
CREATE_CLUSTER_INSTANCE = "Create scratch cluster instance"
DESCRIBE_CLUSTER = "Describe scratch cluster"
DELETE_CLUSTER = "Delete scratch cluster"
DELETE_CLUSTER_AFTER_FAILURE = "Delete scratch cluster after failure"
REHEARSE = "Rehearse on scratch"
EVALUATE = "Evaluate verdict"
FORMAT_RESULT = "Format result message"
PUBLISH_RESULT = "Publish result"
DELETE_SCRATCH = "Delete scratch instance"
DELETE_SNAPSHOT = "Delete run snapshot"
DELETE_SECRET = "Delete scratch secret"  # noqa: S105 - a state name
DELETE_PARAMETER_GROUP = "Delete scratch parameter group"
DELETE_PARAMETER_GROUP_AFTER_FAILURE = "Delete scratch parameter group after failure"
CREATE_PARAMETER_GROUP = "Create scratch parameter group"
COPY_PARAMETER_GROUP = "Copy source parameter group"
SET_SCRATCH_LOGGING = "Set scratch logging"
DELETE_AFTER_FAILURE = "Delete scratch after failure"
DELETE_SNAPSHOT_AFTER_FAILURE = "Delete run snapshot after failure"
DELETE_SECRET_AFTER_FAILURE = "Delete scratch secret after failure"  # noqa: S105 - a state name
FORMAT_FAILURE = "Format failure message"
PUBLISH_FAILURE = "Publish failure"
VALIDATE_RESTORE = "Validate restore request"
WAIT_FOR_APPROVAL = "Wait for approval"
RESTORE_TABLES = "Restore tables"


def _lambda(scope: Construct, name: str, fn: lambda_.IFunction, payload: dict[str, object],
            result_path: str | None) -> tasks.LambdaInvoke:
    task = tasks.LambdaInvoke(
        scope, name,
        lambda_function=fn,
        payload=sfn.TaskInput.from_object(payload),
        payload_response_only=True,
        retry_on_service_exceptions=False,
        result_path=result_path,
        task_timeout=sfn.Timeout.duration(Duration.minutes(5)),
    )
    task.add_retry(errors=LAMBDA_TRANSIENT, interval=Duration.seconds(2), max_attempts=4, backoff_rate=2)
    return task


def _ecs(scope: Construct, name: str, *, worker: Worker, network: Network, action: str,
         environment: dict[str, str], hours: int) -> tasks.EcsRunTask:
    task = tasks.EcsRunTask(
        scope, name,
        integration_pattern=sfn.IntegrationPattern.RUN_JOB,
        cluster=worker.cluster,
        task_definition=worker.task_definition,
        launch_target=tasks.EcsFargateLaunchTarget(platform_version=ecs.FargatePlatformVersion.LATEST),
        subnets=network.worker_subnets,
        security_groups=[network.worker_security_group],
        assign_public_ip=network.assign_public_ip,
        # only keys and names travel here (ECS caps container overrides at 8,192 characters): the
        # request itself is an object in the store (MIGSAFE_REQUEST_KEY)
        container_overrides=[tasks.ContainerOverride(
            container_definition=worker.container,
            command=[*WORKER_COMMAND, action],
            environment=[tasks.TaskEnvironmentVariable(name=k, value=v) for k, v in environment.items()],
        )],
        result_path=JsonPath.DISCARD,
        task_timeout=sfn.Timeout.duration(Duration.hours(hours)),
    )
    task.add_retry(errors=ECS_TRANSIENT, interval=Duration.seconds(30), max_attempts=6, backoff_rate=2,
                   max_delay=Duration.minutes(10))
    return task


def _publish(scope: Construct, name: str, topic: sns.ITopic) -> tasks.SnsPublish:
    task = tasks.SnsPublish(
        scope, name,
        topic=topic,
        message=sfn.TaskInput.from_json_path_at("$.message.text"),
        subject=JsonPath.string_at("$.message.subject"),
        # docs/slack.md: subscriptions filter on both
        message_attributes={"verdict": tasks.MessageAttribute(value=JsonPath.string_at("$.message.verdict")),
                            "plan": tasks.MessageAttribute(value=JsonPath.string_at("$.message.plan"))},
        result_path=JsonPath.DISCARD,
    )
    task.add_retry(errors=SNS_TRANSIENT, interval=Duration.seconds(2), max_attempts=4, backoff_rate=2)
    return task


def _state_machine(scope: Construct, *, definition: sfn.IChainable, comment: str, hours: int) -> sfn.StateMachine:
    # /aws/vendedlogs/ names need no CloudWatch Logs resource policy (accounts hit that policy's size limit)
    log_group = logs.LogGroup(scope, "Logs", retention=logs.RetentionDays.THREE_MONTHS,
                              log_group_name=f"{STATES_LOG_PREFIX}{Stack.of(scope).stack_name}-{scope.node.id}",
                              removal_policy=RemovalPolicy.DESTROY)
    return sfn.StateMachine(
        scope, "StateMachine",
        definition_body=sfn.DefinitionBody.from_chainable(definition),
        state_machine_type=sfn.StateMachineType.STANDARD,
        tracing_enabled=True,
        logs=sfn.LogOptions(destination=log_group, level=sfn.LogLevel.ALL, include_execution_data=True),
        timeout=Duration.hours(hours),
        comment=comment,
    )


def _fallback_message(scope: Construct, name: str, text: str) -> sfn.Pass:
    """Used when formatting the failure message itself failed: on-call still hears about it."""
    return sfn.Pass(scope, name, result_path="$.message", parameters={
        "text": text,
        "subject": "migsafe: execution failed",
        "verdict": "FAIL",
        "plan": "unknown plan",
    })


def _failure_path(scope: Construct, *, topic: sns.ITopic, format_notification: lambda_.IFunction,
                  fail_name: str, what: str) -> tasks.LambdaInvoke:
    """Format the FAIL message -> publish it -> Fail; a formatting error falls back to a fixed text.

    Both state machines end every failure this way; the returned state is where Catches lead.
    """
    failed = sfn.Fail(scope, fail_name, error="MigsafeFailed",
                      cause="a step failed; the FAIL message on the results topic names it")
    publish_failure = _publish(scope, PUBLISH_FAILURE, topic)
    publish_failure.add_catch(failed, errors=["States.ALL"], result_path="$.notify_error")
    publish_failure.next(failed)
    format_failure = _lambda(scope, FORMAT_FAILURE, format_notification, {
        "kind": "failure",
        "execution": JsonPath.string_at("$$.Execution.Name"),
        "detail": JsonPath.object_at("$"),
    }, "$.message")
    fallback = _fallback_message(scope, "Fallback failure message",
                                 f"migsafe: {what} failed; see the Step Functions console.")
    fallback.next(publish_failure)
    format_failure.add_catch(fallback, errors=["States.ALL"], result_path="$.format_error")
    format_failure.next(publish_failure)
    return format_failure


def _rds(scope: Construct, name: str, action: str, parameters: dict[str, object], *, iam_action: str,
         iam_resources: list[str], result_path: str | None = JsonPath.DISCARD,
         additional_iam_statements: list[iam.PolicyStatement] | None = None,
         busy: tuple[str, int] | None = None) -> tasks.CallAwsService:
    """An RDS SDK call, its result (when kept) stored whole: no ResultSelector (see the module doc).

    ``busy``: an error meaning "not now" (the resource is still in use or changing) and how many
    times to wait a minute for it, before the transient errors' retry.
    """
    task = tasks.CallAwsService(scope, name, service="rds", action=action, parameters=parameters,
                                iam_action=iam_action, iam_resources=iam_resources, result_path=result_path,
                                additional_iam_statements=additional_iam_statements)
    if busy is not None:
        task.add_retry(errors=[busy[0]], interval=Duration.seconds(60), max_attempts=busy[1], backoff_rate=1)
    task.add_retry(errors=RDS_TRANSIENT, interval=Duration.seconds(5), max_attempts=6, backoff_rate=2)
    return task


class ScratchCleanup:
    """Delete the scratch instance, then the run's own snapshot, then the scratch secret.

    Each step treats "not found" as done (the resource was never created, or is gone already),
    waits out a busy instance or snapshot, and leads on to the next whatever happens, so a fault in
    one deletion never skips another. Built twice: on the success path and on the failure path.
    """

    def __init__(self, scope: Construct, *, names: tuple[str, str, str, str, str], scratch_arn: str) -> None:
        stack = Stack.of(scope)
        instance, cluster, snapshot, secret, parameter_group = names
        self.delete_instance = _rds(
            scope, instance, "deleteDBInstance",
            {"DbInstanceIdentifier": JsonPath.string_at("$.scratch.instance_id"),
             "SkipFinalSnapshot": True, "DeleteAutomatedBackups": True},
            # the delete permissions themselves are tag-conditioned (janitor.scratch_cleanup_statements)
            iam_resources=[scratch_arn], iam_action="rds:DescribeDBInstances", busy=(RDS_BUSY, 45),
        )
        # only the snapshot this run created is named after the scratch (never the source's own)
        self.delete_snapshot = _rds(
            scope, snapshot, "deleteDBSnapshot",
            {"DbSnapshotIdentifier": JsonPath.string_at("$.scratch.snapshot_id")},
            iam_resources=[stack.format_arn(service="rds", resource="snapshot", resource_name=f"{SCRATCH_PREFIX}*",
                                            arn_format=ArnFormat.COLON_RESOURCE_NAME)],
            iam_action="rds:DescribeDBSnapshots", busy=(RDS_SNAPSHOT_BUSY, 30),
        )
        self.delete_secret = tasks.CallAwsService(
            scope, secret, service="secretsmanager", action="deleteSecret",
            parameters={"SecretId": JsonPath.string_at("$.scratch.secret_name"), "ForceDeleteWithoutRecovery": True},
            iam_resources=[stack.format_arn(service="secretsmanager", resource="secret",
                                            resource_name=f"{SECRET_PREFIX}*",
                                            arn_format=ArnFormat.COLON_RESOURCE_NAME)],
            iam_action="secretsmanager:DescribeSecret",
            result_path=JsonPath.DISCARD,
        )
        self.delete_secret.add_retry(errors=SECRETS_TRANSIENT, interval=Duration.seconds(5), max_attempts=6,
                                     backoff_rate=2)
        # only a run that snapshotted the source has a snapshot of its own to delete
        self.snapshot_taken = sfn.Choice(scope, f"{snapshot}?").when(
            sfn.Condition.and_(sfn.Condition.is_present("$.create_snapshot"),
                               sfn.Condition.boolean_equals("$.create_snapshot", True)), self.delete_snapshot,
        ).otherwise(self.delete_secret)
        # an Aurora scratch: the cluster after its instance (RDS refuses to delete a cluster that still
        # has a member not being deleted: InvalidDBClusterStateFault, waited out)
        self.delete_cluster = _rds(
            scope, cluster, "deleteDBCluster",
            {"DbClusterIdentifier": JsonPath.string_at("$.scratch.cluster_id"), "SkipFinalSnapshot": True},
            # the delete permission itself is tag-conditioned (janitor.scratch_cleanup_statements)
            iam_resources=[stack.format_arn(service="rds", resource="cluster", resource_name=f"{SCRATCH_PREFIX}*",
                                            arn_format=ArnFormat.COLON_RESOURCE_NAME)],
            iam_action="rds:DescribeDBClusters", busy=(RDS_CLUSTER_BUSY, 45),
        )
        self.delete_cluster.add_catch(self.snapshot_taken, errors=[RDS_CLUSTER_NOT_FOUND], result_path=JsonPath.DISCARD)
        self.delete_cluster.next(self.snapshot_taken)
        self.has_cluster = sfn.Choice(scope, f"{cluster}?").when(
            sfn.Condition.and_(sfn.Condition.is_present("$.scratch.cluster_id"),
                               sfn.Condition.not_(sfn.Condition.string_equals("$.scratch.cluster_id", ""))),
            self.delete_cluster,
        ).otherwise(self.snapshot_taken)
        self.delete_instance.add_catch(self.has_cluster, errors=[RDS_NOT_FOUND], result_path=JsonPath.DISCARD)
        self.delete_instance.next(self.has_cluster)
        self.delete_snapshot.add_catch(self.delete_secret, errors=[RDS_SNAPSHOT_NOT_FOUND],
                                       result_path=JsonPath.DISCARD)
        self.delete_snapshot.next(self.delete_secret)

        # a migration.command plan's scratch had a DB parameter group of its own: deleted last, once no
        # instance uses it (InvalidDBParameterGroupState while the instance is still being deleted)
        self.delete_parameter_group = _rds(
            scope, parameter_group, "deleteDBParameterGroup",
            {"DbParameterGroupName": JsonPath.string_at("$.scratch.parameter_group")},
            # the delete permission itself is tag-conditioned (janitor.scratch_cleanup_statements)
            iam_resources=[stack.format_arn(service="rds", resource="pg", resource_name=f"{SCRATCH_PREFIX}*",
                                            arn_format=ArnFormat.COLON_RESOURCE_NAME)],
            iam_action="rds:DescribeDBParameterGroups", busy=(RDS_PG_BUSY, 45),
        )
        self.has_parameter_group = sfn.Choice(scope, f"{parameter_group}?")

    def then(self, after: sfn.IChainable) -> None:
        self.delete_secret.add_catch(self.has_parameter_group, errors=[SECRET_NOT_FOUND], result_path=JsonPath.DISCARD)
        self.delete_secret.next(self.has_parameter_group)
        self.has_parameter_group.when(
            sfn.Condition.and_(sfn.Condition.is_present("$.scratch.parameter_group"),
                               sfn.Condition.not_(sfn.Condition.string_equals("$.scratch.parameter_group", ""))),
            self.delete_parameter_group,
        ).otherwise(after)
        self.delete_parameter_group.add_catch(after, errors=[RDS_PG_NOT_FOUND], result_path=JsonPath.DISCARD)
        self.delete_parameter_group.next(after)

    @property
    def tasks(self) -> list[tasks.CallAwsService]:
        return [self.delete_instance, self.delete_cluster, self.delete_snapshot, self.delete_secret,
                self.delete_parameter_group]


class PreMigrationWorkflow(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        worker: Worker,
        network: Network,
        topic: sns.ITopic,
        validate: lambda_.IFunction,
        latest_snapshot: lambda_.IFunction,
        evaluate: lambda_.IFunction,
        format_notification: lambda_.IFunction,
        source_instance_id: str,
        scratch_wait_minutes: int,
        source_cluster_id: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)

        def rds_arn(resource: str, name: str) -> str:
            return stack.format_arn(service="rds", resource=resource, resource_name=name,
                                    arn_format=ArnFormat.COLON_RESOURCE_NAME)

        scratch_arn = rds_arn("db", f"{SCRATCH_PREFIX}*")
        scratch_id = JsonPath.string_at("$.scratch.instance_id")
        tags = [{"Key": SCRATCH_TAG, "Value": JsonPath.string_at("$.execution")},
                {"Key": EXECUTION_TAG, "Value": JsonPath.string_at("$$.Execution.Id")}]
        self._rds_arn, self._tags = rds_arn, tags

        # --- the failure path (declared first: everything after Prepare catches into it) ----------
        format_failure = _failure_path(self, topic=topic, format_notification=format_notification,
                                       fail_name="Rehearsal could not run", what="a pre-migration execution")

        failure_cleanup = ScratchCleanup(self, scratch_arn=scratch_arn, names=(
            DELETE_AFTER_FAILURE, DELETE_CLUSTER_AFTER_FAILURE, DELETE_SNAPSHOT_AFTER_FAILURE,
            DELETE_SECRET_AFTER_FAILURE, DELETE_PARAMETER_GROUP_AFTER_FAILURE))
        failure_cleanup.then(format_failure)
        for task in failure_cleanup.tasks:
            # a deletion that fails is reported in the FAIL message (the janitor retries it) and the
            # next deletion still runs
            following = {DELETE_AFTER_FAILURE: failure_cleanup.has_cluster,
                         DELETE_CLUSTER_AFTER_FAILURE: failure_cleanup.snapshot_taken,
                         DELETE_SNAPSHOT_AFTER_FAILURE: failure_cleanup.delete_secret,
                         DELETE_SECRET_AFTER_FAILURE: failure_cleanup.has_parameter_group,
                         }.get(task.node.id, format_failure)
            task.add_catch(following, errors=["States.ALL"], result_path="$.cleanup_error")
        delete_after_failure = failure_cleanup.delete_instance

        def guard(state: sfn.TaskStateBase | sfn.Parallel, name: str, then: sfn.IChainable) -> None:
            marker = sfn.Pass(self, f"{name} failed", result=sfn.Result.from_string(name),
                              result_path="$.failed_state")
            marker.next(then)
            state.add_catch(marker, errors=["States.ALL"], result_path="$.error")

        # --- validate ---------------------------------------------------------------------------
        validate_task = _lambda(self, VALIDATE_PLAN, validate, {
            "input": JsonPath.object_at("$"),
            "execution": JsonPath.string_at("$$.Execution.Name"),
        }, "$")
        guard(validate_task, VALIDATE_PLAN, format_failure)  # nothing created yet: no scratch to delete

        worker_env = {
            "MIGSAFE_REQUEST_KEY": JsonPath.string_at("$.request_key"),
            "MIGSAFE_EXECUTION": JsonPath.string_at("$.execution"),
            "MIGSAFE_EXECUTION_ARN": JsonPath.string_at("$$.Execution.Id"),
        }

        # --- branch 1: back up the tables --------------------------------------------------------
        backup = _ecs(self, BACKUP, worker=worker, network=network, action="backup", hours=4, environment=worker_env)
        backup_done = sfn.Pass(self, "Backup written", parameters={"results_prefix": JsonPath.string_at("$.results_prefix")})
        backup.next(backup_done)

        # --- branch 2: source settings -> snapshot -> scratch instance -> available --------------
        source_settings = _lambda(self, SOURCE_SETTINGS, latest_snapshot, {
            "action": "source_settings", "instance_id": JsonPath.string_at("$.source_instance_id"),
            "cluster_id": JsonPath.string_at("$.source_cluster_id"),
            "instance_class": JsonPath.string_at("$.scratch.instance_class")}, "$.source")
        def scratch_chain(suffix: str) -> tuple[sfn.TaskStateBase, sfn.TaskStateBase, sfn.Wait]:
            """Create snapshot -> wait -> Restore scratch instance -> wait until available -> endpoint.

            Built twice: in Prepare's branch, and for a fresh copy when the first was stale."""
            restore_scratch = _rds(
                self, RESTORE_SCRATCH + suffix, "restoreDBInstanceFromDBSnapshot", {
                    "DbInstanceIdentifier": scratch_id,
                    "DbSnapshotIdentifier": JsonPath.string_at("$.snapshot.snapshot_id"),
                    "DbInstanceClass": JsonPath.string_at("$.scratch.instance_class"),
                    "DbSubnetGroupName": network.db_subnet_group_name,
                    "VpcSecurityGroupIds": [network.scratch_security_group_id],
                    # production's settings, so the rehearsal's timings and locks mean something
                    "DbParameterGroupName": JsonPath.string_at("$.source.parameter_group"),
                    "OptionGroupName": JsonPath.string_at("$.source.option_group"),
                    "Port": network.db_port,  # the port the scratch security group admits
                    # nothing a throw-away copy should pay for
                    "BackupRetentionPeriod": 0,
                    "PubliclyAccessible": False,
                    "MultiAZ": False,
                    "DeletionProtection": False,
                    "AutoMinorVersionUpgrade": False,
                    "CopyTagsToSnapshot": False,
                    "Tags": tags,
                },
                iam_resources=[scratch_arn, rds_arn("snapshot", "*"), rds_arn("subgrp", "*"), rds_arn("og", "*"),
                               rds_arn("pg", "*"), rds_arn("secgrp", "*")],
                iam_action="rds:RestoreDBInstanceFromDBSnapshot",
                additional_iam_statements=[iam.PolicyStatement(
                    actions=["rds:AddTagsToResource"], resources=[scratch_arn],
                    conditions={"StringLike": {f"aws:RequestTag/{SCRATCH_TAG}": "*"}})],
            )

            wait_scratch = sfn.Wait(self, f"Wait for scratch{suffix}", time=sfn.WaitTime.duration(Duration.seconds(POLL_SECONDS)))
            # a retried restore whose first call went through: the instance is ours (its id is per execution)
            restore_scratch.add_catch(wait_scratch, errors=[RDS_ALREADY_EXISTS], result_path=JsonPath.DISCARD)
            describe_scratch = _rds(
                self, f"Describe scratch{suffix}", "describeDBInstances", {"DbInstanceIdentifier": scratch_id},
                iam_resources=[scratch_arn], iam_action="rds:DescribeDBInstances", result_path="$.scratch_status")
            status = "$.scratch_status.DbInstances[0].DbInstanceStatus"
            address = "$.scratch_status.DbInstances[0].Endpoint.Address"
            port = "$.scratch_status.DbInstances[0].Endpoint.Port"
            scratch_ready = sfn.Pass(self, f"Scratch endpoint{suffix}", parameters={
                "instance_id": scratch_id,
                "endpoint": JsonPath.format("{}:{}", JsonPath.string_at(address), JsonPath.string_at(port)),
                "state_at": JsonPath.string_at("$.source.state_at"),  # Read source settings always returns it
            })
            scratch_broken = sfn.Fail(self, f"Scratch instance failed{suffix}", error="ScratchFailed",
                                      cause="the scratch instance entered a failed state")
            scratch_late = sfn.Fail(self, f"Scratch deadline passed{suffix}", error="ScratchFailed",
                                    cause=f"the scratch instance was not available within {scratch_wait_minutes} minutes")
            count_scratch = sfn.Pass(self, f"Count scratch wait{suffix}", result_path="$.scratch_wait", parameters={
                "count": JsonPath.math_add(JsonPath.number_at("$.scratch_wait.count"), 1)})
            scratch_deadline = sfn.Choice(self, f"Scratch deadline?{suffix}").when(
                sfn.Condition.number_greater_than("$.scratch_wait.count", scratch_wait_minutes * 60 // POLL_SECONDS),
                scratch_late,
            ).otherwise(wait_scratch)
            count_scratch.next(scratch_deadline)
            endpoint_known = sfn.Choice(self, f"Scratch endpoint known?{suffix}").when(
                sfn.Condition.and_(sfn.Condition.is_present(address), sfn.Condition.is_present(port)), scratch_ready,
            ).otherwise(count_scratch)
            scratch_available = sfn.Choice(self, f"Scratch available?{suffix}").when(
                sfn.Condition.string_equals(status, "available"), endpoint_known,
            ).when(
                sfn.Condition.or_(*[sfn.Condition.string_equals(status, s) for s in SCRATCH_FAILED_STATUSES]),
                scratch_broken,
            ).otherwise(count_scratch)
            scratch_described = sfn.Choice(self, f"Scratch described?{suffix}").when(
                sfn.Condition.is_present(status), scratch_available,
            ).otherwise(count_scratch)
            restore_scratch.next(wait_scratch)
            wait_scratch.next(describe_scratch)
            describe_scratch.next(scratch_described)

            run_snapshot_arn = rds_arn("snapshot", f"{SCRATCH_PREFIX}*")
            create_snapshot = _rds(
                self, f"Create snapshot{suffix}", "createDBSnapshot", {
                    "DbInstanceIdentifier": JsonPath.string_at("$.source_instance_id"),
                    "DbSnapshotIdentifier": JsonPath.string_at("$.scratch.snapshot_id"),
                    "Tags": tags,  # the run deletes it on every path; the janitor finds orphans by these tags
                },
                iam_resources=[rds_arn("db", source_instance_id), run_snapshot_arn],
                iam_action="rds:CreateDBSnapshot",
                additional_iam_statements=[iam.PolicyStatement(
                    actions=["rds:AddTagsToResource"], resources=[run_snapshot_arn],
                    conditions={"StringLike": {f"aws:RequestTag/{SCRATCH_TAG}": "*"}})],
            )
            use_new_snapshot = sfn.Pass(self, f"Use the new snapshot{suffix}", result_path="$.snapshot",
                                        parameters={"snapshot_id": JsonPath.string_at("$.scratch.snapshot_id")})
            wait_snapshot = sfn.Wait(self, f"Wait for snapshot{suffix}",
                                     time=sfn.WaitTime.duration(Duration.seconds(SNAPSHOT_POLL_SECONDS)))
            describe_snapshot = _rds(
                self, f"Describe snapshot{suffix}", "describeDBSnapshots",
                {"DbSnapshotIdentifier": JsonPath.string_at("$.snapshot.snapshot_id")},
                iam_resources=[run_snapshot_arn], iam_action="rds:DescribeDBSnapshots", result_path="$.snapshot_status")
            snapshot_status = "$.snapshot_status.DbSnapshots[0].Status"
            snapshot_late = sfn.Fail(self, f"Snapshot deadline passed{suffix}", error="ScratchFailed",
                                     cause=f"the snapshot was not available within {scratch_wait_minutes} minutes")
            snapshot_broken = sfn.Fail(self, f"Snapshot failed{suffix}", error="ScratchFailed",
                                       cause="RDS could not create the snapshot of the source")
            count_snapshot = sfn.Pass(self, f"Count snapshot wait{suffix}", result_path="$.snapshot_wait", parameters={
                "count": JsonPath.math_add(JsonPath.number_at("$.snapshot_wait.count"), 1)})
            count_snapshot.next(sfn.Choice(self, f"Snapshot deadline?{suffix}").when(
                sfn.Condition.number_greater_than("$.snapshot_wait.count",
                                                  scratch_wait_minutes * 60 // SNAPSHOT_POLL_SECONDS),
                snapshot_late,
            ).otherwise(wait_snapshot))
            create_snapshot.next(use_new_snapshot).next(wait_snapshot)
            wait_snapshot.next(describe_snapshot)
            describe_snapshot.next(sfn.Choice(self, f"Snapshot described?{suffix}").when(
                sfn.Condition.is_present(snapshot_status), sfn.Choice(self, f"Snapshot available?{suffix}").when(
                    sfn.Condition.string_equals(snapshot_status, "available"), restore_scratch,
                ).when(
                    sfn.Condition.or_(*[sfn.Condition.string_equals(snapshot_status, s)
                                        for s in SNAPSHOT_FAILED_STATUSES]),
                    snapshot_broken,
                ).otherwise(count_snapshot),
            ).otherwise(count_snapshot))
            return create_snapshot, restore_scratch, wait_scratch

        create_snapshot, restore_scratch, wait_scratch = scratch_chain("")
        find_latest = _lambda(self, "Find latest snapshot", latest_snapshot, {
            "instance_id": JsonPath.string_at("$.source_instance_id")}, "$.snapshot")
        find_latest.next(restore_scratch)
        which_snapshot = sfn.Choice(self, "Snapshot requested?").when(
            sfn.Condition.boolean_equals("$.create_snapshot", True), create_snapshot,
        ).otherwise(find_latest)
        clone, from_snapshot = self._aurora(
            rds_arn=rds_arn, tags=tags, latest_snapshot=latest_snapshot, then=wait_scratch,
            scratch_wait_minutes=scratch_wait_minutes, source_cluster_id=source_cluster_id)
        source_settings.next(self._scratch_logging("", sfn.Choice(self, SCRATCH_KIND).when(
            sfn.Condition.string_equals("$.scratch.kind", "aurora-clone"), clone,
        ).when(
            sfn.Condition.string_equals("$.scratch.kind", "aurora-snapshot"), from_snapshot,
        ).otherwise(which_snapshot)))

        # both branches' outputs always exist (a two-branch Parallel yields two elements)
        prepare = sfn.Parallel(self, PREPARE, result_selector={
            "backup": JsonPath.object_at("$[0]"), "scratch": JsonPath.object_at("$[1]")},
            result_path="$.prepared")
        prepare.branch(backup)
        prepare.branch(source_settings)
        guard(prepare, PREPARE, delete_after_failure)

        # --- rehearse, evaluate, publish, clean up, decide ---------------------------------------
        rehearse = _ecs(self, REHEARSE, worker=worker, network=network, action="rehearse", hours=4, environment={
            **worker_env,
            "MIGSAFE_SCRATCH_ENDPOINT": JsonPath.string_at("$.prepared.scratch.endpoint"),
            "MIGSAFE_SCRATCH_INSTANCE_ID": scratch_id,
            "MIGSAFE_SCRATCH_CLUSTER_ID": JsonPath.string_at("$.scratch.cluster_id"),
            "MIGSAFE_SCRATCH_KIND": JsonPath.string_at("$.scratch.kind"),
            "MIGSAFE_SCRATCH_STATE_AT": JsonPath.string_at("$.prepared.scratch.state_at"),
            "MIGSAFE_EXECUTION_START": JsonPath.string_at("$$.Execution.StartTime"),
        })
        guard(rehearse, REHEARSE, self._fresh_copy(
            rehearse=rehearse, evaluate=evaluate, latest_snapshot=latest_snapshot, scratch_chain=scratch_chain,
            scratch_arn=scratch_arn,
            cleanup=delete_after_failure, guard=guard))
        evaluate_task = _lambda(self, EVALUATE, evaluate, {
            "kind": "rehearsal", "results_prefix": JsonPath.string_at("$.results_prefix")}, "$.evaluation")
        guard(evaluate_task, EVALUATE, delete_after_failure)
        format_result = _lambda(self, FORMAT_RESULT, format_notification, {
            "kind": "result",
            "execution": JsonPath.string_at("$$.Execution.Name"),
            "state": REHEARSE,
            "detail": JsonPath.object_at("$"),
        }, "$.message")
        guard(format_result, FORMAT_RESULT, delete_after_failure)
        publish_result = _publish(self, PUBLISH_RESULT, topic)
        guard(publish_result, PUBLISH_RESULT, delete_after_failure)
        cleanup = ScratchCleanup(self, scratch_arn=scratch_arn,
                                 names=(DELETE_SCRATCH, DELETE_CLUSTER, DELETE_SNAPSHOT, DELETE_SECRET,
                                        DELETE_PARAMETER_GROUP))
        verdict = sfn.Choice(self, "Verdict?").when(
            sfn.Condition.string_equals("$.evaluation.verdict", "PASS"),
            sfn.Succeed(self, "Migration is safe"),
        ).otherwise(sfn.Fail(self, "Migration failed rehearsal", error="VerdictFail",
                             cause="the rehearsal's verdict is FAIL: see the result message and report"))
        cleanup.then(verdict)
        for task in cleanup.tasks:
            guard(task, task.node.id, delete_after_failure)

        definition = (validate_task.next(prepare).next(rehearse).next(evaluate_task).next(format_result)
                      .next(publish_result).next(cleanup.delete_instance))
        self.state_machine = _state_machine(
            self, definition=definition, hours=EXECUTION_TIMEOUT_HOURS,
            comment="migsafe pre-migration gate: back up, rehearse on a scratch RDS copy, verdict, always clean up")
        self.state_machine.role.add_to_principal_policy(scratch_delete_statement(self))
        for statement in scratch_cleanup_statements(self):
            self.state_machine.role.add_to_principal_policy(statement)

    def _aurora(self, *, rds_arn: Any, tags: list[dict[str, str]], latest_snapshot: lambda_.IFunction,
                then: sfn.IChainable, scratch_wait_minutes: int,
                source_cluster_id: str | None) -> tuple[sfn.IChainable, sfn.IChainable]:
        """The Aurora scratch: a cluster -- a copy-on-write clone of the source (production's state of
        a minute ago, only changed pages stored) or the source's latest cluster snapshot restored --
        with the source's cluster parameter group, subnet group, security groups and port; wait
        until it is available; one instance in it; then ``then`` (the instance wait the RDS path
        uses). Returns the entry states of the clone and of the snapshot restore."""
        cluster_id = JsonPath.string_at("$.scratch.cluster_id")
        cluster_arn = rds_arn("cluster", f"{SCRATCH_PREFIX}*")
        instance_arn = rds_arn("db", f"{SCRATCH_PREFIX}*")

        def tag_on_create(arn: str) -> iam.PolicyStatement:
            return iam.PolicyStatement(actions=["rds:AddTagsToResource"], resources=[arn],
                                       conditions={"StringLike": {f"aws:RequestTag/{SCRATCH_TAG}": "*"}})

        common = {
            "DbClusterIdentifier": cluster_id,
            "DbSubnetGroupName": JsonPath.string_at("$.source.subnet_group"),
            "VpcSecurityGroupIds": JsonPath.list_at("$.source.security_groups"),
            "DbClusterParameterGroupName": JsonPath.string_at("$.source.cluster_parameter_group"),
            "Port": JsonPath.number_at("$.source.port"),
            "DeletionProtection": False,
            "CopyTagsToSnapshot": False,
            "Tags": tags,
        }
        wait_cluster = sfn.Wait(self, "Wait for scratch cluster", time=sfn.WaitTime.duration(Duration.seconds(POLL_SECONDS)))

        def restore(name: str, action: str, params: dict[str, object], iam_action: str,
                    resources: list[str]) -> sfn.Choice:
            """Two variants: a Serverless v2 source's scaling is copied (a db.serverless instance needs it)."""
            variants = []
            for label, extra in (("", {}), (" (Serverless v2)", {
                    "ServerlessV2ScalingConfiguration": JsonPath.object_at("$.source.scaling")})):
                task = _rds(self, name + label, action, {**params, **extra}, iam_action=iam_action,
                            iam_resources=resources, additional_iam_statements=[tag_on_create(cluster_arn)])
                # a retried call whose first attempt went through: the cluster is ours (named per execution)
                task.add_catch(wait_cluster, errors=[RDS_CLUSTER_ALREADY_EXISTS], result_path=JsonPath.DISCARD)
                task.next(wait_cluster)
                variants.append(task)
            return sfn.Choice(self, f"{name}: Serverless v2?").when(
                sfn.Condition.and_(sfn.Condition.is_present("$.source.serverless_v2"),
                                   sfn.Condition.boolean_equals("$.source.serverless_v2", True)), variants[1],
            ).otherwise(variants[0])

        groups = [rds_arn("subgrp", "*"), rds_arn("cluster-pg", "*")]
        clone = restore(CLONE_CLUSTER, "restoreDBClusterToPointInTime", {
            **common,
            "SourceDBClusterIdentifier": JsonPath.string_at("$.source_cluster_id"),
            "RestoreType": "copy-on-write",
            "UseLatestRestorableTime": True,
        }, "rds:RestoreDBClusterToPointInTime",
            [cluster_arn, *([rds_arn("cluster", source_cluster_id)] if source_cluster_id else []), *groups])
        from_snapshot = restore(RESTORE_CLUSTER, "restoreDBClusterFromSnapshot", {
            **common,
            "SnapshotIdentifier": JsonPath.string_at("$.snapshot.snapshot_id"),
            "Engine": JsonPath.string_at("$.source.engine"),
            "EngineVersion": JsonPath.string_at("$.source.engine_version"),
        }, "rds:RestoreDBClusterFromSnapshot", [cluster_arn, rds_arn("cluster-snapshot", "*"), *groups])
        find_snapshot = _lambda(self, "Find latest cluster snapshot", latest_snapshot, {
            "action": "latest_cluster_snapshot", "cluster_id": JsonPath.string_at("$.source_cluster_id")}, "$.snapshot")
        find_snapshot.next(from_snapshot)

        describe = _rds(self, DESCRIBE_CLUSTER, "describeDBClusters", {"DbClusterIdentifier": cluster_id},
                        iam_resources=[cluster_arn], iam_action="rds:DescribeDBClusters", result_path="$.cluster_status")
        status = "$.cluster_status.DbClusters[0].Status"
        instance_params = {
            "DbInstanceIdentifier": JsonPath.string_at("$.scratch.instance_id"),
            "DbClusterIdentifier": cluster_id,
            "Engine": JsonPath.string_at("$.source.engine"),
            "DbInstanceClass": JsonPath.string_at("$.source.instance_class"),
            "PubliclyAccessible": False,
            "AutoMinorVersionUpgrade": False,
            "EnablePerformanceInsights": False,
            "MonitoringInterval": 0,
            "Tags": tags,
        }
        # two variants: the engine's default instance settings, or the scratch's own DB parameter group
        # (a migration.command plan: it logs to csvlog, _scratch_logging made it)
        variants = []
        for label, extra in (("", {}), (" (own parameter group)", {
                "DbParameterGroupName": JsonPath.string_at("$.source.parameter_group")})):
            task = _rds(self, CREATE_CLUSTER_INSTANCE + label, "createDBInstance", {**instance_params, **extra},
                        iam_action="rds:CreateDBInstance",
                        iam_resources=[instance_arn, cluster_arn, *([rds_arn("pg", f"{SCRATCH_PREFIX}*")] if extra else [])],
                        additional_iam_statements=[tag_on_create(instance_arn)])
            task.add_catch(then, errors=[RDS_ALREADY_EXISTS], result_path=JsonPath.DISCARD)
            task.next(then)
            variants.append(task)
        create_instance = sfn.Choice(self, f"{CREATE_CLUSTER_INSTANCE}: own parameter group?").when(
            sfn.Condition.and_(sfn.Condition.is_present("$.source.parameter_group"),
                               sfn.Condition.not_(sfn.Condition.string_equals("$.source.parameter_group", ""))),
            variants[1],
        ).otherwise(variants[0])
        broken = sfn.Fail(self, "Scratch cluster failed", error="ScratchFailed",
                          cause="the scratch cluster entered a failed state")
        late = sfn.Fail(self, "Scratch cluster deadline passed", error="ScratchFailed",
                        cause=f"the scratch cluster was not available within {scratch_wait_minutes} minutes")
        count = sfn.Pass(self, "Count scratch cluster wait", result_path="$.cluster_wait", parameters={
            "count": JsonPath.math_add(JsonPath.number_at("$.cluster_wait.count"), 1)})
        count.next(sfn.Choice(self, "Scratch cluster deadline?").when(
            sfn.Condition.number_greater_than("$.cluster_wait.count", scratch_wait_minutes * 60 // POLL_SECONDS), late,
        ).otherwise(wait_cluster))
        wait_cluster.next(describe)
        describe.next(sfn.Choice(self, "Scratch cluster described?").when(
            sfn.Condition.is_present(status), sfn.Choice(self, "Scratch cluster available?").when(
                sfn.Condition.string_equals(status, "available"), create_instance,
            ).when(
                sfn.Condition.or_(*[sfn.Condition.string_equals(status, s) for s in CLUSTER_FAILED_STATUSES]), broken,
            ).otherwise(count),
        ).otherwise(count))
        return clone, find_snapshot

    def _scratch_logging(self, suffix: str, then: sfn.IChainable) -> sfn.IChainable:
        """A ``migration.command`` plan only (``$.scratch.parameter_group`` set): the scratch's own DB
        parameter group, ``migsafe-scratch-<id>`` -- a copy of the source instance's (its settings, e.g.
        shared_preload_libraries, kept), or, for a default group (RDS copies none) or an Aurora scratch
        instance, a new group of the family -- with ``log_destination = csvlog`` and
        ``log_min_duration_statement = 0``; then ``$.source.parameter_group`` names it, so the restore
        (or the cluster instance) attaches it. Any failure here only costs the observation: the
        execution goes on to ``then`` with the source's group, and the worker reports *sampling-only*
        with the reason. Cleanup deletes the group on every path."""
        rds_arn, tags = self._rds_arn, self._tags
        scratch_pg = rds_arn("pg", f"{SCRATCH_PREFIX}*")
        name = JsonPath.string_at("$.scratch.parameter_group")
        tag_on_create = iam.PolicyStatement(actions=["rds:AddTagsToResource"], resources=[scratch_pg],
                                            conditions={"StringLike": {f"aws:RequestTag/{SCRATCH_TAG}": "*"}})
        description = "migsafe scratch: statements logged to csvlog (deleted with the scratch)"
        create = _rds(self, CREATE_PARAMETER_GROUP + suffix, "createDBParameterGroup", {
            "DbParameterGroupName": name,
            "DbParameterGroupFamily": JsonPath.string_at("$.source.parameter_group_family"),
            "Description": description,
            "Tags": tags,
        }, iam_action="rds:CreateDBParameterGroup", iam_resources=[scratch_pg], additional_iam_statements=[tag_on_create])
        copy = _rds(self, COPY_PARAMETER_GROUP + suffix, "copyDBParameterGroup", {
            "SourceDBParameterGroupIdentifier": JsonPath.string_at("$.source.parameter_group"),
            "TargetDBParameterGroupIdentifier": name,
            "TargetDBParameterGroupDescription": description,
            "Tags": tags,
        }, iam_action="rds:CopyDBParameterGroup", iam_resources=[rds_arn("pg", "*")],
            additional_iam_statements=[tag_on_create, iam.PolicyStatement(
                actions=["rds:CreateDBParameterGroup"], resources=[scratch_pg])])
        modify = _rds(self, SET_SCRATCH_LOGGING + suffix, "modifyDBParameterGroup", {
            "DbParameterGroupName": name,
            "Parameters": [{"ParameterName": k, "ParameterValue": v, "ApplyMethod": "immediate"}
                           for k, v in SCRATCH_LOGGING.items()],
        }, iam_action="rds:ModifyDBParameterGroup", iam_resources=[scratch_pg])
        use = sfn.Pass(self, f"Use scratch parameter group{suffix}", input_path="$.scratch.parameter_group",
                       result_path="$.source.parameter_group")
        for task in (create, copy):
            # a retried call whose first attempt went through (or the fresh copy's second pass): ours
            task.add_catch(modify, errors=[RDS_PG_ALREADY_EXISTS], result_path=JsonPath.DISCARD)
            task.add_catch(then, errors=["States.ALL"], result_path="$.observe_error")
            task.next(modify)
        modify.add_catch(then, errors=["States.ALL"], result_path="$.observe_error")
        modify.next(use)
        use.next(then)
        how = sfn.Choice(self, f"Copy or create scratch parameter group?{suffix}").when(
            sfn.Condition.and_(sfn.Condition.is_present("$.source.parameter_group_family"),
                               sfn.Condition.not_(sfn.Condition.string_equals("$.source.parameter_group_family", ""))),
            create,
        ).otherwise(copy)
        return sfn.Choice(self, f"Observe the scratch's statements?{suffix}").when(
            sfn.Condition.and_(sfn.Condition.is_present("$.scratch.parameter_group"),
                               sfn.Condition.not_(sfn.Condition.string_equals("$.scratch.parameter_group", ""))),
            how,
        ).otherwise(then)

    def _fresh_copy(self, *, rehearse: sfn.IChainable, evaluate: lambda_.IFunction,
                    latest_snapshot: lambda_.IFunction, scratch_chain: Any,
                    scratch_arn: str, cleanup: sfn.IChainable, guard: Any) -> sfn.IChainable:
        """Where a failed rehearsal goes: when the input allowed it (``"create_snapshot": "if-stale"``)
        and the worker found the scratch at another revision than the source (``ScratchStale``),
        delete that scratch, snapshot the source and rehearse once more on a fresh copy; otherwise
        the cleanup. The fresh copy is prepared inside a Parallel, so its Fail states are caught."""
        check = _lambda(self, "Check for a stale scratch", evaluate, {
            "kind": "stale", "results_prefix": JsonPath.string_at("$.results_prefix")}, "$.stale")
        check.add_catch(cleanup, errors=["States.ALL"], result_path="$.stale_error")
        delete_stale = tasks.CallAwsService(
            self, "Delete stale scratch", service="rds", action="deleteDBInstance",
            parameters={"DbInstanceIdentifier": JsonPath.string_at("$.scratch.instance_id"),
                        "SkipFinalSnapshot": True, "DeleteAutomatedBackups": True},
            iam_resources=[scratch_arn], iam_action="rds:DescribeDBInstances", result_path=JsonPath.DISCARD)
        delete_stale.add_retry(errors=[RDS_BUSY], interval=Duration.seconds(60), max_attempts=45, backoff_rate=1)
        delete_stale.add_retry(errors=RDS_TRANSIENT, interval=Duration.seconds(5), max_attempts=6, backoff_rate=2)
        rename = sfn.Pass(self, "Name the fresh scratch", result_path="$.scratch", parameters={
            "instance_id": JsonPath.format("{}-fresh", JsonPath.string_at("$.scratch.instance_id")),
            "snapshot_id": JsonPath.format("{}-fresh", JsonPath.string_at("$.scratch.snapshot_id")),
            "secret_name": JsonPath.string_at("$.scratch.secret_name"),
            "instance_class": JsonPath.string_at("$.scratch.instance_class"),
            "kind": JsonPath.string_at("$.scratch.kind"),  # rds-snapshot: only its snapshots go stale
            "cluster_id": JsonPath.string_at("$.scratch.cluster_id"),
            "parameter_group": JsonPath.string_at("$.scratch.parameter_group"),  # kept: the fresh copy uses it too
        })
        delete_stale.add_catch(rename, errors=[RDS_NOT_FOUND], result_path=JsonPath.DISCARD)
        delete_stale.add_catch(cleanup, errors=["States.ALL"], result_path="$.cleanup_error")
        once = sfn.Pass(self, "Only one fresh copy", result_path="$.refresh_allowed", result=sfn.Result.from_boolean(False))
        snapshot = sfn.Pass(self, "Snapshot this time", result_path="$.create_snapshot",
                            result=sfn.Result.from_boolean(True))
        reset_scratch = sfn.Pass(self, "Reset the scratch wait", result_path="$.scratch_wait",
                                 result=sfn.Result.from_object({"count": 0}))
        reset_snapshot = sfn.Pass(self, "Reset the snapshot wait", result_path="$.snapshot_wait",
                                  result=sfn.Result.from_object({"count": 0}))
        create_snapshot, _, _ = scratch_chain(" (fresh)")
        settings = _lambda(self, f"{SOURCE_SETTINGS} (fresh)", latest_snapshot, {
            "action": "source_settings", "instance_id": JsonPath.string_at("$.source_instance_id"),
            "cluster_id": JsonPath.string_at("$.source_cluster_id"),
            "instance_class": JsonPath.string_at("$.scratch.instance_class")}, "$.source")
        settings.next(self._scratch_logging(" (fresh)", create_snapshot))
        # a one-branch Parallel always yields one element: the selector cannot miss
        fresh = sfn.Parallel(self, "Prepare a fresh scratch", result_path="$.prepared.scratch", result_selector={
            "instance_id": JsonPath.string_at("$[0].instance_id"), "endpoint": JsonPath.string_at("$[0].endpoint"),
            "state_at": JsonPath.string_at("$[0].state_at")})
        fresh.branch(settings)
        guard(fresh, "Prepare a fresh scratch", cleanup)
        delete_stale.next(rename).next(once).next(snapshot).next(reset_scratch).next(reset_snapshot).next(fresh)
        fresh.next(rehearse)
        stale = sfn.Choice(self, "Scratch stale?").when(
            sfn.Condition.and_(sfn.Condition.is_present("$.stale.stale"), sfn.Condition.boolean_equals("$.stale.stale", True)),
            delete_stale,
        ).otherwise(cleanup)
        check.next(stale)
        return sfn.Choice(self, "Fresh copy allowed?").when(
            sfn.Condition.and_(sfn.Condition.is_present("$.refresh_allowed"),
                               sfn.Condition.boolean_equals("$.refresh_allowed", True)), check,
        ).otherwise(cleanup)


class RestoreWorkflow(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        worker: Worker,
        network: Network,
        topic: sns.ITopic,
        validate: lambda_.IFunction,
        evaluate: lambda_.IFunction,
        format_notification: lambda_.IFunction,
        approval_minutes: int = APPROVAL_MINUTES,
    ) -> None:
        super().__init__(scope, construct_id)
        format_failure = _failure_path(self, topic=topic, format_notification=format_notification,
                                       fail_name="Restore could not run", what="a restore execution")

        def guard(state: sfn.TaskStateBase, name: str) -> None:
            marker = sfn.Pass(self, f"{name} failed", result=sfn.Result.from_string(name),
                              result_path="$.failed_state")
            marker.next(format_failure)
            state.add_catch(marker, errors=["States.ALL"], result_path="$.error")

        # the Lambda checks confirm, the allowlist tag and the endpoint: a refused target ends here
        validate_task = _lambda(self, VALIDATE_RESTORE, validate, {
            "input": JsonPath.object_at("$"),
            "execution": JsonPath.string_at("$$.Execution.Name"),
            "execution_arn": JsonPath.string_at("$$.Execution.Id"),
        }, "$")
        guard(validate_task, VALIDATE_RESTORE)
        approval = self._approval(topic, approval_minutes)
        refused = sfn.Pass(self, "Restore not approved", result=sfn.Result.from_string(WAIT_FOR_APPROVAL),
                           result_path="$.failed_state")
        refused.next(format_failure)
        # `migsafe reject` (SendTaskFailure RestoreRejected) and the timeout both end as a rejection
        approval.add_catch(refused, errors=[RESTORE_REJECTED, "States.Timeout"], result_path="$.error")
        guard(approval, WAIT_FOR_APPROVAL)
        restore = _ecs(self, RESTORE_TABLES, worker=worker, network=network, action="restore", hours=6,
                       environment={
                           "MIGSAFE_REQUEST_KEY": JsonPath.string_at("$.request_key"),
                           "MIGSAFE_EXECUTION": JsonPath.string_at("$.execution"),
                           "MIGSAFE_EXECUTION_ARN": JsonPath.string_at("$$.Execution.Id"),
                           "MIGSAFE_TARGET_ENDPOINT": JsonPath.string_at("$.target_endpoint"),
                       })
        guard(restore, RESTORE_TABLES)
        approval.next(restore)
        evaluate_task = _lambda(self, "Evaluate restore", evaluate, {
            "kind": "restore", "results_prefix": JsonPath.string_at("$.results_prefix")}, "$.evaluation")
        guard(evaluate_task, "Evaluate restore")
        format_result = _lambda(self, "Format restore message", format_notification, {
            "kind": "result",
            "execution": JsonPath.string_at("$$.Execution.Name"),
            "detail": JsonPath.object_at("$"),
        }, "$.message")
        guard(format_result, "Format restore message")
        publish = _publish(self, "Publish restore result", topic)
        guard(publish, "Publish restore result")
        outcome = sfn.Choice(self, "Restore verified?").when(
            sfn.Condition.string_equals("$.evaluation.verdict", "PASS"), sfn.Succeed(self, "Tables restored"),
        ).otherwise(sfn.Fail(self, "Restore failed verification", error="RestoreVerificationFailed",
                             cause="the restored tables differ from the backup's manifest; the restore was rolled back"))
        restore.next(evaluate_task).next(format_result).next(publish).next(outcome)
        # only a diff (which reads the target and changes nothing) needs no approval
        needs_approval = sfn.Choice(self, "Needs approval?").when(
            sfn.Condition.string_equals("$.mode", "diff"), restore,
        ).otherwise(approval)
        target = sfn.Choice(self, "Target is scratch?").when(
            sfn.Condition.string_equals("$.target_kind", "scratch"), restore,
        ).otherwise(needs_approval)
        definition = validate_task.next(target)
        self.state_machine = _state_machine(
            self, definition=definition, hours=EXECUTION_TIMEOUT_HOURS,
            comment="migsafe restore: tables from a backup into a scratch cluster or an allowlisted, approved instance")

    def _approval(self, topic: sns.ITopic, minutes: int) -> tasks.SnsPublish:
        """Publish an approval request carrying the task token; wait for `migsafe approve|reject`."""
        token = JsonPath.task_token
        message = sfn.TaskInput.from_object({
            "version": "1.0",
            "source": "custom",
            "id": JsonPath.format("migsafe-approval-{}", JsonPath.string_at("$.execution")),
            "content": {
                "textType": "client-markdown",
                "title": JsonPath.format(":warning: Approve migsafe restore into {}?", JsonPath.string_at("$.target")),
                "description": JsonPath.format(
                    "*Backup* `{}` into `{}` ({} mode): {}. The restore first backs up these tables of the "
                    f"target, so it can be undone. Nothing happens until someone answers; without an answer "
                    f"within {minutes} minutes the restore is rejected. Execution: {{}}",
                    JsonPath.string_at("$.backup_id"), JsonPath.string_at("$.target"), JsonPath.string_at("$.mode"),
                    JsonPath.string_at("$.tables_text"), JsonPath.string_at("$.console_url")),
                "nextSteps": JsonPath.array(
                    JsonPath.format("Approve: migsafe approve --region {} --token {}",
                                    JsonPath.string_at("$.region"), token),
                    JsonPath.format("Reject: migsafe reject --region {} --token {}",
                                    JsonPath.string_at("$.region"), token)),
            },
            "metadata": {"summary": "migsafe restore: approval needed", "eventType": "migsafe.approval",
                         "additionalContext": {"target": JsonPath.string_at("$.target"),
                                               "backupId": JsonPath.string_at("$.backup_id")}},
        })
        task = tasks.SnsPublish(
            self, WAIT_FOR_APPROVAL,
            topic=topic,
            integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
            message=message,
            subject=JsonPath.format("migsafe approval needed: restore into {}", JsonPath.string_at("$.target")),
            message_attributes={"verdict": tasks.MessageAttribute(value="APPROVAL"),
                                "plan": tasks.MessageAttribute(value=JsonPath.format(
                                    "restore {}", JsonPath.string_at("$.backup_id")))},
            task_timeout=sfn.Timeout.duration(Duration.minutes(minutes)),
            result_path="$.approval",
        )
        task.add_retry(errors=SNS_TRANSIENT, interval=Duration.seconds(2), max_attempts=4, backoff_rate=2)
        return task


class Workflows(Construct):
    """Both state machines, sharing the worker, the topic and the Lambda steps."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        worker: Worker,
        network: Network,
        topic: sns.ITopic,
        validate_plan: lambda_.IFunction,
        validate_restore: lambda_.IFunction,
        latest_snapshot: lambda_.IFunction,
        evaluate: lambda_.IFunction,
        format_notification: lambda_.IFunction,
        source_instance_id: str,
        scratch_wait_minutes: int,
        source_cluster_id: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.pre_migration = PreMigrationWorkflow(
            self, "PreMigration", worker=worker, network=network, topic=topic, validate=validate_plan,
            latest_snapshot=latest_snapshot, evaluate=evaluate, format_notification=format_notification,
            source_instance_id=source_instance_id, scratch_wait_minutes=scratch_wait_minutes,
            source_cluster_id=source_cluster_id)
        self.restore = RestoreWorkflow(
            self, "Restore", worker=worker, network=network, topic=topic, validate=validate_restore,
            evaluate=evaluate, format_notification=format_notification)
        for machine in (self.pre_migration.state_machine, self.restore.state_machine):
            NagSuppressions.add_resource_suppressions(machine, [
                {"id": "AwsSolutions-IAM5",
                 "reason": "Generated by the Step Functions integrations: lambda:InvokeFunction on the functions' "
                           "versions (<arn>:*), ecs:StopTask/DescribeTasks (no resource scoping for .sync), "
                           "X-Ray and log delivery (resource *), and RDS on migsafe-scratch-* instances, the "
                           "source's snapshots, subnet/option/parameter groups chosen by the deploy.",
                 "applies_to": [{"regex": "/^Resource::.*$/g"}, {"regex": "/^Action::.*$/g"}]},
            ], apply_to_children=True)

    @property
    def state_machines(self) -> Sequence[sfn.StateMachine]:
        return [self.pre_migration.state_machine, self.restore.state_machine]
