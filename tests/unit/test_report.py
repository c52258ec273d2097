"""Reports: Markdown and self-contained HTML from a Result, written atomically, never leaking a password."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from migsafe.report import (
    lossy_tables,
    render_html,
    render_markdown,
    render_timeline,
    restore_command,
    store_url,
    write_reports,
)
from migsafe.result import CheckResult, Result

EVENTS = Path(__file__).resolve().parent.parent / "events"
SVG = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert(\"x\")</script> & 'quoted' </td>"


def load(name: str) -> Result:
    return Result.model_validate_json((EVENTS / name).read_text())


@pytest.fixture
def passed() -> Result:
    return load("result_pass.json")


@pytest.fixture
def failed() -> Result:
    return load("result_fail.json")


def parse_xhtml(html: str) -> ET.Element:
    return ET.fromstring(html)  # noqa: S314 - our own output


class _Balance(HTMLParser):
    VOID = {"meta", "br", "hr", "img", "input", "link", "line", "rect"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


# --- Markdown ---------------------------------------------------------------------------------
def test_markdown_of_a_lossy_fail_has_every_section_and_the_real_restore_command(failed: Result) -> None:
    # When
    md = render_markdown(failed)
    # Then
    assert md.splitlines()[0].startswith("# ❌ FAIL")
    for section in (
        "## Why it failed",
        "## Warnings",
        "## Steps",
        "## Tables",
        "## Locks and rewrites",
        "## Checks",
        "## Backup",
        "## Scratch database",
        "## What to do next",
    ):
        assert section in md, section
    assert "`3b1f0c2a9d4e` → `head` → `3b1f0c2a9d4e`" in md
    assert "1092.8 s" in md
    assert "upgrade took 143.2 s, over the 120 s threshold" in md
    assert "does not restore the data of public.user_invitations (fingerprints differ)" in md
    assert (
        "migsafe restore --store s3://acme-migsafe-backups/prod --backup-id 20250604T220541Z-b81d07 "
        "--tables public.user_invitations --replace"
    ) in md
    assert (
        "| public.user_invitations | 180,000 | 180,000 | 180,000 | NO | yes / yes "
        "| ACCESS EXCLUSIVE | 5.5 s |" in md
    )
    assert "Split the migration" in md  # next_steps


def test_markdown_of_a_pass_says_the_downgrade_restores_the_data(passed: Result) -> None:
    # When
    md = render_markdown(passed)
    # Then
    assert md.splitlines()[0].startswith("# ✅ PASS")
    assert "The downgrade restores the data exactly" in md
    assert "alembic downgrade -1" in md
    assert "migsafe restore" not in md
    assert "## Why it failed" not in md
    assert "| upgrade | +50.3 | 41.77 | yes |  |" in md


def test_markdown_tables_survive_pipes_newlines_and_html_in_values(failed: Result) -> None:
    # Given
    failed.checks.append(
        CheckResult(
            name="a|b",
            when="before",
            sql="select 1 | 2\nfrom t where x < 3",
            expect="= 3",
            ok=False,
            error=EVIL + "\nsecond line",
        )
    )
    # When
    md = render_markdown(failed)
    # Then
    row = next(line for line in md.splitlines() if line.startswith("| a\\|b"))
    cells = re.split(r"(?<!\\)\|", row)[1:-1]
    assert len(cells) == 7  # check, when, sql, expect, value, ok, error: no extra column
    assert "`select 1 \\| 2 from t where x < 3`" in row
    assert "<script>" not in md
    assert "&lt;script>" in row and "<br>second line" in row


def test_rollback_unknown_offers_the_backup_of_every_table(failed: Result) -> None:
    # Given
    failed.rollback = "unknown"
    for table in failed.tables:
        table.fingerprint_after_downgrade = None
    # When
    md = render_markdown(failed)
    # Then
    assert lossy_tables(failed) == []
    assert "did not get far enough" in md
    assert "--tables public.users,public.user_application_access,public.user_invitations --replace" in md


def test_restore_command_uses_the_store_root_and_quotes_what_the_shell_would_split(failed: Result) -> None:
    # Given
    assert failed.backup is not None
    failed.backup.url = "file:///var/backups/my store/2025-06-04/20250604T220541Z-b81d07/"
    # When
    command = restore_command(failed, ["public.user_invitations"])
    # Then
    assert store_url("s3://b/p/2025-06-04/ID/", "ID") == "s3://b/p"
    assert store_url("s3://b/p/elsewhere/", "ID") == "s3://b/p/elsewhere"
    assert command is not None
    assert "--store 'file:///var/backups/my store'" in command
    assert "--backup-id 20250604T220541Z-b81d07" in command


# --- HTML -------------------------------------------------------------------------------------
def test_html_is_self_contained_and_well_formed(failed: Result) -> None:
    # When
    html = render_html(failed)
    # Then: nothing is fetched from anywhere
    lowered = html.lower()
    for external in ("<script", "<link", "src=", "href=", "url(", "@import", "<iframe", "<img"):
        assert external not in lowered, external
    # and it parses as XML and as balanced HTML
    root = parse_xhtml(html)
    assert root.tag == "html"
    balance = _Balance()
    balance.feed(html)
    assert balance.errors == [] and balance.stack == []
    assert root.findtext("head/title") == "FAIL: migsafe rehearsal of enum-uppercase-prod"


def test_html_has_the_same_content_as_the_markdown(failed: Result) -> None:
    # When
    html = render_html(failed)
    text = "".join(parse_xhtml(html).itertext())
    # Then
    for fragment in (
        "Why it failed",
        "Steps",
        "Tables",
        "Locks and rewrites",
        "Checks",
        "Backup",
        "Scratch database",
        "What to do next",
        "upgrade took 143.2 s, over the 120 s threshold",
        "20250604T220541Z-b81d07",
        "391,772,160",
        "rds-snapshot",
        "migsafe restore --store s3://acme-migsafe-backups/prod",
    ):
        assert fragment in text, fragment


def test_timeline_has_one_rect_per_step_and_per_lock_hold_with_tooltips(failed: Result) -> None:
    # When
    svg = parse_xhtml(render_timeline(failed))
    rects = svg.findall(f".//{SVG}rect")
    # Then
    assert len(rects) == len(failed.steps) + len(failed.locks)
    assert sum(r.get("class") == "step" for r in rects) == len(failed.steps)
    assert sum(r.get("class") == "lock" for r in rects) == len(failed.locks)
    assert all(r.find(f"{SVG}title") is not None for r in rects)
    ae = [
        r
        for r in rects
        if r.get("class") == "lock" and "ACCESS EXCLUSIVE" in (r.findtext(f"{SVG}title") or "")
    ]
    weak = [
        r
        for r in rects
        if r.get("class") == "lock" and "SHARE ROW EXCLUSIVE" in (r.findtext(f"{SVG}title") or "")
    ]
    assert ae and weak and {r.get("fill") for r in ae}.isdisjoint({r.get("fill") for r in weak})
    # the longest hold is the widest lock bar, and bars sit where the holds started
    widest = max((r for r in rects if r.get("class") == "lock"), key=lambda r: float(r.get("width", 0)))
    assert "public.user_application_access: ACCESS EXCLUSIVE during the upgrade, 137.93 s" in (
        widest.findtext(f"{SVG}title") or ""
    )
    steps = [r for r in rects if r.get("class") == "step"]
    xs = [float(r.get("x", 0)) for r in steps]
    assert xs == sorted(xs) and xs[0] < xs[-1]
    assert "seconds since start" in "".join(svg.itertext())


def test_a_failed_step_is_drawn_in_its_own_colour(failed: Result) -> None:
    # Given
    step = failed.step("upgrade")
    assert step is not None
    step.ok, step.error = False, "deadlock detected"
    # When
    svg = parse_xhtml(render_timeline(failed))
    # Then
    steps = {
        r.findtext(f"{SVG}title", "").split(":")[0]: r.get("fill")
        for r in svg.findall(f".//{SVG}rect")
        if r.get("class") == "step"
    }
    assert steps["upgrade"] not in {steps["backup"], steps["scratch"]}


def test_every_string_is_escaped_in_the_html(failed: Result) -> None:
    # Given: hostile text in the places users and the database control
    failed.error = EVIL
    failed.failed_step = "upgrade"
    failed.reasons.append(EVIL)
    failed.steps[4].error = EVIL
    failed.checks[3].sql = "select 1 where 2 < 3 && '<b>' = '<b>'"
    failed.locks[0].relation = 'public."<x>"'
    # When
    html = render_html(failed)
    # Then
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;quoted&#x27; &lt;/td&gt;" in html
    assert "2 &lt; 3 &amp;&amp; &#39;&lt;b&gt;&#39;" in html  # Jinja2's autoescape (markupsafe)
    root = parse_xhtml(html)  # still well-formed
    assert EVIL in "".join(root.itertext())


# --- masking and files ------------------------------------------------------------------------
def test_no_password_reaches_any_report(failed: Result, tmp_path: Path) -> None:
    # Given
    failed.source = "postgresql://app:hunter2@db.internal:5432/app"
    failed.error = "could not connect: host=db password=hunter2 user=app"
    failed.reasons.append("pg_dump postgresql://admin:hunter2@db/app failed")
    # When
    paths = write_reports(failed, tmp_path / "out")
    # Then
    for path in paths.values():
        assert "hunter2" not in path.read_text(), path.name
    assert "postgresql://app:***@db.internal:5432/app" in paths["report.md"].read_text()


def test_write_reports_creates_the_directory_and_replaces_files_atomically(
    failed: Result, tmp_path: Path
) -> None:
    # Given: an older report is already there
    target = tmp_path / "a" / "b"
    target.mkdir(parents=True)
    (target / "report.md").write_text("old")
    # When
    paths = write_reports(failed, target)
    # Then
    assert set(paths) == {"result.json", "report.md", "report.html"}
    assert sorted(p.name for p in target.iterdir()) == [
        "report.html",
        "report.md",
        "result.json",
    ]  # no temp left
    assert paths["report.md"].read_text() == render_markdown(failed)
    assert paths["report.html"].read_text() == render_html(failed)
    again = Result.model_validate(json.loads(paths["result.json"].read_text()))
    assert again == failed
    assert re.match(r'\{\n  "format": 1,\n  "plan": "enum-uppercase-prod"', paths["result.json"].read_text())


def test_write_reports_leaves_the_old_file_whole_when_writing_fails(
    failed: Result, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given
    (tmp_path / "result.json").write_text("previous")

    def broken(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("migsafe.report.os.replace", broken)
    # When
    with pytest.raises(OSError, match="disk full"):
        write_reports(failed, tmp_path)
    # Then
    assert (tmp_path / "result.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


# --- the first screen, traffic, revisions, lint (issue 10) -------------------------------------
def _with_insight(result: Result) -> Result:
    from migsafe.result import LintFinding, RevisionLock, RevisionRun, StatementRun, Traffic, TrafficPhase

    alter = "ALTER TABLE users ALTER COLUMN status TYPE text"
    data = result.model_copy(deep=True)
    data.reasons = [
        "public.users: writes blocked 8.2 s by ALTER TABLE users ALTER COLUMN status TYPE text "
        "(ACCESS EXCLUSIVE, table rewrite) in revision 0002 during the upgrade, over the 5 s threshold",
        *data.reasons,
    ]
    data.traffic = Traffic(
        upgrade=TrafficPhase(
            phase="upgrade",
            clients=4,
            rate=50,
            transactions=900,
            baseline_p50_ms=1.2,
            baseline_p99_ms=4.0,
            p50_ms=2.0,
            p99_ms=8100.0,
            max_ms=8230.0,
            waits_over_100ms=400,
            waits_over_1s=380,
            waits_over_5s=120,
            blocked_max_s=8.2,
            blocked_table="public.users",
            blocked_query="insert into",
            blocking_mode="AccessExclusiveLock",
            blocking_statement=alter,
            blocking_revision="0002",
        )
    )
    data.revision_runs = [
        RevisionRun(
            id="0001",
            phase="upgrade",
            seconds=0.2,
            statement_count=1,
            statements=[StatementRun(sql="CREATE TYPE s AS ENUM ('a')", start=1, seconds=0.01)],
        ),
        RevisionRun(
            id="0002",
            phase="upgrade",
            seconds=8.4,
            statement_count=1,
            statements=[
                StatementRun(sql=alter, start=2, seconds=8.3, locks={"public.users": "AccessExclusiveLock"})
            ],
            locks=[RevisionLock(relation="public.users", mode="AccessExclusiveLock", held_seconds=8.3)],
            rewrites=["public.users"],
        ),
    ]
    data.lint = [
        LintFinding(
            rule="changing-column-type",
            level="warning",
            message="Changing a column type <rewrites>",
            revision="0002",
            phase="upgrade",
            statement=alter,
            line=1,
            locks=["AccessExclusiveLock on public.users"],
        )
    ]
    return data


def test_first_screen_has_verdict_reason_impact_and_rollback_before_the_details(failed: Result) -> None:
    # Given
    result = _with_insight(failed)
    # When
    md = render_markdown(result)
    # Then: all four sit above the first detail section, in this order
    head = md.split("## Summary")[0]
    order = [
        head.index(x)
        for x in (
            "# ❌ FAIL",
            "**Why it failed:** public.users: writes blocked 8.2 s",
            "**Worst traffic impact:** public.users: writes blocked 8.2 s",
            "**Rollback:**",
        )
    ]
    assert order == sorted(order)
    assert "migsafe restore" in head
    # and the rollback sentence is said once
    assert md.count("Rollback") == 1


def test_revisions_slowest_first_with_the_slowest_statement(failed: Result) -> None:
    # Given
    result = _with_insight(failed)
    # When
    md = render_markdown(result)
    html = render_html(result)
    # Then
    section = md.split("## Revisions (slowest first)")[1]
    assert section.index("| 0002 |") < section.index("| 0001 |")
    assert (
        "Slowest statement: 8.3 s in `0002` (upgrade): `ALTER TABLE users ALTER COLUMN status TYPE text`"
        in md
    )
    assert "ACCESS EXCLUSIVE on public.users (8.30 s)" in md
    # lint sits next to the lock the statement was observed to take
    assert "| changing-column-type | warning | 0002 | upgrade |" in md
    assert "ACCESS EXCLUSIVE on public.users" in md.split("## Lint (squawk)")[1]
    assert "Changing a column type &lt;rewrites&gt;" in html
    parse_xhtml(html)


def test_html_turns_backticks_into_code(failed: Result) -> None:
    # Given: reasons and next steps written with `code` spans
    result = _with_insight(failed)
    # When
    html = render_html(result)
    # Then
    body = html.split("<body>")[1]
    assert "`" not in re.sub(r"<pre>.*?</pre>", "", body, flags=re.S)
    assert body.count("Rollback:") == 1


def test_parallel_steps_get_their_own_rows_and_traffic_its_lane(failed: Result) -> None:
    # Given: restore_test runs while scratch and baseline run (as the local rehearsal does)
    from datetime import timedelta

    from migsafe.report import step_lanes
    from migsafe.result import StepResult

    result = _with_insight(failed)
    result.traffic.upgrade.p99_per_second = [(10.0, 2.0), (11.0, 8100.0), (12.0, 3.0)]  # type: ignore[union-attr]
    t0 = result.started
    result.steps = [
        StepResult(name="backup", started=t0, seconds=2, ok=True),
        StepResult(name="restore_test", started=t0 + timedelta(seconds=2), seconds=6, ok=True),
        StepResult(name="scratch", started=t0 + timedelta(seconds=2), seconds=3, ok=True),
        StepResult(name="baseline", started=t0 + timedelta(seconds=5), seconds=1, ok=True),
        StepResult(name="upgrade", started=t0 + timedelta(seconds=9), seconds=4, ok=True),
    ]
    # When
    lanes = step_lanes(result)
    svg = ET.fromstring(render_timeline(result))  # noqa: S314 - our own output
    # Then: restore_test on a row of its own; scratch and baseline share one; upgrade back on the first
    assert lanes[1] != lanes[2] and lanes[2] == lanes[3] and lanes[4] == 0 and lanes[0] == 0
    ys = {
        r.findtext(f"{SVG}title", "").split(":")[0]: r.get("y")
        for r in svg.iter(f"{SVG}rect")
        if r.get("class") == "step"
    }
    assert ys["restore_test"] != ys["scratch"] and ys["scratch"] == ys["baseline"]
    lines = [p for p in svg.iter(f"{SVG}polyline") if p.get("class") == "traffic"]
    assert len(lines) == 1 and len(lines[0].get("points", "").split()) == 3


def test_reading_results_needs_no_jinja2() -> None:
    # Given: an interpreter where jinja2 cannot be imported (the Lambda steps: Powertools layer only)
    import subprocess
    import sys

    code = (
        "import builtins\nreal = builtins.__import__\n"
        "def guarded(name, *a, **k):\n"
        "    if name.split('.')[0] in ('jinja2', 'markupsafe'): raise ImportError(name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guarded\n"
        "import migsafe.notify, migsafe.report\n"
    )
    # When
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    # Then
    assert proc.returncode == 0, proc.stderr


def test_a_plan_that_migrates_through_its_own_tool_rolls_back_through_it(passed: Result, failed: Result) -> None:
    # Given: plans whose [migration] runs `myapp db downgrade {revision}` (alembic is not on its PATH)
    from migsafe.notify import chatbot_message
    from migsafe.plan import Thresholds
    from migsafe.verdict import decide

    tool = ["myapp", "db", "downgrade", "{revision}", "--yes, really"]
    ok = passed.model_copy(update={"downgrade_command": tool})
    lossy = failed.model_copy(update={"downgrade_command": tool})
    # When
    texts = {
        "pass report": render_markdown(ok),
        "fail report": render_markdown(lossy),
        "pass slack": json.dumps(chatbot_message(ok)),
        "fail slack": json.dumps(chatbot_message(lossy)),
        "next steps": "\n".join(decide(lossy, Thresholds()).next_steps),
    }
    # Then: every rollback is the project's own command, revision in place, quoted for the shell
    for name, text in texts.items():
        assert "alembic downgrade" not in text, name
        assert "myapp db downgrade" in text, name
    assert "myapp db downgrade -1 '--yes, really'" in texts["pass report"]
    assert f"myapp db downgrade {failed.revisions.downgrade_to} '--yes, really' && migsafe restore" in texts["fail report"]
