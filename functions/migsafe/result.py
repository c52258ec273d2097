"""The rehearsal's result: the ``result.json`` contract of design.md, for machines and reports.

Fields here are a public contract (deploy pipelines parse ``result.json``): add, never rename.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

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


class Result(_Model):
    format: int = 1
    plan: str
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)  # why FAIL (empty on PASS)
    warnings: list[str] = Field(default_factory=list)  # noted but not failing
    next_steps: list[str] = Field(default_factory=list)
    rollback: Literal["downgrade", "restore", "unknown"] = "unknown"
    started: datetime
    finished: datetime
    seconds: float
    source: str  # masked DSN: host, port, database
    revisions: Revisions
    thresholds: dict[str, float | str] = Field(default_factory=dict)
    steps: list[StepResult] = Field(default_factory=list)
    tables: list[TableResult] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    locks: list[LockHold] = Field(default_factory=list)
    backup: BackupInfo | None = None
    scratch: ScratchInfo
    failed_step: str | None = None
    error: str | None = None

    def step(self, name: str) -> StepResult | None:
        return next((s for s in self.steps if s.name == name), None)
