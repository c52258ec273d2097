"""The light Lambda steps: validate, find the latest snapshot, evaluate, format the notification.

Assets build without Docker: the code is ``functions/`` itself (``Code.from_asset`` with excludes)
and the dependencies (Powertools, pydantic) come from the public Powertools layer.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import ArnFormat, Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from cdk_nag import NagSuppressions
from constructs import Construct

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
ASSET_EXCLUDE = ["Dockerfile", "*.egg-info", "**/__pycache__", "**/*.pyc", ".mypy_cache", ".pytest_cache"]
RUNTIME = lambda_.Runtime.PYTHON_3_11  # the interpreter the package is tested on
POWERTOOLS_ACCOUNT = "017000801446"


def powertools_layer_arn(version: int) -> str:
    return (f"arn:{Aws.PARTITION}:lambda:{Aws.REGION}:{POWERTOOLS_ACCOUNT}:layer:"
            f"AWSLambdaPowertoolsPythonV3-python311-x86_64:{version}")


def python_function(
    scope: Construct,
    construct_id: str,
    *,
    handler: str,
    description: str,
    layer: lambda_.ILayerVersion,
    environment: dict[str, str],
    timeout: Duration | None = None,
) -> lambda_.Function:
    """A Python Lambda over ``functions/``: X-Ray on, logs kept a month, Powertools configured."""
    log_group = logs.LogGroup(scope, f"{construct_id}Logs", retention=logs.RetentionDays.ONE_MONTH,
                              removal_policy=RemovalPolicy.DESTROY)
    fn = lambda_.Function(
        scope, construct_id,
        runtime=RUNTIME,
        architecture=lambda_.Architecture.X86_64,
        handler=handler,
        code=lambda_.Code.from_asset(str(FUNCTIONS), exclude=ASSET_EXCLUDE),
        layers=[layer],
        description=description,
        timeout=timeout or Duration.seconds(30),
        memory_size=512,
        tracing=lambda_.Tracing.ACTIVE,
        log_group=log_group,
        environment={
            "POWERTOOLS_SERVICE_NAME": "migsafe",
            "POWERTOOLS_METRICS_NAMESPACE": "migsafe",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            **environment,
        },
    )
    NagSuppressions.add_resource_suppressions(fn, [
        {"id": "AwsSolutions-IAM4",
         "reason": "AWSLambdaBasicExecutionRole only lets the function write its own CloudWatch logs.",
         "applies_to": ["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]},
        {"id": "AwsSolutions-IAM5",
         "reason": "X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions; "
                   "S3 object actions are limited to the migsafe bucket's keys.",
         "applies_to": ["Resource::*", "Action::s3:GetObject*", "Action::s3:GetBucket*", "Action::s3:List*",
                        {"regex": "/^Resource::<.*Backups.*\\.Arn>/\\*$/g"}]},
        {"id": "AwsSolutions-L1",
         "reason": "Python 3.11 is the interpreter the migsafe package is tested on and the Powertools layer "
                   "matches it; moving runtimes is a deliberate, tested change."},
    ], apply_to_children=True)
    return fn


class Lambdas(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bucket: s3.IBucket,
        store_url: str,
        results_url: str,
        source_instance_id: str,
        scratch_instance_class: str,
        powertools_layer_version: int,
        source_port: int = 5432,
    ) -> None:
        super().__init__(scope, construct_id)
        self.layer = lambda_.LayerVersion.from_layer_version_arn(
            self, "Powertools", powertools_layer_arn(powertools_layer_version))
        env = {
            "MIGSAFE_STORE_URL": store_url,
            "MIGSAFE_RESULTS_URL": results_url,
            "MIGSAFE_SOURCE_INSTANCE_ID": source_instance_id,
            "MIGSAFE_SCRATCH_INSTANCE_CLASS": scratch_instance_class,
            "MIGSAFE_SOURCE_PORT": str(source_port),
        }
        self.validate_plan = python_function(
            self, "ValidatePlan", handler="handlers.validate.plan_handler", layer=self.layer, environment=env,
            description="migsafe: validate a pre-migration request (plan, bundle) and name its scratch instance")
        self.validate_restore = python_function(
            self, "ValidateRestore", handler="handlers.validate.restore_handler", layer=self.layer,
            environment=env,
            description="migsafe: validate a restore request; a non-scratch target needs confirm == target")
        self.latest_snapshot = python_function(
            self, "LatestSnapshot", handler="handlers.snapshots.handler", layer=self.layer, environment=env,
            description="migsafe: the source instance's latest available snapshot")
        self.evaluate = python_function(
            self, "Evaluate", handler="handlers.evaluate.handler", layer=self.layer, environment=env,
            description="migsafe: read result.json and return the verdict, reasons and report location")
        self.format_notification = python_function(
            self, "FormatNotification", handler="handlers.notification.handler", layer=self.layer,
            environment=env, description="migsafe: the Chatbot message for a verdict or a caught failure")

        # the bundle (the backup) must exist before anything starts; the request goes beside it
        bucket.grant_read_write(self.validate_plan)
        bucket.grant_read_write(self.validate_restore)
        bucket.grant_read(self.evaluate)
        bucket.grant_read(self.format_notification)
        stack = Stack.of(self)
        # the restore target's tags (the allowlist) and endpoint
        self.validate_restore.add_to_role_policy(iam.PolicyStatement(
            actions=["rds:DescribeDBInstances"],
            resources=[stack.format_arn(service="rds", resource="db", resource_name="*",
                                        arn_format=ArnFormat.COLON_RESOURCE_NAME)]))
        self.latest_snapshot.add_to_role_policy(iam.PolicyStatement(
            actions=["rds:DescribeDBSnapshots", "rds:DescribeDBInstances"],
            resources=[
                stack.format_arn(service="rds", resource="db", resource_name=source_instance_id,
                                 arn_format=ArnFormat.COLON_RESOURCE_NAME),
                stack.format_arn(service="rds", resource="snapshot", resource_name="*",
                                 arn_format=ArnFormat.COLON_RESOURCE_NAME),
            ],
        ))
        NagSuppressions.add_resource_suppressions(self.latest_snapshot, [
            {"id": "AwsSolutions-IAM5",
             "reason": "Automated snapshot names are generated by RDS (rds:<instance>-<date>); listing the "
                       "source's snapshots needs the snapshot:* resource.",
             "applies_to": [{"regex": "/^Resource::arn:<AWS::Partition>:rds:<AWS::Region>:<AWS::AccountId>:snapshot:\\*$/g"}]},
        ], apply_to_children=True)

    @property
    def all(self) -> list[lambda_.Function]:
        return [self.validate_plan, self.validate_restore, self.latest_snapshot, self.evaluate,
                self.format_notification]
