"""The source instance, for the scratch: its latest available snapshot, or the settings the
scratch copies from it (parameter group, option group, port)."""

from __future__ import annotations

import os
from typing import Any

import boto3

from . import steps
from .common import step

# The AWS API calls this Lambda makes (the source instance and its snapshots): its role must allow each
# (tests/infra/test_iam.py checks the role and that the list matches the code).
AWS_CALLS = ("rds:DescribeDBSnapshots", "rds:DescribeDBInstances")


@step
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("action") == "source_settings":
        return steps.source_settings(str(event["instance_id"]), boto3.client("rds"),
                                     port=int(os.environ.get("MIGSAFE_SOURCE_PORT", "5432")))
    return steps.latest_snapshot(str(event["instance_id"]), boto3.client("rds"))
