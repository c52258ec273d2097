"""The Chatbot message for a verdict or for a caught failure (the state machine publishes it to SNS)."""

from __future__ import annotations

from typing import Any

from migsafe.store import open_store

from . import steps
from .common import results_url, step


@step
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return steps.format_message(event, open_store(results_url())).model_dump(mode="json")
