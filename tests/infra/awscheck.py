"""Mechanical checks of the synthesized stack against what AWS itself enforces.

moto folds parameter casing and enforces neither IAM nor KMS, so a definition can pass every e2e
test and still fail its first real execution. These checks read the synthesized template and the
ASL definitions and compare them with botocore's service models (the same models the AWS SDKs
are generated from) and with the template's IAM policies. Each check returns a list of violations
(one readable line each) so that the tests can also feed it deliberately broken copies.

Naming rules (Step Functions docs, "AWS SDK service integrations", and the AWS SDK for Java v2
code generator, ``Utils.unCapitalize`` / ``CodegenNamingUtils.pascalCase``):

- aws-sdk parameters are the Java v2 member names with the first letter upper-cased:
  ``DBInstanceIdentifier`` -> ``dbInstanceIdentifier`` -> ``DbInstanceIdentifier``; ``MultiAZ``
  stays ``MultiAZ``; ``SSEKMSKeyId`` becomes ``SsekmsKeyId``.
- aws-sdk errors are ``<Service>.<JavaExceptionName>``: the service is the pascal-cased service id
  (``Rds``, ``AcmPca``), the exception ``pascalCase(shape)`` with ``Fault`` replaced by / suffixed
  with ``Exception`` (``DBInstanceNotFoundFault`` -> ``DbInstanceNotFoundException``); the service's
  base exception is ``<Service>.<Service>Exception``.
- optimized integrations (``ecs:runTask``, ``sns:publish``, ``lambda:invoke``,
  ``states:startExecution``) take the API's own member names, first letter upper-cased, and name
  errors after the SDK for Java v1 (``ECS.AmazonECSException``, ``Lambda.AWSLambdaException``).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
from botocore import xform_name
from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StructureShape

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ROOT / "functions"

# --- botocore ---------------------------------------------------------------------------------
# aws-sdk integration service names that differ from botocore's
SDK_SERVICE_ALIASES = {"sfn": "stepfunctions", "elasticloadbalancingv2": "elbv2", "cloudwatchlogs": "logs"}


@cache
def service_model(name: str) -> ServiceModel:
    session = botocore.session.get_session()
    return ServiceModel(session.get_service_data(SDK_SERVICE_ALIASES.get(name, name)))


def iam_prefix(service: str) -> str:
    meta = service_model(service).metadata
    return str(meta.get("signingName") or meta["endpointPrefix"])


def un_capitalize(name: str) -> str:
    """Java v2 ``Utils.unCapitalize``: lower-case the leading capitals, but not the one that starts
    the next word (``DBInstance`` -> ``dbInstance``, ``MultiAZ`` -> ``multiAZ``)."""
    out = []
    i = 0
    while True:
        out.append(name[i].lower())
        i += 1
        if not (i < len(name) and name[i].isupper()):
            break
        if i < len(name) - 1 and name[i + 1].islower():
            break
    return "".join(out) + name[i:]


RESERVED_MEMBERS = {"equals": "EqualsValue"}


def sfn_member(name: str) -> str:
    """The name Step Functions gives a botocore member: Java v2's, first letter upper-cased."""
    java = un_capitalize(name)
    if java in RESERVED_MEMBERS:
        return RESERVED_MEMBERS[java]
    return java[0].upper() + java[1:]


def _split_words(text: str) -> list[str]:
    """Java v2 ``CodegenNamingUtils.splitOnWordBoundaries``."""
    s = re.sub(r"[^A-Za-z0-9]+", " ", text)
    s = re.sub(r"([^a-z]{2,})v([0-9]+)", r"\1 v\2 ", s)
    s = re.sub(r"([^A-Z]{2,})V([0-9]+)", r"\1 V\2 ", s)
    s = " ".join(re.split(r"(?<=[a-z])(?=[A-Z]([a-zA-Z]|[0-9]))", s)[::2])
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", s)
    s = re.sub(r"([0-9])([a-zA-Z])", r"\1 \2", s)
    return re.sub(r" +", " ", s).strip().split(" ")


def pascal(text: str) -> str:
    return "".join(w.lower().capitalize() for w in _split_words(text))


def java_exception(shape_name: str) -> str:
    if shape_name.endswith("Fault"):
        return pascal(shape_name[: -len("Fault")]) + "Exception"
    if shape_name.endswith("Exception"):
        return pascal(shape_name)
    return pascal(shape_name) + "Exception"


def operation(service: str, action: str) -> OperationModel:
    """The botocore operation behind an integration's ``action`` (``deleteDBInstance``); only an exact
    match counts (``deleteDbInstance`` does not exist)."""
    model = service_model(service)
    name = action[0].upper() + action[1:]
    if name not in model.operation_names:
        close = [o for o in model.operation_names if o.lower() == name.lower()]
        hint = f" (did you mean {close[0][0].lower() + close[0][1:]}?)" if close else ""
        raise LookupError(f"{service} has no operation {action}{hint}")
    return model.operation_model(name)


