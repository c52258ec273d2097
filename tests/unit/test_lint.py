"""squawk on captured SQL: findings keep revision, phase, statement, line and the observed locks."""

from __future__ import annotations

from migsafe.lint import Unit, advice_for, lint_units, lintable, split_sql, squawk_binary


def test_squawk_ships_with_migsafe() -> None:
    # Given / When
    binary = squawk_binary()
    # Then: the squawk-cli wheel is a dependency, its binary sits beside the interpreter
    assert binary is not None


def test_index_without_concurrently_is_found_with_its_lock() -> None:
    # Given: the statements of one revision, the second observed holding SHARE on the table
    unit = Unit(
        "0002_change",
        "upgrade",
        ["SET lock_timeout = '2s'", "CREATE INDEX ix_users_email ON users (email)"],
        [{}, {"public.users": "ShareLock"}],
    )
    # When
    findings, warnings = lint_units([unit], pg_version_text="15.4", lint_fail=[])
    # Then
    found = [f for f in findings if f.rule == "require-concurrent-index-creation"]
    assert len(found) == 1, findings
    f = found[0]
    assert (f.revision, f.phase, f.line) == ("0002_change", "upgrade", 1)
    assert f.statement == "CREATE INDEX ix_users_email ON users (email)"
    assert f.locks == ["ShareLock on public.users"]
    assert f.fails is False and warnings == []


def test_lint_fail_names_the_rules_that_fail() -> None:
    # Given
    unit = Unit("r1", "downgrade", ["ALTER TABLE users ADD COLUMN age bigint NOT NULL"])
    # When
    findings, _ = lint_units([unit], pg_version_text=None, lint_fail=["adding-required-field"])
    # Then
    rules = {f.rule: f.fails for f in findings}
    assert rules["adding-required-field"] is True
    assert not any(v for k, v in rules.items() if k != "adding-required-field")


def test_alembic_bookkeeping_and_parameters() -> None:
    # Given / When / Then
    assert lintable("UPDATE alembic_version SET version_num='2'") is None
    assert lintable("UPDATE t SET a = %(a)s WHERE id = %s;") == "UPDATE t SET a = NULL WHERE id = NULL"


def test_unparsable_sql_is_a_warning_not_a_finding() -> None:
    # Given
    unit = Unit("r1", "upgrade", ["SELECT 1 FROM ("])
    # When
    findings, warnings = lint_units([unit], pg_version_text=None, lint_fail=["*"])
    # Then
    assert findings == [] and any("could not parse" in w for w in warnings)


def test_missing_squawk_is_a_warning(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given: a binary that does not exist
    unit = Unit("r1", "upgrade", ["CREATE INDEX i ON t (a)"])
    # When
    findings, warnings = lint_units(
        [unit], pg_version_text=None, lint_fail=[], binary=str(tmp_path / "no-squawk")
    )
    # Then
    assert findings == [] and len(warnings) == 1 and "lint of" in warnings[0]


def test_split_offline_sql() -> None:
    # Given: alembic --sql output
    text = "-- Running upgrade a -> b\n\nCREATE INDEX i ON t (a);\n\nUPDATE alembic_version SET v='b'\nWHERE v = 'a';\n\n"
    # When / Then
    assert split_sql(text) == ["CREATE INDEX i ON t (a);", "UPDATE alembic_version SET v='b'\nWHERE v = 'a';"]


def test_advice_follows_rule_then_lock() -> None:
    assert "CONCURRENTLY" in (advice_for("require-concurrent-index-creation", "ShareLock") or "")
    assert "lock_timeout" in (advice_for(None, "AccessExclusiveLock") or "")
    assert advice_for("prefer-bigint-over-int", "RowExclusiveLock") is None


def test_alembic_offline_transaction_is_not_linted() -> None:
    # Given: alembic --sql wraps the migration in BEGIN/COMMIT of its own
    # When / Then: squawk would call them nesting/uncommitted; they are the tool's, not the migration's
    assert lintable("BEGIN;") is None and lintable("COMMIT;") is None
