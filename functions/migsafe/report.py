"""Reports of a rehearsal: ``result.json`` for machines, ``report.md`` and ``report.html`` for people.

Everything rendered here goes through :func:`migsafe.dsn.mask` first (see :func:`masked`), and the
HTML escapes every string, so SQL, error messages and table names can carry ``<``, ``&`` or quotes.
The HTML is one self-contained file (inline CSS, an inline SVG timeline, no script, no external
asset), well-formed enough to parse as XML.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path

from .dsn import mask_tree
from .result import LintFinding, LockHold, Result, RevisionRun, StatementRun, StepResult, TableResult

ACCESS_EXCLUSIVE = "AccessExclusiveLock"


# --- shared helpers ---------------------------------------------------------------------------
def masked(result: Result) -> Result:
    """A copy of ``result`` whose every string has passed through :func:`mask`."""
    return Result.model_validate(mask_tree(result.model_dump(mode="json")))


def is_access_exclusive(mode: str | None) -> bool:
    return (mode or "").replace(" ", "").lower() in {"accessexclusivelock", "accessexclusive"}


def lock_label(mode: str | None) -> str:
    """``AccessExclusiveLock`` → ``ACCESS EXCLUSIVE`` (the name PostgreSQL's docs use)."""
    if not mode:
        return "-"
    name = mode[:-4] if mode.endswith("Lock") else mode
    words: list[str] = []
    for ch in name:
        if ch.isupper() and words:
            words.append(" ")
        words.append(ch)
    return "".join(words).upper()


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 120:
        minutes, rest = divmod(value, 60)
        return f"{value:.1f} s ({int(minutes)} min {rest:.0f} s)"
    return f"{value:.1f} s"


def threshold(result: Result, name: str) -> float | None:
    value = result.thresholds.get(name)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def longest_lock(result: Result) -> tuple[str, float, str] | None:
    """(relation, seconds, phase) of the longest continuous ACCESS EXCLUSIVE hold, if any."""
    holds = [h for h in result.locks if is_access_exclusive(h.mode)]
    if holds:
        best = max(holds, key=lambda h: h.end - h.start)
        return best.relation, best.end - best.start, best.phase
    tables = [t for t in result.tables if t.lock_seconds > 0]
    if tables:
        table = max(tables, key=lambda t: t.lock_seconds)
        phase = "upgrade" if table.upgrade_lock_seconds >= table.downgrade_lock_seconds else "downgrade"
        return table.name, table.lock_seconds, phase
    return None


def lossy_tables(result: Result) -> list[str]:
    """Tables whose data the downgrade does not bring back (fingerprint differs)."""
    return [t.name for t in result.tables if t.downgrade_restores_data is False]


def store_url(backup_url: str, backup_id: str) -> str:
    """The store root of a backup URL ``<store>/<YYYY-MM-DD>/<id>/`` (what ``--store`` wants)."""
    parts = backup_url.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-1] == backup_id and len(parts[-2]) == 10 and parts[-2][4] == "-":
        return "/".join(parts[:-2])
    return backup_url.rstrip("/")


def _shell_quote(text: str) -> str:
    safe = all(c.isalnum() or c in "-_./:,=@+%" for c in text)
    return text if text and safe else "'" + text.replace("'", "'\"'\"'") + "'"


def restore_command(result: Result, tables: Sequence[str] | None = None) -> str | None:
    """The ``migsafe restore`` command that undoes the migration's data changes, if a backup exists."""
    if result.backup is None:
        return None
    names = list(tables) if tables else [t.name for t in result.tables]
    parts = [
        "migsafe restore",
        f"--store {_shell_quote(store_url(result.backup.url, result.backup.id))}",
        f"--backup-id {_shell_quote(result.backup.id)}",
    ]
    if names:
        parts.append(f"--tables {_shell_quote(','.join(names))}")
    parts += ["--replace", '--target-dsn "$DATABASE_URL"']
    return " ".join(parts)


def rollback_advice(result: Result) -> tuple[str, str | None]:
    """(sentence, command) telling which rollback path applies."""
    lossy = lossy_tables(result)
    if result.rollback == "downgrade" and not lossy:
        return (
            f"The downgrade restores the data exactly (fingerprints of all {len(result.tables)} tables match "
            f"after the downgrade): roll back with `alembic downgrade {result.revisions.downgrade_to}`.",
            None,
        )
    if result.rollback == "restore" or lossy:
        names = lossy or [t.name for t in result.tables]
        command = restore_command(result, names)
        what = ", ".join(names) if names else "the migrated tables"
        sentence = (
            f"The downgrade does not restore the data of {what} (fingerprints differ), "
            "so a rollback needs a restore from the backup taken before the migration"
        )
        if command is None:
            return sentence + ": no backup was taken - take one with `migsafe backup` before migrating.", None
        return sentence + ":", command
    command = restore_command(result)
    sentence = (
        "The rehearsal did not get far enough to tell whether the downgrade restores the data; "
        "keep the backup at hand"
    )
    return (sentence + ":" if command else sentence + ".", command)


