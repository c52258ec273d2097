"""The Chatbot message for a verdict or for a caught failure (the state machine publishes it to SNS)."""

from __future__ import annotations

from typing import Any

from migsafe.store import open_store

from . import steps
from .common import results_url, step

# The AWS API calls this Lambda makes (reads the result and report it summarizes): its role must allow each
# (tests/infra/test_iam.py checks the role and that the list matches the code).
AWS_CALLS = ("s3:GetObject", "s3:ListBucket")


@step
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return steps.format_message(event, open_store(results_url())).model_dump(mode="json")
