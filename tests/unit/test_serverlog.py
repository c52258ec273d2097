"""Reading the scratch's statement log (``[migration] command`` mode): what is kept, in what order."""

from __future__ import annotations

from pathlib import Path

from migsafe.migrate import MigrationRun, read_server_log
from migsafe.serverlog import read

LOG = """\
1796180000.100 [41] {migsafe lock observer} LOG:  duration: 0.200 ms  statement: select 1 from pg_locks
1796180000.200 [42] {} LOG:  duration: 0.050 ms  statement: BEGIN
1796180000.300 [42] {} LOG:  duration: 0.100 ms  execute __asyncpg_stmt_1__: SELECT alembic_version.version_num FROM alembic_version
1796180000.400 [42] {} LOG:  duration: 12.000 ms  statement: CREATE INDEX ix ON deployments
\tUSING gin (name gin_trgm_ops)
1796180000.500 [42] {} LOG:  migsafe-revision {"op": "UPDATE", "old": "0001", "new": "0002", "xact_seconds": 0.3, \
"locks": [["public.deployments", "ShareLock"], ["public.alembic_version", "RowExclusiveLock"]], \
"nodes": {"public.deployments": 100}}
1796180000.500 [42] {} CONTEXT:  PL/pgSQL function migsafe_observe.revision() line 3 at RAISE
1796180000.501 [42] {} LOG:  duration: 0.300 ms  execute __asyncpg_stmt_2__: UPDATE alembic_version SET version_num=$1 \
WHERE alembic_version.version_num = $2
1796180000.501 [42] {} DETAIL:  parameters: $1 = '0002', $2 = '0001'
1796180000.600 [42] {} LOG:  duration: 5.000 ms  statement: ALTER TABLE deployments ADD COLUMN owner_email citext
1796180000.700 [42] {} LOG:  migsafe-revision {"op": "UPDATE", "old": "0002", "new": "0003", "xact_seconds": 0.5, \
"locks": [["public.deployments", "AccessExclusiveLock"]], "nodes": {"public.deployments": 100}}
1796180000.701 [42] {} LOG:  duration: 0.300 ms  execute __asyncpg_stmt_2__: UPDATE alembic_version SET version_num=$1 \
WHERE alembic_version.version_num = $2
1796180000.701 [42] {} DETAIL:  parameters: $1 = '0003', $2 = '0002'
1796180000.800 [42] {} LOG:  duration: 0.100 ms  statement: COMMIT
"""


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "server.log"
    path.write_text("noise before the phase\n" + LOG)
    return path


def test_the_log_keeps_the_migrations_statements_with_their_parameters(tmp_path: Path) -> None:
    # Given: a log with migsafe's own session, transaction control and a multi-line statement
    path = _write(tmp_path)
    # When
    seen = read(path, len("noise before the phase\n"))
    # Then: migsafe's sessions and BEGIN/COMMIT are left out; bound values are filled in
    sqls = [s.sql for s in seen.statements]
    assert sqls[1] == "CREATE INDEX ix ON deployments\nUSING gin (name gin_trgm_ops)"
    assert not any("pg_locks" in s or s in ("BEGIN", "COMMIT") for s in sqls)
    assert "SET version_num='0002' WHERE alembic_version.version_num = '0001'" in sqls[2]
    assert abs(seen.statements[1].epoch - (1796180000.400 - 0.012)) < 1e-6
    assert [m.revision for m in seen.marks] == ['["0001", "0002"]', '["0002", "0003"]']


def test_statements_go_to_the_revision_whose_version_update_follows_them(tmp_path: Path) -> None:
    # Given
    path = _write(tmp_path)
    run = MigrationRun(action="upgrade", revision="0003", seconds=1.0, ok=True, started_at=0.0)
    # When
    read_server_log(read(path, 0), run, "upgrade", 1796180000.0, {"public.deployments": 99})
    # Then: each revision has its statements (its own version update last), locks and rewrites
    assert [r.id for r in run.revisions] == ["0002", "0003"]
    first, second = run.revisions
    assert any("gin_trgm_ops" in s.sql for s in first.statements)
    assert "'0002'" in first.statements[-1].sql and "'0003'" in second.statements[-1].sql
    assert second.statements[0].sql.startswith("ALTER TABLE deployments ADD COLUMN")
    assert {lk.relation: lk.mode for lk in first.locks} == {"public.deployments": "ShareLock"}
    assert {lk.relation: lk.mode for lk in second.locks} == {"public.deployments": "AccessExclusiveLock"}
    assert first.rewrites == ["public.deployments"] and second.rewrites == []
    assert run.commit_locks == {"public.deployments": "AccessExclusiveLock"}
    assert run.xact_seconds == 0.5
