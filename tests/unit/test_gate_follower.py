"""The gate's follower prints every state of an execution that ends between two of its API calls."""

from __future__ import annotations

from typing import Any

from migsafe.gate import Follower


def _entered(event_id: int, name: str) -> dict[str, Any]:
    return {"id": event_id, "type": "TaskStateEntered", "stateEnteredEventDetails": {"name": name}}


class _FinishingExecution:
    """A Step Functions client whose execution finishes the moment its status is asked for."""

    def __init__(self) -> None:
        self.events = [_entered(1, "Validate plan"), _entered(2, "Rehearse on scratch")]
        self.status = "RUNNING"

    def describe_execution(self, executionArn: str) -> dict[str, Any]:
        if self.status == "RUNNING":  # the last states and the end land between the two calls
            self.events += [_entered(3, "Verdict?"), _entered(4, "Publish result")]
            self.status = "SUCCEEDED"
        return {"status": self.status}

    def get_execution_history(self, **_: Any) -> dict[str, Any]:
        return {"events": list(self.events)}


def test_a_finished_execution_is_followed_to_its_last_state() -> None:
    # Given an execution that finishes while the follower polls it
    sfn = _FinishingExecution()
    said: list[str] = []
    follower = Follower(sfn, "arn:aws:states:eu-west-1:123456789012:execution:sm:run", said.append)

    # When one poll reports it finished
    status = follower.poll()

    # Then every state it went through was printed, the last ones included
    assert status == "SUCCEEDED"
    assert follower.states == ["Validate plan", "Rehearse on scratch", "Verdict?", "Publish result"]
    assert said[-1] == "→ Publish result"
