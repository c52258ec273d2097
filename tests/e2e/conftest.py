"""The e2e suite: one synthesis per worker; every test on the same xdist worker (they share it)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/infra/awscheck.py: the Step Functions naming rules, derived from botocore's models
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))

from e2e_harness import REGION, SOURCE_CLUSTER, Harness
from moto import mock_aws

from examples.enum_uppercase import seed

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep the e2e tests on one xdist worker, so the app is synthesized once for them."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.xdist_group("e2e"))
            # handlers that emit no metric of their own make Powertools say so
            item.add_marker(pytest.mark.filterwarnings("ignore:No application metrics:UserWarning"))


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The synthesized CloudFormation template of the whole app (as ``cdk synth`` writes it)."""
    import aws_cdk as cdk

    import app as cdk_app

    outdir = tmp_path_factory.mktemp("e2e-cdk.out")
    # an Aurora source cluster as well as the default instance: both scratch paths are checked
    app = cdk.App(context={**cdk_app.cdk_json_context(), "sourceClusterId": SOURCE_CLUSTER}, outdir=str(outdir))
    app, stack = cdk_app.build(app)
    app.synth()
    yield json.loads((outdir / f"{stack.artifact_id}.template.json").read_text())


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                       "POWERTOOLS_TRACE_DISABLED": "1", "POWERTOOLS_METRICS_NAMESPACE": "migsafe"}.items():
        monkeypatch.setenv(key, value)
    # the interpreter logs every caught failure with its whole parse tree: keep failures readable
    quiet = logging.getLogger("moto.stepfunctions.parser")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
            yield
    finally:
        quiet.setLevel(level)


@pytest.fixture
def source(make_database: Callable[..., Any]) -> Any:
    """The production stand-in: the seed scenario, stamped at the example project's baseline."""
    db = make_database()
    seed.load(db.conninfo, 2000, alembic=True)
    return db


@pytest.fixture
def harness(aws: None, template: dict[str, Any], source: Any, runtime_dir: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    h = Harness(template, source.dsn, runtime_dir, monkeypatch)
    try:
        yield h
    finally:
        h.close()
