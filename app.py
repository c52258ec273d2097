#!/usr/bin/env python3
"""CDK entry point: ``python app.py`` synthesizes to cdk.out; ``npx aws-cdk deploy`` deploys.

Synthesis needs neither AWS credentials nor Docker (the stack is environment-agnostic unless
CDK_DEFAULT_ACCOUNT/REGION are set, and the worker image is only staged). cdk-nag's AwsSolutions
pack runs on every synth; its findings are printed and, for errors, fail the synth.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")

import aws_cdk as cdk  # noqa: E402
from cdk_nag import AwsSolutionsChecks  # noqa: E402

from infra.stack import MigsafeStack  # noqa: E402


def cdk_json_context() -> dict[str, object]:
    """cdk.json's context (feature flags, defaults) for plain `python app.py` runs; the CLI's own
    context (cdk.json, -c) takes precedence when it runs the app."""
    return dict(json.loads((ROOT / "cdk.json").read_text())["context"])


def build(app: cdk.App | None = None) -> tuple[cdk.App, MigsafeStack]:
    app = app or cdk.App(context=cdk_json_context(), outdir=os.environ.get("CDK_OUTDIR") or str(ROOT / "cdk.out"))
    account, region = os.environ.get("CDK_DEFAULT_ACCOUNT"), os.environ.get("CDK_DEFAULT_REGION")
    env = cdk.Environment(account=account, region=region) if account and region else None
    stack = MigsafeStack(app, app.node.try_get_context("stackName") or "Migsafe", env=env,
                         description="migsafe: safe PostgreSQL schema migrations (backups, rehearsals, verdicts)")
    cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app, stack


def nag_errors(stack: cdk.Stack) -> list[str]:
    """cdk-nag's unsuppressed errors (annotations of level error) in ``stack``."""
    found = []
    for construct in stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == "aws:cdk:error":
                found.append(f"{construct.node.path}: {entry.data}")
    return found


if __name__ == "__main__":
    application, migsafe_stack = build()
    assembly = application.synth()
    errors = nag_errors(migsafe_stack)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    print(f"synthesized {migsafe_stack.stack_name} to {assembly.directory}"
          + (f" with {len(errors)} error(s)" if errors else ""), file=sys.stderr)
    sys.exit(1 if errors else 0)
