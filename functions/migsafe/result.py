"""The rehearsal's result: the ``result.json`` contract of design.md, for machines and reports.

Fields here are a public contract (deploy pipelines parse ``result.json``): add, never rename.
"""

from __future__ import annotations

import shlex
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["PASS", "FAIL"]
Phase = Literal["upgrade", "downgrade"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StepResult(_Model):
    name: str  # backup, scratch, restore_test, baseline, upgrade, verify_upgrade, downgrade, verify_downgrade, ...
    started: datetime
    seconds: float
    ok: bool
    error: str | None = None


class LockHold(_Model):
    """One continuous stretch during which the migration held a lock on a relation."""

    relation: str
    mode: str  # e.g. AccessExclusiveLock
    phase: Phase
    start: float  # seconds since the rehearsal started
    end: float


class TableResult(_Model):
    name: str
    rows_before: int | None = None
    rows_after_upgrade: int | None = None
    rows_after_downgrade: int | None = None
    fingerprint_before: str | None = None
    fingerprint_after_upgrade: str | None = None
    fingerprint_after_downgrade: str | None = None
    rewritten: bool = False  # by the upgrade (relfilenode changed)
    rewritten_by_downgrade: bool = False
    max_lock_mode: str | None = None  # strongest lock seen across both phases
    lock_seconds: float = 0.0  # longest continuous ACCESS EXCLUSIVE hold, either phase
    upgrade_lock_mode: str | None = None
    upgrade_lock_seconds: float = 0.0
    downgrade_lock_mode: str | None = None
    downgrade_lock_seconds: float = 0.0
    fk_invalid_after_upgrade: list[str] = Field(default_factory=list)
    fk_invalid_after_downgrade: list[str] = Field(default_factory=list)

    @property
    def downgrade_restores_data(self) -> bool | None:
        if self.fingerprint_before is None or self.fingerprint_after_downgrade is None:
            return None
        return self.fingerprint_before == self.fingerprint_after_downgrade


class CheckResult(_Model):
    name: str
    when: Literal["before", "after_upgrade", "after_downgrade"]
    sql: str
    expect: str
    value: str | None = None
    ok: bool
    error: str | None = None


class BackupInfo(_Model):
    id: str
    url: str  # the backup's folder
    bytes: int
    store_url: str | None = None  # the store it lives in (for `migsafe restore --store`)
    restore_tested: bool = False


class ScratchInfo(_Model):
    kind: str
    id: str | None = None
    destroyed: bool = False
    method: str | None = None  # pg_basebackup | pg_dump | rds-snapshot | dsn


class Revisions(_Model):
    source: str | None = None
    upgrade_to: str
    downgrade_to: str
    after_upgrade: str | None = None
    after_downgrade: str | None = None


class LintFinding(_Model):
    """One squawk finding on a statement the migration ran (or, offline, would run)."""

    rule: str  # squawk's rule name, e.g. require-concurrent-index-creation
    level: str  # squawk's: error | warning
    message: str
    help: str | None = None
    revision: str | None = None
    phase: Phase
    statement: str  # truncated
    line: int | None = None  # of the statement in its revision's SQL
    locks: list[str] = Field(default_factory=list)  # what the same statement was observed to take
    fails: bool = False  # the plan's thresholds.lint_fail names this rule


class StatementRun(_Model):
    sql: str  # truncated
    start: float  # seconds since the rehearsal started
    seconds: float
    locks: dict[str, str] = Field(default_factory=dict)  # relation -> mode newly held after it


class RevisionLock(_Model):
    relation: str
    mode: str
    held_seconds: float  # from the revision's start to its transaction's COMMIT


class RevisionRun(_Model):
    """One revision applied (upgrade) or undone (downgrade)."""

    id: str
    phase: Phase
    start: float = 0.0  # seconds since the rehearsal started
    seconds: float
    statement_count: int = 0
    statements: list[StatementRun] = Field(default_factory=list)  # in order, at most 200
    locks: list[RevisionLock] = Field(default_factory=list)
    rewrites: list[str] = Field(default_factory=list)  # tables whose relfilenode it changed
    lint: list[LintFinding] = Field(default_factory=list)


class TrafficPhase(_Model):
    """What the synthetic clients felt during one phase (latencies in milliseconds)."""

    phase: Phase
    clients: int
    rate: float  # transactions per second per client, open loop
    transactions: int = 0
    baseline_p50_ms: float | None = None
    baseline_p99_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    waits_over_100ms: int = 0
    waits_over_1s: int = 0
    waits_over_5s: int = 0
    errors: int = 0
    error_samples: list[str] = Field(default_factory=list)
    blocked_max_s: float = 0.0  # longest lock wait any client had (pg_locks.waitstart sampling)
    blocked_table: str | None = None
    blocked_query: str | None = None  # what the waiting client ran (insert/update/select)
    blocking_mode: str | None = None  # the lock the migration held on that table
    blocking_statement: str | None = None
    blocking_revision: str | None = None
    p99_per_second: list[tuple[float, float]] = Field(default_factory=list)  # (t since start, ms)


class Traffic(_Model):
    upgrade: TrafficPhase | None = None
    downgrade: TrafficPhase | None = None

    def phases(self) -> list[TrafficPhase]:
        return [p for p in (self.upgrade, self.downgrade) if p is not None]


class Observation(_Model):
    """How the migration was watched, and so which figures the result can hold (docs/cli.md)."""

    mode: Literal["in-process", "server-log", "sampling-only"]
    available: list[str] = Field(default_factory=list)
    unavailable: list[str] = Field(default_factory=list)


class Result(_Model):
    format: int = 1
    plan: str
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)  # why FAIL (empty on PASS)
    warnings: list[str] = Field(default_factory=list)  # noted but not failing
    # differences the plan's [[expect]] declared and that happened as declared, each with its reason:
    # they would FAIL otherwise, so every report shows them
    accepted: list[str] = Field(default_factory=list)
    next_steps: list[str] = Field(default_factory=list)
    rollback: Literal["downgrade", "restore", "unknown"] = "unknown"
    started: datetime
    finished: datetime
    seconds: float
    source: str  # masked DSN: host, port, database
    revisions: Revisions
    thresholds: dict[str, Any] = Field(default_factory=dict)
    steps: list[StepResult] = Field(default_factory=list)
    tables: list[TableResult] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    locks: list[LockHold] = Field(default_factory=list)
    lint: list[LintFinding] = Field(default_factory=list)
    # per revision and phase; `revisions` was already the source/target summary (a contract: never renamed)
    revision_runs: list[RevisionRun] = Field(default_factory=list)
    traffic: Traffic | None = None
    backup: BackupInfo | None = None
    scratch: ScratchInfo
    failed_step: str | None = None
    error: str | None = None
    observation: Observation | None = None
    # the plan's [migration] downgrade_command ({revision} unreplaced): a rollback runs the project's own
    # tooling then, not `alembic downgrade`
    downgrade_command: list[str] | None = None

    def rollback_downgrade(self) -> str:
        """The shell command that downgrades production to ``revisions.downgrade_to``."""
        revision = self.revisions.downgrade_to or "base"
        if self.downgrade_command:
            return shlex.join(arg.replace("{revision}", revision) for arg in self.downgrade_command)
        return shlex.join(["alembic", "downgrade", revision])

    def step(self, name: str) -> StepResult | None:
        return next((s for s in self.steps if s.name == name), None)
