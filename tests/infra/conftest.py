"""One synthesis of the whole app per test session (cdk-nag included); tests read its output."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")

import aws_cdk as cdk
import awscheck
from aws_cdk.assertions import Template
from infra_support import SOURCE_CLUSTER, Synth

import app as cdk_app


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep every infra test on one xdist worker, so the app is synthesized once."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.xdist_group("infra-synth"))


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    outdir = tmp_path_factory.mktemp("cdk.out")
    # an Aurora source cluster as well as the default instance: both scratch paths are checked
    app = cdk.App(context={**cdk_app.cdk_json_context(), "sourceClusterId": SOURCE_CLUSTER}, outdir=str(outdir))
    app, stack = cdk_app.build(app)
    assembly = app.synth()
    template_json = json.loads((outdir / f"{stack.artifact_id}.template.json").read_text())
    yield Synth(outdir=outdir, stack=stack, template_json=template_json,
                template=Template.from_json(template_json), manifest_dir=Path(assembly.directory))


@pytest.fixture(scope="session")
def aws_template(synth: Synth) -> awscheck.Template:
    """The session's template with references rendered as canonical ARNs (tests/infra/awscheck.py)."""
    return awscheck.Template(synth.template_json)
