"""``migsafe gate``: a deploy pipeline's verdict from the pre-migration state machine.

1. Push the plan's migration bundle to the stack's store (content-addressed: unchanged code is not
   uploaded again).
2. Start an execution named after the change: the plan's digest and the bundle's digest (which
   covers every alembic revision file). A retried pipeline job computes the same name; Step
   Functions answers ``ExecutionAlreadyExists`` and the gate follows the execution that is running
   or finished instead of rehearsing the same change twice.
3. With ``wait``, print each state as it is entered, then the result's location, and return the
   exit code of ``migsafe rehearse``: 0 PASS, 1 FAIL, 2 bad input, 3 an environment fault (a
   timeout included: the execution keeps running and a later gate follows it).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import bundle, exceptions
from .dsn import mask
from .exceptions import EnvironmentFault, InputError, PlanInvalid
from .plan import Plan
from .store import Store

EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_FAULT = 0, 1, 2, 3
FINISHED = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}
VERDICT_FAIL = "VerdictFail"  # the Fail state "Migration failed rehearsal" (infra/workflows.py)
STACK_SECRET = "stack"  # noqa: S105 - a marker, not a secret: the source's credentials are the stack's secret
_ARN = re.compile(r"^arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:stateMachine:[A-Za-z0-9_-]{1,80}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]+")

Say = Callable[[str], None]


def parse_duration(text: str) -> float:
    """``30m``, ``90s``, ``2h`` or plain seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise InputError(f"not a duration: {text!r} (use e.g. 90s, 30m, 2h)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    seconds = value * {"s": 1, "m": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise InputError(f"the timeout must be positive: {text!r}")
    return seconds


def check_state_machine_arn(arn: str) -> str:
    if not _ARN.match(arn or ""):
        raise InputError(f"not a Step Functions state machine ARN: {arn!r}")
    return arn


def execution_name(plan: Plan, bundle_sha256: str, attempt: int = 1) -> str:
    """Stable per change (plan + revisions): at most 80 characters of ``[A-Za-z0-9_-]``."""
    digest = hashlib.sha256(f"{plan.digest()}:{bundle_sha256}".encode()).hexdigest()[:20]
    label = _UNSAFE_NAME.sub("-", plan.display_name).strip("-")[:48] or "plan"
    suffix = f"-a{attempt}" if attempt > 1 else ""
    return f"{label}-{digest}{suffix}"


def execution_input(plan: Plan, bundle_sha256: str, *, create_snapshot: bool = False) -> dict[str, Any]:
    """The pre-migration input: the plan without what the stack decides (store, topic, a local
    scratch) and with the source's credentials left to the stack's secret (a local DSN never leaves
    the machine). ``[scratch]`` travels only with what applies on AWS: an AWS kind, the source's
    identifier, the instance class."""
    data = plan.model_dump(mode="json", exclude={"store", "scratch", "notify"})
    scratch = {k: v for k, v in plan.scratch.model_dump(mode="json", exclude={"dsn"}).items()
               if v is not None and not (k == "kind" and v in ("local", "dsn"))}
    if scratch:
        data["scratch"] = scratch
    data["source"] = {"secret_arn": plan.source.secret_arn or STACK_SECRET, "tables": list(plan.source.tables)}
    data["migration"].pop("python", None)
    return {"plan": data, "bundle_sha256": bundle_sha256, "create_snapshot": create_snapshot}


def execution_arn(state_machine_arn: str, name: str) -> str:
    prefix, _, machine = state_machine_arn.rpartition(":stateMachine:")
    return f"{prefix}:execution:{machine}:{name}"


@dataclass
class Outcome:
    execution_arn: str
    status: str  # SUCCEEDED | FAILED | TIMED_OUT | ABORTED | RUNNING (the gate's timeout)
    exit_code: int
    verdict: str | None = None
    failed_state: str | None = None
    error: str | None = None
    report_url: str | None = None
    result_url: str | None = None
    started_new: bool = True
    states: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "states"} | {"states": self.states}


