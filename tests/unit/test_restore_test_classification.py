"""Which restore-test errors are a FAIL (the backup cannot be restored) and which an environment fault."""

from __future__ import annotations

import psycopg
import pytest
from migsafe.exceptions import (
    DatabaseUnreachable,
    EnvironmentFault,
    RestoreFailed,
    RestoreRefused,
    RestoreVerificationFailed,
    StoreUnreachable,
)
from migsafe.rehearse import _restore_test_verdict


def _failed(cause: BaseException) -> RestoreFailed:
    try:
        raise RestoreFailed(f"loading public.t into staging failed: {cause}") from cause
    except RestoreFailed as exc:
        return exc


@pytest.mark.parametrize(
    "error",
    [
        RestoreRefused("restore refused, nothing changed: public.a reference public.b by foreign key"),
        _failed(psycopg.errors.UndefinedObject('type "public.citext" does not exist')),
        _failed(psycopg.errors.UndefinedFunction("function public.uuid_generate_v4() does not exist")),
        _failed(psycopg.errors.ForeignKeyViolation("insert or update violates foreign key constraint")),
    ],
    ids=["refused", "undefined-type", "undefined-function", "fk-violation"],
)
def test_a_backup_that_cannot_be_restored_is_a_fail(error: Exception) -> None:
    # When
    with pytest.raises(RestoreVerificationFailed) as failed, _restore_test_verdict():
        raise error
    # Then: exit 1, naming what the restore said
    assert failed.value.exit_code == 1
    assert str(error) in str(failed.value)
    assert "the backup cannot be restored" in str(failed.value)


@pytest.mark.parametrize(
    "error",
    [
        DatabaseUnreachable("cannot connect to scratch:5432/postgres"),
        StoreUnreachable("s3 unreachable"),
        _failed(psycopg.OperationalError("server closed the connection unexpectedly")),
        _failed(psycopg.errors.AdminShutdown("terminating connection due to administrator command")),
        _failed(psycopg.errors.DiskFull("could not extend file")),
        _failed(psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")),
    ],
    ids=["unreachable", "store", "connection-lost", "shutdown", "disk-full", "lock-timeout"],
)
def test_an_unreachable_or_failing_server_or_store_stays_an_environment_fault(error: Exception) -> None:
    # When / Then
    with pytest.raises(EnvironmentFault) as fault, _restore_test_verdict():
        raise error
    assert fault.value is error and fault.value.exit_code == 3
