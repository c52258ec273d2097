"""Powertools for every handler: structured logs, X-Ray traces, CloudWatch metrics."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="migsafe")
tracer = Tracer(service="migsafe")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "migsafe"), service="migsafe")

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def step(fn: Handler) -> Handler:
    """Logger (never the event: it may hold a plan), Tracer and Metrics around a handler."""
    return logger.inject_lambda_context(log_event=False)(
        tracer.capture_lambda_handler(metrics.log_metrics(raise_on_empty_metrics=False)(fn))
    )


def store_url() -> str:
    return os.environ["MIGSAFE_STORE_URL"]


def results_url() -> str:
    return os.environ["MIGSAFE_RESULTS_URL"]
