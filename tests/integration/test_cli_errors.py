"""Bad input exits 2 and unreachable dependencies exit 3, and neither writes anything anywhere."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
from backup_helpers import all_files, backup_id_from, file_url, user_relations
from migsafe.backup import run_backup
from migsafe.dsn import Dsn
from migsafe.exceptions import DatabaseUnreachable, StoreUnreachable, UnknownTable
from migsafe.identifiers import QualifiedName
from migsafe.store import open_store
from migsafe.store.s3 import S3Store
from moto import mock_aws
from pgsupport import CliResult, Database, table_fingerprints, write_plan

from examples.enum_uppercase import seed

TABLES = seed.TABLES
Cli = Callable[..., CliResult]


@pytest.fixture
def with_x(seeded: Database) -> Database:
    """The seeded database plus a table ``x`` that an injected ``drop table x`` would remove."""
    with seeded.connect() as conn:
        conn.execute("create table public.x (id int)")
        conn.execute("insert into public.x values (1), (2)")
    return seeded


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (["public.users", "public.no_such_table"], "public.no_such_table"),
        (["public.users; drop table x"], "public.users; drop table x"),
        (['public."users""; drop table x; --"'], "not a valid table name"),
    ],
    ids=["missing-table", "injection", "quoted-injection"],
)
def test_a_plan_with_a_bad_table_exits_2_and_writes_nothing(
    tables: list[str], message: str, with_x: Database, migsafe: Cli, tmp_path: Path
) -> None:
    # Given a plan naming a table that does not exist, or a statement disguised as one
    store = tmp_path / "store"
    before = table_fingerprints(with_x, [*TABLES, "public.x"])
    plan = tmp_path / "plan.json"  # JSON: quotes in a table name need no TOML escaping
    plan.write_text(json.dumps({"source": {"dsn": with_x.url, "tables": tables}, "store": {"url": file_url(store)}}))

    # When it is backed up
    result = migsafe("backup", "--plan", str(plan))

    # Then it is refused as bad input, naming the table, and nothing changed anywhere
    assert result.code == 2, result.output
    assert message in result.output
    assert result.stdout == ""
    assert all_files(store) == []
    assert table_fingerprints(with_x, [*TABLES, "public.x"]) == before


def test_a_store_under_a_regular_file_exits_3_before_anything_is_written(
    seeded: Database, migsafe: Cli, tmp_path: Path
) -> None:
    # Given a file:// store whose path runs through a regular file
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("just a file\n")
    plan = write_plan(tmp_path / "plan.toml", seeded, file_url(blocker / "backups"))

    # When it is backed up
    result = migsafe("backup", "--plan", str(plan))

    # Then it is an environment fault naming the path, and nothing was written
    assert result.code == 3, result.output
    assert "not-a-dir" in result.output
    assert blocker.read_text() == "just a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir", "plan.toml"]


def test_listing_verifying_and_restoring_from_a_broken_store_exit_3(
    make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a store URL that is a regular file, and an empty target
    blocker = tmp_path / "store-file"
    blocker.write_text("x")
    target = make_database()

    # When it is listed, verified and restored from
    listed = migsafe("backups", "list", "--store", file_url(blocker))
    verified = migsafe("verify", "--store", file_url(blocker), "--backup-id", "20250101T000000Z-abcdef")
    restored = migsafe("restore", "--store", file_url(blocker), "--backup-id", "20250101T000000Z-abcdef",
                       "--target-dsn", target.url)

    # Then each is an environment fault and the target is untouched
    assert [listed.code, verified.code, restored.code] == [3, 3, 3], [listed.output, verified.output, restored.output]
    assert "not a directory" in listed.output
    assert user_relations(target) == []


def test_an_unreachable_source_database_exits_3_and_writes_nothing(
    pg_cluster: object, migsafe: Cli, tmp_path: Path
) -> None:
    # Given a plan whose source is a port where nothing listens
    store = tmp_path / "store"
    dead = Database("nowhere", Dsn.parse("postgresql://postgres@127.0.0.1:1/nowhere"))
    plan = write_plan(tmp_path / "plan.toml", dead, file_url(store))

    # When it is backed up
    result = migsafe("backup", "--plan", str(plan))

    # Then it is an environment fault naming the database, and the store was not created
    assert result.code == 3, result.output
    assert "127.0.0.1:1/nowhere" in result.output
    assert not store.exists()


def test_an_unreachable_restore_target_exits_3(
    seeded: Database, migsafe: Cli, tmp_path: Path
) -> None:
    # Given a good backup
    store = tmp_path / "store"
    plan = write_plan(tmp_path / "plan.toml", seeded, file_url(store))
    backed_up = migsafe("backup", "--plan", str(plan))
    assert backed_up.code == 0, backed_up.output

    # When it is restored into a server that is not there
    result = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id_from(backed_up.stdout),
                     "--target-dsn", "postgresql://postgres@127.0.0.1:1/nowhere")

    # Then it is an environment fault
    assert result.code == 3, result.output
    assert "cannot connect" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "--backup-id", "20250101T000000Z-abcdef"], "no backup 20250101T000000Z-abcdef"),
        (["verify", "--backup-id", "not-an-id"], "not a backup id"),
        (["restore", "--backup-id", "../../etc", "--target-dsn", "postgresql://postgres@127.0.0.1:1/x"],
         "not a backup id"),
    ],
    ids=["unknown-id", "malformed-id", "path-id"],
)
def test_unknown_or_malformed_backup_ids_exit_2(args: list[str], message: str, migsafe: Cli, tmp_path: Path) -> None:
    # Given an empty store
    store = tmp_path / "store"
    store.mkdir()

    # When a backup id it does not hold is asked for
    result = migsafe(*args, "--store", file_url(store))

    # Then it is bad input
    assert result.code == 2, result.output
    assert message in result.output


def test_restore_of_a_table_the_backup_lacks_exits_2(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given a backup of users only
    store = tmp_path / "store"
    plan = write_plan(tmp_path / "plan.toml", seeded, file_url(store), ["public.users"])
    backed_up = migsafe("backup", "--plan", str(plan))
    assert backed_up.code == 0, backed_up.output
    target = make_database()

    # When a table outside it is asked for
    result = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id_from(backed_up.stdout),
                     "--target-dsn", target.url, "--tables", "public.user_invitations")

    # Then it is bad input naming the table, and the target is untouched
    assert result.code == 2, result.output
    assert "public.user_invitations" in result.output
    assert user_relations(target) == []


# --- S3 in-process (moto is not available to a CLI subprocess) ---------------------------------
@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield


def test_an_s3_bucket_that_does_not_exist_is_an_environment_fault_before_any_dump(aws: None, seeded: Database) -> None:
    # Given an s3:// store whose bucket does not exist
    store = open_store("s3://migsafe-no-such-bucket/backups")
    assert isinstance(store, S3Store)

    # When the seed tables are backed up to it
    with pytest.raises(StoreUnreachable) as caught:
        run_backup(seeded.dsn, store, [QualifiedName.parse(t) for t in TABLES])

    # Then it fails as unreachable (exit 3), and no pg_dump session reached the source
    assert caught.value.exit_code == 3
    assert "NoSuchBucket" in str(caught.value)
    assert seeded.scalar("select count(*) from pg_stat_activity where application_name like 'pg_dump%%'") == 0


def test_an_s3_backup_of_a_missing_table_or_dead_database_writes_nothing(aws: None, seeded: Database) -> None:
    # Given an empty bucket
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="migsafe-empty")
    store = S3Store("migsafe-empty", "team", client=client)

    # When a missing table, and a database that does not answer, are backed up to it
    with pytest.raises(UnknownTable) as unknown:
        run_backup(seeded.dsn, store, [QualifiedName.parse("public.users"), QualifiedName.parse("public.nope")])
    with pytest.raises(DatabaseUnreachable) as unreachable:
        run_backup(Dsn.parse("postgresql://postgres@127.0.0.1:1/x"), store, [QualifiedName.parse("public.users")])

    # Then each has its exit code and the bucket stays empty
    assert (unknown.value.exit_code, unreachable.value.exit_code) == (2, 3)
    assert "public.nope" in str(unknown.value)
    assert client.list_objects_v2(Bucket="migsafe-empty").get("KeyCount") == 0
    assert client.list_multipart_uploads(Bucket="migsafe-empty").get("Uploads") is None


def test_the_store_is_checked_before_the_database(tmp_path: Path) -> None:
    # Given a store under a regular file, and a source that does not answer either
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    dead = Dsn.parse("postgresql://postgres@127.0.0.1:1/nowhere")

    # When it is backed up
    with pytest.raises(StoreUnreachable) as caught:
        run_backup(dead, open_store(file_url(blocker / "backups")), [QualifiedName.parse("public.users")])

    # Then the store fault is reported: nothing was asked of the database
    assert "not-a-dir" in str(caught.value)
    assert blocker.read_text() == "x"


# --- every verb, bad input: one line, the documented code, never a traceback ----------------------
def _bad_inputs(tmp_path: Path, db: Database) -> list[tuple[list[str], int]]:
    good_store = tmp_path / "store"
    good_store.mkdir(exist_ok=True)
    store = file_url(good_store)
    missing_plan = str(tmp_path / "no-such-plan.toml")
    bad_port = write_plan(tmp_path / "badport.toml", db, store)
    bad_port.write_text(bad_port.read_text().replace(db.url, "postgresql://u@127.0.0.1:notaport/x"))
    mistyped = file_url(tmp_path / "mistyped" / "deeper" / "store")
    deep_store = write_plan(tmp_path / "deep.toml", db, mistyped)
    reported = tmp_path / "reported"
    reported.mkdir(exist_ok=True)
    (reported / "result.json").write_text("{}")
    bid = "20250101T000000Z-abcdef"
    return [
        (["no-such-verb"], 2),
        (["backup", "--plan", missing_plan], 2),
        (["backup", "--plan", str(bad_port)], 2),
        (["backup", "--plan", str(deep_store)], 2),
        (["backups", "list", "--store", "ftp://host/x"], 2),
        (["backups", "list", "--store", mistyped], 2),
        (["verify", "--store", store, "--backup-id", "not-an-id"], 2),
        (["verify", "--store", store, "--backup-id", bid], 2),
        (["restore", "--store", store, "--backup-id", bid, "--target-dsn", "host=x port=notaport"], 2),
        (["restore", "--store", store, "--backup-id", bid, "--target-dsn", "a=b=c"], 2),
        (["prune", "--store", store, "--older-than", "soon"], 2),
        (["rehearse", "--plan", missing_plan], 2),
        (["rehearse", "--plan", str(bad_port)], 2),
        (["rehearse", "--plan", str(write_plan(tmp_path / "ok.toml", db, store)), "--report-dir", str(reported)], 2),
        (["bundle", "push", "--plan", missing_plan], 2),
        (["gate", "--state-machine", "arn:aws:states:us-east-1:1:stateMachine:x", "--plan", missing_plan], 2),
    ]


def test_every_verb_answers_bad_input_with_one_line_and_exit_2(
    seeded: Database, migsafe: Cli, tmp_path: Path
) -> None:
    for args, code in _bad_inputs(tmp_path, seeded):
        # When
        res = migsafe(*args)
        # Then
        assert res.code == code, (args, res.output)
        assert "Traceback" not in res.output, (args, res.output)
        errors = [line for line in res.stderr.splitlines() if line.startswith("migsafe: error")]
        assert len(errors) <= 1, (args, res.stderr)
    # and nothing was created by a refused backup
    assert not (tmp_path / "mistyped").exists()
    assert (tmp_path / "reported" / "result.json").read_text() == "{}"


def test_backup_creates_a_store_folder_only_under_an_existing_parent(
    seeded: Database, migsafe: Cli, tmp_path: Path
) -> None:
    # Given: a store folder that does not exist yet, in a folder that does
    plan = write_plan(tmp_path / "plan.toml", seeded, file_url(tmp_path / "new-store"))
    # When
    res = migsafe("backup", "--plan", str(plan))
    # Then
    assert res.code == 0, res.output
    assert (tmp_path / "new-store").is_dir()


def test_two_rehearsals_in_one_second_get_their_own_report_folders() -> None:
    from datetime import UTC, datetime

    from migsafe.cli import default_report_dir

    now = datetime(2026, 12, 2, 1, 0, 0, tzinfo=UTC)
    a, b = default_report_dir(now), default_report_dir(now)
    assert a != b
    assert a.name.startswith("20261202T010000Z-") and b.name.startswith("20261202T010000Z-")


def test_a_restore_as_a_role_without_privileges_is_one_line_not_a_traceback(
    seeded: Database, make_database: Callable[..., Database], migsafe: Cli, tmp_path: Path
) -> None:
    # Given: a backup, and a target whose tables belong to someone else, reached as a powerless role
    store = tmp_path / "store"
    plan = write_plan(tmp_path / "plan.toml", seeded, file_url(store))
    backed = migsafe("backup", "--plan", str(plan))
    assert backed.code == 0, backed.output
    target = make_database(users=10)
    role = f"powerless_{target.name}"
    with target.connect() as conn:
        conn.execute(psycopg.sql.SQL("create role {} login").format(psycopg.sql.Identifier(role)))
    try:
        as_role = Dsn({**target.dsn.params, "user": role})
        # When
        res = migsafe("restore", "--store", file_url(store), "--backup-id", backup_id_from(backed.stdout),
                      "--target-dsn", as_role.conninfo(), "--replace")
        # Then: refused or failed as an environment fault, in one line; never exit 1, never a traceback
        assert res.code in (2, 3), res.output
        assert "Traceback" not in res.output
        assert len([line for line in res.stderr.splitlines() if line.startswith("migsafe: error")]) == 1
        assert table_fingerprints(target, TABLES)  # the target's tables are still there
    finally:
        with target.connect() as conn:
            conn.execute(psycopg.sql.SQL("drop owned by {}").format(psycopg.sql.Identifier(role)))
            conn.execute(psycopg.sql.SQL("drop role {}").format(psycopg.sql.Identifier(role)))
