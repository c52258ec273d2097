from __future__ import annotations

from pathlib import Path

import pytest
from migsafe.dsn import Dsn, mask
from migsafe.exceptions import InputError


def test_mask_hides_url_and_keyword_passwords() -> None:
    assert mask("postgresql://app:s3cret@db:5432/app") == "postgresql://app:***@db:5432/app"
    assert "s3cret" not in mask("host=db password=s3cret user=app")
    assert "s3cret" not in mask("password='s3 cret' host=db") and "cret" not in mask(
        "password='s3 cret' host=db"
    )


def test_dsn_str_and_tool_conninfo_never_carry_the_password() -> None:
    # Given
    dsn = Dsn.parse("postgresql://app:s3cret@db.internal:6543/prod")
    # Then
    assert "s3cret" not in str(dsn)
    assert "s3cret" not in dsn.conninfo(with_password=False)
    assert dsn.tool_env() == {"PGPASSWORD": "s3cret"}
    assert (dsn.host, dsn.port, dsn.dbname, dsn.user) == ("db.internal", 6543, "prod", "app")
    assert Dsn.parse(dsn.url()).params == dsn.params


def test_every_secret_key_stays_out_of_str_argv_and_messages() -> None:
    # Given: a password and the passphrase of an SSL client key
    dsn = Dsn.parse("host=db user=app password=s3cret sslpassword=k3yphrase sslmode=require dbname=prod")
    # Then: neither is in str(), nor in the conninfo a tool's argv carries
    for shown in (str(dsn), repr(dsn), dsn.conninfo(with_password=False), mask(dsn.conninfo())):
        assert "s3cret" not in shown and "k3yphrase" not in shown, shown
    # and the tool gets them through its environment: PGPASSWORD and a private service file
    env = dsn.tool_env()
    assert env["PGPASSWORD"] == "s3cret"
    service = Path(env["PGSERVICEFILE"])
    assert service.stat().st_mode & 0o777 == 0o600
    assert "sslpassword=k3yphrase" in service.read_text()
    assert "service=migsafe" in dsn.conninfo(with_password=False)


def test_a_port_that_is_not_a_number_is_bad_input() -> None:
    with pytest.raises(InputError, match="notaport"):
        Dsn.parse("host=db port=notaport")


@pytest.mark.parametrize("url", ["postgresql+psycopg://app:pw@db:6432/shop", "postgres+asyncpg://app:pw@db:6432/shop"])
def test_a_sqlalchemy_url_with_its_driver_is_the_same_database(url: str) -> None:
    # When a project's DATABASE_URL (SQLAlchemy form) is given
    dsn = Dsn.parse(url)
    # Then it is the plain libpq connection, the password still masked
    assert {k: dsn.params[k] for k in ("host", "port", "dbname", "user")} == {
        "host": "db", "port": "6432", "dbname": "shop", "user": "app"}
    assert "pw" not in str(dsn)


def test_tool_conninfo_turns_keepalives_on_without_a_secret_and_the_dsn_wins() -> None:
    # Given: a DSN with a password, and one that sets its own keepalive idle time
    plain = Dsn.parse("postgresql://app:s3cret@db/prod")
    tuned = Dsn.parse("host=db dbname=prod keepalives_idle=5 connect_timeout=3")
    # When
    import psycopg.conninfo

    got = psycopg.conninfo.conninfo_to_dict(plain.tool_conninfo(application_name="x"))
    own = psycopg.conninfo.conninfo_to_dict(tuned.tool_conninfo())
    # Then: a partitioned connection errors out (keepalives), a connect never waits forever, no secret
    assert {k: got[k] for k in ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                                "connect_timeout", "application_name")} == {
        "keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3",
        "connect_timeout": "10", "application_name": "x"}
    assert "password" not in got and "s3cret" not in plain.tool_conninfo()
    assert (own["keepalives_idle"], own["connect_timeout"]) == ("5", "3")