# --- the definitions --------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    machine: str  # the state machine's logical id
    name: str
    state: dict[str, Any]

    @property
    def resource(self) -> str:
        return str(self.state["Resource"])

    @property
    def where(self) -> str:
        return f"{self.machine} / {self.name!r}"


def walk_states(states: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every state, recursively through Parallel branches and Map iterators."""
    for name, state in states.items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from walk_states(branch["States"])
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                yield from walk_states(state[key]["States"])


def tasks(machine: str, asl: Mapping[str, Any]) -> list[Task]:
    return [Task(machine, n, s) for n, s in walk_states(asl["States"]) if s["Type"] == "Task"]


_INTEGRATION = re.compile(r"^arn:[^:]+:states:::(?P<rest>.+)$")


@dataclass(frozen=True)
class Integration:
    kind: str  # "aws-sdk", "optimized" or "lambda-arn"
    service: str  # botocore service name ("" for a Lambda ARN)
    action: str  # the API action as written ("deleteDBInstance", "runTask", "publish")
    pattern: str  # "", "sync", "sync:2", "waitForTaskToken"


def integration(resource: str) -> Integration:
    m = _INTEGRATION.match(resource)
    if not m:
        return Integration("lambda-arn", "lambda", "invoke", "")
    rest = m.group("rest")
    pattern = ""
    if "." in rest.split(":")[-1] or ".sync" in rest:
        rest, _, pattern = rest.partition(".")
    parts = rest.split(":")
    if parts[0] == "aws-sdk":
        return Integration("aws-sdk", SDK_SERVICE_ALIASES.get(parts[1], parts[1]), parts[2], pattern)
    service = {"states": "stepfunctions"}.get(parts[0], parts[0])
    return Integration("optimized", service, parts[1], pattern)


# optimized integrations: the botocore operation and, for .sync, the shape Step Functions returns
OPTIMIZED_OUTPUT = {("ecs", "runTask", "sync"): ("ecs", "Task"),
                    ("stepfunctions", "startExecution", "sync"): ("stepfunctions", "DescribeExecutionOutput"),
                    ("stepfunctions", "startExecution", "sync:2"): ("stepfunctions", "DescribeExecutionOutput")}
# JSON the integration serializes itself (SNS: the connect-sns docs publish a JSON object as Message)
FREE_FORM = {("lambda", "Payload"), ("stepfunctions", "Input"), ("sns", "Message")}


# --- parameter shapes -------------------------------------------------------------------------
def _strip(key: str) -> str:
    return key[:-2] if key.endswith(".$") else key


def check_value(service: str, shape: Shape, value: Any, where: str, dynamic: bool) -> list[str]:
    if dynamic:
        return []  # a JSONPath or intrinsic: its type is only known at run time
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            return [f"{where}: {shape.name} is a structure, got {type(value).__name__}"]
        return check_structure(service, shape, value, where)
    if isinstance(shape, ListShape):
        if not isinstance(value, list):
            return [f"{where}: {shape.name} is a list, got {type(value).__name__}"]
        out: list[str] = []
        for i, item in enumerate(value):
            out += check_value(service, shape.member, item, f"{where}[{i}]", False)
        return out
    if isinstance(shape, MapShape):
        if not isinstance(value, dict):
            return [f"{where}: {shape.name} is a map, got {type(value).__name__}"]
        out = []
        for k, v in value.items():
            out += check_value(service, shape.value, v, f"{where}.{_strip(k)}", k.endswith(".$"))
        return out
    expected = {"string": str, "boolean": bool, "integer": int, "long": int, "double": (int, float),
                "float": (int, float), "timestamp": str}.get(shape.type_name)
    if expected and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        return [f"{where}: {shape.type_name} expected, got {value!r}"]
    return []


def check_structure(service: str, shape: StructureShape, params: Mapping[str, Any], where: str) -> list[str]:
    members = {sfn_member(m): m for m in shape.members}
    lowered = {k.lower(): k for k in members}
    out: list[str] = []
    given = set()
    for key, value in params.items():
        name = _strip(key)
        if name in members:
            given.add(name)
            member = shape.members[members[name]]
            if (service, name) in FREE_FORM:
                continue
            out += check_value(service, member, value, f"{where}.{name}", key.endswith(".$"))
        elif name.lower() in lowered:
            out.append(f"{where}.{name}: only a case-insensitive match of {lowered[name.lower()]} "
                       f"({shape.name}); AWS rejects it, moto would not")
        else:
            out.append(f"{where}.{name}: not a member of {shape.name} (members: {', '.join(sorted(members))})")
    for required in shape.required_members:
        if sfn_member(required) not in given:
            out.append(f"{where}: required member {sfn_member(required)} of {shape.name} is missing")
    return out


def _paths(value: Any) -> Iterator[str]:
    """JSONPaths (``$.a.b[0]``, not context ``$$``) in a ResultSelector value or intrinsic."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _paths(v)
    elif isinstance(value, str):
        yield from re.findall(r"(?<![$\w])\$(?:\.[A-Za-z0-9_]+|\[\d+\])+", value)


def check_output_path(shape: Shape, path: str, where: str) -> list[str]:
    current: Shape | None = shape
    for token in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        name, index = token
        if current is None:
            return []
        if index:
            if not isinstance(current, ListShape):
                return [f"{where}: {path}: [{index}] on {current.name}, which is not a list"]
            current = current.member
            continue
        if isinstance(current, MapShape):
            current = current.value
            continue
        if not isinstance(current, StructureShape):
            return [f"{where}: {path}: .{name} on {current.name}, which is not a structure"]
        members = {sfn_member(m): m for m in current.members}
        if name not in members:
            close = [k for k in members if k.lower() == name.lower()]
            hint = f" (case-insensitive match {close[0]}: AWS returns that)" if close else ""
            return [f"{where}: {path}: {current.name} has no {name}{hint}"]
        current = current.members[members[name]]
    return []


def check_task_shapes(task: Task) -> list[str]:
    """Parameters against the input shape, ResultSelector paths against the output shape."""
    it = integration(task.resource)
    if it.kind == "lambda-arn":
        return []  # the Parameters are the function's own payload
    try:
        op = operation(it.service, it.action)
    except (LookupError, botocore.exceptions.UnknownServiceError) as exc:
        return [f"{task.where}: {task.resource}: {exc}"]
    out: list[str] = []
    params = task.state.get("Parameters", {})
    if op.input_shape is not None:
        out += check_structure(it.service, op.input_shape, params, f"{task.where} Parameters")
    elif params:
        out.append(f"{task.where}: {op.name} takes no parameters")
    selector = task.state.get("ResultSelector")
    if selector and it.pattern != "waitForTaskToken":
        if (it.service, it.action, it.pattern) in OPTIMIZED_OUTPUT:
            svc, shape_name = OPTIMIZED_OUTPUT[(it.service, it.action, it.pattern)]
            output: Shape | None = service_model(svc).shape_for(shape_name)
        else:
            output = op.output_shape
        if output is None:
            out.append(f"{task.where}: ResultSelector on {op.name}, which returns nothing")
        else:
            for path in _paths(selector):
                out += check_output_path(output, path, f"{task.where} ResultSelector")
    return out


# --- error names --------------------------------------------------------------------------------
STATES_ERRORS = {"States.ALL", "States.DataLimitExceeded", "States.ExceedToleratedFailureThreshold",
                 "States.HeartbeatTimeout", "States.Http.Socket", "States.IntrinsicFailure",
                 "States.ItemReaderFailed", "States.NoChoiceMatched", "States.ParameterPathFailure",
                 "States.Permissions", "States.ResultPathMatchFailure", "States.ResultWriterFailed",
                 "States.Runtime", "States.TaskFailed", "States.Timeout", "States.BranchFailed",
                 "States.QueryEvaluationError"}
# optimized integrations: error prefix and the client-side/base names Step Functions documents
OPTIMIZED_ERRORS = {
    "lambda": ("Lambda", {"Lambda.AWSLambdaException", "Lambda.SdkClientException", "Lambda.Unknown",
                          "Lambda.ClientExecutionTimeoutException"}),
    "ecs": ("ECS", {"ECS.AmazonECSException"}),
    "sns": ("SNS", {"SNS.AmazonSNSException", "SNS.SnsException"}),
    "stepfunctions": ("StepFunctions", {"StepFunctions.AWSStepFunctionsException"}),
}


def exception_classes() -> set[str]:
    """The class names migsafe/exceptions.py defines."""
    tree = ast.parse((FUNCTIONS / "migsafe" / "exceptions.py").read_text())
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef)}


