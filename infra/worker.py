"""The ECS Fargate worker: the database steps (backup, rehearse, restore) in one image.

The image is built from ``functions/Dockerfile`` (PostgreSQL client and server of the target's
major version, plus the package). ``ContainerImage.from_asset`` only stages the files at synth; the
build happens at deploy time (``cdk deploy`` needs Docker there, synth and tests do not).
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.aws_ecr_assets import Platform
from cdk_nag import NagSuppressions
from constructs import Construct

from .janitor import SCRATCH_PREFIX, SCRATCH_TAG, SECRET_PREFIX

FUNCTIONS = Path(__file__).resolve().parent.parent / "functions"
CONTAINER_NAME = "worker"
ASSET_EXCLUDE = ["**/__pycache__", "*.egg-info", "**/*.pyc", "handlers", ".mypy_cache", ".pytest_cache"]


class Worker(Construct):
    """``cluster``, ``task_definition`` and ``container`` for the Step Functions ECS tasks."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        bucket: s3.IBucket,
        source_secret: secretsmanager.ISecret,
        source_instance_id: str,
        source_host: str | None,
        source_cluster_id: str | None = None,
        source_port: int,
        source_database: str,
        store_url: str,
        results_url: str,
        pg_major: str = "16",
    ) -> None:
        super().__init__(scope, construct_id)
        self.cluster = ecs.Cluster(self, "Cluster", vpc=vpc,
                                   container_insights_v2=ecs.ContainerInsights.ENABLED)
        self.log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_MONTH,
                                       removal_policy=RemovalPolicy.DESTROY)
        self.task_definition = ecs.FargateTaskDefinition(
            self, "Task",
            cpu=1024,
            memory_limit_mib=4096,
            ephemeral_storage_gib=60,  # a restore to a throw-away scratch cluster happens on local disk
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        environment = {
            "MIGSAFE_STORE_URL": store_url,
            "MIGSAFE_RESULTS_URL": results_url,
            "MIGSAFE_SOURCE_INSTANCE_ID": source_instance_id,
            "MIGSAFE_SOURCE_PORT": str(source_port),
            "MIGSAFE_SOURCE_DBNAME": source_database,
        }
        if source_host:
            environment["MIGSAFE_SOURCE_HOST"] = source_host
        if source_cluster_id:  # an Aurora source: its writer endpoint, when sourceHost is not given
            environment["MIGSAFE_SOURCE_CLUSTER_ID"] = source_cluster_id
        self.container = self.task_definition.add_container(
            "Worker",
            container_name=CONTAINER_NAME,
            image=ecs.ContainerImage.from_asset(
                str(FUNCTIONS),
                file="Dockerfile",
                build_args={"PG_MAJOR": pg_major},
                exclude=ASSET_EXCLUDE,
                platform=Platform.LINUX_AMD64,
            ),
            command=["python", "-m", "migsafe.worker", "--help"],  # the state machines override it
            environment=environment,
            secrets={
                # the RDS-managed master secret: only username and password; never in the execution input
                "MIGSAFE_SOURCE_USERNAME": ecs.Secret.from_secrets_manager(source_secret, "username"),
                "MIGSAFE_SOURCE_PASSWORD": ecs.Secret.from_secrets_manager(source_secret, "password"),
            },
            logging=ecs.LogDrivers.aws_logs(stream_prefix="worker", log_group=self.log_group),
            stop_timeout=Duration.seconds(60),
        )
        bucket.grant_read_write(self.task_definition.task_role)
        stack = Stack.of(self)
        self.task_definition.task_role.add_to_principal_policy(iam.PolicyStatement(
            sid="FindSourceEndpoint",
            actions=["rds:DescribeDBInstances"],
            resources=[stack.format_arn(service="rds", resource="db", resource_name=source_instance_id,
                                        arn_format=ArnFormat.COLON_RESOURCE_NAME)],
        ))
        # the per-execution scratch password (functions/migsafe/worker.py, set_scratch_password)
        scratch = stack.format_arn(service="rds", resource="db", resource_name=f"{SCRATCH_PREFIX}*",
                                   arn_format=ArnFormat.COLON_RESOURCE_NAME)
        secrets = stack.format_arn(service="secretsmanager", resource="secret", resource_name=f"{SECRET_PREFIX}*",
                                   arn_format=ArnFormat.COLON_RESOURCE_NAME)
        role = self.task_definition.task_role
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="DescribeScratch", actions=["rds:DescribeDBInstances"], resources=[scratch]))
        # a migration.command plan's statements: the scratch's csvlog (functions/migsafe/rdslog.py)
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="ReadScratchLogs", actions=["rds:DescribeDBLogFiles", "rds:DownloadDBLogFilePortion"],
            resources=[scratch]))  # read-only, like DescribeScratch: scoped by the scratch's name
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="SetScratchPassword", actions=["rds:ModifyDBInstance"], resources=[scratch],
            conditions={"StringLike": {f"rds:db-tag/{SCRATCH_TAG}": "*"}}))
        # an Aurora scratch: the master password is the cluster's
        scratch_cluster = stack.format_arn(service="rds", resource="cluster", resource_name=f"{SCRATCH_PREFIX}*",
                                           arn_format=ArnFormat.COLON_RESOURCE_NAME)
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="DescribeScratchCluster", actions=["rds:DescribeDBClusters"], resources=[scratch_cluster]))
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="SetScratchClusterPassword", actions=["rds:ModifyDBCluster"], resources=[scratch_cluster],
            conditions={"StringLike": {f"rds:cluster-tag/{SCRATCH_TAG}": "*"}}))
        if source_cluster_id:
            role.add_to_principal_policy(iam.PolicyStatement(
                sid="FindSourceClusterEndpoint", actions=["rds:DescribeDBClusters"],
                resources=[stack.format_arn(service="rds", resource="cluster", resource_name=source_cluster_id,
                                            arn_format=ArnFormat.COLON_RESOURCE_NAME)]))
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="CreateScratchSecret", actions=["secretsmanager:CreateSecret", "secretsmanager:TagResource"],
            resources=[secrets], conditions={"StringLike": {f"aws:RequestTag/{SCRATCH_TAG}": "*"}}))
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="UpdateScratchSecret", actions=["secretsmanager:PutSecretValue"], resources=[secrets],
            conditions={"StringLike": {f"secretsmanager:ResourceTag/{SCRATCH_TAG}": "*"}}))
        NagSuppressions.add_resource_suppressions(self.task_definition, [
            {"id": "AwsSolutions-ECS2",
             "reason": "Only store URLs, the source instance id, host, port and database name are plain "
                       "environment variables; the credentials are ECS secrets from Secrets Manager."},
        ])
        NagSuppressions.add_resource_suppressions(self.task_definition, [
            {"id": "AwsSolutions-IAM5",
             "reason": "Object-level S3 and KMS actions on the migsafe bucket's own keys (bucket/*) as granted "
                       "by bucket.grant_read_write; the execution role's log stream actions are per log group.",
             "applies_to": ["Action::s3:Abort*", "Action::s3:DeleteObject*", "Action::s3:GetBucket*",
                            "Action::s3:GetObject*", "Action::s3:List*", "Action::kms:GenerateDataKey*",
                            "Action::kms:ReEncrypt*", {"regex": "/^Resource::<.*Backups.*\\.Arn>/\\*$/g"},
                            {"regex": "/^Resource::arn:<AWS::Partition>:(rds|secretsmanager):.*migsafe-scratch.*$/g"}]},
        ], apply_to_children=True)

