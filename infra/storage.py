"""The backup bucket: SSE-KMS with a rotating customer-managed key, TLS only, no public access,
server access logs, lifecycle retention and, when asked, Object Lock in governance mode."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from cdk_nag import NagSuppressions
from constructs import Construct

BACKUP_PREFIX = "backups/"
RESULTS_PREFIX = "results/"
NONCURRENT_DAYS = 7
MULTIPART_DAYS = 1


class Storage(Construct):
    """``bucket`` holds backups/, results/ and backups/bundles/; ``key`` encrypts it."""

    def __init__(self, scope: Construct, construct_id: str, *, retention_days: int, object_lock: bool = False) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self, "Key",
            description="migsafe backups and results",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.log_bucket = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # log delivery cannot write to SSE-KMS buckets
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(max(90, retention_days)),
                                 noncurrent_version_expiration=Duration.days(NONCURRENT_DAYS)),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        NagSuppressions.add_resource_suppressions(self.log_bucket, [
            {"id": "AwsSolutions-S1",
             "reason": "This is the access-log target bucket; logging it into itself would loop."},
        ])
        self.bucket = s3.Bucket(
            self, "Backups",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="backups-bucket/",
            object_lock_enabled=object_lock or None,
            object_lock_default_retention=(
                s3.ObjectLockRetention.governance(Duration.days(retention_days)) if object_lock else None
            ),
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-backups-and-results",
                    expiration=Duration.days(retention_days),
                    noncurrent_version_expiration=Duration.days(NONCURRENT_DAYS),
                    abort_incomplete_multipart_upload_after=Duration.days(MULTIPART_DAYS),
                ),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )

    @property
    def store_url(self) -> str:
        return f"s3://{self.bucket.bucket_name}/{BACKUP_PREFIX.rstrip('/')}"

    @property
    def results_url(self) -> str:
        return f"s3://{self.bucket.bucket_name}/{RESULTS_PREFIX.rstrip('/')}"