def _module_path(module: str) -> Path | None:
    base = FUNCTIONS.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(module: str, tree: ast.AST) -> set[str]:
    found: set[str] = set()
    package = module if (_module_path(module) or Path()).name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def module_graph(entry: str) -> dict[str, ast.Module]:
    """The modules under functions/ that ``entry`` imports, transitively (function-level imports too)."""
    seen: dict[str, ast.Module] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_path(name)
        if path is None:
            continue
        tree = ast.parse(path.read_text())
        seen[name] = tree
        todo += [m for m in _imports(name, tree) if m.split(".")[0] in {"migsafe", "handlers"}]
    return seen


def raised_names(entry: str) -> set[str]:
    """The exception classes ``raise X(...)`` names anywhere ``entry`` reaches."""
    names: set[str] = set()
    for tree in module_graph(entry).values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif isinstance(target, ast.Attribute):
                    names.add(target.attr)
    return names


def task_failure_names() -> set[str]:
    """Error names migsafe's code passes to ``send_task_failure(error=...)`` (literals, or module
    constants named in the call)."""
    names: set[str] = set()
    for path in FUNCTIONS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        constants = {t.id: n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                     and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                     for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "send_task_failure":
                for kw in node.keywords:
                    if kw.arg == "error" and isinstance(kw.value, ast.Constant):
                        names.add(str(kw.value.value))
                    elif kw.arg == "error" and isinstance(kw.value, ast.Name) and kw.value.id in constants:
                        names.add(constants[kw.value.id])
    return names


def emitted_errors(task: Task, handler_of: Mapping[str, str]) -> set[str]:
    """Every error name Step Functions can report for ``task``."""
    it = integration(task.resource)
    names = set(STATES_ERRORS)
    if it.pattern == "waitForTaskToken":  # whoever returns the token may fail it with its own name
        names |= task_failure_names()
    if it.kind == "aws-sdk":
        model = service_model(it.service)
        prefix = pascal(model.metadata["serviceId"])
        names.add(f"{prefix}.{prefix}Exception")
        try:
            op = operation(it.service, it.action)
        except LookupError:
            return names
        names |= {f"{prefix}.{java_exception(e.name)}" for e in op.error_shapes}
        return names
    prefix, base = OPTIMIZED_ERRORS.get(it.service, (it.service.capitalize(), set()))
    names |= base
    try:
        op = operation(it.service, it.action)
        names |= {f"{prefix}.{e.name}" for e in op.error_shapes}
        names |= {f"{prefix}.{java_exception(e.name)}" for e in op.error_shapes}
    except LookupError:
        pass
    if it.service == "lambda":  # the function's own errors: the classes it really raises
        function = task.resource if it.kind == "lambda-arn" else str(task.state.get("Parameters", {}).get("FunctionName"))
        handler = handler_of.get(function)
        if handler:
            module = handler.rpartition(".")[0]
            names |= raised_names(module) & exception_classes()
    return names


def _escapes(states: Mapping[str, Any], handler_of: Mapping[str, str], machine: str) -> set[str]:
    """Errors that can leave a Parallel branch or Map iterator: its tasks' and its Fail states'."""
    names = set(STATES_ERRORS)
    for name, state in walk_states(states):
        if state["Type"] == "Task":
            names |= emitted_errors(Task(machine, name, state), handler_of)
        elif state["Type"] == "Fail" and "Error" in state:
            names.add(state["Error"])
    return names


def check_error_names(machine: str, asl: Mapping[str, Any], handler_of: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for name, state in walk_states(asl["States"]):
        if state["Type"] == "Task":
            allowed = emitted_errors(Task(machine, name, state), handler_of)
        elif state["Type"] == "Parallel":
            allowed = set().union(*(_escapes(b["States"], handler_of, machine) for b in state["Branches"]))
        elif state["Type"] == "Map":
            inner = state.get("ItemProcessor") or state["Iterator"]
            allowed = _escapes(inner["States"], handler_of, machine)
        else:
            continue
        for rule in [*state.get("Retry", []), *state.get("Catch", [])]:
            for error in rule["ErrorEquals"]:
                if error not in allowed:
                    out.append(f"{machine} / {name!r}: {error} is never emitted by {state.get('Resource', state['Type'])}")
    return out


# --- the template: canonical ARNs and IAM -------------------------------------------------------
ARN_OF = {  # CloudFormation type -> (Ref form, GetAtt Arn form), {id} the logical id
    "AWS::SNS::Topic": ("arn:aws:sns:us-east-1:123456789012:{id}", None),
    "AWS::ECS::TaskDefinition": ("arn:aws:ecs:us-east-1:123456789012:task-definition/{family}:1",
                                 None),
    "AWS::KMS::Key": ("{id}", "arn:aws:kms:us-east-1:123456789012:key/{id}"),
    "AWS::IAM::Role": ("{id}", "arn:aws:iam::123456789012:role/{id}"),
    "AWS::Lambda::Function": ("{id}", "arn:aws:lambda:us-east-1:123456789012:function:{id}"),
    "AWS::ECS::Cluster": ("{id}", "arn:aws:ecs:us-east-1:123456789012:cluster/{id}"),
    "AWS::S3::Bucket": ("{id}", "arn:aws:s3:::{id}"),
    "AWS::SecretsManager::Secret": ("arn:aws:secretsmanager:us-east-1:123456789012:secret:{id}",
                                    None),
    "AWS::Logs::LogGroup": ("{id}", "arn:aws:logs:us-east-1:123456789012:log-group:{id}:*"),
    "AWS::StepFunctions::StateMachine": ("arn:aws:states:us-east-1:123456789012:stateMachine:{id}",
                                         None),
}


PSEUDO = {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012",
          "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": "Migsafe", "AWS::NoValue": ""}


@dataclass
class Template:
    """A synthesized template with references rendered as the ARNs they resolve to (logical ids
    stand in for generated names, ``us-east-1`` for pseudo parameters)."""

    data: dict[str, Any]
    statements_of: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict(self.data["Resources"])

    def _ref(self, target: str, attr: str | None) -> str:
        if target in PSEUDO:
            return PSEUDO[target]
        res = self.resources.get(target)
        if res is None:
            return "${" + target + "}"
        forms = ARN_OF.get(res["Type"])
        family = res.get("Properties", {}).get("Family", target)
        if forms is None:
            return "${" + target + (f".{attr}" if attr else "") + "}"
        ref, arn = forms
        form = ref if attr is None else (arn if attr == "Arn" else None)
        if form is None:
            return "${" + f"{target}.{attr}" + "}"
        return form.replace("{id}", target).replace("{family}", str(family))

    def render(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float, bool)):
            return str(value)
        if isinstance(value, dict):
            if "Ref" in value:
                return self._ref(value["Ref"], None)
            if "Fn::GetAtt" in value:
                target, attr = value["Fn::GetAtt"]
                return self._ref(target, attr)
            if "Fn::Join" in value:
                sep, parts = value["Fn::Join"]
                return sep.join(self.render(p) for p in parts)
            if "Fn::Select" in value:
                index, items = value["Fn::Select"]
                return self._list(items)[int(index)]
            if "Fn::Sub" in value:
                text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
                return re.sub(r"\$\{([^}!]+)\}", lambda m: self._ref(*[*m.group(1).split(".", 1), None][:2]), text)
            if "Fn::If" in value:
                return self.render(value["Fn::If"][2])
        return "${" + repr(value) + "}"

    def _list(self, value: Any) -> list[str]:
        if isinstance(value, dict) and "Fn::Split" in value:
            sep, source = value["Fn::Split"]
            return self.render(source).split(sep)
        if isinstance(value, list):
            return [self.render(v) for v in value]
        raise ValueError(f"not a list: {value!r}")

    def definitions(self) -> dict[str, dict[str, Any]]:
        """``{logical id: ASL}`` of every state machine, references rendered as canonical ARNs."""
        return {k: json.loads(self.render(r["Properties"]["DefinitionString"]))
                for k, r in self.resources.items() if r["Type"] == "AWS::StepFunctions::StateMachine"}

    def handlers(self) -> dict[str, str]:
        """``{function ARN: handler}`` of every Lambda function (``handlers.validate.plan_handler``)."""
        return {self._ref(k, "Arn"): str(r["Properties"]["Handler"])
                for k, r in self.resources.items() if r["Type"] == "AWS::Lambda::Function"
                and "Handler" in r.get("Properties", {})}

    def role_of(self, logical_id: str, prop: str) -> str | None:
        value = self.resources[logical_id]["Properties"].get(prop)
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            return str(value["Fn::GetAtt"][0])
        if isinstance(value, dict) and "Ref" in value:
            return str(value["Ref"])
        return None

    def statements(self, role: str) -> list[dict[str, Any]]:
        """Every identity-policy statement attached to ``role`` (inline, AWS::IAM::Policy, customer
        managed)."""
        if role in self.statements_of:
            return self.statements_of[role]
        found: list[dict[str, Any]] = []
        for res in self.resources.values():
            props = res.get("Properties", {})
            if res["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"} and \
                    {"Ref": role} in props.get("Roles", []):
                found += props["PolicyDocument"]["Statement"]
        for policy in self.resources.get(role, {}).get("Properties", {}).get("Policies", []):
            found += policy["PolicyDocument"]["Statement"]
        self.statements_of[role] = found
        return found

    def allows(self, role: str, action: str, resource: str) -> bool:
        def listed(value: Any) -> list[Any]:
            return value if isinstance(value, list) else [value]

        def matches(statement: dict[str, Any]) -> bool:
            actions = [a.lower() for a in listed(statement.get("Action", []))]
            if not any(fnmatch.fnmatchcase(action.lower(), a) for a in actions):
                return False
            patterns = [self.render(r) for r in listed(statement.get("Resource", []))]
            return any(fnmatch.fnmatchcase(resource, p) for p in patterns)

        statements = self.statements(role)
        if any(s["Effect"] == "Deny" and matches(s) for s in statements):
            return False
        return any(s["Effect"] == "Allow" and matches(s) for s in statements)


# --- IAM coverage of the state machines -------------------------------------------------------
ACCOUNT = "aws:{svc}:us-east-1:123456789012"
ECS_SYNC_RULE = "arn:aws:events:us-east-1:123456789012:rule/StepFunctionsGetEventsForECSTaskRule"
# RDS parameters that name a resource the action is authorized on (Service Authorization Reference)
RDS_RESOURCES = {"DbInstanceIdentifier": "db", "DbSnapshotIdentifier": "snapshot", "TargetDbSnapshotIdentifier": "snapshot",
                 "SourceDbSnapshotIdentifier": "snapshot", "DbSubnetGroupName": "subgrp",
                 "DbParameterGroupName": "pg", "OptionGroupName": "og", "DbClusterIdentifier": "cluster",
                 "SourceDBClusterIdentifier": "cluster", "DbClusterParameterGroupName": "cluster-pg",
                 "DbClusterSnapshotIdentifier": "cluster-snapshot"}
# RestoreDBClusterFromSnapshot names its cluster snapshot SnapshotIdentifier (a cluster-snapshot resource)
RDS_OPERATION_RESOURCES = {"RestoreDBClusterFromSnapshot": {"SnapshotIdentifier": "cluster-snapshot"}}


def _rds_arn(kind: str, name: str) -> str:
    if name.startswith("arn:"):
        return name
    return f"arn:{ACCOUNT.replace('{svc}', 'rds')}:{kind}:{name}"


def required_calls(task: Task, template: Template, samples: Mapping[str, list[str]]) -> tuple[
        list[tuple[str, str]], list[str]]:
    """``([(iam action, resource ARN)], [problems])`` a Task needs, with sample values standing in
    for the JSONPaths its parameters read."""
    it = integration(task.resource)
    params = task.state.get("Parameters", {})
    problems: list[str] = []

    def values(key: str) -> list[str]:
        if key in params:
            return [template.render(params[key])]
        path = params.get(f"{key}.$")
        if path is None:
            return []
        if f"{task.name}|{path}" in samples:  # a state that only ever sees some of the values
            return list(samples[f"{task.name}|{path}"])
        if path not in samples:
            problems.append(f"{task.where}: no sample value for {path} (add one to SAMPLES in tests/infra/test_iam.py)")
            return []
        return list(samples[path])

    if it.kind == "lambda-arn" or (it.service == "lambda" and it.action == "invoke"):
        fn = task.resource if it.kind == "lambda-arn" else (values("FunctionName") or [""])[0]
        fn = re.sub(r"\$\{([^.}]+)\.Arn\}", lambda m: template._ref(m.group(1), "Arn"), fn)
        return [("lambda:InvokeFunction", fn)], problems
    if it.kind == "optimized" and it.service == "sns" and it.action == "publish":
        calls = [("sns:Publish", t) for t in values("TopicArn")]
        for t in values("TopicArn"):
            topic_id = next((k for k, r in template.resources.items() if template._ref(k, None) == t), None)
            key = topic_id and template.resources[topic_id]["Properties"].get("KmsMasterKeyId")
            if key:
                key_arn = template.render(key)
                calls += [("kms:GenerateDataKey", key_arn), ("kms:Decrypt", key_arn)]
        return calls, problems
    if it.kind == "optimized" and it.service == "ecs" and it.action == "runTask":
        calls = []
        for td in values("TaskDefinition"):
            td_id = next((k for k, r in template.resources.items() if r["Type"] == "AWS::ECS::TaskDefinition"
                          and td in (template._ref(k, None), r["Properties"].get("Family"))), None)
            if not td.startswith("arn:"):  # a family: RunTask picks its latest revision
                td = f"arn:aws:ecs:us-east-1:123456789012:task-definition/{td}:1"
            calls.append(("ecs:RunTask", td))
            if td_id:
                for prop in ("TaskRoleArn", "ExecutionRoleArn"):
                    role = template.role_of(td_id, prop)
                    if role:
                        calls.append(("iam:PassRole", template._ref(role, "Arn")))
        if it.pattern == "sync":
            calls += [("ecs:StopTask", "*"), ("ecs:DescribeTasks", "*"), ("events:PutTargets", ECS_SYNC_RULE),
                      ("events:PutRule", ECS_SYNC_RULE), ("events:DescribeRule", ECS_SYNC_RULE)]
        return calls, problems
    if it.kind == "optimized" and it.service == "stepfunctions" and it.action == "startExecution":
        return [("states:StartExecution", m) for m in values("StateMachineArn")], problems
    if it.kind == "aws-sdk":
        try:
            op = operation(it.service, it.action)
        except LookupError as exc:
            return [], [f"{task.where}: {exc}"]
        action = f"{iam_prefix(it.service)}:{op.name}"
        if it.service == "secretsmanager" and (values("SecretId") or values("Name")):
            return [(action, v if v.startswith("arn:") else
                     f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{v}-AbCdEf")
                    for v in values("SecretId") + values("Name")], problems
        if it.service == "s3" and values("Bucket"):
            return s3_calls(template, _iam(action), values("Bucket"), values("Key") or values("Prefix")), problems
        if it.service != "rds":
            return [(action, "")], problems  # resources modeled for RDS, S3, Secrets Manager; "" = any statement
        calls = []
        for key, kind in {**RDS_RESOURCES, **RDS_OPERATION_RESOURCES.get(op.name, {})}.items():
            calls += [(action, _rds_arn(kind, v)) for v in values(key)]
        if "Tags" in params:  # tagging on create is authorized separately, on the created resource
            created = [c for c in calls if ":db:" in c[1] or ":snapshot:" in c[1]]
            if op.name.startswith("RestoreDBCluster"):  # the new cluster (not its source)
                created = [(action, _rds_arn("cluster", v)) for v in values("DbClusterIdentifier")]
            elif op.name.startswith("Create") and "DbSnapshotIdentifier" in {_strip(k) for k in params}:
                created = [c for c in calls if ":snapshot:" in c[1]]
            elif op.name.startswith("Restore") or op.name.startswith("Create"):
                created = [c for c in calls if ":db:" in c[1]]
            calls += [("rds:AddTagsToResource", r) for _, r in created]
        return calls or [(action, "")], problems
    return [], [f"{task.where}: no IAM model for {task.resource}"]


def s3_calls(template: Template, action: str, buckets: list[str], keys: list[str]) -> list[tuple[str, str]]:
    """An S3 action on the stack's bucket(s), plus the bucket key's KMS actions when it is SSE-KMS."""
    calls = []
    for bucket in buckets:
        arn = bucket if bucket.startswith("arn:") else f"arn:aws:s3:::{bucket}"
        calls += [(action, arn if action in S3_BUCKET_ACTIONS else f"{arn}/{k}") for k in (keys or ["*"])]
        res = template.resources.get(bucket.removeprefix("arn:aws:s3:::"), {})
        encryption = res.get("Properties", {}).get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [{}])
        key = encryption[0].get("ServerSideEncryptionByDefault", {}).get("KMSMasterKeyID")
        if key is not None:
            calls += [(kms_action, template.render(key)) for kms_action in S3_KMS.get(action, [])]
    return calls


def check_task_iam(task: Task, template: Template, role: str, samples: Mapping[str, list[str]]) -> list[str]:
    calls, out = required_calls(task, template, samples)
    for action, resource in calls:
        if resource == "":
            ok = any(template.allows(role, action, r) for r in ("*", "arn:*", "?*"))
            ok = ok or any(fnmatch.fnmatchcase(action.lower(), a.lower())
                           for s in template.statements(role) if s["Effect"] == "Allow"
                           for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))
        else:
            ok = template.allows(role, action, resource)
        if not ok:
            out.append(f"{task.where}: role {role} lacks {action} on {resource or 'any resource'}")
    return out


