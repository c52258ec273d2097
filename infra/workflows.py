"""The two Standard state machines: the pre-migration gate and the console restore.

Both are plain ASL (Task, Choice, Wait, Parallel, Pass, Succeed, Fail) so the synthesized
definitions can be executed by moto's Step Functions interpreter in tests. Retry and Catch match the
package's exception names (``TransientAwsError``, ``ScratchFailed``, ...) plus the services' own
throttling errors.

Pre-migration (input: ``{"plan": {...}, "bundle_sha256"?: "...", "create_snapshot"?: false}``)::

    Validate plan -> Prepare (parallel: Back up tables | snapshot -> Restore scratch instance ->
    wait until available) -> Rehearse on scratch -> Evaluate verdict -> Format result message ->
    Publish result -> Delete scratch instance -> Succeed / Fail on the verdict

From ``Prepare`` on, every Task and Parallel state catches ``States.ALL`` into a ``<state> failed``
marker that records the state's name and leads to ``Delete scratch after failure`` (which
tolerates an instance that was never created), then a FAIL message naming the state and the error.

Restore (input: ``{"backup_id": "...", "tables"?: [...], "target": "scratch" | "<instance id>",
"confirm"?: "<instance id>"}``)::

    Validate restore request -> (scratch | Describe target instance) -> Restore tables ->
    Evaluate restore -> Format restore message -> Publish restore result -> Succeed / Fail
"""

from __future__ import annotations

from collections.abc import Sequence

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

from .janitor import SCRATCH_PREFIX, SCRATCH_TAG, scratch_delete_statement
from .network import Network
from .worker import Worker

JsonPath = sfn.JsonPath

LAMBDA_TRANSIENT = ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException",
                    "Lambda.TooManyRequestsException", "TransientAwsError"]
# Only names Step Functions can emit for these Tasks (tests/infra/test_errors.py): RDS throttling
# arrives as the base Rds.RdsException (RDS models no ThrottlingException); migsafe's own exception
# names only ever come from the Lambda steps.
RDS_TRANSIENT = ["Rds.RdsException"]
ECS_TRANSIENT = ["ECS.AmazonECSException", "ECS.ServerException"]
SNS_TRANSIENT = ["SNS.InternalErrorException", "SNS.KmsThrottlingException", "SNS.AmazonSNSException",
                 "SNS.SnsException"]
RDS_NOT_FOUND = "Rds.DbInstanceNotFoundException"
RDS_ALREADY_EXISTS = "Rds.DbInstanceAlreadyExistsException"
RDS_BUSY = "Rds.InvalidDbInstanceStateException"
SCRATCH_FAILED_STATUSES = ["failed", "incompatible-restore", "incompatible-parameters", "incompatible-network",
                           "storage-full", "inaccessible-encryption-credentials", "restore-error"]
POLL_SECONDS = 30
SNAPSHOT_POLL_SECONDS = 60
WORKER_COMMAND = ["python", "-m", "migsafe.worker"]
STATES_LOG_PREFIX = "/aws/vendedlogs/states/"

# state names: a contract with tests (tests/infra) and with docs/architecture.md
VALIDATE_PLAN = "Validate plan"
PREPARE = "Prepare"
BACKUP = "Back up tables"
RESTORE_SCRATCH = "Restore scratch instance"
REHEARSE = "Rehearse on scratch"
EVALUATE = "Evaluate verdict"
FORMAT_RESULT = "Format result message"
PUBLISH_RESULT = "Publish result"
DELETE_SCRATCH = "Delete scratch instance"
DELETE_AFTER_FAILURE = "Delete scratch after failure"
FORMAT_FAILURE = "Format failure message"
PUBLISH_FAILURE = "Publish failure"


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
        container_overrides=[tasks.ContainerOverride(
            container_definition=worker.container,
            command=[*WORKER_COMMAND, action],
            environment=[tasks.TaskEnvironmentVariable(name=k, value=v) for k, v in environment.items()],
        )],
        result_selector={"task_arn": JsonPath.string_at("$.TaskArn")},
        result_path=JsonPath.DISCARD,
        task_timeout=sfn.Timeout.duration(Duration.hours(hours)),
    )
    task.add_retry(errors=ECS_TRANSIENT, interval=Duration.seconds(10), max_attempts=3, backoff_rate=2)
    return task


