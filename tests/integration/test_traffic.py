"""Synthetic traffic during the rehearsal: how long users would wait, and on what (real PostgreSQL)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic_projects import write_project
from migsafe.config import Settings
from migsafe.plan import Plan
from migsafe.rehearse import rehearse
from migsafe.result import Result
from pgsupport import Database

from examples.enum_uppercase import seed

pytestmark = pytest.mark.slow

TRAFFIC = "[traffic]\nclients = 3\nrate = 30\nbaseline_seconds = 1\n"


@pytest.fixture
def source(make_database: Callable[..., Database]) -> Database:
    db = make_database()
    seed.load(db.conninfo, 2000, alembic=True)
    return db


def _rehearse(
    tmp_path: Path,
    db: Database,
    runtime_dir: Path,
    up: list[str],
    down: list[str],
    extra: str = "",
    traffic: str = TRAFFIC,
) -> Result:
    ini = write_project(tmp_path / "proj", upgrade=up, downgrade=down)
    listed = ", ".join(f'"{t}"' for t in seed.TABLES)
    plan = tmp_path / "plan.toml"
    plan.write_text(
        f'name = "traffic"\n[source]\ndsn = "{db.url}"\ntables = [{listed}]\n'
        f'[migration]\nalembic_ini = "{ini}"\nurl_env = "DATABASE_URL"\n'
        f'[store]\nurl = "file://{tmp_path / "store"}"\n' + traffic + extra
    )
    settings = Settings.from_environ({**os.environ, "MIGSAFE_RUNTIME_DIR": str(runtime_dir)})
    return rehearse(Plan.load(plan), settings, report_dir=tmp_path / "report")


def _users_hold(result: Result) -> float:
    """How long the upgrade really held its lock on users: from the LOCK statement to COMMIT (captured)."""
    rev = next(r for r in result.revision_runs if r.phase == "upgrade")
    return next(lk.held_seconds for lk in rev.locks if lk.relation == "public.users")


def test_five_seconds_of_access_exclusive_fails_naming_table_lock_and_statement(
    tmp_path: Path, source: Database, runtime_dir: Path
) -> None:
    # Given: slow work done while holding ACCESS EXCLUSIVE on users (about 6 s, over the default 5 s)
    up = [
        "LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
        "SELECT pg_sleep(6)",
        "ALTER TABLE users ADD COLUMN nickname text",
    ]
    # When
    result = _rehearse(tmp_path, source, runtime_dir, up, ["ALTER TABLE users DROP COLUMN nickname"])
    # Then
    assert result.verdict == "FAIL"
    assert result.traffic is not None and result.traffic.upgrade is not None
    tp = result.traffic.upgrade
    hold = _users_hold(result)
    assert 5.5 <= hold <= 8.0
    assert abs(tp.blocked_max_s - hold) <= 0.2 * hold, (tp.blocked_max_s, hold)
    assert tp.blocked_table == "public.users" and tp.blocking_mode == "AccessExclusiveLock"
    assert tp.blocking_statement == "LOCK TABLE users IN ACCESS EXCLUSIVE MODE"
    assert tp.blocking_revision == "0002_change"
    assert tp.waits_over_1s > 0 and tp.max_ms is not None and tp.max_ms > 4000
    assert tp.baseline_p99_ms is not None and tp.baseline_p99_ms < 1000
    reason = next(r for r in result.reasons if "max_blocked_seconds" in r)
    assert reason.startswith("public.users: ")
    assert "LOCK TABLE users IN ACCESS EXCLUSIVE MODE" in reason and "ACCESS EXCLUSIVE" in reason
    assert "revision 0002_change" in reason
    # the migration's own locks do not count the clients' (they are filtered by application name)
    assert not any("do not back up" in w for w in result.warnings)
    # advice tied to the observed lock
    assert any("lock_timeout" in s for s in result.next_steps)


def test_the_same_change_done_safely_passes(tmp_path: Path, source: Database, runtime_dir: Path) -> None:
    # Given: the slow part first, then the short ALTER with a lock_timeout
    up = ["SELECT pg_sleep(5)", "SET LOCAL lock_timeout = '2s'", "ALTER TABLE users ADD COLUMN nickname text"]
    # When
    result = _rehearse(tmp_path, source, runtime_dir, up, ["ALTER TABLE users DROP COLUMN nickname"])
    # Then
    assert result.verdict == "PASS", result.reasons
    assert result.traffic is not None and result.traffic.upgrade is not None
    tp = result.traffic.upgrade
    assert tp.blocked_max_s < 1.0 and tp.errors == 0
    assert tp.transactions > 100  # the clients ran all along the 5 s upgrade
    assert _users_hold(result) < 1.0
    # rolled back: the clients' writes never change what the rehearsal verifies
    users = next(t for t in result.tables if t.name == "public.users")
    assert users.rows_before == users.rows_after_upgrade == users.rows_after_downgrade


def test_create_index_without_concurrently_is_linted_and_blocks_writes(
    tmp_path: Path, source: Database, runtime_dir: Path
) -> None:
    # Given: a plain CREATE INDEX; the transaction goes on for 2 s, holding SHARE on users
    up = ["CREATE INDEX ix_users_full_name ON users (full_name)", "SELECT pg_sleep(2)"]
    # When
    result = _rehearse(
        tmp_path,
        source,
        runtime_dir,
        up,
        ["DROP INDEX ix_users_full_name"],
        "[thresholds]\nmax_blocked_seconds = 10\n",
    )
    # Then: squawk names it, with the lock it was seen to take
    found = [f for f in result.lint if f.rule == "require-concurrent-index-creation"]
    assert len(found) == 1
    assert found[0].revision == "0002_change" and found[0].phase == "upgrade"
    assert found[0].locks == ["ShareLock on public.users"]
    # and the clients' writes waited on it (reads do not conflict with SHARE)
    tp = result.traffic.upgrade if result.traffic else None
    assert tp is not None and tp.blocked_max_s > 1.0
    assert tp.blocked_table == "public.users" and tp.blocking_mode == "ShareLock"
    assert tp.blocked_query is not None and tp.blocked_query.split()[0].lower() in ("insert", "update")
    assert tp.blocking_statement == "CREATE INDEX ix_users_full_name ON users (full_name)"
    assert result.verdict == "PASS"  # under the plan's 10 s, and lint only warns by default
    assert any("CONCURRENTLY" in s and "require-concurrent-index-creation" in s for s in result.next_steps)


def test_a_downgrade_lock_shorter_than_a_sample_is_in_the_lock_list(
    tmp_path: Path, source: Database, runtime_dir: Path
) -> None:
    # Given: both directions take ACCESS EXCLUSIVE for a few milliseconds only
    up = ["ALTER TABLE users ADD COLUMN nickname text"]
    down = ["ALTER TABLE users DROP COLUMN nickname"]
    # When
    result = _rehearse(tmp_path, source, runtime_dir, up, down, traffic="[traffic]\nenabled = false\n")
    # Then: the statement capture puts it in the list even when the 50 ms sampler missed it
    for phase in ("upgrade", "downgrade"):
        holds = [h for h in result.locks if h.phase == phase and h.relation == "public.users"]
        assert any(h.mode == "AccessExclusiveLock" for h in holds), (phase, result.locks)
    assert result.traffic is None
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| public.users | ACCESS EXCLUSIVE | downgrade |" in md


def test_default_workload_satisfies_constraints_and_plan_queries_bind_from_rows(source: Database) -> None:
    # Given: the seed's tables (serial keys, unique e-mails, foreign keys, enums, a composite key)
    from migsafe.plan import Traffic as TrafficPlan
    from migsafe.traffic import derive_workload

    cfg = TrafficPlan.model_validate(
        {
            "queries": [
                {
                    "name": "by email",
                    "sql": "select id from users where email = :email",
                    "table": "public.users",
                }
            ]
        }
    )
    with source.connect() as conn:
        # When
        ops, warnings = derive_workload(conn, seed.TABLES, cfg)
        # Then: every kind of transaction runs against the real schema (and is rolled back)
        import random

        rng = random.Random(7)  # noqa: S311 - a workload
        for op in ops:
            for _ in range(20):
                with conn.transaction(force_rollback=True):
                    conn.execute(op.query, op.params(rng))
    names = {op.name for op in ops}
    assert {"read public.users", "insert public.users", "update public.users", "query by email"} <= names
    assert "insert public.user_invitations" in names and "read public.user_application_access" in names
    assert warnings == [] or all("no inserts" in w for w in warnings), warnings
    assert source.scalar("select count(*) from users") == 2000  # nothing stayed
