"""Reports of a rehearsal: ``result.json`` for machines, ``report.md`` and ``report.html`` for people.

This module prepares the data (:func:`view`, :func:`timeline_view`); Jinja2 templates shipped as
package data (``migsafe/templates``) render it. The HTML and SVG templates autoescape every string
(SQL, error messages and table names can carry ``<``, ``&`` or quotes); the Markdown template escapes
through its filters. Everything goes through :func:`migsafe.dsn.mask` first (see :func:`masked`).
The HTML is one self-contained file (inline CSS, an inline SVG timeline, no script, no external
asset), well-formed enough to parse as XML. Its first screen holds the verdict, the one-line reason,
the worst traffic impact and the rollback; the details follow.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jinja2 is imported when a report is rendered: the Lambda steps only read results
    from jinja2 import Environment
    from markupsafe import Markup

from .dsn import mask_tree
from .result import LintFinding, Observation, Result, RevisionRun, StatementRun, StepResult

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
            f"after the downgrade): roll back with `{result.rollback_downgrade()}`.",
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
        # the downgrade first: restore refuses tables whose schema the upgrade changed (enum labels,
        # column types, revision), so the sequence followed literally ends at the pre-upgrade state
        if result.revisions.downgrade_to:
            return (sentence + ": the downgrade first, then the restore of its data:",
                    f"{result.rollback_downgrade()} && {command}")
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
    if result.accepted:
        n = len(result.accepted)
        return (
            f"upgrade and downgrade ran within the thresholds; {n} difference{'s' if n != 1 else ''} the plan "
            f"expects ([[expect]]), see Accepted differences: {result.accepted[0]}"
        )
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


# --- the view: what the templates show ---------------------------------------------------------
# report.md and report.html are rendered from Jinja2 templates (package data, templates/); this module
# only prepares the data. The HTML environment autoescapes; the Markdown one escapes through filters.


@dataclass
class Cell:
    text: str
    code: bool = False  # shown as code (Markdown: a code span; HTML: <code>)
    cls: str = ""  # HTML class: n (number), bad, good


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]


@dataclass
class Section:
    """One detail section; every field may be empty. Inline text marks code with backticks."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    definitions: list[tuple[str, str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    bad_items: bool = False
    table: Table | None = None
    after: list[str] = field(default_factory=list)
    pre: str | None = None
    timeline: bool = False  # HTML only: the SVG timeline goes here


def _c(text: object, cls: str = "") -> Cell:
    return Cell(str(text), False, cls)


def _yn(value: bool | None, *, bad_when: bool = False) -> Cell:
    return Cell(_yes_no(value), False, "bad" if value is bad_when and value is not None else "")


def _tick(text: str) -> str:
    """``text`` as an inline code span (backticks inside fall back to plain text)."""
    return f"`{text}`" if "`" not in text else text


def view(result: Result) -> dict[str, Any]:
    """Everything report.md.j2 and report.html.j2 show, in the order they show it."""
    r = result
    sentence, command = rollback_advice(r)
    return {
        "title": f"{r.verdict}: migsafe rehearsal of {r.plan}",
        "verdict": r.verdict,
        "icon": "✅" if r.verdict == "PASS" else "❌",
        "plan": r.plan,
        "why_label": "Why it failed" if r.reasons else "Why it passed",
        "headline": headline(r),
        "impact": worst_traffic(r),
        "rollback": sentence,
        "command": command,
        "sections": _sections(r),
        "timeline": render_timeline(r),
        "legend": [
            (_COLOURS["step_ok"], "step ok"),
            (_COLOURS["step_failed"], "step failed"),
            (_COLOURS["lock_ae"], "ACCESS EXCLUSIVE"),
            (_COLOURS["lock_strong"], "other blocking lock"),
            (_COLOURS["lock_weak"], "weaker lock"),
            (_COLOURS["traffic"], "traffic p99"),
        ],
    }