def headline(result: Result) -> str:
    """The one-line reason: the first reason of a FAIL, or what a PASS proved."""
    if result.reasons:
        more = len(result.reasons) - 1
        return result.reasons[0] + (
            f" (and {more} more reason{'s' if more > 1 else ''} below)" if more else ""
        )
    tables = len(result.tables)
    return (
        f"upgrade and downgrade ran within the thresholds and the data of all {tables} table"
        f"{'s' if tables != 1 else ''} came back exactly"
    )


def worst_traffic(result: Result) -> str | None:
    """What the synthetic clients felt at worst, in one line (None without traffic)."""
    from .verdict import traffic_sentence

    if result.traffic is None or not result.traffic.phases():
        return None
    worst = max(result.traffic.phases(), key=lambda p: (p.blocked_max_s, p.max_ms or 0))
    lat = (
        f"p99 {worst.p99_ms:g} ms, max {worst.max_ms:g} ms (baseline p99 {worst.baseline_p99_ms:g} ms)"
        if worst.p99_ms is not None and worst.max_ms is not None and worst.baseline_p99_ms is not None
        else "no transaction completed"
    )
    errors = f"; {worst.errors} failed" if worst.errors else ""
    if worst.blocked_max_s >= 0.1:
        return f"{traffic_sentence(result, worst)}; {lat}{errors}"
    return f"no client waited on a lock during the {worst.phase}; {lat}{errors}"


def slowest_first(result: Result) -> list[RevisionRun]:
    return sorted(result.revision_runs, key=lambda r: -r.seconds)


def slowest_statement(result: Result) -> tuple[RevisionRun, StatementRun] | None:
    found = [(r, st) for r in result.revision_runs for st in r.statements]
    return max(found, key=lambda p: p[1].seconds) if found else None


def _lint_locks(f: LintFinding) -> str:
    return ", ".join(
        lock_label(x.split(" on ")[0]) + " on " + x.split(" on ", 1)[1] for x in f.locks if " on " in x
    )


def _detail_steps(result: Result) -> list[str]:
    """next_steps without the rollback sentence (the top of the report already has it)."""
    return [x for x in result.next_steps if not x.startswith("Rollback")]


def _yes_no(value: bool | None, *, loud: bool = True) -> str:
    """yes / NO (``loud``: a "no" that needs attention) / no / - (unknown)."""
    if value is None:
        return "-"
    return "yes" if value else ("NO" if loud else "no")


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _method(result: Result) -> str:
    method = result.scratch.method
    return f" ({method})" if method and method != result.scratch.kind else ""


def _offset(result: Result, step: StepResult) -> float:
    return (step.started - result.started).total_seconds()


def _threshold_note(result: Result, step: str, name: str) -> str:
    s = result.step(step)
    limit = threshold(result, name)
    if s is None:
        return "not run"
    text = seconds(s.seconds)
    if limit is not None:
        text += f" (limit {limit:g} s{', OVER' if s.seconds > limit else ''})"
    return text


# --- Markdown ---------------------------------------------------------------------------------
def _md(text: object) -> str:
    """Free text for Markdown: no raw HTML gets through (``<`` is shown, not interpreted)."""
    return str(text).replace("<", "&lt;")


class _Code(str):
    """A table cell shown as a code span (literal: nothing inside is escaped but ``|``)."""


