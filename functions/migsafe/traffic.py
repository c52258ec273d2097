"""Synthetic traffic on the touched tables while a phase runs: what users would feel during the deploy.

Why open loop: a client that waits for its previous transaction before sending the next one hides a
stall (it simply sends less). Here every client has a schedule (Poisson arrivals at ``rate`` per
second) and a transaction's latency runs from its *scheduled* start, so the transactions queued behind
a lock count as waiting too.

Why every transaction rolls back: the rehearsal compares row counts and content fingerprints before
and after; the clients' writes really happen (they take the same row and table locks an application
would, and wait the same way) but never change the data the verification reads.

The workload is derived from the catalog of each touched table (point reads by primary key, inserts
that copy the constrained columns -- foreign keys, enums, checks -- from an existing row and generate
fresh values only for unique ones, updates of a non-key column to itself); plans add their own hot
queries. A kind of transaction that already fails before the migration starts is dropped with a warning:
errors counted during the phase are the migration's.

Memory stays bounded (histograms per window and per second, never one entry per transaction) and
nothing busy-waits: idle clients sleep on an Event until their next scheduled start.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .dsn import Dsn, mask
from .identifiers import QualifiedName
from .migrate import LOCK_STRENGTH as _STRENGTH
from .plan import Traffic as TrafficPlan
from .result import Phase, TrafficPhase

APP = "migsafe traffic"
SAMPLE_KEYS = 500
_GROWTH = 1.05  # histogram buckets 5% apart: percentiles within 5%


@dataclass
class Op:
    name: str  # e.g. "insert public.users"
    table: str
    query: sql.Composed | sql.SQL
    params: Callable[[random.Random], Any]
    weight: float = 1.0


# -- the workload, from the catalog ---------------------------------------------------------------------


def _columns(conn: psycopg.Connection[Any], oid: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        """
        select a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.atthasdef or a.attidentity <> '' or a.attgenerated <> '', a.attgenerated <> '',
               t.typcategory,
               a.attidentity <> '' or coalesce(pg_get_expr(d.adbin, d.adrelid), '') ~* '(nextval|uuid|random)[(]'
        from pg_attribute a join pg_type t on t.oid = a.atttypid
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where a.attrelid = %s and a.attnum > 0 and not a.attisdropped order by a.attnum
        """,
        (oid,),
    ).fetchall()
    return [
        {
            "name": r[0],
            "type": r[1],
            "notnull": r[2],
            "default": r[3],
            "generated": r[4],
            "category": r[5],
            "fresh_default": r[6],  # a sequence, identity or random default: a new value each insert
        }
        for r in rows
    ]


def _index_columns(conn: psycopg.Connection[Any], oid: int, primary: bool) -> list[list[str]]:
    rows = conn.execute(
        """
        select array(select a.attname from unnest(i.indkey) with ordinality k(attnum, n)
                     join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum order by k.n)
        from pg_index i where i.indrelid = %s and i.indisunique and (i.indisprimary or not %s)
        order by i.indisprimary desc
        """,
        (oid, primary),
    ).fetchall()
    return [list(r[0]) for r in rows]


def _fk_columns(conn: psycopg.Connection[Any], oid: int) -> set[str]:
    rows = conn.execute(
        """
        select a.attname from pg_constraint c
        join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey)
        where c.conrelid = %s and c.contype = 'f'
        """,
        (oid,),
    ).fetchall()
    return {r[0] for r in rows}


def _fresh(column: dict[str, Any]) -> Callable[[random.Random], Any] | None:
    """A generator of fresh values for a unique column, or None when its type is not one we make."""
    typ = column["type"]
    if typ in ("integer", "bigint"):
        top = 2_000_000_000 if typ == "integer" else 9_000_000_000_000_000_000
        return lambda rng: rng.randint(top // 2, top)
    if typ == "uuid":
        return lambda rng: uuid.UUID(int=rng.getrandbits(128), version=4)
    if column["category"] == "S":  # strings: text, varchar(n), citext
        m = re.search(r"\((\d+)\)", typ)
        width = int(m.group(1)) if m else 40
        if width < 12:
            return None
        return lambda rng: f"migsafe-{rng.getrandbits(64):016x}"[:width]
    return None


def derive_workload(
    conn: psycopg.Connection[Any], tables: Sequence[str], plan: TrafficPlan
) -> tuple[list[Op], list[str]]:
    """Point reads, inserts and updates for each table (from its catalog), plus the plan's queries."""
    ops: list[Op] = []
    warnings: list[str] = []
    for name in tables:
        q = QualifiedName.parse(name)
        ident = sql.Identifier(q.schema, q.name)
        row = conn.execute(
            "select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relname = %s",
            (q.schema, q.name),
        ).fetchone()
        if row is None:
            continue
        oid = int(row[0])
        if plan.default_workload:
            ops.extend(_table_ops(conn, name, ident, oid, warnings))
    for custom in plan.queries:
        table = custom.table or (tables[0] if tables else None)
        if table is None:
            continue
        q = QualifiedName.parse(table)
        rows = conn.execute(
            sql.SQL("select * from {} order by random() limit {}").format(
                sql.Identifier(q.schema, q.name), sql.Literal(SAMPLE_KEYS)
            )
        )
        cols = [d.name for d in rows.description or []]
        sample = [dict(zip(cols, r, strict=True)) for r in rows.fetchall()]
        text = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", custom.sql.replace("%", "%%"))
        if not sample and "%(" in text:
            warnings.append(f"traffic query {custom.name}: {table} has no rows to bind its placeholders from")
            continue
        ops.append(
            Op(
                name=f"query {custom.name}",
                table=table,
                query=sql.SQL(text),  # type: ignore[arg-type]  # the plan's own SQL, as the app runs it
                params=_row_picker(sample),
                weight=custom.weight,
            )
        )
    return ops, warnings