def _observation(o: Observation) -> Section:
    """Which figures this run could see: the mode follows from how the plan runs its migration."""
    how = {
        "in-process": "alembic ran in migsafe's driver, instrumented",
        "server-log": "the project's command ran the migration; the scratch server logged it",
        "sampling-only": "the project's command ran the migration on a scratch whose log migsafe cannot read",
    }[o.mode]
    defs = [("mode", f"{o.mode} ({how})"), ("observed", "; ".join(o.available))]
    if o.unavailable:
        defs.append(("not observed", "; ".join(o.unavailable)))
    return Section("Observation", definitions=defs)


def _sections(r: Result) -> list[Section]:
    out = [_summary(r)]
    if r.reasons:
        out.append(Section("Why it failed", items=list(r.reasons), bad_items=True))
    if r.accepted:
        out.append(Section("Accepted differences (the plan's [[expect]])", items=list(r.accepted)))
    if r.warnings:
        out.append(Section("Warnings", items=list(r.warnings)))
    if r.observation is not None:
        out.append(_observation(r.observation))
    out += [s for s in (_traffic(r), _revisions(r), _lint(r)) if s is not None]
    out.append(Section("Timeline", timeline=True))
    out.append(
        Section(
            "Steps",
            table=Table(
                ["step", "started (s)", "seconds", "ok", "error"],
                [
                    [
                        _c(s.name),
                        _c(f"+{_offset(r, s):.1f}", "n"),
                        _c(f"{s.seconds:.2f}", "n"),
                        _yn(s.ok),
                        _c(s.error or "", "bad" if s.error else ""),
                    ]
                    for s in r.steps
                ],
            ),
        )
    )
    invalid = [(t.name, "after upgrade", fk) for t in r.tables for fk in t.fk_invalid_after_upgrade]
    invalid += [(t.name, "after downgrade", fk) for t in r.tables for fk in t.fk_invalid_after_downgrade]
    out.append(
        Section(
            "Tables",
            table=Table(
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
                    [
                        _c(t.name),
                        _c(_num(t.rows_before), "n"),
                        _c(_num(t.rows_after_upgrade), "n"),
                        _c(_num(t.rows_after_downgrade), "n"),
                        _yn(t.downgrade_restores_data),
                        _c(
                            f"{_yes_no(t.rewritten, loud=False)} / {_yes_no(t.rewritten_by_downgrade, loud=False)}"
                        ),
                        _c(
                            lock_label(t.max_lock_mode), "bad" if is_access_exclusive(t.max_lock_mode) else ""
                        ),
                        _c(seconds(t.lock_seconds) if t.lock_seconds else "-", "n"),
                    ]
                    for t in r.tables
                ],
            ),
            after=(
                ["Foreign keys not valid:"] + [f"{_tick(n)} {when}: {_tick(fk)}" for n, when, fk in invalid]
                if invalid
                else []
            ),
        )
    )
    up = [_tick(t.name) for t in r.tables if t.rewritten]
    down = [_tick(t.name) for t in r.tables if t.rewritten_by_downgrade]
    out.append(
        Section(
            "Locks and rewrites",
            items=[
                f"Rewritten by the upgrade: {', '.join(up) or 'none'}",
                f"Rewritten by the downgrade: {', '.join(down) or 'none'}",
            ],
            table=Table(
                ["relation", "mode", "phase", "from (s)", "to (s)", "held"],
                [
                    [
                        _c(h.relation),
                        _c(lock_label(h.mode), "bad" if is_access_exclusive(h.mode) else ""),
                        _c(h.phase),
                        _c(f"{h.start:.1f}", "n"),
                        _c(f"{h.end:.1f}", "n"),
                        _c(seconds(h.end - h.start), "n"),
                    ]
                    for h in sorted(r.locks, key=lambda h: h.start)
                ],
            )
            if r.locks
            else None,
            after=[] if r.locks else ["No lock holds were recorded."],
        )
    )
    out.append(
        Section(
            "Checks",
            table=Table(
                ["check", "when", "sql", "expect", "value", "ok", "error"],
                [
                    [
                        _c(c.name),
                        _c(c.when),
                        Cell(c.sql, True),
                        _c(c.expect),
                        _c("-" if c.value is None else c.value),
                        _yn(c.ok),
                        _c(c.error or "", "bad" if c.error else ""),
                    ]
                    for c in r.checks
                ],
            )
            if r.checks
            else None,
            after=[] if r.checks else ["No checks in the plan."],
        )
    )
    if r.backup:
        out.append(
            Section(
                "Backup",
                definitions=[
                    ("id", _tick(r.backup.id)),
                    ("url", _tick(r.backup.url)),
                    ("bytes", f"{r.backup.bytes:,}"),
                    ("restore-tested", _yes_no(r.backup.restore_tested)),
                ],
            )
        )
    else:
        out.append(Section("Backup", after=["No backup was taken."]))
    out.append(
        Section(
            "Scratch database",
            definitions=[
                ("kind", f"{r.scratch.kind}{_method(r)}"),
                ("id", _tick(r.scratch.id or "-")),
                ("destroyed", _scratch_fate(r)),
            ],
        )
    )
    steps = _detail_steps(r)
    out.append(
        Section("What to do next", items=steps, after=[] if steps else ["See the rollback at the top."])
    )
    return out


