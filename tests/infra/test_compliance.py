"""cdk-nag (AwsSolutions) and cfn-lint on the synthesized stack."""

from __future__ import annotations

import csv
from typing import Any

from cfnlint.api import lint_file
from infra_support import Synth

import app as cdk_app


def test_cdk_nag_reports_no_unsuppressed_error(synth: Synth) -> None:
    # Given the session's synthesis, which ran the AwsSolutions pack on every construct
    (report,) = synth.outdir.glob(f"AwsSolutions-*{synth.stack.artifact_id}-NagReport.csv")
    rows = list(csv.DictReader(report.open()))
    # When we look for findings that are neither compliant nor suppressed
    open_findings = [r for r in rows if r["Compliance"] not in {"Compliant", "Suppressed"}]
    # Then there are none, and the pack did run over the stack (state machines, functions, buckets, ...)
    assert open_findings == []
    assert cdk_app.nag_errors(synth.stack) == []
    checked = {r["Resource ID"].split("/")[1] for r in rows}
    assert {"Storage", "Notifications", "Worker", "Steps", "Workflows", "Janitor"} <= checked


def test_every_nag_suppression_carries_a_reason(synth: Synth) -> None:
    # Given every resource's cdk_nag metadata in the template
    suppressions: list[dict[str, Any]] = []
    for resource in synth.template_json["Resources"].values():
        suppressions += resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    # Then there are suppressions, and each names its rule and explains itself in a sentence
    assert suppressions
    for s in suppressions:
        assert s["id"].startswith("AwsSolutions-")
        assert len(s["reason"].split()) >= 6, s


def test_cfn_lint_reports_no_error(synth: Synth) -> None:
    # Given the synthesized template file
    # When cfn-lint checks it
    matches = lint_file(synth.template_path)
    # Then there is no error (E*) finding
    errors = [f"{m.rule.id} {m.path} {m.message}" for m in matches if m.rule.id.startswith("E")]
    assert errors == []
