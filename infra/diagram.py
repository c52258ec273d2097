"""Mermaid flowcharts of the state machines, generated from the synthesized definitions.

    python -m infra.diagram                 # print both charts (synthesizes the app first)
    python -m infra.diagram --write         # refresh docs/architecture.md between its markers

Success edges are solid, Choice branches carry their condition, Catch edges are dotted and name
the errors they catch. A test checks that docs/architecture.md matches the current definitions.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from .definitions import find

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
START, END = "<!-- diagram:start -->", "<!-- diagram:end -->"
MACHINES = [("PreMigration", "Pre-migration state machine"), ("Restore", "Restore state machine")]
_SHAPES = {"Choice": ("{", "}"), "Succeed": ("([", "])"), "Fail": ("([", "])"), "Wait": ("[/", "/]"),
           "Pass": ("[", "]"), "Task": ("[", "]"), "Parallel": ("[[", "]]")}


class _Chart:
    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.lines: list[str] = []

    def node_id(self, scope: str, name: str) -> str:
        key = f"{scope}/{name}"
        if key not in self.ids:
            self.ids[key] = f"s{len(self.ids)}"
        return self.ids[key]


def _label(text: str) -> str:
    return text.replace('"', "'")


def _condition(choice: dict[str, Any]) -> str:
    for key, value in choice.items():
        if key in {"Variable", "Next"}:
            continue
        if key in {"Or", "And"}:
            return f"{key.lower()} of {len(value)}"
        words = re.sub("(?<!^)([A-Z])", r" \1", key).lower()
        return f"{choice.get('Variable', '').removeprefix('$.')} {words} {value}"
    return "?"


def _states(chart: _Chart, scope: str, states: dict[str, Any], indent: str) -> None:
    for name, state in states.items():
        sid = chart.node_id(scope, name)
        left, right = _SHAPES.get(state["Type"], ("[", "]"))
        if state["Type"] == "Parallel":
            chart.lines.append(f'{indent}subgraph {sid} ["{_label(name)} (parallel)"]')
            chart.lines.append(f"{indent}  direction TB")
            for i, branch in enumerate(state["Branches"]):
                inner = f"{scope}/{name}#{i}"
                _states(chart, inner, branch["States"], indent + "  ")
            chart.lines.append(f"{indent}end")
        else:
            chart.lines.append(f'{indent}{sid}{left}"{_label(name)}"{right}')


def _edges(chart: _Chart, scope: str, states: dict[str, Any], indent: str) -> None:
    for name, state in states.items():
        sid = chart.node_id(scope, name)
        if "Next" in state:
            chart.lines.append(f"{indent}{sid} --> {chart.node_id(scope, state['Next'])}")
        for choice in state.get("Choices", []):
            chart.lines.append(f'{indent}{sid} -->|"{_label(_condition(choice))}"| {chart.node_id(scope, choice["Next"])}')
        if "Default" in state:
            chart.lines.append(f'{indent}{sid} -->|"otherwise"| {chart.node_id(scope, state["Default"])}')
        for catch in state.get("Catch", []):
            errors = ", ".join(catch["ErrorEquals"])
            chart.lines.append(f'{indent}{sid} -.->|"{_label(errors)}"| {chart.node_id(scope, catch["Next"])}')
        for i, branch in enumerate(state.get("Branches", [])):
            inner = f"{scope}/{name}#{i}"
            _edges(chart, inner, branch["States"], indent)


def mermaid(definition: dict[str, Any]) -> str:
    chart = _Chart()
    chart.lines.append("flowchart TD")
    chart.lines.append('  start(("start"))')
    _states(chart, "", definition["States"], "  ")
    chart.lines.append(f"  start --> {chart.node_id('', definition['StartAt'])}")
    _edges(chart, "", definition["States"], "  ")
    return "\n".join(chart.lines)


def render(template: dict[str, Any]) -> str:
    parts = []
    for fragment, title in MACHINES:
        parts += [f"### {title}", "", "```mermaid", mermaid(find(template, fragment)), "```", ""]
    return "\n".join(parts).rstrip() + "\n"


def synthesized_template() -> dict[str, Any]:
    import aws_cdk as cdk

    sys.path.insert(0, str(ROOT))
    import app as cdk_app

    with tempfile.TemporaryDirectory() as outdir:
        application = cdk.App(context=cdk_app.cdk_json_context(), outdir=outdir)
        application, stack = cdk_app.build(application)
        application.synth()
        return dict(json.loads((Path(outdir) / f"{stack.artifact_id}.template.json").read_text()))


def replace_between_markers(doc: str, generated: str) -> str:
    head, sep, rest = doc.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"{DOC} lacks the {START} / {END} markers")
    return f"{head}{START}\n{generated}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"refresh {DOC.relative_to(ROOT)}")
    parser.add_argument("--template", type=Path, help="read a synthesized template instead of synthesizing")
    args = parser.parse_args(argv)
    template = json.loads(args.template.read_text()) if args.template else synthesized_template()
    generated = render(template)
    if args.write:
        DOC.write_text(replace_between_markers(DOC.read_text(), generated))
    else:
        sys.stdout.write(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