def _summary(r: Result) -> Section:
    rev = r.revisions
    revisions = f"{_tick(rev.source or '?')} → {_tick(rev.upgrade_to)} → {_tick(rev.downgrade_to)}"
    if rev.after_upgrade:
        revisions += f" (reached {_tick(rev.after_upgrade)} then {_tick(rev.after_downgrade or '?')})"
    defs = [
        ("Plan", _tick(r.plan)),
        ("Source", _tick(r.source)),
        ("Revisions", revisions),
        ("Started", r.started.isoformat()),
        ("Finished", r.finished.isoformat()),
        ("Total", seconds(r.seconds)),
        ("Upgrade", _threshold_note(r, "upgrade", "upgrade_seconds")),
        ("Downgrade", _threshold_note(r, "downgrade", "downgrade_seconds")),
    ]
    lock = longest_lock(r)
    if lock:
        limit = threshold(r, "lock_seconds")
        defs.append(
            (
                "Longest ACCESS EXCLUSIVE hold",
                f"{seconds(lock[1])} on {_tick(lock[0])} ({lock[2]})"
                + (f" (limit {limit:g} s)" if limit is not None else ""),
            )
        )
    if r.failed_step or r.error:
        defs.append(("Failed step", f"{_tick(r.failed_step or '?')}: {r.error or ''}".rstrip()))
    return Section("Summary", definitions=defs)


def _traffic(r: Result) -> Section | None:
    if r.traffic is None or not r.traffic.phases():
        return None
    rows = []
    for p in r.traffic.phases():
        wait = (
            Cell(
                f"{p.blocked_max_s:.1f} s on {p.blocked_table} ({lock_label(p.blocking_mode)}) by "
                f"{p.blocking_statement or '?'}",
                False,
                "bad" if p.blocked_max_s >= 1 else "",
            )
            if p.blocked_max_s >= 0.1
            else _c("-")
        )
        rows.append(
            [
                _c(p.phase),
                _c(f"{p.clients} x {p.rate:g}/s"),
                _c(f"{_ms(p.baseline_p50_ms)} / {_ms(p.baseline_p99_ms)}", "n"),
                _c(f"{_ms(p.p50_ms)} / {_ms(p.p99_ms)} / {_ms(p.max_ms)}", "n"),
                _c(f"{p.waits_over_100ms} / {p.waits_over_1s} / {p.waits_over_5s}", "n"),
                _c(str(p.errors), "bad" if p.errors else "n"),
                wait,
            ]
        )
    samples = [x for p in r.traffic.phases() for x in p.error_samples]
    return Section(
        "Traffic during the migration",
        table=Table(
            [
                "phase",
                "clients x rate",
                "baseline p50 / p99",
                "p50 / p99 / max",
                "waits >100 ms / >1 s / >5 s",
                "errors",
                "longest lock wait",
            ],
            rows,
        ),
        after=["Errors seen:", *samples] if samples else [],
    )


