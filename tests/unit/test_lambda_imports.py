"""The Lambda steps run without libpq: importing them must not import psycopg."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKER = """
import builtins, sys
sys.path.insert(0, {functions!r})
real = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] in ("psycopg", "psycopg_binary", "psycopg_c"):
        raise ImportError("psycopg is not available in Lambda")
    return real(name, *args, **kwargs)
builtins.__import__ = guarded
import handlers.validate, handlers.evaluate, handlers.notification, handlers.snapshots, handlers.janitor
print("ok")
"""


def test_handlers_import_without_psycopg() -> None:
    # Given: an interpreter in which psycopg cannot be imported, as in the Lambda runtime
    script = BLOCKER.format(functions=str(ROOT / "functions"))
    # When
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    # Then
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
