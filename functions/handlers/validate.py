"""Validate the execution input (pre-migration plan, or restore request with its confirm rule)."""

from __future__ import annotations

import os
from typing import Any

from migsafe.store import open_store

from . import steps
from .common import metrics, step

# The AWS API calls this Lambda makes (reads the bundle and the backup manifests from the store): its role must allow each
# (tests/infra/test_iam.py checks the role and that the list matches the code).
AWS_CALLS = ("s3:GetObject", "s3:ListBucket")


@step
def plan_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    out = steps.validate_rehearsal(event, os.environ, open_store(os.environ["MIGSAFE_STORE_URL"]))
    metrics.add_metric(name="RehearsalsStarted", unit="Count", value=1)
    return out


@step
def restore_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    out = steps.validate_restore(event, open_store(os.environ["MIGSAFE_STORE_URL"]))
    metrics.add_metric(name="RestoresStarted", unit="Count", value=1)
    return out
