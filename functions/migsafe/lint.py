"""Static lint of the SQL a migration ran (or, offline, would run), with squawk.

Why lint the *captured* SQL and not the migration files: the files are Python; what reaches the server
is what matters, parameters and ORM-generated DDL included. Each revision's statements are linted as
one file (so squawk sees ``SET lock_timeout`` before the ``ALTER`` it protects), assuming, like
alembic, that they run in a transaction. Findings keep the revision, the phase, the statement and the
locks that statement was observed to take, so the report puts "squawk says" next to "it held".

squawk ships as a binary in the ``squawk-cli`` wheel; migsafe finds it beside its own interpreter.
A missing or broken squawk is a warning, never a failed rehearsal (lint is advice unless the plan's
``thresholds.lint_fail`` names a rule).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .dsn import mask
from .plan import Plan
from .result import LintFinding, Phase

STATEMENT_CHARS = 300  # of a statement kept in a finding
_PLACEHOLDER = re.compile(r"%\(\w+\)s|%s")


@dataclass
class Unit:
    """The statements of one revision in one phase, linted together."""

    revision: str | None
    phase: Phase
    statements: list[str]
    locks: list[dict[str, str]] = field(default_factory=list)  # per statement, as observed (may be empty)


def squawk_binary() -> str | None:
    """squawk beside this interpreter (the venv's bin, where the wheel puts it), else on PATH."""
    here = Path(sys.executable).parent / "squawk"
    if here.is_file():
        return str(here)
    return shutil.which("squawk")


def pg_version(server_version_num: int) -> str:
    """``150018`` -> ``15.18`` (squawk's --pg-version)."""
    return f"{server_version_num // 10000}.{server_version_num % 10000}"


def lintable(statement: str) -> str | None:
    """The statement as squawk should read it, or None when it is alembic's own bookkeeping."""
    text = statement.strip().rstrip(";").strip()
    if not text or "alembic_version" in text.lower():
        return None
    if text.upper() in ("BEGIN", "COMMIT", "ROLLBACK"):  # alembic --sql's own transaction
        return None
    # bound parameters are not SQL squawk can parse; a NULL keeps the statement's shape
    return _PLACEHOLDER.sub("NULL", text)


def split_sql(text: str) -> list[str]:
    """Split alembic's ``--sql`` output into statements (it ends each with ``;`` and a blank line)."""
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("--")):
            continue
        current.append(line)
        if stripped.endswith(";"):
            out.append("\n".join(current).strip())
            current = []
    if current and "\n".join(current).strip():
        out.append("\n".join(current).strip())
    return out


def _locks_text(locks: dict[str, str]) -> list[str]:
    return [f"{mode} on {rel}" for rel, mode in sorted(locks.items())]


def fails(rule: str, lint_fail: Sequence[str]) -> bool:
    return "*" in lint_fail or rule in lint_fail


