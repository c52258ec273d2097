"""The verdict on lint findings and on what the traffic felt (issue 10's thresholds)."""

from __future__ import annotations

from pathlib import Path

from migsafe.plan import Thresholds
from migsafe.result import LintFinding, Result, Traffic, TrafficPhase
from migsafe.verdict import decide

EVENTS = Path(__file__).resolve().parent.parent / "events"


def _passing() -> Result:
    result = Result.model_validate_json((EVENTS / "result_pass.json").read_text())
    assert decide(result, Thresholds()).verdict == "PASS"
    return result


def _finding(rule: str) -> LintFinding:
    return LintFinding(
        rule=rule,
        level="warning",
        message="m",
        revision="0002",
        phase="upgrade",
        statement="CREATE INDEX ix ON users (email)",
        locks=["ShareLock on public.users"],
    )


def _traffic(blocked: float, errors: int = 0) -> Traffic:
    return Traffic(
        upgrade=TrafficPhase(
            phase="upgrade",
            clients=4,
            rate=50,
            blocked_max_s=blocked,
            blocked_table="public.users",
            blocked_query="insert into users",
            blocking_mode="ShareLock",
            blocking_statement="CREATE INDEX ix ON users (email)",
            blocking_revision="0002",
            errors=errors,
            error_samples=["insert public.users: boom"] if errors else [],
        )
    )


def test_lint_warns_by_default_and_fails_the_rules_the_plan_names() -> None:
    # Given
    result = _passing()
    result.lint = [_finding("require-concurrent-index-creation")]
    # When / Then
    assert decide(result.model_copy(deep=True), Thresholds()).verdict == "PASS"
    failed = decide(result, Thresholds(lint_fail=["require-concurrent-index-creation"]))
    assert failed.verdict == "FAIL"
    assert any(
        r.startswith("lint require-concurrent-index-creation in revision 0002 (upgrade)") and "ShareLock" in r
        for r in failed.reasons
    )


def test_blocked_writes_over_the_threshold_fail_naming_table_lock_statement_and_seconds() -> None:
    # Given
    result = _passing()
    result.traffic = _traffic(6.3)
    result.lint = [_finding("require-concurrent-index-creation")]
    # When
    decided = decide(result, Thresholds())
    # Then
    assert decided.verdict == "FAIL"
    assert (
        "public.users: writes blocked 6.3 s by CREATE INDEX ix ON users (email) (SHARE) in revision 0002 "
        "during the upgrade, over the 5 s threshold (thresholds.max_blocked_seconds)"
    ) in decided.reasons
    # and the advice names the remedy for that rule and that lock
    assert any("CONCURRENTLY" in s and "require-concurrent-index-creation" in s for s in decided.next_steps)


def test_short_waits_pass_and_errors_fail() -> None:
    # Given / When / Then
    result = _passing()
    result.traffic = _traffic(4.9)
    assert decide(result.model_copy(deep=True), Thresholds()).verdict == "PASS"
    result.traffic = _traffic(0.0, errors=2)
    decided = decide(result, Thresholds())
    assert decided.verdict == "FAIL"
    assert any("2 traffic transaction(s) failed during the upgrade" in r for r in decided.reasons)
    assert decide(result.model_copy(deep=True), Thresholds(max_traffic_errors=2)).verdict == "PASS"


def test_plan_keys_for_lint_and_traffic() -> None:
    import pytest
    from migsafe.exceptions import PlanInvalid
    from migsafe.plan import Plan

    base = {"source": {"dsn": "postgresql://h/db", "tables": ["users"]}}
    # Given / When
    plan = Plan.from_mapping(
        {
            **base,
            "thresholds": {"lint_fail": ["adding-required-field"], "max_blocked_seconds": 2},
            "traffic": {
                "clients": 2,
                "rate": 10,
                "queries": [{"name": "hot", "sql": "select 1 where :id = 1"}],
            },
        }
    )
    # Then
    assert plan.thresholds.lint_fail == ["adding-required-field"] and plan.thresholds.max_traffic_errors == 0
    assert plan.traffic.clients == 2 and plan.traffic.queries[0].weight == 1
    assert (
        Plan.from_mapping(base).traffic.enabled
        and Plan.from_mapping(base).thresholds.max_blocked_seconds == 5
    )
    with pytest.raises(PlanInvalid, match=r"traffic\.clients"):
        Plan.from_mapping({**base, "traffic": {"clients": 0}})
    with pytest.raises(PlanInvalid, match=r"unknown key 'traffic\.queries\.0\.weigth'"):
        Plan.from_mapping({**base, "traffic": {"queries": [{"name": "a", "sql": "s", "weigth": 2}]}})


def test_the_blocking_statement_is_named_with_its_own_revision() -> None:
    # Given: two adjacent revisions (the second starts 1 ms after the first ends); the wait is on
    # the lock the second one's statement took
    from types import SimpleNamespace

    from migsafe.migrate import MigrationRun
    from migsafe.rehearse import _attribute_wait
    from migsafe.result import RevisionRun, StatementRun

    first = StatementRun(
        sql="ALTER TABLE budget ADD COLUMN v text",
        start=15.389,
        seconds=0.001,
        locks={"public.budget": "AccessExclusiveLock"},
    )
    second = StatementRun(
        sql="ALTER TABLE trace DROP CONSTRAINT fk",
        start=15.412,
        seconds=0.002,
        locks={"public.experiments": "AccessExclusiveLock"},
    )
    mig = MigrationRun(action="upgrade", revision="head", seconds=1, ok=True, statements=[first, second])
    mig.revisions = [
        RevisionRun(id="c3d9", phase="upgrade", start=15.388, seconds=0.022, statements=[first]),
        RevisionRun(id="6f8d", phase="upgrade", start=15.411, seconds=0.016, statements=[second]),
    ]
    wait = SimpleNamespace(table="public.experiments", started=15.413)
    felt = TrafficPhase(
        phase="upgrade", clients=1, rate=1, blocked_max_s=1.3, blocked_table="public.experiments"
    )
    # When
    _attribute_wait(None, SimpleNamespace(worst=wait), felt, mig)  # type: ignore[arg-type]
    # Then
    assert felt.blocking_statement == "ALTER TABLE trace DROP CONSTRAINT fk"
    assert felt.blocking_revision == "6f8d" and felt.blocking_mode == "AccessExclusiveLock"
