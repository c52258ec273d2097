"""Safety checks that had no test failing without them: the lock threshold, the RDS endpoint lookup."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from migsafe.plan import Thresholds
from migsafe.result import Result, Revisions, ScratchInfo, StepResult, TableResult
from migsafe.verdict import decide
from migsafe.worker import WorkerEnv
from moto import mock_aws


def _result(lock_seconds: float) -> Result:
    now = datetime.now(UTC)
    table = TableResult(name="public.orders", rows_before=10, rows_after_upgrade=10, rows_after_downgrade=10,
                        fingerprint_before="a", fingerprint_after_upgrade="a", fingerprint_after_downgrade="a",
                        lock_seconds=lock_seconds, max_lock_mode="AccessExclusiveLock")
    steps = [StepResult(name=n, started=now, seconds=0.1, ok=True) for n in ("backup", "upgrade", "downgrade")]
    return Result(plan="p", verdict="FAIL", started=now, finished=now, seconds=1.0, source="db:5432/app",
                  revisions=Revisions(upgrade_to="2", downgrade_to="1"), steps=steps, tables=[table],
                  scratch=ScratchInfo(kind="local", destroyed=True))


def test_an_exclusive_lock_held_over_the_threshold_fails_the_verdict() -> None:
    # Given: the same rehearsal, with the table locked 0.5 s over and 0.5 s under the threshold
    over, under = _result(5.5), _result(4.5)
    # When
    decide(over, Thresholds(lock_seconds=5))
    decide(under, Thresholds(lock_seconds=5))
    # Then: only the one over it fails, naming the table, the figure and the threshold
    assert over.verdict == "FAIL"
    assert any("public.orders" in r and "5.5" in r and "lock_seconds" in r for r in over.reasons), over.reasons
    assert under.verdict == "PASS", under.reasons


@pytest.fixture
def rds(monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        client = boto3.client("rds", region_name="us-east-1")
        client.create_db_instance(DBInstanceIdentifier="prod-db", DBInstanceClass="db.t3.micro", Engine="postgres",
                                  MasterUsername="admin", MasterUserPassword="secret123", AllocatedStorage=20)
        yield client


def test_the_default_deploy_path_finds_the_source_through_rds_with_ssl_required(rds: Any) -> None:
    # Given: the worker's environment as the stack deploys it: an instance id, no host
    env = WorkerEnv.from_environ({"MIGSAFE_STORE_URL": "s3://b/p", "MIGSAFE_RESULTS_URL": "s3://b/r",
                                  "MIGSAFE_SOURCE_USERNAME": "app", "MIGSAFE_SOURCE_PASSWORD": "pw",
                                  "MIGSAFE_SOURCE_INSTANCE_ID": "prod-db", "MIGSAFE_SOURCE_DBNAME": "app"})
    expected = rds.describe_db_instances(DBInstanceIdentifier="prod-db")["DBInstances"][0]["Endpoint"]
    # When
    dsn = env.source_dsn()
    # Then: RDS's endpoint, TLS required, and the password kept out of str()
    assert (dsn.host, dsn.port) == (expected["Address"], int(expected["Port"]))
    assert dsn.params["sslmode"] == "require"
    assert "pw" not in str(dsn).replace("password=***", "")


def test_an_unknown_rds_instance_is_an_environment_fault_naming_it(rds: Any) -> None:
    from migsafe.exceptions import ScratchFailed

    env = WorkerEnv.from_environ({"MIGSAFE_STORE_URL": "s3://b/p", "MIGSAFE_RESULTS_URL": "s3://b/r",
                                  "MIGSAFE_SOURCE_USERNAME": "app", "MIGSAFE_SOURCE_PASSWORD": "pw",
                                  "MIGSAFE_SOURCE_INSTANCE_ID": "no-such-db"})
    with pytest.raises(ScratchFailed, match="no-such-db"):
        env.source_dsn()
