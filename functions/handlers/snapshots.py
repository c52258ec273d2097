"""The source instance's latest available snapshot (the scratch instance is restored from it)."""

from __future__ import annotations

from typing import Any

import boto3

from . import steps
from .common import step


@step
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return steps.latest_snapshot(str(event["instance_id"]), boto3.client("rds"))
