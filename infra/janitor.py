"""The scratch janitor: every hour, delete what executions left behind (orphans of killed or
timed-out executions cost money): scratch instances, scratch clusters (Aurora; after their
instances), the snapshots runs created, scratch DB parameter groups (``migration.command`` plans;
once no instance has them), and the scratch password secrets.

Each carries the tag ``migsafe:execution`` (the execution ARN). The janitor deletes one only when
Step Functions says that execution is no longer RUNNING, or when it is older than the state
machine's timeout plus a margin (an 8-hour execution must never lose its scratch to a 6-hour
rule). One resource that cannot be deleted is logged and the sweep goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_stepfunctions as sfn
from cdk_nag import NagSuppressions
from constructs import Construct

from .lambdas import python_function

SCRATCH_TAG = "migsafe:scratch"
EXECUTION_TAG = "migsafe:execution"
SCRATCH_PREFIX = "migsafe-scratch-"
SECRET_PREFIX = "migsafe-scratch/"  # noqa: S105 - a secret name prefix, not a secret
EXECUTION_TIMEOUT_HOURS = 8  # both state machines' timeout
MARGIN_HOURS = 1
SCHEDULE = events.Schedule.rate(Duration.hours(1))


def _arn(scope: Construct, service: str, resource: str, name: str) -> str:
    return Stack.of(scope).format_arn(service=service, resource=resource, resource_name=name,
                                      arn_format=ArnFormat.COLON_RESOURCE_NAME)


def scratch_delete_statement(scope: Construct) -> iam.PolicyStatement:
    """rds:DeleteDBInstance, only on instances that carry the scratch tag (and the scratch name)."""
    return iam.PolicyStatement(
        sid="DeleteTaggedScratchOnly",
        actions=["rds:DeleteDBInstance"],
        resources=[_arn(scope, "rds", "db", f"{SCRATCH_PREFIX}*")],
        conditions={"StringLike": {f"rds:db-tag/{SCRATCH_TAG}": "*"}},
    )


def scratch_cleanup_statements(scope: Construct) -> list[iam.PolicyStatement]:
    """Delete scratch clusters (Aurora), the run's snapshots, the scratch DB parameter groups
    (migration.command plans) and the scratch secrets: named migsafe-scratch-*, tagged migsafe:scratch."""
    return [
        iam.PolicyStatement(
            sid="DeleteTaggedScratchClustersOnly",
            actions=["rds:DeleteDBCluster"],
            resources=[_arn(scope, "rds", "cluster", f"{SCRATCH_PREFIX}*")],
            conditions={"StringLike": {f"rds:cluster-tag/{SCRATCH_TAG}": "*"}},
        ),
        iam.PolicyStatement(
            sid="DeleteTaggedRunSnapshotsOnly",
            actions=["rds:DeleteDBSnapshot"],
            resources=[_arn(scope, "rds", "snapshot", f"{SCRATCH_PREFIX}*")],
            conditions={"StringLike": {f"rds:snapshot-tag/{SCRATCH_TAG}": "*"}},
        ),
        iam.PolicyStatement(
            sid="DeleteTaggedScratchParameterGroupsOnly",
            actions=["rds:DeleteDBParameterGroup"],
            resources=[_arn(scope, "rds", "pg", f"{SCRATCH_PREFIX}*")],
            conditions={"StringLike": {f"rds:pg-tag/{SCRATCH_TAG}": "*"}},
        ),
        iam.PolicyStatement(
            sid="DeleteTaggedScratchSecretsOnly",
            actions=["secretsmanager:DeleteSecret"],
            resources=[_arn(scope, "secretsmanager", "secret", f"{SECRET_PREFIX}*")],
            conditions={"StringLike": {f"secretsmanager:ResourceTag/{SCRATCH_TAG}": "*"}},
        ),
    ]


class Janitor(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        layer: lambda_.ILayerVersion,
        max_age_hours: int,
        state_machines: Sequence[sfn.IStateMachine] = (),
    ) -> None:
        super().__init__(scope, construct_id)
        # never younger than the longest an execution may still be using its scratch
        hours = max(max_age_hours, EXECUTION_TIMEOUT_HOURS + MARGIN_HOURS)
        self.max_age_hours = hours
        self.function = python_function(
            self, "Function", handler="handlers.janitor.handler", layer=layer,
            environment={"MIGSAFE_SCRATCH_MAX_AGE_HOURS": str(hours),
                         "MIGSAFE_SCRATCH_TAG": SCRATCH_TAG, "MIGSAFE_SCRATCH_PREFIX": SCRATCH_PREFIX},
            timeout=Duration.minutes(5),
            description=f"migsafe: delete scratch resources of finished executions (or older than {hours} h)",
        )
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="ListScratchResources",
            actions=["rds:DescribeDBInstances", "rds:DescribeDBClusters", "rds:DescribeDBSnapshots",
                     "rds:DescribeDBParameterGroups", "secretsmanager:ListSecrets"],
            resources=["*"]))
        # a parameter group's tags are not in its description: read for migsafe-scratch-* groups only
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="ReadScratchParameterGroupTags", actions=["rds:ListTagsForResource"],
            resources=[_arn(self, "rds", "pg", f"{SCRATCH_PREFIX}*")]))
        self.function.add_to_role_policy(scratch_delete_statement(self))
        for statement in scratch_cleanup_statements(self):
            self.function.add_to_role_policy(statement)
        executions = [Stack.of(self).format_arn(service="states", resource="execution",
                                                resource_name=f"{machine.state_machine_name}:*",
                                                arn_format=ArnFormat.COLON_RESOURCE_NAME)
                      for machine in state_machines]
        if executions:
            self.function.add_to_role_policy(iam.PolicyStatement(
                sid="AskWhetherTheExecutionRuns", actions=["states:DescribeExecution"], resources=executions))
        self.rule = events.Rule(self, "Schedule", schedule=SCHEDULE,
                                description="migsafe: sweep orphaned scratch resources",
                                targets=[targets.LambdaFunction(self.function, retry_attempts=2)])
        NagSuppressions.add_resource_suppressions(self.function, [
            {"id": "AwsSolutions-IAM5",
             "reason": "DescribeDBInstances/DescribeDBClusters/DescribeDBSnapshots/ListSecrets cannot be scoped to tagged resources "
                       "before they are listed; deletes are limited to migsafe-scratch-* resources carrying the "
                       "migsafe:scratch tag; DescribeExecution to the executions of the migsafe state machines.",
             "applies_to": [{"regex": "/^Resource::.*$/g"}]},
        ], apply_to_children=True)