def _aws_fault(action: str, exc: Exception) -> EnvironmentFault:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        return EnvironmentFault(f"Step Functions {action}: {code}: {mask(str(exc.response['Error'].get('Message', '')))}")
    return EnvironmentFault(f"Step Functions {action}: {type(exc).__name__}: {mask(str(exc))}")


def start(sfn: Any, state_machine_arn: str, name: str, payload: Mapping[str, Any]) -> tuple[str, bool]:
    """Start the execution, or find the one this change already started: ``(arn, started_new)``."""
    from botocore.exceptions import BotoCoreError, ClientError

    existing = execution_arn(state_machine_arn, name)
    try:  # a running execution with the same name and input would be "started" again idempotently
        sfn.describe_execution(executionArn=existing)
        return existing, False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ExecutionDoesNotExist":
            raise _aws_fault("DescribeExecution", exc) from exc
    except BotoCoreError as exc:
        raise _aws_fault("DescribeExecution", exc) from exc
    try:
        resp = sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload))
        return str(resp["executionArn"]), True
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ExecutionAlreadyExists":  # another job started it in between
            return existing, False
        if code in {"StateMachineDoesNotExist", "InvalidArn", "InvalidName", "InvalidExecutionInput"}:
            raise InputError(f"Step Functions refused the execution: {code}") from None
        raise _aws_fault("StartExecution", exc) from exc
    except BotoCoreError as exc:
        raise _aws_fault("StartExecution", exc) from exc


def _history(sfn: Any, arn: str) -> Iterator[dict[str, Any]]:
    kwargs: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        yield from page["events"]
        if not page.get("nextToken"):
            return
        kwargs["nextToken"] = page["nextToken"]


def _input_error_names() -> set[str]:
    return {name for name, cls in vars(exceptions).items()
            if isinstance(cls, type) and issubclass(cls, InputError)}


def _verification_error_names() -> set[str]:
    return {name for name, cls in vars(exceptions).items()
            if isinstance(cls, type) and issubclass(cls, exceptions.MigsafeError) and cls.exit_code == EXIT_FAIL}


def _task_error(event: Mapping[str, Any]) -> tuple[str, str] | None:
    for key in ("taskFailedEventDetails", "lambdaFunctionFailedEventDetails"):
        if key in event:
            details = event[key]
            return str(details.get("error") or ""), str(details.get("cause") or "")
    return None


def _exit_for_error(error: str, cause: str) -> int:
    if error in _input_error_names():
        return EXIT_INPUT
    if error in _verification_error_names():
        return EXIT_FAIL
    if error == "States.TaskFailed":  # an ECS task: the worker's exit code says which family
        try:
            containers = json.loads(cause).get("Containers") or []
            code = int(containers[0].get("ExitCode"))
        except (ValueError, TypeError, IndexError, AttributeError):
            return EXIT_FAULT
        return code if code in (EXIT_FAIL, EXIT_INPUT) else EXIT_FAULT
    return EXIT_FAULT


