"""Read the step's result.json (or restore.json) and return the verdict, reasons and report location."""

from __future__ import annotations

from typing import Any

from migsafe.store import open_store

from . import steps
from .common import metrics, results_url, step

# The AWS API calls this Lambda makes (reads result.json / restore.json): its role must allow each
# (tests/infra/test_iam.py checks the role and that the list matches the code).
AWS_CALLS = ("s3:GetObject", "s3:ListBucket")


@step
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("kind") == "stale":  # a failed rehearsal: was the scratch at another revision?
        return steps.stale_scratch(event, open_store(results_url()))
    evaluation = steps.evaluate(event, open_store(results_url()))
    metrics.add_metric(name=f"Verdict{evaluation.verdict.title()}", unit="Count", value=1)
    return evaluation.model_dump(mode="json")
