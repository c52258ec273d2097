from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from migsafe.exceptions import PlanInvalid
from migsafe.identifiers import QualifiedName
from migsafe.plan import Plan


def test_toml_plan_with_every_section_loads(tmp_path: Path) -> None:
    # Given
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(
        '[source]\ndsn = "postgresql://app:pw@db/app"\ntables = ["public.users", "Orders"]\n'
        '[migration]\nalembic_ini = "alembic.ini"\n[store]\nurl = "s3://b/p"\n[thresholds]\nupgrade_seconds = 5\n'
        '[[checks]]\nname = "x"\nsql = "select 1"\nexpect = ">= 1"\n'
    )
    # When
    plan = Plan.load(plan_file)
    # Then
    assert plan.source.table_names == ["public.users", "public.orders"]
    assert plan.path("alembic.ini") == tmp_path / "alembic.ini"
    assert plan.thresholds.upgrade_seconds == 5


def test_unknown_key_is_named(tmp_path: Path) -> None:
    # Given
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text('[source]\ndsn = "postgresql:///x"\ntables = ["t"]\ncolour = "red"\n')
    # When / Then
    with pytest.raises(PlanInvalid, match=r"unknown key 'source.colour'"):
        Plan.load(plan_file)


def test_json_plan_is_the_same_model() -> None:
    plan = Plan.from_json('{"source": {"dsn_env": "DATABASE_URL", "tables": ["users"]}}')
    assert plan.source.resolve_dsn({"DATABASE_URL": "postgresql://u:p@h/db"}).dbname == "db"


@pytest.mark.parametrize("bad", ["public.users; drop table x", 'a"b', "a.b.c", "", "1abc", "users--"])
def test_unsafe_table_names_are_refused(bad: str) -> None:
    with pytest.raises(PlanInvalid, match=r"not a valid table name|at least 1"):
        Plan.from_json(json.dumps({"source": {"dsn": "postgresql:///x", "tables": [bad]}}))


def test_quoted_names_keep_their_case() -> None:
    assert QualifiedName.parse('"Sales"."Order Items"') == QualifiedName("Sales", "Order Items")
    assert QualifiedName.parse("Sales.Orders") == QualifiedName("sales", "orders")


def test_digest_does_not_depend_on_the_password() -> None:
    # Given: the same plan with two passwords, and with another table
    def plan(dsn: str, table: str = "users") -> Plan:
        return Plan.from_json(json.dumps({"source": {"dsn": dsn, "tables": [table]}}))

    # When / Then: the password never reaches the digest (it names executions, sits in manifests)
    assert plan("postgresql://app:one@db/app").digest() == plan("postgresql://app:two@db/app").digest()
    assert plan("postgresql://app:one@db/app").digest() != plan("postgresql://app:one@db/app", "orders").digest()


def _migration(**migration: object) -> dict[str, object]:
    return {"source": {"dsn": "postgresql:///x", "tables": ["t"]}, "migration": migration}


@pytest.mark.parametrize(
    ("migration", "says"),
    [
        ({"alembic_ini": "alembic.ini", "config_factory": "app.db:config"}, "alembic_ini or config_factory, not both"),
        ({"config_factory": "app.db"}, "package.module:function"),
        ({"command": ["app", "db", "upgrade", "{revision}"], "url_env": "DATABASE_URL"}, "go together"),
        (
            {"command": ["app", "upgrade"], "downgrade_command": ["app", "downgrade", "{revision}"],
             "url_env": "DATABASE_URL"},
            "put {revision} in one argument",
        ),
        (
            {"command": ["app", "upgrade", "{revision}"], "downgrade_command": ["app", "downgrade", "{revision}"]},
            "command needs url_env",
        ),
        ({"command": [], "downgrade_command": [], "url_env": "U"}, "non-empty list"),
    ],
    ids=["ini-and-factory", "factory-not-a-callable-path", "command-alone", "no-revision-placeholder",
         "command-without-url-env", "empty-command"],
)
def test_migration_ways_to_run_are_validated_with_a_clear_message(
    migration: dict[str, object], says: str
) -> None:
    # When / Then
    with pytest.raises(PlanInvalid, match=re.escape(says)):
        Plan.from_mapping(_migration(**migration))


def test_factory_and_command_plans_load() -> None:
    # Given: a Config built in code, and the project's own command reading the URL from its variable
    plan = Plan.from_mapping(
        _migration(
            config_factory="tasksapp.db:alembic_config",
            command=["python", "-m", "tasksapp", "db", "upgrade", "{revision}"],
            downgrade_command=["python", "-m", "tasksapp", "db", "downgrade", "{revision}"],
            url_env="TASKSAPP_DATABASE_URL",
        )
    )
    # Then
    assert plan.migration.config_factory == "tasksapp.db:alembic_config"
    assert plan.migration.command is not None and plan.migration.command[-1] == "{revision}"
    assert Plan.from_mapping(_migration()).migration.ini == "alembic.ini"  # the default, unless given


def test_stall_timeout_defaults_to_two_minutes_and_must_be_positive() -> None:
    # Given / When
    plan = Plan.from_json('{"source": {"dsn": "postgresql:///x", "tables": ["users"]}}')
    # Then
    assert plan.source.stall_timeout_seconds == 120
    with pytest.raises(PlanInvalid, match=r"source.stall_timeout_seconds: .*greater than 0"):
        Plan.from_json('{"source": {"dsn": "postgresql:///x", "tables": ["users"], "stall_timeout_seconds": 0}}')


def test_a_stall_timeout_override_keeps_the_plan_its_folder_and_its_digest(tmp_path: Path) -> None:
    # Given: a plan file, and the same plan with its own stall timeout
    (tmp_path / "a.toml").write_text('[source]\ndsn = "postgresql:///x"\ntables = ["users"]\n')
    (tmp_path / "b.toml").write_text('[source]\ndsn = "postgresql:///x"\ntables = ["users"]\nstall_timeout_seconds = 9\n')
    plan = Plan.load(tmp_path / "a.toml")
    # When: --stall-timeout overrides it
    faster = plan.with_stall_timeout(3)
    # Then: only the timeout changed; relative paths still resolve against the plan's folder; how long
    # to wait on a hung source is not part of what the digest names (manifests, executions)
    assert faster.source.stall_timeout_seconds == 3 and plan.source.stall_timeout_seconds == 120
    assert faster.path("alembic.ini") == tmp_path / "alembic.ini"
    assert faster.digest() == plan.digest() == Plan.load(tmp_path / "b.toml").digest()
    assert plan.with_stall_timeout(None) is plan
