"""The verdict: PASS or FAIL against the plan's thresholds, every reason in words with its figure."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .plan import Expect, Thresholds
from .result import CheckResult, Result, StepResult, TableResult, TrafficPhase

_EXPECT = re.compile(r"^\s*(==|=|!=|>=|<=|>|<)\s*(.+?)\s*$")


def expectation_met(value: object, expect: str) -> bool:
    """``value`` (a scalar from a smoke query) against ``expect`` such as ``>= 1`` or ``= 'ok'``."""
    m = _EXPECT.match(expect)
    if not m:
        return False
    op, raw = m.group(1), m.group(2)
    want: object
    if raw.lower() in ("true", "false"):
        want = raw.lower() == "true"
    elif raw.lower() == "null":
        want = None
    elif raw.startswith("'"):
        want = raw.strip("'")
    else:
        want = float(raw)
    got: object = value
    if isinstance(want, float) and value is not None and not isinstance(value, bool):
        try:
            got = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    elif isinstance(want, str) and value is not None:
        got = str(value)
    if op in ("=", "=="):
        return bool(got == want)
    if op == "!=":
        return bool(got != want)
    if got is None or want is None or isinstance(want, bool):
        return False
    try:
        return bool({">=": got >= want, "<=": got <= want, ">": got > want, "<": got < want}[op])  # type: ignore[operator]
    except TypeError:
        return False


def decide(result: Result, thresholds: Thresholds, expect: Sequence[Expect] = ()) -> Result:
    """Fill ``verdict``, ``reasons``, ``warnings``, ``accepted``, ``rollback`` and ``next_steps`` from the figures.

    ``expect``: the plan's ``[[expect]]`` sections; a row-count difference they declare, when it
    happened exactly so, is an *accepted* difference (a note in every report) instead of a reason.
    """
    reasons: list[str] = []
    warnings: list[str] = []
    accepted: list[str] = []
    for s in result.steps:
        if not s.ok:
            reasons.append(f"step {s.name} failed: {s.error or 'error'}")
    _timing(result.step("upgrade"), "upgrade", thresholds.upgrade_seconds, "upgrade_seconds", reasons)
    _timing(result.step("downgrade"), "downgrade", thresholds.downgrade_seconds, "downgrade_seconds", reasons)
    lossy: list[str] = []
    moved_as_expected = _row_changes(result, expect, reasons, accepted)
    for t in result.tables:
        for fk in t.fk_invalid_after_upgrade:
            reasons.append(f"{t.name}: foreign key {fk} is not valid after the upgrade")
        for fk in t.fk_invalid_after_downgrade:
            reasons.append(f"{t.name}: foreign key {fk} is not valid after the downgrade")
        if t.lock_seconds > thresholds.lock_seconds:
            reasons.append(
                f"{t.name}: ACCESS EXCLUSIVE lock held {t.lock_seconds:.1f} s, over the {thresholds.lock_seconds:g} s "
                "threshold (thresholds.lock_seconds)"
            )
        if t.downgrade_restores_data is False:
            lossy.append(t.name)
    for name in lossy:
        text = (
            f"{name}: the downgrade does not restore the data (content fingerprint differs from before the "
            "upgrade, with the same row count)"
            if _same_rows(result, name)
            else f"{name}: the downgrade does not restore the data (content fingerprint differs from before the upgrade)"
        )
        if name in moved_as_expected:
            accepted.append(f"{text}: the rows the plan expects to move do not come back "
                            f"([[expect]] {name}: {moved_as_expected[name]})")
            continue
        (reasons if thresholds.lossy_downgrade == "fail" else warnings).append(text)
    for c in result.checks:
        if not c.ok:
            reasons.append(_check_reason(c))
    _lint(result, thresholds, reasons)
    _traffic(result, thresholds, reasons)
    result.reasons = reasons
    result.warnings = warnings + result.warnings
    result.accepted = accepted
    result.verdict = "FAIL" if reasons else "PASS"
    downgrade_ok = result.step("verify_downgrade") is not None and all(
        t.downgrade_restores_data for t in result.tables
    )
    result.rollback = (
        "downgrade" if downgrade_ok and not lossy else ("restore" if result.backup else "unknown")
    )
    result.next_steps = _next_steps(result, lossy)
    return result


def _lint(result: Result, thresholds: Thresholds, reasons: list[str]) -> None:
    seen: set[tuple[str, str | None, str]] = set()
    for f in result.lint:
        key = (f.rule, f.revision, f.phase)
        if (f.fails or f.rule in thresholds.lint_fail or "*" in thresholds.lint_fail) and key not in seen:
            seen.add(key)
            f.fails = True
            held = f" (observed: {', '.join(f.locks)})" if f.locks else ""
            reasons.append(
                f"lint {f.rule} in revision {f.revision or '?'} ({f.phase}): {f.message} -- {f.statement}{held} "
                "(thresholds.lint_fail)"
            )


_MODE_WORDS = {
    "AccessExclusiveLock": "ACCESS EXCLUSIVE",
    "ExclusiveLock": "EXCLUSIVE",
    "ShareRowExclusiveLock": "SHARE ROW EXCLUSIVE",
    "ShareLock": "SHARE",
    "ShareUpdateExclusiveLock": "SHARE UPDATE EXCLUSIVE",
    "RowExclusiveLock": "ROW EXCLUSIVE",
}


def traffic_sentence(result: Result, tp: TrafficPhase) -> str:
    """``public.orders: writes blocked 8.2 s by ALTER TABLE ... (ACCESS EXCLUSIVE, table rewrite) in revision 0002``."""
    table = tp.blocked_table or "a touched table"
    what = "reads" if (tp.blocked_query or "").lstrip().lower().startswith("select") else "writes"
    mode = _MODE_WORDS.get(tp.blocking_mode or "", tp.blocking_mode or "a lock")
    rewritten = any(
        tp.blocked_table in r.rewrites
        for r in result.revision_runs
        if r.phase == tp.phase and (tp.blocking_revision is None or r.id == tp.blocking_revision)
    )
    by = _short(tp.blocking_statement) if tp.blocking_statement else "the migration"
    rev = f" in revision {tp.blocking_revision}" if tp.blocking_revision else ""
    return (
        f"{table}: {what} blocked {tp.blocked_max_s:.1f} s by {by} "
        f"({mode}{', table rewrite' if rewritten else ''}){rev} during the {tp.phase}"
    )


def _short(sql: str, limit: int = 90) -> str:
    one = " ".join(sql.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _traffic(result: Result, thresholds: Thresholds, reasons: list[str]) -> None:
    if result.traffic is None:
        return
    for tp in result.traffic.phases():
        if tp.blocked_max_s > thresholds.max_blocked_seconds:
            reasons.append(
                traffic_sentence(result, tp)
                + f", over the {thresholds.max_blocked_seconds:g} s threshold (thresholds.max_blocked_seconds)"
            )
        if tp.errors > thresholds.max_traffic_errors:
            sample = f": {tp.error_samples[0]}" if tp.error_samples else ""
            reasons.append(
                f"{tp.errors} traffic transaction(s) failed during the {tp.phase}, over the "
                f"{thresholds.max_traffic_errors} allowed (thresholds.max_traffic_errors){sample}"
            )


def _timing(step: StepResult | None, label: str, limit: float, key: str, reasons: list[str]) -> None:
    if step is not None and step.ok and step.seconds > limit:
        reasons.append(
            f"{label} took {step.seconds:.1f} s, over the {limit:g} s threshold (thresholds.{key})"
        )


def _row_changes(
    result: Result, expect: Sequence[Expect], reasons: list[str], accepted: list[str]
) -> dict[str, str]:
    """Row counts against before the upgrade, per phase: a reason, or a note where the plan expects it.

    Returns the tables whose (non-zero) downgrade difference the plan expects, with its reason.
    """
    by_table = {e.table: e for e in expect}
    moved: dict[str, str] = {}
    for phase in ("upgrade", "downgrade"):
        deltas = {
            t.name: after - t.rows_before
            for t in result.tables
            if t.rows_before is not None
            and (after := t.rows_after_upgrade if phase == "upgrade" else t.rows_after_downgrade) is not None
        }
        for t in result.tables:
            d = deltas.get(t.name)
            if d is None:
                continue
            e = by_table.get(t.name)
            want = e.delta(phase) if e else None
            if d == 0 and not want:
                continue
            text = _row_sentence(t, phase, d, deltas)
            if e is None or want is None:
                reasons.append(text)
            elif want == d:
                accepted.append(f"{text} -- as the plan expects ([[expect]] {t.name}: {e.reason})")
                if phase == "downgrade" and d:
                    moved[t.name] = e.reason
            else:
                reasons.append(f"{text}; the plan expects {want:+d} rows after the {phase}, not {d:+d} "
                               f"([[expect]] {t.name}: {e.reason})")
    return moved


def _row_sentence(t: TableResult, phase: str, d: int, deltas: dict[str, int]) -> str:
    """``3 rows left public.a during the upgrade and did not come back on the downgrade (...)``."""
    before, up, down = t.rows_before, t.rows_after_upgrade, t.rows_after_downgrade
    n = abs(d)
    rows = f"{n} row{'s' if n != 1 else ''}"
    if phase == "upgrade":
        figures = f"({before} -> {up})"
        if d == 0:
            return f"{t.name}: row count unchanged by the upgrade {figures}"
        text = (f"{rows} left {t.name} during the upgrade {figures}" if d < 0
                else f"{t.name} gained {rows} during the upgrade {figures}")
    else:
        figures = f"({before} before, {up} after the upgrade, {down} after the downgrade)"
        by_upgrade = None if up is None or before is None else up - before
        if d == 0:
            return f"{t.name}: row count back to where it was after the downgrade {figures}"
        if d < 0:
            text = (f"{rows} left {t.name} during the upgrade and did not come back on the downgrade"
                    if by_upgrade == d else
                    f"{rows} left {t.name} during the downgrade" if by_upgrade == 0 else
                    f"{t.name} has {rows} fewer after the upgrade and downgrade than before")
        else:
            text = (f"{t.name} gained {rows} during the upgrade that the downgrade did not remove"
                    if by_upgrade == d else
                    f"{t.name} gained {rows} during the downgrade" if by_upgrade == 0 else
                    f"{t.name} has {rows} more after the upgrade and downgrade than before")
        text += " " + figures
    partners = sorted(name for name, other in deltas.items() if name != t.name and other == -d)
    if partners:
        span = "upgrade" if phase == "upgrade" else "upgrade and downgrade"
        if d < 0:
            text += f"; {' and '.join(partners)} gained {n} over the same {span}: they appear to have moved there"
        else:
            text += f"; {' and '.join(partners)} lost {n} over the same {span}: they appear to have come from there"
    return text


def _same_rows(result: Result, name: str) -> bool:
    t = next(t for t in result.tables if t.name == name)
    return t.rows_before == t.rows_after_downgrade


def _check_reason(c: CheckResult) -> str:
    where = c.when.replace("_", " ")
    if c.error:
        return f"check '{c.name}' ({where}) failed to run: {c.error}"
    return f"check '{c.name}' ({where}) returned {c.value}, expected {c.expect}"


def _next_steps(result: Result, lossy: list[str]) -> list[str]:
    steps: list[str] = []
    backup = result.backup
    if result.verdict == "PASS":
        steps.append("Safe to run the migration on production; keep the backup until the change is settled.")
    else:
        failed = result.failed_step
        steps.append(
            f"Do not run this migration on production yet: fix the cause{f' in step {failed}' if failed else ''}, "
            "then rehearse again."
        )
    if lossy and backup:
        steps.append(
            f"Rollback needs the backup for {', '.join(lossy)}: `{result.rollback_downgrade()}`, then "
            f"`migsafe restore --store {backup.store_url or backup.url.rsplit('/', 3)[0]} --backup-id {backup.id} "
            f"--tables {','.join(lossy)} --replace`."
        )
    elif result.rollback == "downgrade":
        steps.append(
            f"Rollback: `{result.rollback_downgrade()}` restores the data exactly."
        )
    steps.extend(_advice(result))
    return steps


def _advice(result: Result) -> list[str]:
    """Remedies tied to what squawk found and what the same statement was observed to hold."""
    from .lint import advice_for

    out: list[str] = []
    worst = max(result.traffic.phases(), key=lambda p: p.blocked_max_s) if result.traffic else None
    if worst is not None and worst.blocked_max_s > 0.1:
        rules = [
            f.rule
            for f in result.lint
            if f.phase == worst.phase
            and worst.blocking_statement
            and _short(f.statement, 60) == _short(worst.blocking_statement, 60)
        ]
        rule = next((r for r in rules if advice_for(r, None)), None)
        text = advice_for(rule, worst.blocking_mode)
        if text:
            because = f"squawk {rule}, " if rule else ""
            out.append(
                f"{worst.blocked_table}: {because}held {_MODE_WORDS.get(worst.blocking_mode or '', worst.blocking_mode)} "
                f"while clients waited {worst.blocked_max_s:.1f} s: {text}."
            )
    done = {o for o in out}
    for f in result.lint:
        observed = [
            lk
            for lk in f.locks
            if lk.split(" on ")[0]
            in ("AccessExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock")
        ]
        text = advice_for(f.rule, None)
        if text and observed and f.rule != "require-lock-timeout":
            line = f"revision {f.revision} ({f.phase}): squawk {f.rule} and the statement held {observed[0]}: {text}."
            if line not in done:
                done.add(line)
                out.append(line)
    return out[:5]