def _cell(text: object) -> str:
    body = _code(text) if isinstance(text, _Code) else _md(text)
    return body.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _code(text: str) -> str:
    text = text.replace("\n", " ")
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(result: Result) -> str:
    r = masked(result)
    icon = "✅" if r.verdict == "PASS" else "❌"
    out: list[str] = [f"# {icon} {r.verdict}: migsafe rehearsal of {_code(r.plan)}", ""]
    out += [f"**{'Why it failed' if r.reasons else 'Why it passed'}:** {_md(headline(r))}", ""]
    impact = worst_traffic(r)
    if impact:
        out += [f"**Worst traffic impact:** {_md(impact)}", ""]
    sentence, command = rollback_advice(r)
    out.append(f"**Rollback:** {_md(sentence)}")
    if command:
        out += ["", "```sh", command, "```"]
    out += ["", "## Summary", ""]
    rev = r.revisions
    out += [
        f"- **Plan:** {_code(r.plan)}",
        f"- **Source:** {_code(r.source)}",
        f"- **Revisions:** {_code(rev.source or '?')} → {_code(rev.upgrade_to)} → {_code(rev.downgrade_to)}"
        + (
            f" (reached {_code(rev.after_upgrade)} then {_code(rev.after_downgrade or '?')})"
            if rev.after_upgrade
            else ""
        ),
        f"- **Started:** {r.started.isoformat()} · **finished:** {r.finished.isoformat()} · "
        f"**total:** {seconds(r.seconds)}",
        f"- **Upgrade:** {_threshold_note(r, 'upgrade', 'upgrade_seconds')} · "
        f"**downgrade:** {_threshold_note(r, 'downgrade', 'downgrade_seconds')}",
    ]
    lock = longest_lock(r)
    if lock:
        limit = threshold(r, "lock_seconds")
        out.append(
            f"- **Longest ACCESS EXCLUSIVE hold:** {seconds(lock[1])} on {_code(lock[0])} ({lock[2]})"
            + (f" (limit {limit:g} s)" if limit is not None else "")
        )
    if r.failed_step or r.error:
        out.append(f"- **Failed step:** {_code(r.failed_step or '?')}: {_md(r.error or '')}".rstrip())
    out.append("")

    if r.reasons:
        out += ["## Why it failed", ""] + [f"- {_md(x)}" for x in r.reasons] + [""]
    if r.warnings:
        out += ["## Warnings", ""] + [f"- {_md(x)}" for x in r.warnings] + [""]

    out += _traffic_md(r) + _revisions_md(r) + _lint_md(r)

    out += ["## Steps", ""]
    out += _table(
        ["step", "started (s)", "seconds", "ok", "error"],
        [
            (s.name, f"+{_offset(r, s):.1f}", f"{s.seconds:.2f}", "yes" if s.ok else "NO", s.error or "")
            for s in r.steps
        ],
    )
    out.append("")

    out += ["## Tables", ""]
    out += _table(
        [
            "table",
            "rows before",
            "rows after upgrade",
            "rows after downgrade",
            "data equal after downgrade",
            "rewritten (up / down)",
            "max lock",
            "longest ACCESS EXCLUSIVE",
        ],
        [
            (
                t.name,
                _num(t.rows_before),
                _num(t.rows_after_upgrade),
                _num(t.rows_after_downgrade),
                _yes_no(t.downgrade_restores_data),
                f"{_yes_no(t.rewritten, loud=False)} / {_yes_no(t.rewritten_by_downgrade, loud=False)}",
                lock_label(t.max_lock_mode),
                seconds(t.lock_seconds) if t.lock_seconds else "-",
            )
            for t in r.tables
        ],
    )
    invalid = [(t.name, "after upgrade", fk) for t in r.tables for fk in t.fk_invalid_after_upgrade]
    invalid += [(t.name, "after downgrade", fk) for t in r.tables for fk in t.fk_invalid_after_downgrade]
    if invalid:
        out += ["", "Foreign keys not valid:", ""] + [
            f"- {_code(n)} {when}: {_code(fk)}" for n, when, fk in invalid
        ]
    out.append("")

    out += ["## Locks and rewrites", ""]
    rewritten = [t.name for t in r.tables if t.rewritten]
    rewritten_down = [t.name for t in r.tables if t.rewritten_by_downgrade]
    out.append(f"- Rewritten by the upgrade: {', '.join(_code(n) for n in rewritten) or 'none'}")
    out.append(f"- Rewritten by the downgrade: {', '.join(_code(n) for n in rewritten_down) or 'none'}")
    out.append("")
    if r.locks:
        out += _table(
            ["relation", "mode", "phase", "from (s)", "to (s)", "held"],
            [
                (
                    h.relation,
                    lock_label(h.mode),
                    h.phase,
                    f"{h.start:.1f}",
                    f"{h.end:.1f}",
                    seconds(h.end - h.start),
                )
                for h in sorted(r.locks, key=lambda h: h.start)
            ],
        )
    else:
        out.append("No lock holds were recorded.")
    out.append("")

    out += ["## Checks", ""]
    if r.checks:
        out += _table(
            ["check", "when", "sql", "expect", "value", "ok", "error"],
            [
                (
                    c.name,
                    c.when,
                    _Code(c.sql),
                    c.expect,
                    "-" if c.value is None else c.value,
                    "yes" if c.ok else "NO",
                    c.error or "",
                )
                for c in r.checks
            ],
        )
    else:
        out.append("No checks in the plan.")
    out.append("")

    out += ["## Backup", ""]
    if r.backup:
        out += [
            f"- **id:** {_code(r.backup.id)}",
            f"- **url:** {_code(r.backup.url)}",
            f"- **bytes:** {r.backup.bytes:,}",
            f"- **restore-tested:** {_yes_no(r.backup.restore_tested)}",
        ]
    else:
        out.append("No backup was taken.")
    out += ["", "## Scratch database", ""]
    out += [
        f"- **kind:** {_md(r.scratch.kind)}{_md(_method(r))}",
        f"- **id:** {_code(r.scratch.id or '-')}",
        f"- **destroyed:** {_scratch_fate(r)}",
        "",
    ]

    out += ["## What to do next", ""]
    out += [f"- {_md(x)}" for x in _detail_steps(r)] or ["- See the rollback at the top."]
    out.append("")
    return "\n".join(out)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:g} ms"