def _revisions(r: Result) -> Section | None:
    if not r.revision_runs:
        return None
    top = slowest_statement(r)
    intro = []
    if top:
        rev, st = top
        intro.append(
            f"Slowest statement: {seconds(st.seconds)} in {_tick(rev.id)} ({rev.phase}): {_tick(_one_line(st.sql))}"
        )
    return Section(
        "Revisions (slowest first)",
        paragraphs=intro,
        table=Table(
            ["revision", "phase", "seconds", "statements", "locks (held)", "rewrites", "lint"],
            [
                [
                    _c(x.id),
                    _c(x.phase),
                    _c(f"{x.seconds:.3f}", "n"),
                    _c(str(x.statement_count), "n"),
                    _c(
                        ", ".join(
                            f"{lock_label(lk.mode)} on {lk.relation} ({lk.held_seconds:.2f} s)"
                            for lk in x.locks
                        )
                        or "-"
                    ),
                    _c(", ".join(x.rewrites) or "-"),
                    _c(", ".join(sorted({f.rule for f in x.lint})) or "-"),
                ]
                for x in slowest_first(r)
            ],
        ),
    )


def _lint(r: Result) -> Section | None:
    if not r.lint:
        return None
    return Section(
        "Lint (squawk)",
        table=Table(
            ["rule", "level", "revision", "phase", "statement", "observed locks", "message"],
            [
                [
                    _c(("FAIL " if f.fails else "") + f.rule, "bad" if f.fails else ""),
                    _c(f.level),
                    _c(f.revision or "-"),
                    _c(f.phase),
                    Cell(f.statement, True),
                    _c(_lint_locks(f) or "-", "bad" if f.locks else ""),
                    _c(f.message),
                ]
                for f in sorted(r.lint, key=lambda f: (not f.fails, not f.locks, f.revision or ""))
            ],
        ),
    )


# --- Markdown filters ---------------------------------------------------------------------------
def _md(text: object) -> str:
    """Free text for Markdown: no raw HTML gets through (``<`` is shown, not interpreted)."""
    return str(text).replace("<", "&lt;")


def _code(text: str) -> str:
    text = text.replace("\n", " ")
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_cell(cell: Cell) -> str:
    body = _code(cell.text) if cell.code else _md(cell.text)
    return body.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


# --- HTML filters -------------------------------------------------------------------------------
def _html_inline(text: str) -> Markup:
    from markupsafe import Markup

    return Markup(_inline_code_html(text))  # noqa: S704 - every piece is escaped by _inline_code_html


@functools.cache
def _environment(kind: str) -> Environment:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("migsafe", "templates"),
        # HTML and SVG escape everything; Markdown escapes through its own filters (md, mdcell, code)
        autoescape=select_autoescape(
            enabled_extensions=("html.j2", "svg.j2"), disabled_extensions=("md.j2",), default=True
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=StrictUndefined,
    )
    env.filters.update(md=_md, mdcell=_md_cell, code=_code, inline=_html_inline)
    return env


def render_markdown(result: Result) -> str:
    return _environment("md").get_template("report.md.j2").render(view(masked(result)))


def render_html(result: Result) -> str:
    return _environment("html").get_template("report.html.j2").render(view(masked(result)))


