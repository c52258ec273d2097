"""The deploy's context values, read once from the CDK app and typed.

Every value has a default that synthesizes without AWS credentials: with no VPC, subnet group or
source given, the stack creates a demo VPC, a DB subnet group, security groups and a placeholder
source secret (docs/deploy.md lists them all).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from constructs import Node


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        return [str(v) for v in json.loads(text)]
    return [v.strip() for v in text.split(",") if v.strip()]


def _opt(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _kms_key_arns(value: Any) -> list[str]:
    arns = _list(value)
    bad = [a for a in arns if not (a.startswith("arn:") and ":kms:" in a and ":key/" in a)]
    if bad:
        raise ValueError(f"sourceKmsKeyArns: not KMS key ARNs (arn:<partition>:kms:<region>:<account>:key/<id>): "
                         f"{', '.join(bad)}")
    return arns


@dataclass(frozen=True)
class DeploySettings:
    retention_days: int = 30
    object_lock: bool = False
    slack_workspace_id: str | None = None
    slack_channel_id: str | None = None
    vpc_id: str | None = None
    subnet_ids: list[str] = field(default_factory=list)  # where the worker task runs
    availability_zones: list[str] = field(default_factory=list)
    worker_security_group_id: str | None = None
    db_subnet_group_name: str | None = None  # where scratch instances are restored
    scratch_security_group_id: str | None = None
    scratch_instance_class: str = "db.t4g.medium"
    scratch_max_age_hours: int = 6
    scratch_wait_minutes: int = 90
    source_instance_id: str = "migsafe-source"
    # an Aurora PostgreSQL source: the cluster a scratch is cloned (or restored) from (docs/deploy.md)
    source_cluster_id: str | None = None
    source_secret_arn: str | None = None  # RDS-managed master secret (username/password keys)
    source_host: str | None = None
    source_port: int = 5432
    source_database: str = "postgres"
    pg_major: str = "16"
    powertools_layer_version: int = 27
    powertools_layer_arn: str | None = None  # overrides the published layer (e.g. a private copy)
    assign_public_ip: bool = False
    # customer-managed KMS key(s) encrypting the source instance (and so its snapshots): a scratch
    # restored from such a snapshot needs kms:CreateGrant/DescribeKey/Decrypt through RDS
    source_kms_key_arns: list[str] = field(default_factory=list)

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_workspace_id and self.slack_channel_id)

    @property
    def demo_network(self) -> bool:
        return self.vpc_id is None

    @classmethod
    def from_node(cls, node: Node) -> DeploySettings:
        def get(key: str, default: Any = None) -> Any:
            value = node.try_get_context(key)
            return default if value is None else value

        return cls(
            retention_days=int(get("retentionDays", 30)),
            object_lock=_bool(get("objectLock", False)),
            slack_workspace_id=_opt(get("slackWorkspaceId")),
            slack_channel_id=_opt(get("slackChannelId")),
            vpc_id=_opt(get("vpcId")),
            subnet_ids=_list(get("subnetIds")),
            availability_zones=_list(get("availabilityZones")),
            worker_security_group_id=_opt(get("workerSecurityGroupId")),
            db_subnet_group_name=_opt(get("dbSubnetGroupName")),
            scratch_security_group_id=_opt(get("scratchSecurityGroupId")),
            scratch_instance_class=str(get("scratchInstanceClass", "db.t4g.medium")),
            scratch_max_age_hours=int(get("scratchMaxAgeHours", 6)),
            scratch_wait_minutes=int(get("scratchWaitMinutes", 90)),
            source_instance_id=str(get("sourceInstanceId", "migsafe-source")),
            source_cluster_id=_opt(get("sourceClusterId")),
            source_secret_arn=_opt(get("sourceSecretArn")),
            source_host=_opt(get("sourceHost")),
            source_port=int(get("sourcePort", 5432)),
            source_database=str(get("sourceDatabase", "postgres")),
            pg_major=str(get("pgMajor", "16")),
            powertools_layer_version=int(get("powertoolsLayerVersion", 27)),
            powertools_layer_arn=_opt(get("powertoolsLayerArn")),
            assign_public_ip=_bool(get("assignPublicIp", False)),
            source_kms_key_arns=_kms_key_arns(get("sourceKmsKeyArns")),
        )