class Follower:
    """Polls one execution; reports each state as it is entered, once."""

    def __init__(self, sfn: Any, arn: str, say: Say) -> None:
        self.sfn, self.arn, self.say = sfn, arn, say
        self.seen: set[int] = set()
        self.states: list[str] = []
        self.caught: tuple[str, str] | None = None
        self.failed_state: str | None = None
        self.evaluation: dict[str, Any] | None = None

    def poll(self) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            # status first: once it reads finished, the history read after it holds every event
            # (the other order drops the last states of an execution that ends between the two calls)
            status = str(self.sfn.describe_execution(executionArn=self.arn)["status"])
            events = list(_history(self.sfn, self.arn))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ExecutionDoesNotExist":
                raise InputError(f"execution {self.arn} does not exist") from None
            raise _aws_fault("GetExecutionHistory", exc) from exc
        except BotoCoreError as exc:
            raise _aws_fault("GetExecutionHistory", exc) from exc
        for event in sorted(events, key=lambda e: int(e["id"])):
            if int(event["id"]) in self.seen:
                continue
            self.seen.add(int(event["id"]))
            if event["type"].endswith("StateEntered"):
                name = str(event["stateEnteredEventDetails"]["name"])
                self.states.append(name)
                self.say(f"→ {name}")
                if name.endswith(" failed") and self.failed_state is None:
                    self.failed_state = name.removesuffix(" failed")
            error = _task_error(event)
            if error is not None and self.failed_state is None:  # the error the Catch caught
                self.caught = error
            for key in ("taskSucceededEventDetails", "lambdaFunctionSucceededEventDetails"):
                output = event.get(key, {}).get("output")
                if output:
                    self._look_for_evaluation(output)
        return status

    def _look_for_evaluation(self, output: str) -> None:
        try:
            data = json.loads(output)
        except ValueError:
            return
        if isinstance(data, dict) and data.get("verdict") in {"PASS", "FAIL"} and "result_url" in data:
            self.evaluation = data

    def outcome(self, status: str, started_new: bool) -> Outcome:
        out = Outcome(self.arn, status, EXIT_FAULT, started_new=started_new, states=self.states,
                      failed_state=self.failed_state)
        if self.evaluation:
            out.verdict = self.evaluation.get("verdict")
            out.report_url = self.evaluation.get("report_url")
            out.result_url = self.evaluation.get("result_url")
        if status == "SUCCEEDED":
            out.exit_code, out.verdict = EXIT_PASS, "PASS"
        elif status == "FAILED":
            failed = self._execution_error()
            if failed == VERDICT_FAIL:
                out.exit_code, out.verdict, out.error = EXIT_FAIL, "FAIL", failed
            elif self.caught is not None:
                out.error = self.caught[0]
                out.exit_code = _exit_for_error(*self.caught)
            else:
                out.error = failed
        elif status in FINISHED:
            out.error = status
        return out

    def _execution_error(self) -> str | None:
        for event in _history(self.sfn, self.arn):
            if event["type"] == "ExecutionFailed":
                return str(event.get("executionFailedEventDetails", {}).get("error"))
        return None


def run_gate(
    plan: Plan,
    store: Store,
    sfn: Any,
    state_machine_arn: str,
    *,
    wait: bool,
    timeout_seconds: float,
    say: Say,
    create_snapshot: bool = False,
    attempt: int = 1,
    poll_seconds: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Push, start (or follow), and with ``wait`` follow to the end or the timeout."""
    check_state_machine_arn(state_machine_arn)
    if attempt < 1:
        raise PlanInvalid("attempt must be 1 or more")
    pushed = bundle.push(plan, store)
    say(f"bundle {pushed.sha256} {'uploaded to' if pushed.uploaded else 'already in'} {store.location(pushed.key)}")
    name = execution_name(plan, pushed.sha256, attempt)
    arn, started_new = start(sfn, state_machine_arn, name, execution_input(plan, pushed.sha256,
                                                                             create_snapshot=create_snapshot))
    say(f"{'started' if started_new else 'following the existing execution for this change'}: {arn}")
    follower = Follower(sfn, arn, say)
    if not wait:
        status = follower.poll()
        out = follower.outcome(status, started_new) if status in FINISHED else Outcome(
            arn, status, EXIT_PASS, started_new=started_new, states=follower.states)
        return out
    deadline = clock() + timeout_seconds
    while True:
        status = follower.poll()
        if status in FINISHED:
            return follower.outcome(status, started_new)
        if clock() >= deadline:
            out = Outcome(arn, "RUNNING", EXIT_FAULT, started_new=started_new, states=follower.states,
                          error="GateTimeout")
            return out
        sleep(poll_seconds)