def _publish(scope: Construct, name: str, topic: sns.ITopic) -> tasks.SnsPublish:
    task = tasks.SnsPublish(
        scope, name,
        topic=topic,
        message=sfn.TaskInput.from_json_path_at("$.message.text"),
        subject=JsonPath.string_at("$.message.subject"),
        message_attributes={"verdict": tasks.MessageAttribute(value=JsonPath.string_at("$.message.verdict"))},
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
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)

        def rds_arn(resource: str, name: str) -> str:
            return stack.format_arn(service="rds", resource=resource, resource_name=name,
                                    arn_format=ArnFormat.COLON_RESOURCE_NAME)

        scratch_arn = rds_arn("db", f"{SCRATCH_PREFIX}*")
        scratch_id = JsonPath.string_at("$.scratch.instance_id")

        # --- the failure path (declared first: everything after Prepare catches into it) ----------
        format_failure = _failure_path(self, topic=topic, format_notification=format_notification,
                                       fail_name="Rehearsal could not run", what="a pre-migration execution")

        delete_after_failure = tasks.CallAwsService(
            self, DELETE_AFTER_FAILURE,
            service="rds", action="deleteDBInstance",
            parameters={"DbInstanceIdentifier": scratch_id, "SkipFinalSnapshot": True,
                        "DeleteAutomatedBackups": True},
            # the delete permission itself is scratch_delete_statement (tag-conditioned), not this one
            iam_resources=[scratch_arn], iam_action="rds:DescribeDBInstances",
            result_path=JsonPath.DISCARD,
        )
        delete_after_failure.add_retry(errors=[RDS_BUSY], interval=Duration.seconds(60), max_attempts=45,
                                       backoff_rate=1)
        delete_after_failure.add_retry(errors=RDS_TRANSIENT, interval=Duration.seconds(5), max_attempts=5,
                                       backoff_rate=2)
        delete_after_failure.add_catch(format_failure, errors=[RDS_NOT_FOUND], result_path=JsonPath.DISCARD)
        delete_after_failure.add_catch(format_failure, errors=["States.ALL"], result_path="$.cleanup_error")
        delete_after_failure.next(format_failure)

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

        # --- branch 1: back up the tables --------------------------------------------------------
        backup = _ecs(self, BACKUP, worker=worker, network=network, action="backup", hours=4, environment={
            "MIGSAFE_REQUEST": JsonPath.string_at("$.request"),
            "MIGSAFE_EXECUTION": JsonPath.string_at("$.execution"),
        })
        backup_done = sfn.Pass(self, "Backup written", parameters={"results_prefix": JsonPath.string_at("$.results_prefix")})
        backup.next(backup_done)

        # --- branch 2: snapshot -> scratch instance -> available ---------------------------------
        restore_scratch = tasks.CallAwsService(
            self, RESTORE_SCRATCH,
            service="rds", action="restoreDBInstanceFromDBSnapshot",
            parameters={
                "DbInstanceIdentifier": scratch_id,
                "DbSnapshotIdentifier": JsonPath.string_at("$.snapshot.snapshot_id"),
                "DbInstanceClass": JsonPath.string_at("$.scratch.instance_class"),
                "DbSubnetGroupName": network.db_subnet_group_name,
                "VpcSecurityGroupIds": [network.scratch_security_group_id],
                "PubliclyAccessible": False,
                "MultiAZ": False,
                "DeletionProtection": False,
                "AutoMinorVersionUpgrade": False,
                "CopyTagsToSnapshot": False,
                "Tags": [{"Key": SCRATCH_TAG, "Value": JsonPath.string_at("$.execution")}],
            },
            iam_resources=[scratch_arn, rds_arn("snapshot", "*"), rds_arn("subgrp", "*"), rds_arn("og", "*"),
                           rds_arn("pg", "*"), rds_arn("secgrp", "*")],
            iam_action="rds:RestoreDBInstanceFromDBSnapshot",
            additional_iam_statements=[iam.PolicyStatement(
                actions=["rds:AddTagsToResource"], resources=[scratch_arn],
                conditions={"StringLike": {f"aws:RequestTag/{SCRATCH_TAG}": "*"}})],
            result_path=JsonPath.DISCARD,
        )
        restore_scratch.add_retry(errors=RDS_TRANSIENT, interval=Duration.seconds(5), max_attempts=5, backoff_rate=2)

        wait_scratch = sfn.Wait(self, "Wait for scratch", time=sfn.WaitTime.duration(Duration.seconds(POLL_SECONDS)))
        # a retried restore whose first call went through: the instance is ours (its id is per execution)
        restore_scratch.add_catch(wait_scratch, errors=[RDS_ALREADY_EXISTS], result_path=JsonPath.DISCARD)
        describe_scratch = tasks.CallAwsService(
            self, "Describe scratch",
            service="rds", action="describeDBInstances",
            parameters={"DbInstanceIdentifier": scratch_id},
            iam_resources=[scratch_arn], iam_action="rds:DescribeDBInstances",
            result_selector={"status": JsonPath.string_at("$.DbInstances[0].DbInstanceStatus"),
                             "instance": JsonPath.object_at("$.DbInstances[0]")},
            result_path="$.scratch_status",
        )
        describe_scratch.add_retry(errors=RDS_TRANSIENT, interval=Duration.seconds(5), max_attempts=5,
                                   backoff_rate=2)
        scratch_ready = sfn.Pass(self, "Scratch endpoint", parameters={
            "instance_id": scratch_id,
            "endpoint": JsonPath.format("{}:{}", JsonPath.string_at("$.scratch_status.instance.Endpoint.Address"),
                                        JsonPath.string_at("$.scratch_status.instance.Endpoint.Port")),
        })
        scratch_broken = sfn.Fail(self, "Scratch instance failed", error="ScratchFailed",
                                  cause="the scratch instance entered a failed state")
        scratch_late = sfn.Fail(self, "Scratch deadline passed", error="ScratchFailed",
                                cause=f"the scratch instance was not available within {scratch_wait_minutes} minutes")
        count_scratch = sfn.Pass(self, "Count scratch wait", result_path="$.scratch_wait", parameters={
            "count": JsonPath.math_add(JsonPath.number_at("$.scratch_wait.count"), 1)})
        scratch_deadline = sfn.Choice(self, "Scratch deadline?").when(
            sfn.Condition.number_greater_than("$.scratch_wait.count", scratch_wait_minutes * 60 // POLL_SECONDS),
            scratch_late,
        ).otherwise(wait_scratch)
        count_scratch.next(scratch_deadline)
        scratch_available = sfn.Choice(self, "Scratch available?").when(
            sfn.Condition.string_equals("$.scratch_status.status", "available"), scratch_ready,
        ).when(
            sfn.Condition.or_(*[sfn.Condition.string_equals("$.scratch_status.status", s)
                                for s in SCRATCH_FAILED_STATUSES]),
            scratch_broken,
        ).otherwise(count_scratch)
        restore_scratch.next(wait_scratch)
        wait_scratch.next(describe_scratch)
        describe_scratch.next(scratch_available)

        find_latest = _lambda(self, "Find latest snapshot", latest_snapshot, {
            "instance_id": JsonPath.string_at("$.source_instance_id")}, "$.snapshot")
        find_latest.next(restore_scratch)
        create_snapshot = tasks.CallAwsService(
            self, "Create snapshot",
            service="rds", action="createDBSnapshot",
            parameters={
                "DbInstanceIdentifier": JsonPath.string_at("$.source_instance_id"),
                "DbSnapshotIdentifier": JsonPath.string_at("$.scratch.snapshot_id"),
                "Tags": [{"Key": SCRATCH_TAG, "Value": JsonPath.string_at("$.execution")}],
            },
            iam_resources=[rds_arn("db", source_instance_id), rds_arn("snapshot", f"{SCRATCH_PREFIX}*")],
            iam_action="rds:CreateDBSnapshot",
            additional_iam_statements=[iam.PolicyStatement(
                actions=["rds:AddTagsToResource"], resources=[rds_arn("snapshot", f"{SCRATCH_PREFIX}*")])],
            result_selector={"snapshot_id": JsonPath.string_at("$.DbSnapshot.DbSnapshotIdentifier")},
            result_path="$.snapshot",
        )
        create_snapshot.add_retry(errors=RDS_TRANSIENT, interval=Duration.seconds(5), max_attempts=5, backoff_rate=2)
        wait_snapshot = sfn.Wait(self, "Wait for snapshot",
                                 time=sfn.WaitTime.duration(Duration.seconds(SNAPSHOT_POLL_SECONDS)))
        describe_snapshot = tasks.CallAwsService(
            self, "Describe snapshot",
            service="rds", action="describeDBSnapshots",
            parameters={"DbSnapshotIdentifier": JsonPath.string_at("$.snapshot.snapshot_id")},
            iam_resources=[rds_arn("snapshot", f"{SCRATCH_PREFIX}*")], iam_action="rds:DescribeDBSnapshots",
            result_selector={"status": JsonPath.string_at("$.DbSnapshots[0].Status")},
            result_path="$.snapshot_status",
        )
        describe_snapshot.add_retry(errors=RDS_TRANSIENT, interval=Duration.seconds(5), max_attempts=5,
                                    backoff_rate=2)
        snapshot_late = sfn.Fail(self, "Snapshot deadline passed", error="ScratchFailed",
                                 cause=f"the snapshot was not available within {scratch_wait_minutes} minutes")
        count_snapshot = sfn.Pass(self, "Count snapshot wait", result_path="$.snapshot_wait", parameters={
            "count": JsonPath.math_add(JsonPath.number_at("$.snapshot_wait.count"), 1)})
        count_snapshot.next(sfn.Choice(self, "Snapshot deadline?").when(
            sfn.Condition.number_greater_than("$.snapshot_wait.count",
                                              scratch_wait_minutes * 60 // SNAPSHOT_POLL_SECONDS),
            snapshot_late,
        ).otherwise(wait_snapshot))
        create_snapshot.next(wait_snapshot)
        wait_snapshot.next(describe_snapshot)
        describe_snapshot.next(sfn.Choice(self, "Snapshot available?").when(
            sfn.Condition.string_equals("$.snapshot_status.status", "available"), restore_scratch,
        ).otherwise(count_snapshot))
        which_snapshot = sfn.Choice(self, "Snapshot requested?").when(
            sfn.Condition.boolean_equals("$.create_snapshot", True), create_snapshot,
        ).otherwise(find_latest)

        prepare = sfn.Parallel(self, PREPARE, result_selector={
            "backup": JsonPath.object_at("$[0]"), "scratch": JsonPath.object_at("$[1]")},
            result_path="$.prepared")
        prepare.branch(backup)
        prepare.branch(which_snapshot)
        guard(prepare, PREPARE, delete_after_failure)

        # --- rehearse, evaluate, publish, clean up, decide ---------------------------------------
        rehearse = _ecs(self, REHEARSE, worker=worker, network=network, action="rehearse", hours=4, environment={
            "MIGSAFE_REQUEST": JsonPath.string_at("$.request"),
            "MIGSAFE_EXECUTION": JsonPath.string_at("$.execution"),
            "MIGSAFE_SCRATCH_ENDPOINT": JsonPath.string_at("$.prepared.scratch.endpoint"),
        })
        guard(rehearse, REHEARSE, delete_after_failure)
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
        delete_scratch = tasks.CallAwsService(
            self, DELETE_SCRATCH,
            service="rds", action="deleteDBInstance",
            parameters={"DbInstanceIdentifier": scratch_id, "SkipFinalSnapshot": True,
                        "DeleteAutomatedBackups": True},
            # the delete permission itself is scratch_delete_statement (tag-conditioned), not this one
            iam_resources=[scratch_arn], iam_action="rds:DescribeDBInstances",
            result_path=JsonPath.DISCARD,
        )
        delete_scratch.add_retry(errors=[RDS_BUSY], interval=Duration.seconds(60), max_attempts=45, backoff_rate=1)
        delete_scratch.add_retry(errors=RDS_TRANSIENT, interval=Duration.seconds(5), max_attempts=5, backoff_rate=2)
        verdict = sfn.Choice(self, "Verdict?").when(
            sfn.Condition.string_equals("$.evaluation.verdict", "PASS"),
            sfn.Succeed(self, "Migration is safe"),
        ).otherwise(sfn.Fail(self, "Migration failed rehearsal", error="VerdictFail",
                             cause="the rehearsal's verdict is FAIL: see the result message and report"))
        delete_scratch.add_catch(verdict, errors=[RDS_NOT_FOUND], result_path=JsonPath.DISCARD)
        guard(delete_scratch, DELETE_SCRATCH, delete_after_failure)

        definition = (validate_task.next(prepare).next(rehearse).next(evaluate_task).next(format_result)
                      .next(publish_result).next(delete_scratch).next(verdict))
        self.state_machine = _state_machine(
            self, definition=definition, hours=8,
            comment="migsafe pre-migration gate: back up, rehearse on a scratch RDS copy, verdict, always clean up")
        self.state_machine.role.add_to_principal_policy(scratch_delete_statement(self))


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
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        format_failure = _failure_path(self, topic=topic, format_notification=format_notification,
                                       fail_name="Restore could not run", what="a restore execution")

        def guard(state: sfn.TaskStateBase, name: str) -> None:
            marker = sfn.Pass(self, f"{name} failed", result=sfn.Result.from_string(name),
                              result_path="$.failed_state")
            marker.next(format_failure)
            state.add_catch(marker, errors=["States.ALL"], result_path="$.error")

        validate_task = _lambda(self, "Validate restore request", validate, {
            "input": JsonPath.object_at("$"),
            "execution": JsonPath.string_at("$$.Execution.Name"),
        }, "$")
        guard(validate_task, "Validate restore request")
        use_scratch = sfn.Pass(self, "Use a throw-away scratch cluster", result_path="$.target_endpoint",
                               result=sfn.Result.from_object({"endpoint": "scratch"}))
        describe_target = tasks.CallAwsService(
            self, "Describe target instance",
            service="rds", action="describeDBInstances",
            parameters={"DbInstanceIdentifier": JsonPath.string_at("$.target")},
            iam_resources=[stack.format_arn(service="rds", resource="db", resource_name="*",
                                            arn_format=ArnFormat.COLON_RESOURCE_NAME)],
            iam_action="rds:DescribeDBInstances",
            result_selector={"endpoint": JsonPath.format(
                "{}:{}", JsonPath.string_at("$.DbInstances[0].Endpoint.Address"),
                JsonPath.string_at("$.DbInstances[0].Endpoint.Port"))},
            result_path="$.target_endpoint",
        )
        describe_target.add_retry(errors=RDS_TRANSIENT, interval=Duration.seconds(5), max_attempts=5,
                                  backoff_rate=2)
        guard(describe_target, "Describe target instance")
        restore = _ecs(self, "Restore tables", worker=worker, network=network, action="restore", hours=6,
                       environment={
                           "MIGSAFE_REQUEST": JsonPath.string_at("$.request"),
                           "MIGSAFE_EXECUTION": JsonPath.string_at("$.execution"),
                           "MIGSAFE_TARGET_ENDPOINT": JsonPath.string_at("$.target_endpoint.endpoint"),
                       })
        guard(restore, "Restore tables")
        use_scratch.next(restore)
        describe_target.next(restore)
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
        target = sfn.Choice(self, "Target is scratch?").when(
            sfn.Condition.string_equals("$.target_kind", "scratch"), use_scratch,
        ).otherwise(describe_target)
        definition = validate_task.next(target)
        self.state_machine = _state_machine(
            self, definition=definition, hours=8,
            comment="migsafe restore: tables from a backup into a scratch cluster or a confirmed instance, verified")


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
    ) -> None:
        super().__init__(scope, construct_id)
        self.pre_migration = PreMigrationWorkflow(
            self, "PreMigration", worker=worker, network=network, topic=topic, validate=validate_plan,
            latest_snapshot=latest_snapshot, evaluate=evaluate, format_notification=format_notification,
            source_instance_id=source_instance_id, scratch_wait_minutes=scratch_wait_minutes)
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
