"""docs/architecture.md's diagrams are generated from the synthesized definitions and kept current."""

from __future__ import annotations

from infra_support import Synth

from infra import diagram


def test_architecture_doc_diagrams_match_the_synthesized_definitions(synth: Synth) -> None:
    # Given the charts generated from this session's synthesis
    generated = diagram.render(synth.template_json)
    # When we read the doc's generated section
    doc = diagram.DOC.read_text()
    section = doc.split(diagram.START, 1)[1].split(diagram.END, 1)[0]
    # Then it is exactly what the generator writes (run `python -m infra.diagram --write` after changes)
    assert section == "\n" + generated


def test_every_state_and_catch_appears_in_the_chart(synth: Synth) -> None:
    # Given the pre-migration definition and its chart
    definition = synth.definition("PreMigration")
    chart = diagram.mermaid(definition)
    # Then every top-level state is a node and every Catch is a dotted edge
    for name, state in definition["States"].items():
        assert f'"{name}' in chart
        assert chart.count("-.->") >= sum(len(s.get("Catch", [])) for s in definition["States"].values())
        if state["Type"] == "Parallel":
            assert f'"{name} (parallel)"' in chart
