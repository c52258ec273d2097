"""Rows moved between tables: the reason names both tables and the direction; [[expect]] accepts it, visibly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from migsafe.exceptions import PlanInvalid
from migsafe.notify import chatbot_message
from migsafe.plan import Expect, Plan, Thresholds
from migsafe.report import render_html, render_markdown
from migsafe.result import Result
from migsafe.verdict import decide

EVENTS = Path(__file__).resolve().parent.parent / "events"
A, B = "public.users", "public.user_invitations"


def _moved(n: int = 3, *, back: bool = False) -> Result:
    """The passing result, with ``n`` rows of users moved to invitations by the upgrade (and back, or not)."""
    result = Result.model_validate_json((EVENTS / "result_pass.json").read_text())
    a = next(t for t in result.tables if t.name == A)
    b = next(t for t in result.tables if t.name == B)
    a.rows_after_upgrade = a.rows_before - n  # type: ignore[operator]
    b.rows_after_upgrade = b.rows_before + n  # type: ignore[operator]
    if not back:
        a.rows_after_downgrade, b.rows_after_downgrade = a.rows_after_upgrade, b.rows_after_upgrade
        a.fingerprint_after_downgrade = "sha256:after-a"
        b.fingerprint_after_downgrade = "sha256:after-b"
    return result


def _expect(**kw: str) -> list[Expect]:
    out = []
    if "a_up" in kw or "a_down" in kw:
        out.append(Expect(table=A, rows_after_upgrade=kw.get("a_up"), rows_after_downgrade=kw.get("a_down"),
                          reason="archived invitations move to their own table"))
    if "b_up" in kw or "b_down" in kw:
        out.append(Expect(table=B, rows_after_upgrade=kw.get("b_up"), rows_after_downgrade=kw.get("b_down"),
                          reason="they arrive here"))
    return out


def test_rows_that_do_not_come_back_fail_naming_both_tables_and_the_direction() -> None:
    # Given / When
    result = decide(_moved(3), Thresholds())
    # Then
    assert result.verdict == "FAIL"
    assert any(r.startswith(f"3 rows left {A} during the upgrade and did not come back on the downgrade")
               and f"{B} gained 3 over the same upgrade and downgrade: they appear to have moved there" in r
               for r in result.reasons), result.reasons
    assert any(r.startswith(f"{B} gained 3 rows during the upgrade that the downgrade did not remove")
               and f"{A} lost 3" in r for r in result.reasons), result.reasons
    assert any(r.startswith(f"3 rows left {A} during the upgrade (") for r in result.reasons)
    assert result.accepted == []


def test_an_upgrade_that_moves_rows_and_a_downgrade_that_moves_them_back_names_the_upgrade_only() -> None:
    # Given / When
    result = decide(_moved(3, back=True), Thresholds())
    # Then: still a FAIL (the upgrade changed row counts), but nothing about the downgrade
    assert result.verdict == "FAIL"
    assert not any("downgrade" in r for r in result.reasons), result.reasons


def test_matching_expectations_turn_the_fail_into_a_pass_with_a_note_everywhere() -> None:
    # Given
    expect = _expect(a_up="-3", a_down="-3", b_up="+3", b_down="3")
    # When
    result = decide(_moved(3), Thresholds(), expect)
    # Then: PASS, and every accepted difference is said, with the plan's reason
    assert result.verdict == "PASS", result.reasons
    assert len([n for n in result.accepted if "archived invitations move to their own table" in n]) == 3
    assert any(n.startswith(f"3 rows left {A} during the upgrade and did not come back") for n in result.accepted)
    assert result.rollback == "restore"  # the downgrade still does not bring the rows back
    markdown, html = render_markdown(result), render_html(result)
    slack = json.dumps(chatbot_message(result))
    for text in (markdown, html, slack):
        assert "Accepted differences" in text
        assert "they arrive here" in text
    assert "the plan expects ([[expect]])" in markdown.split("\n## ")[0]  # in the headline, not only below


def test_an_expectation_that_does_not_match_stays_a_fail_and_says_both_figures() -> None:
    # Given: the plan expects 5 rows to leave, 3 did
    expect = _expect(a_up="-3", a_down="-5", b_up="+3", b_down="+3")
    # When
    result = decide(_moved(3), Thresholds(), expect)
    # Then
    assert result.verdict == "FAIL"
    assert any("the plan expects -5 rows after the downgrade, not -3" in r and A in r for r in result.reasons), (
        result.reasons)


def test_an_expected_difference_that_did_not_happen_fails() -> None:
    # Given: nothing moved, but the plan says 3 rows leave
    result = Result.model_validate_json((EVENTS / "result_pass.json").read_text())
    # When
    decided = decide(result, Thresholds(), _expect(a_down="-3"))
    # Then
    assert decided.verdict == "FAIL"
    assert any(r.startswith(f"{A}: row count back to where it was after the downgrade")
               and "the plan expects -3 rows after the downgrade, not +0" in r for r in decided.reasons)


def _plan(expect: str) -> str:
    return (
        '[source]\ndsn = "postgresql://app@db/app"\ntables = ["public.a", "public.b"]\n'
        + expect
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('[[expect]]\ntable = "public.a"\nrows_after_downgrade = "-3"\n', "missing key 'expect.0.reason'"),
        ('[[expect]]\ntable = "public.a"\nrows_after_downgrade = "-3"\nreason = " "\n', "say why"),
        ('[[expect]]\ntable = "public.a"\nreason = "r"\n', "give rows_after_upgrade or rows_after_downgrade"),
        ('[[expect]]\ntable = "public.a"\nrows_after_downgrade = "minus 3"\nreason = "r"\n',
         "signed whole number of rows"),
        ('[[expect]]\ntable = "public.a"\nrows_after_downgrade = "-3.5"\nreason = "r"\n', "signed whole number"),
        ('[[expect]]\ntable = "public.c"\nrows_after_downgrade = "-3"\nreason = "r"\n',
         "public.c is not one of source.tables"),
        ('[[expect]]\ntable = "public.a"\nrows_after_downgrade = "-3"\nreason = "r"\nrows = 3\n',
         "unknown key 'expect.0.rows'"),
        ('[[expect]]\ntable = "a"\nrows_after_upgrade = "-3"\nreason = "r"\n'
         '[[expect]]\ntable = "public.a"\nrows_after_downgrade = "-3"\nreason = "r"\n', "two [[expect]] sections"),
    ],
)
def test_malformed_expectations_are_refused(tmp_path: Path, section: str, message: str) -> None:
    # Given
    path = tmp_path / "plan.toml"
    path.write_text(_plan(section))
    # When
    with pytest.raises(PlanInvalid) as refused:
        Plan.load(path)
    # Then: bad input (exit 2), naming the key
    assert message in str(refused.value)
    assert refused.value.exit_code == 2


def test_expectations_load_with_canonical_names_and_signed_counts(tmp_path: Path) -> None:
    # Given
    path = tmp_path / "plan.toml"
    path.write_text(_plan('[[expect]]\ntable = "a"\nrows_after_downgrade = 3\nreason = "moved back in"\n'))
    # When
    plan = Plan.load(path)
    # Then
    assert plan.expect == [Expect(table="public.a", rows_after_downgrade="+3", reason="moved back in")]


def test_a_plan_without_expectations_keeps_its_digest() -> None:
    # Given
    plan = Plan.from_mapping({"source": {"dsn": "postgresql://app@db/app", "tables": ["public.a"]}})
    # When
    data = plan.model_dump(mode="json")
    # Then: the new section is left out of the digest when empty
    assert data["expect"] == []
    import hashlib

    from migsafe.dsn import mask_tree

    del data["expect"]
    del data["source"]["stall_timeout_seconds"]  # left out of every digest (tests/unit/test_plan.py)
    canonical = json.dumps(mask_tree(data), sort_keys=True, separators=(",", ":"))
    assert plan.digest() == hashlib.sha256(canonical.encode()).hexdigest()