def lint_units(
    units: Sequence[Unit],
    *,
    pg_version_text: str | None,
    lint_fail: Sequence[str],
    binary: str | None = None,
    timeout: float = 60,
) -> tuple[list[LintFinding], list[str]]:
    """Lint each unit with squawk; returns (findings, warnings). Never raises for squawk's troubles."""
    binary = binary or squawk_binary()
    if binary is None:
        return [], ["lint skipped: squawk is not installed (pip install squawk-cli)"]
    findings: list[LintFinding] = []
    warnings: list[str] = []
    for unit in units:
        kept: list[tuple[str, dict[str, str]]] = []
        for i, stmt in enumerate(unit.statements):
            text = lintable(stmt)
            if text is not None:
                kept.append((text, unit.locks[i] if i < len(unit.locks) else {}))
        if not kept:
            continue
        # one statement per block; remember the line each starts on
        starts: list[int] = []
        lines: list[str] = []
        for text, _ in kept:
            starts.append(len(lines))
            lines.extend((text + ";").splitlines())
            lines.append("")
        args = [binary, "--reporter", "json", "--assume-in-transaction"]
        if pg_version_text:
            args += ["--pg-version", pg_version_text]
        name = f"{unit.revision or 'migration'}-{unit.phase}.sql"
        try:
            proc = subprocess.run(
                [*args, "--stdin-filepath", name],
                input="\n".join(lines),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            raw = json.loads(proc.stdout or "[]")
        except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
            warnings.append(f"lint of {name} failed: {mask(str(exc))}")
            continue
        unparsed: set[int] = set()
        for item in raw:
            line = int(item.get("line") or 0)
            index = max(i for i, s in enumerate(starts) if s <= line) if starts else 0
            text, locks = kept[index]
            rule = str(item.get("rule_name") or "unknown")
            if rule == "syntax-error":
                # squawk's parser lags PostgreSQL's: a statement it cannot read is noted, not judged
                unparsed.add(index)
                continue
            findings.append(
                LintFinding(
                    rule=rule,
                    level=str(item.get("level") or "warning").lower(),
                    message=str(item.get("message") or ""),
                    help=item.get("help"),
                    revision=unit.revision,
                    phase=unit.phase,
                    statement=_short(text),
                    line=line - starts[index] + 1 if starts else None,
                    locks=_locks_text(locks),
                    fails=fails(rule, lint_fail),
                )
            )
        if unparsed:
            first = _short(kept[min(unparsed)][0])[:80]
            warnings.append(
                f"squawk could not parse {len(unparsed)} statement(s) of {name} (not linted), e.g. {first}"
            )
    return findings, _dedupe(warnings)


def _short(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= STATEMENT_CHARS else one[: STATEMENT_CHARS - 1] + "…"


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# -- advice tied to what was found and observed --------------------------------------------------------

ADVICE: dict[str, str] = {
    "require-concurrent-index-creation": (
        "build the index with CREATE INDEX CONCURRENTLY, outside the transaction "
        "(alembic: op.create_index(..., postgresql_concurrently=True) inside "
        "op.get_context().autocommit_block())"
    ),
    "require-concurrent-index-deletion": "drop the index with DROP INDEX CONCURRENTLY, outside the transaction",
    "adding-foreign-key-constraint": (
        "add the foreign key NOT VALID, then VALIDATE CONSTRAINT in a later transaction "
        "(validation takes only SHARE UPDATE EXCLUSIVE)"
    ),
    "constraint-missing-not-valid": (
        "add the constraint NOT VALID, then VALIDATE CONSTRAINT in a later transaction"
    ),
    "adding-not-nullable-field": (
        "add a CHECK (col IS NOT NULL) NOT VALID, VALIDATE it, then SET NOT NULL (PostgreSQL uses the check "
        "and skips the scan)"
    ),
    "changing-column-type": (
        "split the type change: add a new column, backfill it in batches, swap the names in one short "
        "transaction, drop the old column later"
    ),
    "require-lock-timeout": (
        "SET lock_timeout (e.g. '2s') at the start of the migration and retry on failure, so a long "
        "query ahead of it cannot make every client queue behind the ALTER"
    ),
    "adding-field-with-default": "add the column without a volatile default, then backfill in batches",
    "disallowed-unique-constraint": (
        "build a unique index CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX"
    ),
}

LOCK_ADVICE: dict[str, str] = {
    "AccessExclusiveLock": (
        "SET lock_timeout with retries keeps the queue short; if the table is rewritten, split the change "
        "into add-column/backfill/swap"
    ),
    "ShareLock": "build indexes with CREATE INDEX CONCURRENTLY (SHARE UPDATE EXCLUSIVE does not block writes)",
    "ShareRowExclusiveLock": "add foreign keys/triggers NOT VALID, then VALIDATE CONSTRAINT separately",
}


def advice_for(rule: str | None, mode: str | None) -> str | None:
    """The remedy for a rule squawk raised on a statement observed holding ``mode``."""
    if rule and rule in ADVICE:
        return ADVICE[rule]
    if mode and mode in LOCK_ADVICE:
        return LOCK_ADVICE[mode]
    return None


@dataclass
class LintReport:
    findings: list[LintFinding]
    warnings: list[str]
    revisions: list[str]  # the upgrade path linted, oldest first

    @property
    def failing(self) -> list[LintFinding]:
        return [f for f in self.findings if f.fails]


def lint_plan(plan: Plan, environ: Mapping[str, str], *, pg_version_text: str | None = None) -> LintReport:
    """`migsafe lint`: the plan's upgrade and downgrade rendered by ``alembic --sql``, linted; no database."""
    from .migrate import probe_offline, run_offline

    pr = probe_offline(plan, environ)
    units: list[Unit] = []
    up = run_offline(plan, "upgrade", pr.downgrade_dest, pr.upgrade_to, environ)
    down = run_offline(plan, "downgrade", pr.upgrade_to, pr.downgrade_dest, environ)
    for rev in [*up, *down]:
        units.append(Unit(rev.id, rev.phase, split_sql(rev.sql)))
    findings, warnings = lint_units(
        units, pg_version_text=pg_version_text, lint_fail=plan.thresholds.lint_fail
    )
    return LintReport(findings=findings, warnings=warnings, revisions=list(reversed(pr.path)))