# --- boto3 calls of the Lambda and worker code ------------------------------------------------
def client_operations(service: str) -> dict[str, str]:
    """``{"describe_db_instances": "DescribeDBInstances", ...}`` for a boto3 client."""
    return {xform_name(op): op for op in service_model(service).operation_names}


def boto3_calls(entry: str) -> set[str]:
    """The IAM actions behind the boto3 calls reachable from ``entry`` (a module under functions/):
    clients made with ``boto3.client("<service>")``, then every ``x.<operation>(...)`` and
    ``x.get_paginator("<operation>")`` of those services in the same modules."""
    trees = list(module_graph(entry).values())
    found = _scan(trees, _services(trees))
    return found | {i for f in found for i in IMPLIED.get(f, set())}


def _constant(module: str, name: str) -> Any:
    path = _module_path(module)
    assert path is not None, module
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
                return ast.literal_eval(node.value)
    raise LookupError(f"{module} declares no {name}")


def declared_calls(module: str, handler: str | None = None) -> tuple[str, ...]:
    """The module's ``AWS_CALLS`` constant (read from the source: no import, no side effects); with
    ``handler``, that handler's entry of ``AWS_CALLS_BY_HANDLER`` where the module narrows it."""
    if handler is not None:
        try:
            narrowed = _constant(module, "AWS_CALLS_BY_HANDLER")
        except LookupError:
            narrowed = {}
        if handler in narrowed:
            return tuple(narrowed[handler])
    return tuple(_constant(module, "AWS_CALLS"))