def _traffic_md(r: Result) -> list[str]:
    if r.traffic is None or not r.traffic.phases():
        return []
    out = ["## Traffic during the migration", ""]
    out += _table(
        [
            "phase",
            "clients x rate",
            "baseline p50 / p99",
            "p50 / p99 / max",
            "waits >100 ms / >1 s / >5 s",
            "errors",
            "longest lock wait",
        ],
        [
            (
                p.phase,
                f"{p.clients} x {p.rate:g}/s",
                f"{_ms(p.baseline_p50_ms)} / {_ms(p.baseline_p99_ms)}",
                f"{_ms(p.p50_ms)} / {_ms(p.p99_ms)} / {_ms(p.max_ms)}",
                f"{p.waits_over_100ms} / {p.waits_over_1s} / {p.waits_over_5s}",
                str(p.errors),
                f"{p.blocked_max_s:.1f} s on {p.blocked_table} ({lock_label(p.blocking_mode)}) by "
                f"{_Code(p.blocking_statement or '?')}"
                if p.blocked_max_s >= 0.1
                else "-",
            )
            for p in r.traffic.phases()
        ],
    )
    samples = [x for p in r.traffic.phases() for x in p.error_samples]
    if samples:
        out += ["", "Errors seen:", ""] + [f"- {_md(x)}" for x in samples]
    out.append("")
    return out


def _revisions_md(r: Result) -> list[str]:
    if not r.revision_runs:
        return []
    out = ["## Revisions (slowest first)", ""]
    top = slowest_statement(r)
    if top:
        rev, st = top
        out += [
            f"Slowest statement: {seconds(st.seconds)} in {_code(rev.id)} ({rev.phase}): {_code(_one_line(st.sql))}",
            "",
        ]
    out += _table(
        ["revision", "phase", "seconds", "statements", "locks (held)", "rewrites", "lint"],
        [
            (
                x.id,
                x.phase,
                f"{x.seconds:.3f}",
                str(x.statement_count),
                ", ".join(
                    f"{lock_label(lk.mode)} on {lk.relation} ({lk.held_seconds:.2f} s)" for lk in x.locks
                )
                or "-",
                ", ".join(x.rewrites) or "-",
                ", ".join(sorted({f.rule for f in x.lint})) or "-",
            )
            for x in slowest_first(r)
        ],
    )
    out.append("")
    return out


def _lint_md(r: Result) -> list[str]:
    if not r.lint:
        return []
    out = ["## Lint (squawk)", ""]
    out += _table(
        ["rule", "level", "revision", "phase", "statement", "observed locks", "message"],
        [
            (
                ("FAIL " if f.fails else "") + f.rule,
                f.level,
                f.revision or "-",
                f.phase,
                _Code(f.statement),
                _lint_locks(f) or "-",
                f.message,
            )
            for f in sorted(r.lint, key=lambda f: (not f.fails, not f.locks, f.revision or ""))
        ],
    )
    out.append("")
    return out


def _one_line(text: str, limit: int = 160) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