# --- the timeline ---------------------------------------------------------------------------------
def timeline_view(result: Result) -> dict[str, Any]:
    """Geometry of the SVG timeline: a row per concurrent step, a row per locked relation, traffic."""
    label_w, plot_w, lane_h, bar_h, top = 230, 820, 22, 14, 8
    relations: list[str] = []
    for hold in sorted(result.locks, key=lambda h: h.start):
        if hold.relation not in relations:
            relations.append(hold.relation)
    step_lane = step_lanes(result)
    n_step_lanes = max(step_lane.values(), default=0) + 1
    phases = result.traffic.phases() if result.traffic else []
    traffic = [pt for p in phases for pt in p.p99_per_second]
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

    def x(t: float) -> float:
        return round(label_w + max(0.0, t) * scale, 1)

    names = ["steps" if i == 0 else "steps (in parallel)" for i in range(n_step_lanes)] + relations
    labels = [{"y": top + i * lane_h, "name": n} for i, n in enumerate(names)]
    steps = []
    for i, s in enumerate(result.steps):
        start = _offset(result, s)
        colour = _COLOURS["step_failed"] if not s.ok else _COLOURS["step_ok" if i % 2 == 0 else "step_ok_alt"]
        tip = f"{s.name}: {s.seconds:.2f} s from +{start:.1f} s ({'ok' if s.ok else 'failed'})"
        if s.error:
            tip += f": {s.error}"
        width = round(max(1.0, s.seconds * scale), 1)
        steps.append(
            {
                "x": x(start),
                "y": top + step_lane[i] * lane_h,
                "w": width,
                "fill": colour,
                "tip": tip,
                "label": s.name if width > 6.5 * len(s.name) + 6 else None,
            }
        )
    locks = []
    for hold in result.locks:
        held = hold.end - hold.start
        locks.append(
            {
                "x": x(hold.start),
                "y": top + (n_step_lanes + relations.index(hold.relation)) * lane_h,
                "w": round(max(1.0, held * scale), 1),
                "fill": _lock_colour(hold.mode),
                "opacity": "1" if hold.phase == "upgrade" else "0.7",
                "tip": f"{hold.relation}: {lock_label(hold.mode)} during the {hold.phase}, {held:.2f} s "
                f"(+{hold.start:.1f} s to +{hold.end:.1f} s)",
            }
        )
    lines = []
    y0 = top + lanes * lane_h
    peak = max((ms for _, ms in traffic), default=0.0) or 1.0
    for phase in phases:
        points = " ".join(
            f"{x(t + 0.5):.1f},{y0 + traffic_h - 6 - (ms / peak) * (traffic_h - 12):.1f}"
            for t, ms in phase.p99_per_second
        )
        if points:
            lines.append(
                {
                    "points": points,
                    "tip": f"traffic during the {phase.phase}: p99 per second, peak {peak:.0f} ms",
                }
            )
    step = _nice_step(span)
    ticks = [{"x": x(i * step), "t": f"{i * step:g}"} for i in range(int(span // step) + 1)]
    return {
        "width": label_w + plot_w + 20,
        "height": axis_y + 24,
        "label_w": label_w,
        "plot_end": label_w + plot_w,
        "lane_h": lane_h,
        "bar_h": bar_h,
        "labels": labels,
        "steps": steps,
        "locks": locks,
        "traffic": lines,
        "traffic_y": y0,
        "peak": f"{peak:.0f}",
        "axis_y": axis_y,
        "ticks": ticks,
    }


def render_timeline(result: Result) -> Markup:
    """The rehearsal as an inline SVG: exactly one ``<rect>`` per step and per lock hold, each titled."""
    from markupsafe import Markup

    svg = _environment("svg").get_template("timeline.svg.j2").render(timeline_view(result))
    return Markup(svg.strip())  # noqa: S704 - rendered with autoescape


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:g} ms"


def _one_line(text: str, limit: int = 160) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


_COLOURS = {
    "step_ok": "#2da44e",
    "step_ok_alt": "#116329",
    "step_failed": "#cf222e",
    "lock_ae": "#8b0000",
    "lock_strong": "#e16f24",
    "lock_weak": "#8c959f",
    "traffic": "#0969da",
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


def _inline_code_html(text: str) -> str:
    """Escape ``text`` and turn its `code` spans into <code> elements."""
    pieces = text.split("`")
    if len(pieces) % 2 == 0:  # unbalanced: show as is
        return escape(text)
    return "".join(escape(p) if i % 2 == 0 else f"<code>{escape(p)}</code>" for i, p in enumerate(pieces))


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
