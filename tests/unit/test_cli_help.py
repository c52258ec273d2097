"""The CLI as people expect it: --version, an example in every verb's help, flags shown as flags,
the exit codes in the top-level help, and --json on prune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from migsafe import __version__
from migsafe.cli import app
from typer.testing import CliRunner

VERBS = [["backup"], ["backups", "list"], ["verify"], ["restore"], ["diff"], ["prune"], ["rehearse"], ["lint"],
         ["scratch", "sweep"], ["gate"], ["approve"], ["reject"], ["bundle", "push"]]


def _help(*verb: str) -> str:
    result = CliRunner().invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def test_version_prints_the_package_version() -> None:
    # When / Then
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"migsafe {__version__}"


def test_the_top_level_help_lists_the_exit_codes() -> None:
    # When
    text = _help()
    # Then every documented code is explained
    for code in ("0", "1", "2", "3", "130"):
        assert any(line.strip().startswith(code + " ") for line in text.splitlines()), code


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_shows_an_example_and_its_flags_as_flags(verb: list[str]) -> None:
    # When
    text = _help(*verb)
    # Then it has an example of itself, and no flag is shown as taking a value
    assert "Examples:" in text and f"migsafe {' '.join(verb)}" in text
    assert "<bool>" not in text


def test_prune_json_says_what_it_deleted(tmp_path: Path) -> None:
    # Given an empty, existing store
    (tmp_path / "store").mkdir()
    # When pruned with --json
    result = CliRunner().invoke(app, ["prune", "--store", f"file://{tmp_path / 'store'}", "--older-than", "7d",
                                      "--json"])
    # Then stdout is JSON naming what went (nothing here)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body == {"dry_run": False, "backups": [], "schemas": []}