# S3 operations authorized by another action name (Service Authorization Reference)
IAM_ACTION_OF = {"s3:ListObjectsV2": "s3:ListBucket", "s3:ListObjects": "s3:ListBucket", "s3:HeadObject": "s3:GetObject",
                 "s3:HeadBucket": "s3:ListBucket", "s3:CreateMultipartUpload": "s3:PutObject",
                 "s3:UploadPart": "s3:PutObject", "s3:CompleteMultipartUpload": "s3:PutObject",
                 "s3:DeleteObjects": "s3:DeleteObject"}
S3_BUCKET_ACTIONS = {"s3:ListBucket"}
# a call that IAM also authorizes as another action (CreateSecret with Tags needs TagResource too)
IMPLIED = {"secretsmanager:CreateSecret": {"secretsmanager:TagResource"}}
S3_KMS = {"s3:GetObject": ["kms:Decrypt"], "s3:PutObject": ["kms:GenerateDataKey", "kms:Decrypt"]}


def _iam(action: str) -> str:
    return IAM_ACTION_OF.get(action, action)


RECEIVER_SERVICE = {"sfn": "stepfunctions", "secrets": "secretsmanager"}  # variable names the code gives clients


def _scan(trees: list[ast.AST], services: set[str]) -> set[str]:
    ops = {svc: client_operations(svc) for svc in services}
    found: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name in {"get_paginator", "get_waiter"} and node.args and isinstance(node.args[0], ast.Constant):
                name = str(node.args[0].value)
            # a receiver named after one of the services (``rds.list_tags_for_resource``) is that client:
            # an operation several services share is then not attributed to the others
            receiver = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            named = RECEIVER_SERVICE.get(receiver, receiver)
            for svc, table in ({named: ops[named]} if named in ops else ops).items():
                if name in table:
                    found.add(_iam(f"{iam_prefix(svc)}:{table[name]}"))
    return found


