"""The migsafe stack: storage, notifications, network, worker, Lambda steps, state machines, janitor."""

from __future__ import annotations

from typing import Any

from aws_cdk import Aws, CfnOutput, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from cdk_nag import NagSuppressions
from constructs import Construct

from .janitor import Janitor
from .lambdas import Lambdas
from .network import Network
from .notifications import Notifications
from .settings import DeploySettings
from .storage import Storage
from .worker import Worker
from .workflows import Workflows


def source_kms_statement(key_arns: list[str]) -> iam.PolicyStatement:
    """What RDS needs, on the caller's behalf, to restore a snapshot (or clone a cluster) encrypted
    with a customer-managed key: a grant for the new instance or cluster, and the key's description
    and decrypt; only through RDS."""
    return iam.PolicyStatement(
        sid="RestoreEncryptedSourceSnapshots",
        actions=["kms:CreateGrant", "kms:DescribeKey", "kms:Decrypt"],
        resources=list(key_arns),
        conditions={"StringEquals": {"kms:ViaService": f"rds.{Aws.REGION}.amazonaws.com"}},
    )


class MigsafeStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploySettings | None = None,
                 **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        cfg = settings or DeploySettings.from_node(self.node)
        self.settings = cfg

        self.storage = Storage(self, "Storage", retention_days=cfg.retention_days, object_lock=cfg.object_lock)
        self.notifications = Notifications(self, "Notifications", slack_workspace_id=cfg.slack_workspace_id,
                                           slack_channel_id=cfg.slack_channel_id)
        self.network = Network(
            self, "Network", vpc_id=cfg.vpc_id, subnet_ids=cfg.subnet_ids, availability_zones=cfg.availability_zones,
            worker_security_group_id=cfg.worker_security_group_id, db_subnet_group_name=cfg.db_subnet_group_name,
            scratch_security_group_id=cfg.scratch_security_group_id, assign_public_ip=cfg.assign_public_ip,
            db_port=cfg.source_port)

        if cfg.source_secret_arn:
            source_secret = secretsmanager.Secret.from_secret_complete_arn(self, "SourceSecret", cfg.source_secret_arn)
        else:
            placeholder = secretsmanager.Secret(
                self, "SourceSecret",
                description="migsafe demo: the source database's credentials (replace with the RDS-managed secret)",
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    secret_string_template='{"username": "postgres"}',  # noqa: S106 - a user name, no password
                    generate_string_key="password",
                    exclude_punctuation=True),
            )
            NagSuppressions.add_resource_suppressions(placeholder, [
                {"id": "AwsSolutions-SMG4",
                 "reason": "Demo placeholder only; real deploys pass sourceSecretArn, the RDS-managed master "
                           "secret, which RDS rotates."}])
            source_secret = placeholder

        self.worker = Worker(
            self, "Worker", vpc=self.network.vpc, bucket=self.storage.bucket, source_secret=source_secret,
            source_instance_id=cfg.source_instance_id, source_host=cfg.source_host, source_port=cfg.source_port,
            source_cluster_id=cfg.source_cluster_id,
            source_database=cfg.source_database, store_url=self.storage.store_url,
            results_url=self.storage.results_url, pg_major=cfg.pg_major)
        self.lambdas = Lambdas(
            self, "Steps", bucket=self.storage.bucket, store_url=self.storage.store_url,
            results_url=self.storage.results_url, source_instance_id=cfg.source_instance_id,
            source_cluster_id=cfg.source_cluster_id,
            scratch_instance_class=cfg.scratch_instance_class, source_port=cfg.source_port,
            powertools_layer_version=cfg.powertools_layer_version,
            powertools_layer_arn_override=cfg.powertools_layer_arn)
        self.workflows = Workflows(
            self, "Workflows", worker=self.worker, network=self.network, topic=self.notifications.topic,
            validate_plan=self.lambdas.validate_plan, validate_restore=self.lambdas.validate_restore,
            latest_snapshot=self.lambdas.latest_snapshot, evaluate=self.lambdas.evaluate,
            format_notification=self.lambdas.format_notification, source_instance_id=cfg.source_instance_id,
            source_cluster_id=cfg.source_cluster_id, scratch_wait_minutes=cfg.scratch_wait_minutes)
        # every principal that publishes to the KMS-encrypted results topic (defect: SnsPublish
        # grants sns:Publish only, and SNS then refuses with KMSAccessDenied)
        for machine in self.workflows.state_machines:
            self.notifications.grant_publish(machine)
        if cfg.source_kms_key_arns:
            self.workflows.pre_migration.state_machine.add_to_role_policy(
                source_kms_statement(cfg.source_kms_key_arns))
        self.janitor = Janitor(self, "Janitor", layer=self.lambdas.layer, max_age_hours=cfg.scratch_max_age_hours,
                               state_machines=self.workflows.state_machines)

        CfnOutput(self, "BucketName", value=self.storage.bucket.bucket_name)
        CfnOutput(self, "StoreUrl", value=self.storage.store_url)
        CfnOutput(self, "ResultsTopicArn", value=self.notifications.topic.topic_arn)
        CfnOutput(self, "PreMigrationStateMachineArn",
                  value=self.workflows.pre_migration.state_machine.state_machine_arn)
        CfnOutput(self, "RestoreStateMachineArn", value=self.workflows.restore.state_machine.state_machine_arn)
