"""``migsafe bundle``: push the plan's migration bundle to its store (the gate does it by itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from . import bundle
from .plan import Plan
from .store import open_store

bundle_app = typer.Typer(no_args_is_help=True, help="Migration bundles: the alembic code the AWS worker runs.")


@bundle_app.callback()
def _bundle() -> None:
    """Migration bundles: the alembic code the AWS worker runs, stored under its sha256."""


@bundle_app.command("push")
def push(
    plan: Annotated[Path, typer.Option("--plan", "-p", help="Plan file (TOML or JSON).")],
    store: Annotated[str | None, typer.Option("--store", help="Store URL (default: the plan's store).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
) -> None:
    """Tar the alembic directory and the plan's bundle paths; store it under its sha256; print the digest."""
    p = Plan.load(plan)
    target = open_store(store or p.store.url, p.base_dir)
    result = bundle.push(p, target)
    typer.echo(f"bundle {result.sha256}: {len(result.files)} files, {result.bytes} bytes "
               f"{'uploaded to' if result.uploaded else 'already in'} {target.location(result.key)}", err=True)
    if json_out:
        typer.echo(json.dumps({"sha256": result.sha256, "key": result.key, "url": target.location(result.key),
                               "bytes": result.bytes, "files": result.files, "uploaded": result.uploaded}))
    else:
        typer.echo(result.sha256)