def _services(trees: list[ast.AST]) -> set[str]:
    services: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "client" \
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                services.add(node.args[0].value)
    return services


def direct_boto3_calls(entry: str) -> set[str]:
    """The calls ``entry`` makes itself: its own code and the bodies of the functions it calls by
    name in other modules (``steps.latest_snapshot(...)``), on the clients it creates."""
    graph = module_graph(entry)
    own = graph[entry]
    called = {n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
              for n in ast.walk(own) if isinstance(n, ast.Call) and isinstance(n.func, (ast.Attribute, ast.Name))}
    bodies: list[ast.AST] = [own]
    for name, tree in graph.items():
        if name != entry:
            bodies += [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name in called]
    return _scan(bodies, _services([own]) | _services(bodies))


def check_code_call(template: Template, role: str, action: str, buckets: list[str], where: str) -> list[str]:
    """A declared call of Lambda or worker code against its role: S3 on the stack's encrypted
    bucket(s), with the bucket key's KMS actions; other services on any resource."""
    if action.startswith("s3:"):
        out = []
        for bucket in buckets:
            arn = template._ref(bucket, "Arn")
            resource = arn if action in S3_BUCKET_ACTIONS else f"{arn}/results/example.json"
            if not template.allows(role, action, resource):
                out.append(f"{where}: role {role} lacks {action} on {resource}")
            key = template.resources[bucket]["Properties"]["BucketEncryption"][
                "ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"].get("KMSMasterKeyID")
            for kms_action in S3_KMS.get(action, []):
                key_arn = template.render(key)
                if key is not None and not template.allows(role, kms_action, key_arn):
                    out.append(f"{where}: role {role} lacks {kms_action} on {key_arn} ({action} on {bucket})")
        return out
    allowed = any(fnmatch.fnmatchcase(action.lower(), a.lower())
                  for s in template.statements(role) if s["Effect"] == "Allow"
                  for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))
    return [] if allowed else [f"{where}: role {role} lacks {action}"]


def check_container_secrets(template: Template) -> list[str]:
    """ECS reads each container secret with the task's *execution* role before the container starts:
    that role needs secretsmanager:GetSecretValue on the secret (and kms:Decrypt on a customer key)."""
    out = []
    for td_id, res in template.resources.items():
        if res["Type"] != "AWS::ECS::TaskDefinition":
            continue
        role = template.role_of(td_id, "ExecutionRoleArn") or ""
        for container in res["Properties"]["ContainerDefinitions"]:
            for secret in container.get("Secrets", []):
                value = template.render(secret["ValueFrom"])
                if ":secretsmanager:" not in value:
                    continue
                arn = ":".join(value.split(":")[:7])
                if not template.allows(role, "secretsmanager:GetSecretValue", arn):
                    out.append(f"{td_id} {secret['Name']}: execution role {role} lacks secretsmanager:GetSecretValue on {arn}")
    return out
