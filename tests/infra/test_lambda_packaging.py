"""Each Lambda asset imports and handles its sample events with only what AWS provides.

The functions run on the python3.11 runtime (boto3 and botocore included) with the public
Powertools layer (Powertools, pydantic, the X-Ray SDK): nothing else from pyproject.toml is
there. A session-wide virtual environment holding exactly that (cached in .tools/, rebuilt when the
pins change) runs each staged asset (cdk.out/asset.<hash>, what `cdk deploy` uploads) on the
events in tests/events/lambda/. A module that imports psycopg, zstandard or typer at import time
fails here, as it would on AWS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import awscheck
import boto3
import pytest
from aws_lambda_powertools.shared.version import VERSION as POWERTOOLS_VERSION
from infra_support import Synth

EVENTS = awscheck.ROOT / "tests" / "events" / "lambda"
# what the runtime and the layer provide, pinned to the versions the rest of the suite uses
RUNTIME_REQUIREMENTS = [f"boto3=={boto3.__version__}",
                        f"aws-lambda-powertools[tracer,parser,validation]=={POWERTOOLS_VERSION}"]
LAMBDA_VENV = awscheck.ROOT / ".tools" / "lambda-py311"

RUNNER = r'''
import json, sys, traceback
sys.path[:0] = [sys.argv[1]]
spec = json.loads(sys.argv[2])
module_name, _, fn_name = spec["handler"].rpartition(".")

class Context:
    function_name = "migsafe-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:migsafe-test"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

try:
    import importlib
    handler = getattr(importlib.import_module(module_name), fn_name)
except BaseException as exc:
    print(json.dumps({"import_error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}))
    sys.exit(0)
try:
    print(json.dumps({"result": handler(spec["event"], Context())}, default=str))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
'''


@pytest.fixture(scope="session")
def lambda_python() -> Path:
    """A Python 3.11 virtual environment with only the runtime's and the layer's packages."""
    import fcntl

    stamp = LAMBDA_VENV / ".requirements"
    python = LAMBDA_VENV / "bin" / "python"
    LAMBDA_VENV.parent.mkdir(parents=True, exist_ok=True)
    # each xdist worker runs this fixture: one builds the venv, the others wait and reuse it
    with open(LAMBDA_VENV.parent / ".lambda-py311.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (python.exists() and stamp.exists() and stamp.read_text() == "\n".join(RUNTIME_REQUIREMENTS)):
            shutil.rmtree(LAMBDA_VENV, ignore_errors=True)
            venv.create(LAMBDA_VENV, with_pip=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            *RUNTIME_REQUIREMENTS], check=True, timeout=900)
            stamp.write_text("\n".join(RUNTIME_REQUIREMENTS))
    return python


def _asset_dirs(synth: Synth) -> dict[str, Path]:
    """``{handler: staged asset directory}`` for every Lambda function of the stack."""
    out = {}
    for res in synth.resources("AWS::Lambda::Function").values():
        props = res["Properties"]
        if "Handler" in props and isinstance(props["Code"].get("S3Key"), str):
            out[props["Handler"]] = synth.outdir / f"asset.{props['Code']['S3Key'].removesuffix('.zip')}"
    return out


def run(python: Path, asset: Path, spec: dict[str, Any], environment: dict[str, str]) -> dict[str, Any]:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_MAX_ATTEMPTS": "1",
           "POWERTOOLS_TRACE_DISABLED": "1", "POWERTOOLS_SERVICE_NAME": "migsafe",
           "POWERTOOLS_METRICS_NAMESPACE": "migsafe", **environment}
    done = subprocess.run([str(python), "-I", "-c", RUNNER, str(asset), json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result: {done.stdout}{done.stderr}"
    return dict(json.loads(lines[-1]))


def _events() -> list[Path]:
    return sorted(EVENTS.glob("*.json"))


def test_every_function_has_a_sample_event(synth: Synth) -> None:
    # Given the stack's functions and the sample events / Then each handler has at least one event
    handlers = {json.loads(p.read_text())["handler"] for p in _events()}
    assert set(_asset_dirs(synth)) <= handlers, sorted(set(_asset_dirs(synth)) - handlers)


@pytest.mark.parametrize("event_file", _events(), ids=lambda p: p.stem)
def test_asset_handles_its_sample_event(event_file: Path, synth: Synth, lambda_python: Path, tmp_path: Path) -> None:
    # Given a sample event, its store content, and the staged asset of its function
    spec = json.loads(event_file.read_text())
    store = tmp_path / "store"
    for key, source in spec.get("store", {}).items():
        (store / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(awscheck.ROOT / "tests" / "events" / source, store / key)
    environment = {k: v.replace("{store}", str(store)) for k, v in spec.get("environment", {}).items()}
    asset = _asset_dirs(synth)[spec["handler"]]
    # When the handler runs in the runtime-only environment
    outcome = run(lambda_python, asset, spec, environment)
    # Then it imported, and handled the event as expected (a result, or migsafe's named error)
    assert "import_error" not in outcome, outcome.get("trace")
    expect = spec["expect"]
    if "error" in expect:
        assert outcome.get("error") == expect["error"], outcome
    else:
        assert "result" in outcome, outcome
        for key, value in expect.get("result", {}).items():
            assert outcome["result"][key] == value, outcome


def test_a_dependency_the_runtime_lacks_is_caught(synth: Synth, lambda_python: Path, tmp_path: Path) -> None:
    # Given a copy of an asset whose handler imports a package that is only in the dev environment
    asset = tmp_path / "asset"
    shutil.copytree(next(iter(_asset_dirs(synth).values())), asset)
    (asset / "handlers" / "broken.py").write_text("import zstandard\n\ndef handler(event, context):\n    return {}\n")
    # When it runs / Then the import error is reported
    outcome = run(lambda_python, asset, {"handler": "handlers.broken.handler", "event": {}}, {})
    assert "ModuleNotFoundError: No module named 'zstandard'" in outcome["import_error"]
    assert sys.version_info[:2] == (3, 11)  # the runtime's minor version: the venv is made by this interpreter