def _row_picker(sample: list[dict[str, Any]]) -> Callable[[random.Random], Any]:
    def pick(rng: random.Random) -> Any:
        return rng.choice(sample) if sample else None

    return pick


def _table_ops(
    conn: psycopg.Connection[Any], name: str, ident: sql.Identifier, oid: int, warnings: list[str]
) -> list[Op]:
    pk = next(iter(_index_columns(conn, oid, primary=True)), None)
    if not pk:
        warnings.append(f"traffic: {name} has no primary key; no point reads, inserts or updates on it")
        return []
    columns = _columns(conn, oid)
    unique = {c for idx in _index_columns(conn, oid, primary=False) for c in idx} | set(pk)
    fks = _fk_columns(conn, oid)
    keys = conn.execute(
        sql.SQL("select {} from {} order by random() limit {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in pk), ident, sql.Literal(SAMPLE_KEYS)
        )
    ).fetchall()
    if not keys:
        warnings.append(f"traffic: {name} is empty; no point reads, inserts or updates on it")
        return []
    where = sql.SQL(" and ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in pk)

    def key(rng: random.Random) -> tuple[Any, ...]:
        return tuple(rng.choice(keys))

    ops = [
        Op(f"read {name}", name, sql.SQL("select * from {} where {}").format(ident, where), key, 2.0),
    ]
    plain = [c for c in columns if c["name"] not in unique and c["name"] not in fks and not c["generated"]]
    if plain:
        col = sql.Identifier(plain[0]["name"])
        ops.append(
            Op(
                f"update {name}",
                name,
                sql.SQL("update {} set {} = {} where {}").format(ident, col, col, where),
                key,
            )
        )
    # insert: defaults where there are some; for each unique index one fresh value (a column with a
    # default, else one we can generate, preferring one that is no foreign key); the rest copied from an
    # existing row, so foreign keys, enums and checks hold
    by_name = {c["name"]: c for c in columns}
    fresh: dict[str, Callable[[random.Random], Any]] = {}
    defaulted = {c["name"] for c in columns if c["fresh_default"] or c["generated"]}
    for idx in [pk, *_index_columns(conn, oid, primary=False)]:
        if any(c in defaulted or c in fresh for c in idx):
            continue
        candidates = [c for c in idx if c not in fks]  # a made-up foreign key would point nowhere
        for cname in candidates:
            maker = _fresh(by_name[cname]) if cname in by_name else None
            if maker is not None:
                fresh[cname] = maker
                break
        else:
            warnings.append(
                f"traffic: no inserts into {name}: cannot make a fresh key for ({', '.join(idx)})"
            )
            return ops
    names: list[sql.Composable] = []
    values: list[sql.Composable] = []
    makers: list[Callable[[random.Random], Any]] = []
    for c in columns:
        if c["name"] in defaulted:
            continue
        names.append(sql.Identifier(c["name"]))
        if c["name"] in fresh:
            values.append(sql.SQL("%s"))
            makers.append(fresh[c["name"]])
        else:
            values.append(sql.Identifier(c["name"]))
    if names:

        def insert_params(rng: random.Random) -> tuple[Any, ...]:
            return (*[m(rng) for m in makers], *key(rng))

        ops.append(
            Op(
                f"insert {name}",
                name,
                sql.SQL("insert into {} ({}) select {} from {} where {}").format(
                    ident, sql.SQL(", ").join(names), sql.SQL(", ").join(values), ident, where
                ),
                insert_params,
            )
        )
    return ops


# -- measuring -------------------------------------------------------------------------------------------


def _bucket(ms: float) -> int:
    return 0 if ms <= 0.1 else math.ceil(math.log(ms / 0.1, _GROWTH))


def _value(bucket: int) -> float:
    return 0.1 * _GROWTH**bucket


@dataclass
class _Hist:
    counts: dict[int, int] = field(default_factory=dict)
    n: int = 0
    max_ms: float = 0.0
    over_100ms: int = 0
    over_1s: int = 0
    over_5s: int = 0
    errors: int = 0

    def add(self, ms: float, error: bool) -> None:
        b = _bucket(ms)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1
        self.max_ms = max(self.max_ms, ms)
        self.over_100ms += ms > 100
        self.over_1s += ms > 1000
        self.over_5s += ms > 5000
        self.errors += error

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank = math.ceil(q * self.n)
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return round(min(_value(b), self.max_ms), 2)
        return round(self.max_ms, 2)


@dataclass
class _Wait:
    seconds: float
    table: str | None
    query: str | None
    mode: str | None
    blocker_query: str | None
    started: float  # seconds since the rehearsal started


MAX_LANE_SECONDS = 3600


class TrafficRun:
    """Clients and a lock-wait sampler for one phase: ``start()``, ``phase_started()``, ``stop()``."""

    def __init__(
        self,
        dsn: Dsn,
        ops: list[Op],
        plan: TrafficPlan,
        t0: float,
        phase: Phase,
        seed: int | None = None,
        dropped: set[str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.ops = ops
        self.plan = plan
        self.t0 = t0
        self.phase = phase
        self.rng = random.Random(seed)  # noqa: S311 - a workload, not cryptography
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.phase_start: float | None = None  # seconds since t0
        self.phase_end: float | None = None
        self.baseline = _Hist()
        self.during = _Hist()
        self.per_second: dict[int, _Hist] = {}
        self.errors_by_op: dict[str, int] = {}
        self.baseline_errors_by_op: dict[str, str] = {}
        self.error_samples: list[str] = []
        self.disabled: set[str] = dropped if dropped is not None else set()  # shared across phases
        self.pid_table: dict[int, str] = {}
        self.worst: _Wait | None = None
        self.warnings: list[str] = []

    # lifecycle
    def start(self) -> None:
        for i in range(self.plan.clients):
            seed = self.rng.getrandbits(32)
            t = threading.Thread(
                target=self._client, args=(i, seed), name=f"migsafe-traffic-{i}", daemon=True
            )
            t.start()
            self._threads.append(t)
        sampler = threading.Thread(target=self._sampler, name="migsafe-traffic-waits", daemon=True)
        sampler.start()
        self._threads.append(sampler)

    def phase_started(self) -> None:
        """The migration starts now: what failed during the baseline is the workload's, not the migration's."""
        with self._lock:
            for op, message in self.baseline_errors_by_op.items():
                if op in self.disabled:
                    continue
                self.disabled.add(op)
                self.warnings.append(f"traffic: {op} dropped, it failed before the migration: {message}")
            self.phase_start = time.monotonic() - self.t0

    def phase_ended(self) -> None:
        self.phase_end = time.monotonic() - self.t0

    def stop(self) -> TrafficPhase:
        if self.phase_end is None:
            self.phase_ended()
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return self.summary()

    # the clients
    def _connect(self, i: int) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.dsn.conninfo(), autocommit=True, application_name=f"{APP} {i}", prepare_threshold=None
        )
        conn.execute("set statement_timeout = '15min'")
        return conn

    def _client(self, i: int, seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311
        weights = [op.weight for op in self.ops]
        conn: psycopg.Connection[Any] | None = None
        next_t = time.monotonic() + rng.random() / self.plan.rate
        try:
            while not self._stop.is_set():
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                    continue
                scheduled = next_t
                next_t += rng.expovariate(self.plan.rate)
                op = rng.choices(self.ops, weights)[0]
                if op.name in self.disabled:
                    continue
                error: str | None = None
                try:
                    if conn is None or conn.closed:
                        conn = self._connect(i)
                    self.pid_table[conn.info.backend_pid] = op.table
                    with conn.transaction(force_rollback=True):
                        conn.execute(op.query, op.params(rng))
                except psycopg.Error as exc:
                    error = mask(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                    if conn is not None and conn.broken:
                        conn = None
                self._record(scheduled - self.t0, (time.monotonic() - scheduled) * 1000, op.name, error)
        finally:
            if conn is not None:
                conn.close()

    def _record(self, at: float, ms: float, op: str, error: str | None) -> None:
        with self._lock:
            start, end = self.phase_start, self.phase_end
            if start is None:
                hist = self.baseline
                if error:
                    self.baseline_errors_by_op.setdefault(op, error)
            elif at >= start and (end is None or at <= end):
                hist = self.during
                if error:
                    self.errors_by_op[op] = self.errors_by_op.get(op, 0) + 1
                    if len(self.error_samples) < 5:
                        self.error_samples.append(f"{op}: {error}")
            else:
                hist = None
            if hist is not None:
                hist.add(ms, error is not None)
            second = int(at)
            if second >= 0 and (second in self.per_second or len(self.per_second) < MAX_LANE_SECONDS):
                self.per_second.setdefault(second, _Hist()).add(ms, error is not None)

    # who waits on whom
    def _sampler(self) -> None:
        query = """
            select w.pid, extract(epoch from clock_timestamp() - l.waitstart),
                   extract(epoch from l.waitstart), n.nspname || '.' || c.relname, w.query,
                   b.query,
                   array(select g.mode from pg_locks g
                         where g.pid = b.pid and g.locktype = l.locktype
                           and g.relation is not distinct from l.relation)
            from pg_locks l
            join pg_stat_activity w on w.pid = l.pid
            left join pg_class c on c.oid = l.relation
            left join pg_namespace n on n.oid = c.relnamespace
            cross join lateral unnest(pg_blocking_pids(l.pid)) as bp(pid)
            join pg_stat_activity b on b.pid = bp.pid
            where not l.granted and l.waitstart is not null
              and w.application_name like 'migsafe traffic%%'
              and b.application_name not like 'migsafe traffic%%'
        """
        wall0 = time.time() - (time.monotonic() - self.t0)
        try:
            with psycopg.connect(
                self.dsn.conninfo(), autocommit=True, application_name="migsafe traffic sampler"
            ) as conn:
                conn.execute("set statement_timeout = '2s'")
                while not self._stop.is_set():
                    for pid, seconds, since, table, wq, bq, modes in conn.execute(query).fetchall():
                        seconds = float(seconds)
                        if self.worst is None or seconds > self.worst.seconds:
                            mode = max(
                                modes or [None], key=lambda m: _STRENGTH.index(m) if m in _STRENGTH else -1
                            )
                            self.worst = _Wait(
                                seconds=round(seconds, 3),
                                table=table or self.pid_table.get(pid),
                                query=wq,
                                mode=mode,
                                blocker_query=bq,
                                started=round(float(since) - wall0, 3),
                            )
                    self._stop.wait(0.1)
        except psycopg.Error as exc:
            self.warnings.append(f"traffic: the lock-wait sampler stopped: {mask(str(exc).strip())}")

    def summary(self) -> TrafficPhase:
        with self._lock:
            w = self.worst
            lane = [(float(s), h.quantile(0.99) or 0.0) for s, h in sorted(self.per_second.items())]
            return TrafficPhase(
                phase=self.phase,
                clients=self.plan.clients,
                rate=self.plan.rate,
                transactions=self.during.n,
                baseline_p50_ms=self.baseline.quantile(0.5),
                baseline_p99_ms=self.baseline.quantile(0.99),
                p50_ms=self.during.quantile(0.5),
                p99_ms=self.during.quantile(0.99),
                max_ms=round(self.during.max_ms, 2) if self.during.n else None,
                waits_over_100ms=self.during.over_100ms,
                waits_over_1s=self.during.over_1s,
                waits_over_5s=self.during.over_5s,
                errors=self.during.errors,
                error_samples=list(self.error_samples),
                blocked_max_s=w.seconds if w else 0.0,
                blocked_table=w.table if w else None,
                blocked_query=_one_line(w.query) if w else None,
                blocking_mode=w.mode if w else None,
                blocking_statement=_one_line(w.blocker_query) if w else None,
                p99_per_second=lane,
            )


def _one_line(text: str | None, limit: int = 300) -> str | None:
    if text is None:
        return None
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"
