"""The session's synthesized app, as the infra tests see it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Template

from infra.definitions import find
from infra.stack import MigsafeStack

# the sourceClusterId the tests synthesize with (beside the default instance): both scratch paths are checked
SOURCE_CLUSTER = "migsafe-aurora-source"


@dataclass
class Synth:
    outdir: Path
    stack: MigsafeStack
    template_json: dict[str, Any]
    template: Template
    manifest_dir: Path

    @property
    def template_path(self) -> Path:
        return self.outdir / f"{self.stack.artifact_id}.template.json"

    def definition(self, which: str) -> dict[str, Any]:
        return find(self.template_json, which)

    def resources(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template_json["Resources"].items() if v["Type"] == cfn_type}
