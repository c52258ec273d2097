"""Validate the execution input (pre-migration plan, or restore request with its confirm rule)."""

from __future__ import annotations

import os
from typing import Any

import boto3
from migsafe.store import open_store

from . import steps
from .common import metrics, step

# The AWS API calls this Lambda makes (the bundle, the plan object and backup manifests in the store;
# the restore target's tags; the source a plan names): its role must allow each (tests/infra/test_iam.py
# checks role and code).
AWS_CALLS = ("s3:GetObject", "s3:PutObject", "s3:ListBucket", "rds:DescribeDBInstances", "rds:DescribeDBClusters")
# what each handler of this module needs: a plan looks up its source (is it Aurora?), a restore its target
AWS_CALLS_BY_HANDLER = {"plan_handler": ("s3:GetObject", "s3:PutObject", "s3:ListBucket", "rds:DescribeDBInstances",
                                         "rds:DescribeDBClusters"),
                        "restore_handler": ("s3:GetObject", "s3:PutObject", "s3:ListBucket", "rds:DescribeDBInstances")}


@step
def plan_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # the client is made only when the plan's source must be looked up
    out = steps.validate_rehearsal(event, os.environ, open_store(os.environ["MIGSAFE_STORE_URL"]),
                                   lambda: boto3.client("rds"))
    metrics.add_metric(name="RehearsalsStarted", unit="Count", value=1)
    return out


@step
def restore_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # the client is made only for a real target (its tags and endpoint)
    out = steps.validate_restore(event, open_store(os.environ["MIGSAFE_STORE_URL"]), lambda: boto3.client("rds"))
    metrics.add_metric(name="RestoresStarted", unit="Count", value=1)
    return out
