"""Scheduled: delete scratch instances and clusters, run snapshots, scratch parameter groups and scratch secrets
whose execution is over."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import boto3

from . import steps
from .common import logger, metrics, step

# The AWS API calls this Lambda makes (scratch instances, run snapshots, per-execution secrets, the
# executions that own them): its role must allow each (tests/infra/test_iam.py checks role and code).
AWS_CALLS = ("rds:DescribeDBInstances", "rds:DescribeDBSnapshots", "rds:DeleteDBInstance", "rds:DeleteDBSnapshot",
             "rds:DescribeDBClusters", "rds:DeleteDBCluster", "rds:DescribeDBParameterGroups",
             "rds:ListTagsForResource", "rds:DeleteDBParameterGroup",
             "states:DescribeExecution", "secretsmanager:ListSecrets", "secretsmanager:DeleteSecret")


@step
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    hours = float(os.environ.get("MIGSAFE_SCRATCH_MAX_AGE_HOURS", "9"))
    swept = steps.sweep_scratch(boto3.client("rds"), max_age=timedelta(hours=hours),
                                sfn=boto3.client("stepfunctions"), secrets=boto3.client("secretsmanager"),
                                tag=os.environ.get("MIGSAFE_SCRATCH_TAG", steps.SCRATCH_TAG),
                                prefix=os.environ.get("MIGSAFE_SCRATCH_PREFIX", steps.SCRATCH_PREFIX),
                                log=logger.error)
    if swept["deleted"]:
        logger.warning("deleted orphaned scratch resources", extra={"deleted": swept["deleted"]})
    metrics.add_metric(name="ScratchDeleted", unit="Count", value=len(swept["deleted"]))
    metrics.add_metric(name="ScratchDeleteFailed", unit="Count", value=len(swept["failed"]))
    return swept
