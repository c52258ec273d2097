"""The scratch janitor: every hour, delete RDS instances tagged ``migsafe:scratch`` that are older
than ``scratchMaxAgeHours`` (orphans of killed executions cost money)."""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from cdk_nag import NagSuppressions
from constructs import Construct

from .lambdas import python_function

SCRATCH_TAG = "migsafe:scratch"
SCRATCH_PREFIX = "migsafe-scratch-"
SCHEDULE = events.Schedule.rate(Duration.hours(1))


def scratch_delete_statement(scope: Construct) -> iam.PolicyStatement:
    """rds:DeleteDBInstance, only on instances that carry the scratch tag (and the scratch name)."""
    stack = Stack.of(scope)
    return iam.PolicyStatement(
        sid="DeleteTaggedScratchOnly",
        actions=["rds:DeleteDBInstance"],
        resources=[stack.format_arn(service="rds", resource="db", resource_name=f"{SCRATCH_PREFIX}*",
                                    arn_format=ArnFormat.COLON_RESOURCE_NAME)],
        conditions={"StringLike": {f"rds:db-tag/{SCRATCH_TAG}": "*"}},
    )


class Janitor(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        layer: lambda_.ILayerVersion,
        max_age_hours: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self.function = python_function(
            self, "Function", handler="handlers.janitor.handler", layer=layer,
            environment={"MIGSAFE_SCRATCH_MAX_AGE_HOURS": str(max_age_hours),
                         "MIGSAFE_SCRATCH_TAG": SCRATCH_TAG, "MIGSAFE_SCRATCH_PREFIX": SCRATCH_PREFIX},
            timeout=Duration.minutes(2),
            description=f"migsafe: delete scratch instances older than {max_age_hours} h",
        )
        self.function.add_to_role_policy(iam.PolicyStatement(
            sid="ListInstances", actions=["rds:DescribeDBInstances"], resources=["*"]))
        self.function.add_to_role_policy(scratch_delete_statement(self))
        self.rule = events.Rule(self, "Schedule", schedule=SCHEDULE,
                                description="migsafe: sweep orphaned scratch instances",
                                targets=[targets.LambdaFunction(self.function, retry_attempts=2)])
        NagSuppressions.add_resource_suppressions(self.function, [
            {"id": "AwsSolutions-IAM5",
             "reason": "DescribeDBInstances cannot be scoped to tagged instances before they are listed; the "
                       "delete is limited to migsafe-scratch-* instances carrying the migsafe:scratch tag.",
             "applies_to": ["Resource::*",
                            {"regex": "/^Resource::arn:<AWS::Partition>:rds:<AWS::Region>:<AWS::AccountId>:db:migsafe-scratch-\\*$/g"}]},
        ], apply_to_children=True)
