"""The source instance's latest available snapshot (the scratch instance is restored from it)."""

from __future__ import annotations

from typing import Any

import boto3

from . import steps
from .common import step

# The AWS API calls this Lambda makes (lists the source's snapshots): its role must allow each
# (tests/infra/test_iam.py checks the role and that the list matches the code).
AWS_CALLS = ("rds:DescribeDBSnapshots",)


@step
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return steps.latest_snapshot(str(event["instance_id"]), boto3.client("rds"))
