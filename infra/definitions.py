"""Read the state machines' ASL definitions back out of a synthesized template.

``DefinitionString`` is an ``Fn::Join`` of literal strings and references (function ARNs, the
topic, the cluster, ...). :func:`definition` renders each reference as a readable placeholder,
``${LogicalId}`` or ``${LogicalId.Attr}``, and parses the JSON; tests assert on it, the diagram is
drawn from it, and the next issue's moto tests substitute real resource names for the placeholders.
"""

from __future__ import annotations

import json
from typing import Any


def _render(part: Any) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict):
        if "Ref" in part:
            return "${" + str(part["Ref"]) + "}"
        if "Fn::GetAtt" in part:
            return "${" + ".".join(str(p) for p in part["Fn::GetAtt"]) + "}"
        if "Fn::Join" in part:
            sep, parts = part["Fn::Join"]
            return sep.join(_render(p) for p in parts)
        if "Fn::Select" in part or "Fn::Split" in part or "Fn::Sub" in part:
            return "${" + json.dumps(part, sort_keys=True).replace('"', "'") + "}"
    raise ValueError(f"cannot render {part!r}")


def definition_text(resource: dict[str, Any]) -> str:
    value = resource["Properties"]["DefinitionString"]
    return _render(value)


def definition(resource: dict[str, Any]) -> dict[str, Any]:
    """The ASL of an ``AWS::StepFunctions::StateMachine`` resource, references as placeholders."""
    return dict(json.loads(definition_text(resource)))


def state_machines(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{logical id: ASL}`` for every state machine in a template."""
    return {
        logical_id: definition(res)
        for logical_id, res in template["Resources"].items()
        if res["Type"] == "AWS::StepFunctions::StateMachine"
    }


def find(template: dict[str, Any], fragment: str) -> dict[str, Any]:
    """The one state machine whose logical id contains ``fragment`` (``PreMigration``, ``Restore``)."""
    matches = {k: v for k, v in state_machines(template).items() if fragment in k}
    if len(matches) != 1:
        raise KeyError(f"{len(matches)} state machines match {fragment!r}: {sorted(state_machines(template))}")
    return next(iter(matches.values()))
