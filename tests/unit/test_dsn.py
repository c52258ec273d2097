from __future__ import annotations

from migsafe.dsn import Dsn, mask


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
