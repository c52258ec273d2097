"""Scheduled: delete scratch instances (tagged migsafe:scratch) older than N hours."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import boto3

from . import steps
from .common import logger, metrics, step

# The AWS API calls this Lambda makes (lists and deletes scratch instances): its role must allow each
# (tests/infra/test_iam.py checks the role and that the list matches the code).
AWS_CALLS = ("rds:DescribeDBInstances", "rds:DeleteDBInstance")


@step
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    hours = float(os.environ.get("MIGSAFE_SCRATCH_MAX_AGE_HOURS", "6"))
    swept = steps.sweep_scratch(boto3.client("rds"), max_age=timedelta(hours=hours),
                                tag=os.environ.get("MIGSAFE_SCRATCH_TAG", steps.SCRATCH_TAG),
                                prefix=os.environ.get("MIGSAFE_SCRATCH_PREFIX", steps.SCRATCH_PREFIX))
    if swept["deleted"]:
        logger.warning("deleted orphaned scratch instances", extra={"deleted": swept["deleted"]})
    metrics.add_metric(name="ScratchDeleted", unit="Count", value=len(swept["deleted"]))
    return swept
