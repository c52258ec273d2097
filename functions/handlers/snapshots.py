"""The source, for the scratch: its latest available snapshot (an instance's or a cluster's), or
the settings the scratch copies from it (instance: parameter group, option group, port; cluster:
cluster parameter group, subnet group, security groups, port, the scratch instance's class)."""

from __future__ import annotations

import os
from typing import Any

import boto3

from . import steps
from .common import step

# The AWS API calls this Lambda makes (the source instance or cluster and their snapshots; the instance
# classes RDS offers): its role must allow each (tests/infra/test_iam.py checks the role and that the
# list matches the code).
AWS_CALLS = ("rds:DescribeDBSnapshots", "rds:DescribeDBInstances", "rds:DescribeDBClusters",
             "rds:DescribeDBClusterSnapshots", "rds:DescribeOrderableDBInstanceOptions")


@step
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    action = event.get("action")
    if action == "source_settings":
        if event.get("cluster_id"):
            return steps.cluster_settings(str(event["cluster_id"]), boto3.client("rds"),
                                          instance_class=str(event.get("instance_class") or ""))
        return steps.source_settings(str(event["instance_id"]), boto3.client("rds"),
                                     port=int(os.environ.get("MIGSAFE_SOURCE_PORT", "5432")))
    if action == "latest_cluster_snapshot":
        return steps.latest_cluster_snapshot(str(event["cluster_id"]), boto3.client("rds"))
    return steps.latest_snapshot(str(event["instance_id"]), boto3.client("rds"))
