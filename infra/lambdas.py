"""The light Lambda steps: validate, find the latest snapshot, evaluate, format the notification.

Assets build without Docker: the code is ``functions/`` itself (``Code.from_asset`` with excludes)
and the dependencies (Powertools, pydantic) come from the public Powertools layer.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import ArnFormat, Aws, CfnCondition, Duration, Fn, RemovalPolicy, Stack, Token
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from cdk_nag import NagSuppressions
from constructs import Construct

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
ASSET_EXCLUDE = ["Dockerfile", "*.egg-info", "**/__pycache__", "**/*.pyc", ".mypy_cache", ".pytest_cache"]
RUNTIME = lambda_.Runtime.PYTHON_3_11  # the interpreter the package is tested on
POWERTOOLS_LAYER = "AWSLambdaPowertoolsPythonV3-python311-x86_64"
POWERTOOLS_ACCOUNT = "017000801446"  # commercial regions
# The layer is published by other accounts outside the commercial partition (Powertools docs,
# "Lambda layer"); an ARN in another partition's format does not resolve at all.
# publisher accounts per the Powertools docs (Lambda layers: GovCloud and China tables)
POWERTOOLS_REGION_ACCOUNTS = {"us-gov-east-1": "165087284144", "us-gov-west-1": "165093116878"}
POWERTOOLS_PARTITION_ACCOUNTS = {"aws-cn": "498634801083"}


def powertools_account(scope: Construct) -> str:
    """The layer publisher's account: literal when the stack's region is known, else a
    CloudFormation ``Fn::If`` chain on the deploy region and partition."""
    stack = Stack.of(scope)
    if not Token.is_unresolved(stack.region):
        partition = "aws-cn" if stack.region.startswith("cn-") else "aws"
        return POWERTOOLS_REGION_ACCOUNTS.get(
            stack.region, POWERTOOLS_PARTITION_ACCOUNTS.get(partition, POWERTOOLS_ACCOUNT))
    account: str = POWERTOOLS_ACCOUNT
    conditions = [(f"PowertoolsIn{r.replace('-', '')}", Fn.condition_equals(Aws.REGION, r), a)
                  for r, a in POWERTOOLS_REGION_ACCOUNTS.items()]
    conditions += [(f"PowertoolsIn{p.replace('-', '')}", Fn.condition_equals(Aws.PARTITION, p), a)
                   for p, a in POWERTOOLS_PARTITION_ACCOUNTS.items()]
    for condition_id, expression, value in conditions:
        condition = stack.node.try_find_child(condition_id) or CfnCondition(stack, condition_id, expression=expression)
        account = Fn.condition_if(condition.logical_id, value, account).to_string()  # type: ignore[union-attr]
    return account


def powertools_layer_arn(scope: Construct, version: int) -> str:
    """The public Powertools layer for Python 3.11 x86_64 in the deploy's partition and region."""
    stack = Stack.of(scope)
    return f"arn:{stack.partition}:lambda:{stack.region}:{powertools_account(scope)}:layer:{POWERTOOLS_LAYER}:{version}"


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
        source_cluster_id: str | None = None,
        powertools_layer_version: int,
        powertools_layer_arn_override: str | None = None,
        source_port: int = 5432,
    ) -> None:
        super().__init__(scope, construct_id)
        self.layer = lambda_.LayerVersion.from_layer_version_arn(
            self, "Powertools",
            powertools_layer_arn_override or powertools_layer_arn(self, powertools_layer_version))
        env = {
            "MIGSAFE_STORE_URL": store_url,
            "MIGSAFE_RESULTS_URL": results_url,
            "MIGSAFE_SOURCE_INSTANCE_ID": source_instance_id,
            "MIGSAFE_SCRATCH_INSTANCE_CLASS": scratch_instance_class,
            "MIGSAFE_SOURCE_PORT": str(source_port),
            **({"MIGSAFE_SOURCE_CLUSTER_ID": source_cluster_id} if source_cluster_id else {}),
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
        def rds_arn(resource: str, name: str) -> str:
            return stack.format_arn(service="rds", resource=resource, resource_name=name,
                                    arn_format=ArnFormat.COLON_RESOURCE_NAME)

        self.latest_snapshot.add_to_role_policy(iam.PolicyStatement(
            actions=["rds:DescribeDBSnapshots", "rds:DescribeDBInstances"],
            resources=[rds_arn("db", source_instance_id), rds_arn("snapshot", "*")],
        ))
        # the plan's source, looked up by validation: is it the deploy's, an Aurora cluster, a member of one?
        self.validate_plan.add_to_role_policy(iam.PolicyStatement(
            sid="LookUpTheSource", actions=["rds:DescribeDBInstances"], resources=[rds_arn("db", source_instance_id)]))
        # the instance classes RDS offers (the smallest for an Aurora scratch): not resource-scoped
        self.latest_snapshot.add_to_role_policy(iam.PolicyStatement(
            sid="OrderableInstanceClasses", actions=["rds:DescribeOrderableDBInstanceOptions"], resources=["*"]))
        if source_cluster_id:
            self.validate_plan.add_to_role_policy(iam.PolicyStatement(
                sid="LookUpTheSourceCluster", actions=["rds:DescribeDBClusters"],
                resources=[rds_arn("cluster", source_cluster_id)]))
            self.latest_snapshot.add_to_role_policy(iam.PolicyStatement(
                sid="SourceClusterAndItsSnapshots", actions=["rds:DescribeDBClusters", "rds:DescribeDBClusterSnapshots"],
                resources=[rds_arn("cluster", source_cluster_id), rds_arn("cluster-snapshot", "*")]))
        NagSuppressions.add_resource_suppressions(self.latest_snapshot, [
            {"id": "AwsSolutions-IAM5",
             "reason": "Automated snapshot names are generated by RDS (rds:<instance>-<date>); listing the "
                       "source's snapshots needs the snapshot:* (cluster-snapshot:*) resource; "
                       "DescribeOrderableDBInstanceOptions has no resource-level permissions.",
             "applies_to": [{"regex": "/^Resource::arn:<AWS::Partition>:rds:<AWS::Region>:<AWS::AccountId>:(cluster-)?snapshot:\\*$/g"},
                            "Resource::*"]},
        ], apply_to_children=True)

    @property
    def all(self) -> list[lambda_.Function]:
        return [self.validate_plan, self.validate_restore, self.latest_snapshot, self.evaluate,
                self.format_notification]
