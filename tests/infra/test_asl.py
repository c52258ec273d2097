"""Both definitions validate with the npm package asl-validator (installed by `make venv` in .tools/)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import awscheck
import pytest

VALIDATOR = awscheck.ROOT / ".tools" / "node_modules" / ".bin" / "asl-validator"


def validate(definition: dict, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}.asl.json"
    path.write_text(json.dumps(definition))
    return subprocess.run([str(VALIDATOR), "--json-path", str(path)], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture(scope="module")
def validator() -> Path:
    # make venv (a prerequisite of make test) installs it: a missing validator is a broken setup, not a skip
    assert VALIDATOR.exists(), f"{VALIDATOR} is missing: run `make venv`"
    return VALIDATOR


def test_both_definitions_are_valid_asl(aws_template: awscheck.Template, validator: Path, tmp_path: Path) -> None:
    # Given both definitions, references rendered as real ARNs (the validator checks Resource ARNs)
    definitions = aws_template.definitions()
    assert len(definitions) >= 2
    for name, definition in definitions.items():
        # When asl-validator checks it
        result = validate(definition, tmp_path, name)
        # Then it is valid
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


def test_an_invalid_definition_is_rejected(aws_template: awscheck.Template, validator: Path, tmp_path: Path) -> None:
    # Given a copy whose first Task points Next at a state that does not exist and has a bad Retry
    name, definition = next(iter(aws_template.definitions().items()))
    broken = copy.deepcopy(definition)
    first = broken["States"][broken["StartAt"]]
    first["Next"] = "No such state"
    first.pop("End", None)
    # When validated / Then asl-validator refuses it
    result = validate(broken, tmp_path, name)
    assert result.returncode != 0
    assert "No such state" in result.stdout + result.stderr
