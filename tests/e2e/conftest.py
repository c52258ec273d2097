"""The e2e suite: one synthesis per worker; every test on the same xdist worker (they share it)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the e2e tests on one xdist worker, so the app is synthesized once for them."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.xdist_group("e2e"))


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The synthesized CloudFormation template of the whole app (as ``cdk synth`` writes it)."""
    import aws_cdk as cdk

    import app as cdk_app

    outdir = tmp_path_factory.mktemp("e2e-cdk.out")
    app = cdk.App(context=cdk_app.cdk_json_context(), outdir=str(outdir))
    app, stack = cdk_app.build(app)
    app.synth()
    yield json.loads((outdir / f"{stack.artifact_id}.template.json").read_text())