# --- HTML -------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:#1f2328;max-width:1100px;margin:24px auto;padding:0 16px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.PASS{background:#1a7f37}.FAIL{background:#cf222e}
table{border-collapse:collapse;margin:6px 0;width:100%}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:#f6f8fa;padding:8px 12px;border-radius:6px;white-space:pre-wrap;word-break:break-all}
.bad{color:#cf222e;font-weight:600}.good{color:#1a7f37}
ul.reasons li{color:#cf222e}dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px}
dt{font-weight:600}dd{margin:0}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
svg text{font:11px sans-serif;fill:#1f2328}
"""

_COLOURS = {
    "step_ok": "#2da44e",
    "step_ok_alt": "#116329",
    "step_failed": "#cf222e",
    "lock_ae": "#8b0000",
    "lock_strong": "#e16f24",
    "lock_weak": "#8c959f",
}


def _lock_colour(mode: str) -> str:
    if is_access_exclusive(mode):
        return _COLOURS["lock_ae"]
    if mode in {"ExclusiveLock", "ShareRowExclusiveLock", "ShareLock"}:
        return _COLOURS["lock_strong"]
    return _COLOURS["lock_weak"]


def _nice_step(span: float) -> float:
    raw = span / 8 if span > 0 else 1
    for unit in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if unit >= raw:
            return unit
    return 3600 * (int(raw // 3600) + 1)


def render_timeline(result: Result) -> str:
    """The rehearsal as an inline SVG: a lane of steps, then one lane per relation for lock holds.

    It contains exactly one ``<rect>`` per step and one per lock hold, each with a ``<title>``.
    """
    e = escape
    label_w, plot_w, lane_h, bar_h, top = 230, 820, 22, 14, 8
    relations: list[str] = []
    for hold in sorted(result.locks, key=lambda h: h.start):
        if hold.relation not in relations:
            relations.append(hold.relation)
    step_lane = step_lanes(result)
    n_step_lanes = max(step_lane.values(), default=0) + 1
    traffic = [pt for p in (result.traffic.phases() if result.traffic else []) for pt in p.p99_per_second]
    span = max(
        [result.seconds]
        + [_offset(result, s) + s.seconds for s in result.steps]
        + [h.end for h in result.locks]
        + [t + 1 for t, _ in traffic]
        + [1.0]
    )
    scale = plot_w / span
    traffic_h = 60 if traffic else 0
    lanes = n_step_lanes + len(relations)
    axis_y = top + lanes * lane_h + traffic_h + 4
    height = axis_y + 24
    width = label_w + plot_w + 20

    def x(t: float) -> float:
        return label_w + max(0.0, t) * scale

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline of the rehearsal">'
    ]
    # lane labels and separators
    names = ["steps" if i == 0 else "steps (in parallel)" for i in range(n_step_lanes)] + relations
    for i, name in enumerate(names):
        y = top + i * lane_h
        parts.append(f'<text x="4" y="{y + bar_h - 2}">{e(name)}</text>')
        parts.append(
            f'<line x1="{label_w}" y1="{y + lane_h - 3}" x2="{label_w + plot_w}" y2="{y + lane_h - 3}" '
            'stroke="#eaeef2"/>'
        )
    # steps
    for i, s in enumerate(result.steps):
        start = _offset(result, s)
        colour = _COLOURS["step_failed"] if not s.ok else _COLOURS["step_ok" if i % 2 == 0 else "step_ok_alt"]
        tip = f"{s.name}: {s.seconds:.2f} s from +{start:.1f} s ({'ok' if s.ok else 'failed'})"
        if s.error:
            tip += f": {s.error}"
        bar_w = max(1.0, s.seconds * scale)
        y_step = top + step_lane[i] * lane_h
        parts.append(
            f'<rect class="step" x="{x(start):.1f}" y="{y_step}" width="{bar_w:.1f}" '
            f'height="{bar_h}" fill="{colour}" stroke="#ffffff" stroke-width="0.5">'
            f"<title>{e(tip)}</title></rect>"
        )
        if bar_w > 6.5 * len(s.name) + 6:  # label the bar when it fits
            parts.append(
                f'<text x="{x(start) + 3:.1f}" y="{y_step + bar_h - 3}" style="fill:#ffffff">{e(s.name)}</text>'
            )
    # lock holds
    for hold in result.locks:
        lane = n_step_lanes + relations.index(hold.relation)
        y = top + lane * lane_h
        held = hold.end - hold.start
        tip = (
            f"{hold.relation}: {lock_label(hold.mode)} during the {hold.phase}, {held:.2f} s "
            f"(+{hold.start:.1f} s to +{hold.end:.1f} s)"
        )
        opacity = "1" if hold.phase == "upgrade" else "0.7"
        parts.append(
            f'<rect class="lock" x="{x(hold.start):.1f}" y="{y}" width="{max(1.0, held * scale):.1f}" '
            f'height="{bar_h}" fill="{_lock_colour(hold.mode)}" fill-opacity="{opacity}">'
            f"<title>{e(tip)}</title></rect>"
        )
    # traffic: p99 latency per second, on the same time axis as the lock holds
    if traffic:
        y0 = top + lanes * lane_h
        peak = max(ms for _, ms in traffic) or 1.0
        parts.append(f'<text x="4" y="{y0 + 14}">traffic p99 per second</text>')
        parts.append(f'<text x="4" y="{y0 + 28}">(peak {peak:.0f} ms)</text>')
        for phase in result.traffic.phases() if result.traffic else []:
            points = " ".join(
                f"{x(t + 0.5):.1f},{y0 + traffic_h - 6 - (ms / peak) * (traffic_h - 12):.1f}"
                for t, ms in phase.p99_per_second
            )
            if points:
                parts.append(
                    f'<polyline class="traffic" points="{points}" fill="none" stroke="#0969da" stroke-width="1.5">'
                    f"<title>{e(f'traffic during the {phase.phase}: p99 per second, peak {peak:.0f} ms')}</title>"
                    "</polyline>"
                )
    # axis
    parts.append(
        f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#57606a"/>'
    )
    step = _nice_step(span)
    ticks = int(span // step) + 1
    for i in range(ticks):
        t = i * step
        tx = x(t)
        parts.append(f'<line x1="{tx:.1f}" y1="{axis_y}" x2="{tx:.1f}" y2="{axis_y + 4}" stroke="#57606a"/>')
        parts.append(f'<text x="{tx:.1f}" y="{axis_y + 16}" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="4" y="{axis_y + 16}">seconds since start</text>')
    parts.append("</svg>")
    return "".join(parts)


def step_lanes(result: Result) -> dict[int, int]:
    """Lane of each step (by index): steps that overlap in time go on separate rows."""
    ends: list[float] = []
    lanes: dict[int, int] = {}
    order = sorted(range(len(result.steps)), key=lambda i: _offset(result, result.steps[i]))
    for i in order:
        s = result.steps[i]
        start = _offset(result, s)
        lane = next((k for k, end in enumerate(ends) if end <= start + 0.05), None)
        if lane is None:
            ends.append(0.0)
            lane = len(ends) - 1
        ends[lane] = start + s.seconds
        lanes[i] = lane
    return lanes


def _html_table(header: Sequence[str], rows: Iterable[Sequence[tuple[str, str]]]) -> str:
    """Rows of (already escaped html, css class) cells."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{cls}">{html}</td>' if cls else f"<td>{html}</td>" for html, cls in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _t(text: object, cls: str = "") -> tuple[str, str]:
    return escape(str(text)), cls


def _yn(value: bool | None, *, bad_when: bool = False) -> tuple[str, str]:
    text = _yes_no(value)
    return escape(text), ("bad" if value is bad_when and value is not None else "")


def render_html(result: Result) -> str:
    r = masked(result)
    e = escape
    rev = r.revisions
    title = f"{r.verdict}: migsafe rehearsal of {r.plan}"
    body: list[str] = [
        f'<h1><span class="verdict {e(r.verdict)}">{e(r.verdict)}</span> '
        f"migsafe rehearsal of <code>{e(r.plan)}</code></h1>"
    ]
    # the first screen: verdict, why, what users would feel, how to go back
    top = [
        f'<p class="why"><strong>{"Why it failed" if r.reasons else "Why it passed"}:</strong> {_inline_code_html(headline(r))}</p>'
    ]
    impact = worst_traffic(r)
    if impact:
        top.append(f'<p class="impact"><strong>Worst traffic impact:</strong> {e(impact)}</p>')
    sentence, command = rollback_advice(r)
    top.append(f'<p class="rollback"><strong>Rollback:</strong> {_inline_code_html(sentence)}</p>')
    if command:
        top.append(f"<pre>{e(command)}</pre>")
    body.append('<section id="top">' + "".join(top) + "</section><h2>Summary</h2>")
    summary = [
        ("Plan", f"<code>{e(r.plan)}</code>"),
        ("Source", f"<code>{e(r.source)}</code>"),
        (
            "Revisions",
            f"<code>{e(rev.source or '?')}</code> → <code>{e(rev.upgrade_to)}</code> → "
            f"<code>{e(rev.downgrade_to)}</code>"
            + (
                f" (reached <code>{e(rev.after_upgrade)}</code> "
                f"then <code>{e(rev.after_downgrade or '?')}</code>)"
                if rev.after_upgrade
                else ""
            ),
        ),
        ("Started", e(r.started.isoformat())),
        ("Finished", e(r.finished.isoformat())),
        ("Total", e(seconds(r.seconds))),
        ("Upgrade", e(_threshold_note(r, "upgrade", "upgrade_seconds"))),
        ("Downgrade", e(_threshold_note(r, "downgrade", "downgrade_seconds"))),
    ]
    lock = longest_lock(r)
    if lock:
        limit = threshold(r, "lock_seconds")
        summary.append(
            (
                "Longest ACCESS EXCLUSIVE",
                e(
                    f"{seconds(lock[1])} on {lock[0]} ({lock[2]})"
                    + (f" (limit {limit:g} s)" if limit is not None else "")
                ),
            )
        )
    if r.failed_step or r.error:
        summary.append(("Failed step", f"<code>{e(r.failed_step or '?')}</code> {e(r.error or '')}"))
    body.append("<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in summary) + "</dl>")

    if r.reasons:
        body.append(
            '<h2>Why it failed</h2><ul class="reasons">'
            + "".join(f"<li>{_inline_code_html(x)}</li>" for x in r.reasons)
            + "</ul>"
        )
    if r.warnings:
        body.append(
            "<h2>Warnings</h2><ul>"
            + "".join(f"<li>{_inline_code_html(x)}</li>" for x in r.warnings)
            + "</ul>"
        )
    body.append(_details_html(r))

    body.append("<h2>Timeline</h2>")
    body.append(
        '<p class="legend">'
        f'<span style="background:{_COLOURS["step_ok"]}"></span>step ok'
        f'<span style="background:{_COLOURS["step_failed"]}"></span>step failed'
        f'<span style="background:{_COLOURS["lock_ae"]}"></span>ACCESS EXCLUSIVE'
        f'<span style="background:{_COLOURS["lock_strong"]}"></span>other blocking lock'
        f'<span style="background:{_COLOURS["lock_weak"]}"></span>weaker lock'
        " (downgrade holds are lighter; hover a bar for details)</p>"
    )
    body.append(f"<div>{render_timeline(r)}</div>")

    body.append("<h2>Steps</h2>")
    body.append(
        _html_table(
            ["step", "started (s)", "seconds", "ok", "error"],
            [
                (
                    _t(s.name),
                    _t(f"+{_offset(r, s):.1f}", "n"),
                    _t(f"{s.seconds:.2f}", "n"),
                    _yn(s.ok),
                    _t(s.error or "", "bad" if s.error else ""),
                )
                for s in r.steps
            ],
        )
    )

    body.append("<h2>Tables</h2>")
    body.append(
        _html_table(
            [
                "table",
                "rows before",
                "rows after upgrade",
                "rows after downgrade",
                "data equal after downgrade",
                "rewritten by upgrade",
                "rewritten by downgrade",
                "max lock",
                "longest ACCESS EXCLUSIVE",
            ],
            [
                (
                    _t(t.name),
                    _t(_num(t.rows_before), "n"),
                    _t(_num(t.rows_after_upgrade), "n"),
                    _t(_num(t.rows_after_downgrade), "n"),
                    _yn(t.downgrade_restores_data),
                    _t(_yes_no(t.rewritten, loud=False)),
                    _t(_yes_no(t.rewritten_by_downgrade, loud=False)),
                    _t(lock_label(t.max_lock_mode)),
                    _t(seconds(t.lock_seconds) if t.lock_seconds else "-", "n"),
                )
                for t in r.tables
            ],
        )
    )
    invalid = [(t.name, "after upgrade", fk) for t in r.tables for fk in t.fk_invalid_after_upgrade]
    invalid += [(t.name, "after downgrade", fk) for t in r.tables for fk in t.fk_invalid_after_downgrade]
    if invalid:
        body.append(
            "<p>Foreign keys not valid:</p><ul>"
            + "".join(f'<li class="bad">{e(n)} {e(w)}: <code>{e(fk)}</code></li>' for n, w, fk in invalid)
            + "</ul>"
        )

    body.append("<h2>Locks and rewrites</h2>")
    body.append(_locks_html(r.tables, r.locks))

    body.append("<h2>Checks</h2>")
    if r.checks:
        body.append(
            _html_table(
                ["check", "when", "sql", "expect", "value", "ok", "error"],
                [
                    (
                        _t(c.name),
                        _t(c.when),
                        (f"<code>{e(c.sql)}</code>", ""),
                        _t(c.expect),
                        _t("-" if c.value is None else c.value),
                        _yn(c.ok),
                        _t(c.error or "", "bad" if c.error else ""),
                    )
                    for c in r.checks
                ],
            )
        )
    else:
        body.append("<p>No checks in the plan.</p>")

    body.append("<h2>Backup</h2>")
    if r.backup:
        body.append(
            "<dl>"
            + "".join(
                f"<dt>{k}</dt><dd>{v}</dd>"
                for k, v in (
                    ("id", f"<code>{e(r.backup.id)}</code>"),
                    ("url", f"<code>{e(r.backup.url)}</code>"),
                    ("bytes", e(f"{r.backup.bytes:,}")),
                    ("restore-tested", e(_yes_no(r.backup.restore_tested))),
                )
            )
            + "</dl>"
        )
    else:
        body.append("<p>No backup was taken.</p>")
    body.append(
        "<h2>Scratch database</h2><dl>"
        f"<dt>kind</dt><dd>{e(r.scratch.kind)}{e(_method(r))}</dd>"
        f"<dt>id</dt><dd><code>{e(r.scratch.id or '-')}</code></dd>"
        f'<dt>destroyed</dt><dd class="{"" if r.scratch.destroyed or r.scratch.kind == "dsn" else "bad"}">'
        f"{e(_scratch_fate(r))}</dd>"
        "</dl>"
    )

    body.append("<h2>What to do next</h2>")
    steps = _detail_steps(r)
    if steps:
        body.append("<ul>" + "".join(f"<li>{_inline_code_html(x)}</li>" for x in steps) + "</ul>")
    else:
        body.append("<p>See the rollback at the top.</p>")

    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"/>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
        f"<title>{e(title)}</title><style>{_CSS}</style></head>\n"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _details_html(r: Result) -> str:
    """Traffic, revisions (slowest first) and lint, as HTML (the same content as the Markdown)."""
    e = escape
    html: list[str] = []
    if r.traffic is not None and r.traffic.phases():
        html.append("<h2>Traffic during the migration</h2>")
        html.append(
            _html_table(
                [
                    "phase",
                    "clients x rate",
                    "baseline p50 / p99",
                    "p50 / p99 / max",
                    "waits >100 ms / >1 s / >5 s",
                    "errors",
                    "longest lock wait",
                ],
                [
                    (
                        _t(p.phase),
                        _t(f"{p.clients} x {p.rate:g}/s"),
                        _t(f"{_ms(p.baseline_p50_ms)} / {_ms(p.baseline_p99_ms)}", "n"),
                        _t(f"{_ms(p.p50_ms)} / {_ms(p.p99_ms)} / {_ms(p.max_ms)}", "n"),
                        _t(f"{p.waits_over_100ms} / {p.waits_over_1s} / {p.waits_over_5s}", "n"),
                        _t(str(p.errors), "bad" if p.errors else "n"),
                        (
                            e(
                                f"{p.blocked_max_s:.1f} s on {p.blocked_table} ({lock_label(p.blocking_mode)}) by "
                            )
                            + f"<code>{e(p.blocking_statement or '?')}</code>",
                            "bad" if p.blocked_max_s >= 1 else "",
                        )
                        if p.blocked_max_s >= 0.1
                        else ("-", ""),
                    )
                    for p in r.traffic.phases()
                ],
            )
        )
        samples = [x for p in r.traffic.phases() for x in p.error_samples]
        if samples:
            html.append(
                "<p>Errors seen:</p><ul>" + "".join(f'<li class="bad">{e(x)}</li>' for x in samples) + "</ul>"
            )
    if r.revision_runs:
        html.append("<h2>Revisions (slowest first)</h2>")
        top = slowest_statement(r)
        if top:
            rev, st = top
            html.append(
                f"<p>Slowest statement: {e(seconds(st.seconds))} in <code>{e(rev.id)}</code> ({e(rev.phase)}): "
                f"<code>{e(_one_line(st.sql))}</code></p>"
            )
        html.append(
            _html_table(
                ["revision", "phase", "seconds", "statements", "locks (held)", "rewrites", "lint"],
                [
                    (
                        _t(x.id),
                        _t(x.phase),
                        _t(f"{x.seconds:.3f}", "n"),
                        _t(str(x.statement_count), "n"),
                        _t(
                            ", ".join(
                                f"{lock_label(lk.mode)} on {lk.relation} ({lk.held_seconds:.2f} s)"
                                for lk in x.locks
                            )
                            or "-"
                        ),
                        _t(", ".join(x.rewrites) or "-"),
                        _t(", ".join(sorted({f.rule for f in x.lint})) or "-"),
                    )
                    for x in slowest_first(r)
                ],
            )
        )
    if r.lint:
        html.append("<h2>Lint (squawk)</h2>")
        html.append(
            _html_table(
                ["rule", "level", "revision", "phase", "statement", "observed locks", "message"],
                [
                    (
                        _t(("FAIL " if f.fails else "") + f.rule, "bad" if f.fails else ""),
                        _t(f.level),
                        _t(f.revision or "-"),
                        _t(f.phase),
                        (f"<code>{e(f.statement)}</code>", ""),
                        _t(_lint_locks(f) or "-", "bad" if f.locks else ""),
                        _t(f.message),
                    )
                    for f in sorted(r.lint, key=lambda f: (not f.fails, not f.locks, f.revision or ""))
                ],
            )
        )
    return "".join(html)


def _inline_code_html(text: str) -> str:
    """Escape ``text`` and turn its `code` spans into <code> elements."""
    pieces = text.split("`")
    if len(pieces) % 2 == 0:  # unbalanced: show as is
        return escape(text)
    return "".join(escape(p) if i % 2 == 0 else f"<code>{escape(p)}</code>" for i, p in enumerate(pieces))


def _locks_html(tables: Sequence[TableResult], locks: Sequence[LockHold]) -> str:
    e = escape
    up = [t.name for t in tables if t.rewritten]
    down = [t.name for t in tables if t.rewritten_by_downgrade]
    html = (
        "<ul>"
        f"<li>Rewritten by the upgrade: {', '.join(f'<code>{e(n)}</code>' for n in up) or 'none'}</li>"
        f"<li>Rewritten by the downgrade: {', '.join(f'<code>{e(n)}</code>' for n in down) or 'none'}</li>"
        "</ul>"
    )
    if not locks:
        return html + "<p>No lock holds were recorded.</p>"
    return html + _html_table(
        ["relation", "mode", "phase", "from (s)", "to (s)", "held"],
        [
            (
                _t(h.relation),
                _t(lock_label(h.mode), "bad" if is_access_exclusive(h.mode) else ""),
                _t(h.phase),
                _t(f"{h.start:.1f}", "n"),
                _t(f"{h.end:.1f}", "n"),
                _t(seconds(h.end - h.start), "n"),
            )
            for h in sorted(locks, key=lambda h: h.start)
        ],
    )


# --- files ------------------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(result: Result, directory: Path) -> dict[str, Path]:
    """Write ``result.json``, ``report.md`` and ``report.html`` atomically into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    safe = masked(result)
    outputs = {
        "result.json": safe.model_dump_json(indent=2) + "\n",
        "report.md": render_markdown(safe),
        "report.html": render_html(safe),
    }
    paths: dict[str, Path] = {}
    for name, text in outputs.items():
        path = directory / name
        _write_atomic(path, text)
        paths[name] = path
    return paths


def load_result(path: Path) -> Result:
    """Read a ``result.json`` back (for ``migsafe report`` and the notify handler)."""
    return Result.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


__all__ = [
    "is_access_exclusive",
    "load_result",
    "lock_label",
    "longest_lock",
    "lossy_tables",
    "masked",
    "render_html",
    "render_markdown",
    "render_timeline",
    "restore_command",
    "rollback_advice",
    "store_url",
    "write_reports",
]


def _scratch_fate(r: Result) -> str:
    if r.scratch.kind == "dsn" and not r.scratch.destroyed:
        return "no (a given server: the state machine deletes it after this report)"
    return _yes_no(r.scratch.destroyed)
