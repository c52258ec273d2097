"""Execute the synthesized state machines with moto's Step Functions interpreter.

moto 5 ships a port of LocalStack's ASL interpreter. It runs the definitions as written (Parallel,
Choice, Retry, Catch, ResultSelector, intrinsic functions); what it cannot do here is reach the
services behind three kinds of Task state, so :class:`Harness` installs a seam for each, at the
interpreter's service-task classes and nowhere else:

- **Lambda** (the function-ARN resource of ``LambdaInvoke``): moto's invoke needs Docker. The seam
  replaces the interpreter's invoke call: it looks the function up in the template by its ARN,
  sets the function's environment (from the template), calls the handler the template names
  (``handlers.validate.plan_handler`` ...) in-process, and returns what Lambda returns: the payload,
  or ``FunctionError`` with ``{"errorType", "errorMessage"}`` when the handler raises -- so the
  definition's Retry/Catch see the package's exception names exactly as on AWS.
- **ECS** (``ecs:runTask.sync``): moto's ECS never runs containers. The seam checks the container
  overrides (the worker's command, its environment), runs ``migsafe.worker.main`` in-process with
  the task definition's environment (from the template) plus the overrides, and answers ``.sync``
  with the stopped task (``ExitCode``); a non-zero exit fails the state with ``States.TaskFailed``
  and the task description as the cause, as ECS ``.sync`` does.
- **RDS** (``aws-sdk:rds:*``): moto's port of the aws-sdk integration skips the request/response
  normalisation LocalStack does (``DbInstanceIdentifier`` -> ``DBInstanceIdentifier`` and back) and
  names errors ``rds.<ExceptionClass>Exception`` instead of AWS's ``Rds.DbInstanceNotFoundException``.
  The seam does both (with the interpreter's own helpers and the botocore model), calls moto's RDS,
  and gives moto's instances a real PostgreSQL behind them: restoring a scratch instance copies the
  test's source database into a throw-away :class:`migsafe.localpg.LocalCluster` (the same code the
  local runner uses), ``describeDBInstances`` reports that cluster's address and port, and deleting
  the instance destroys the cluster.

- **JSONPath**: moto's ``extract_json`` departs from Step Functions for a definite path *through*
  an array index (``$.DbInstances[0].DbInstanceStatus`` yields ``["available"]``; AWS yields
  ``"available"``: a reference path names a single node). The seam evaluates definite paths
  (only ``.name`` and ``[N]`` steps) to the single node, as AWS does, and leaves every other path
  to moto.

- **RDS behind every caller**: moto's ``DBInstance.endpoint`` reports the PostgreSQL behind an
  instance to every caller (the state machine, the Lambdas, the worker); a restored scratch
  accepts TCP logins only with a password (scram), first the one "of snapshot time", and moto's
  ``ModifyDBInstance`` sets a new ``MasterUserPassword`` on that server, as RDS applies it. So a
  worker that logged in with the source's password instead of the one it set fails, as on AWS.
  :attr:`Harness.snapshot_revision` makes restored scratches an older alembic revision (a stale
  snapshot).

- **RDS logs**: an instance created with a DB parameter group that sets what the scratch's own
  group sets (``SCRATCH_LOGGING``: csvlog, every statement) gets that logging on its local cluster,
  as RDS applies a group at creation; ``DescribeDBLogFiles`` and ``DownloadDBLogFilePortion`` (moto
  has neither) are answered from that cluster's csv files at botocore's boundary
  (``tests/rdslog_support.py``), so the worker's reader parses real responses of real csvlog.

- **Aurora**: moto's RDS clones (``RestoreDBClusterToPointInTime``) and restores cluster snapshots,
  but a cluster has no database behind it. The seam gives the *instance* created in a scratch
  cluster (``CreateDBInstance`` with ``DBClusterIdentifier``) a local copy of the source, with the
  source's master password (a clone's), and applies ``ModifyDBCluster``'s ``MasterUserPassword`` to
  it (moto's backend, patched as for instances). :attr:`Harness.stuck_instance_status` makes
  scratch instances report a status forever (one that never becomes available). moto enforces the
  deletion order itself: ``DeleteDBCluster`` with a member left is ``InvalidDBClusterStateFault``.

SNS publishes (``waitForTaskToken`` included: tests answer with ``SendTaskSuccess/Failure``), S3
(the store), Secrets Manager and the RDS API itself are moto's. Faults are injected per seam with
:meth:`Harness.fail_next`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import re
import threading
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import xform_name
from botocore.exceptions import ClientError
from migsafe import worker
from migsafe.dsn import Dsn
from migsafe.scratch import Scratch, create_scratch
from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import CustomErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
    StatesErrorNameType,
)
from moto.stepfunctions.parser.asl.component.common.string import string_expression
from moto.stepfunctions.parser.asl.component.intrinsic.argument import argument
from moto.stepfunctions.parser.asl.component.state.choice.comparison.operator.implementations import (
    boolean_equals,
    numeric,
    string_operators,
    timestamp_operators,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
    state_task_service_aws_sdk,
    state_task_service_ecs,
)
from moto.stepfunctions.parser.asl.eval import states
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.utils import json_path
from moto.stepfunctions.parser.asl.utils.boto_client import boto_client_for
from rdslog_support import enable_csvlog, log_dir, serve_log_files

from infra.definitions import definition_text, state_machines
from infra.workflows import SCRATCH_LOGGING, WORKER_COMMAND

DEFINITE_PATH = re.compile(r"^\$(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\])*$")
JSON_PATH_USERS = [string_expression, argument, boolean_equals, numeric, string_operators, timestamp_operators, states, json_path]
ACCOUNT = "123456789012"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "enum_uppercase"
REGION = "us-east-1"
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
SOURCE_INSTANCE = "migsafe-source"  # cdk.json's default sourceInstanceId
SOURCE_CLUSTER = "migsafe-aurora-source"  # the sourceClusterId the e2e synthesis deploys with (conftest.py)
SOURCE_CLUSTER_PARAMETER_GROUP = "app-aurora-postgresql11"
SOURCE_CLUSTER_SUBNETS = "app-aurora-subnets"
# moto's orderable-options data for aurora-postgresql covers 11.x: the smallest class it offers is db.t4g.medium
SOURCE_CLUSTER_VERSION = "11.9"
SOURCE_PARAMETER_GROUP = "app-postgres"
SOURCE_OPTION_GROUP = "app-postgres-options"
FINISHED = {"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"}


SERVICE_PREFIX = {"rds": "Rds", "secretsmanager": "SecretsManager"}  # the SDK for Java v2 client names
SOURCE_INSTANCES = sorted([SOURCE_INSTANCE, f"{SOURCE_CLUSTER}-writer"])  # what every test leaves in RDS
SNAPSHOT_PASSWORD = "password-at-snapshot-time"  # what a restored scratch accepts at first


def aws_error_name(service: str, code: str) -> str:
    """Step Functions' name for an AWS SDK error: ``Rds.DbInstanceNotFoundException`` for
    ``DBInstanceNotFound`` (the SDK's exception class: acronyms capitalised, ``Exception`` last)."""
    base = re.sub(r"(Fault|Exception)$", "", code)
    base = re.sub(r"([A-Z]+)(?=[A-Z][a-z]|\d|$)", lambda m: m.group(1)[0] + m.group(1)[1:].lower(), base)
    prefix = SERVICE_PREFIX.get(service, f"{service[:1].upper()}{service[1:].lower()}")
    return f"{prefix}.{base}Exception"


def client_error(code: str, message: str, operation: str) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": message},
                     "ResponseMetadata": {"HTTPStatusCode": 400, "RequestId": str(uuid.uuid4())}}
    return ClientError(response, operation)


@contextlib.contextmanager
def raw_rds_error(operation: str, code: str, message: str) -> Iterator[None]:
    """RDS answers ``operation`` with an HTTP 400 and its XML error body, at the botocore boundary
    (``before-send``, ahead of moto): botocore parses it as it would AWS's answer."""
    from botocore.awsrequest import AWSResponse

    body = (f'<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><Error><Type>Sender</Type>'
            f"<Code>{code}</Code><Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
            "</ErrorResponse>").encode()

    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield body

    def answer(request: Any, **_: Any) -> AWSResponse:
        return AWSResponse(request.url, 400, {"Content-Type": "text/xml"}, Raw())

    events = boto3._get_default_session().events
    event = f"before-send.rds.{operation}"
    events.register_first(event, answer)
    try:
        yield
    finally:
        events.unregister(event, answer)


def _env_value(value: Any) -> str:
    """A container override's value as ECS gets it: a string. moto's context object holds
    ``$$.Execution.StartTime`` as a datetime where Step Functions has an ISO 8601 string
    (``2026-12-02T04:17:29.123Z``): rendered that way here."""
    import datetime as dt

    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(value)


def task_failed(**details: str) -> EventDetails:
    """A TaskFailed event's details, as the interpreter records them."""
    event: Any = {"taskFailedEventDetails": TaskFailedEventDetails(**details)}  # type: ignore[typeddict-item]
    return EventDetails(**event)  # type: ignore[typeddict-item]


@dataclass
class FakeContext:
    """What Powertools reads from the Lambda context."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 512
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class Call:
    seam: str  # lambda | ecs | rds
    name: str  # the handler, the worker action or the RDS operation
    ok: bool
    detail: Any = None


class Harness:
    """moto resources named after the template's logical ids, the seams, and execution helpers."""

    def __init__(self, template: dict[str, Any], source: Dsn, runtime_dir: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.template = template
        self.resources: dict[str, dict[str, Any]] = template["Resources"]
        self.source = source
        self.runtime_dir = runtime_dir
        self.monkeypatch = monkeypatch
        self.calls: list[Call] = []
        self.scratches: dict[str, Scratch] = {}  # RDS instance id -> the cluster behind it
        self.instances: dict[str, Dsn] = {}  # other RDS instances with a database behind them
        self.extra_clusters: list[Scratch] = []  # other instances' servers, destroyed at the end
        self.passwords: dict[str, str] = {}  # scratch id -> the master password the worker set
        self.snapshot_revision: str | None = None  # set: restored scratches are at this alembic revision
        self.requests: list[tuple[str, dict[str, Any]]] = []  # every RDS call of the state machines, in order
        self.cluster_of: dict[str, str] = {}  # scratch instance id -> its Aurora scratch cluster
        self.stuck_instance_status: str | None = None  # set: scratch instances report this status forever
        self.approval_seconds = 120  # the approval state's timeout here (an hour on AWS)
        self._faults: dict[tuple[str, str], list[Exception]] = defaultdict(list)
        self._unset_at_close: set[str] = set()
        self._lock = threading.Lock()
        # restores still copying a database when an execution ends (a Parallel whose other branch
        # failed stops waiting for them): close() waits for them, a late one is destroyed at once
        self._restoring = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self.names = self._names()
        self._exit = contextlib.ExitStack()
        self._exit.enter_context(serve_log_files(self._log_dir_of))
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.rds = boto3.client("rds", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.s3 = boto3.client("s3", region_name=REGION)
        self._create_aws_resources()
        self._install_seams()

    # --- names ---------------------------------------------------------------------------------
    def _of_type(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v["Type"] == cfn_type}

    def _one(self, cfn_type: str, fragment: str = "") -> str:
        found = [k for k in self._of_type(cfn_type) if fragment in k]
        assert len(found) == 1, f"{cfn_type} {fragment!r}: {found}"
        return found[0]

    def _names(self) -> dict[str, str]:
        """``{placeholder: value}``: how this test names each resource the definitions reference."""
        bucket = self._one("AWS::S3::Bucket", "Backups")
        names = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                 "AWS::URLSuffix": "amazonaws.com", bucket: f"migsafe-e2e-{uuid.uuid4().hex[:8]}"}
        for logical_id in self._of_type("AWS::Lambda::Function"):
            names[f"{logical_id}.Arn"] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{logical_id}"
        for logical_id in self._of_type("AWS::SNS::Topic"):
            names[logical_id] = f"arn:aws:sns:{REGION}:{ACCOUNT}:{logical_id}"
        for logical_id in self._of_type("AWS::ECS::Cluster"):
            names[f"{logical_id}.Arn"] = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{logical_id}"
        return names

    def resolve(self, value: Any) -> Any:
        """A template value (``Fn::Join`` of references, or a plain string) with our names in it."""
        text = definition_text({"Properties": {"DefinitionString": value}})
        return PLACEHOLDER.sub(lambda m: self.names.get(m.group(1), m.group(1).split(".")[0].lower()), text)

    @property
    def bucket(self) -> str:
        return self.names[self._one("AWS::S3::Bucket", "Backups")]

    @property
    def topic_arn(self) -> str:
        return self.names[self._one("AWS::SNS::Topic", "Results")]

    def definition(self, fragment: str, *, wait_seconds: int = 0) -> dict[str, Any]:
        """The state machine's ASL with our names substituted; every Wait state shortened to
        ``wait_seconds`` (the polls wait 30-60 s on AWS; here the scratch is available at once),
        the approval's timeout to :attr:`approval_seconds`."""
        matches = [k for k in state_machines(self.template) if fragment in k]
        assert len(matches) == 1, matches
        text = self.resolve(self.resources[matches[0]]["Properties"]["DefinitionString"])
        asl = json.loads(text)

        def shorten(states: dict[str, Any]) -> None:
            for state in states.values():
                if state["Type"] == "Wait" and "Seconds" in state:
                    state["Seconds"] = wait_seconds
                if state["Type"] == "Task" and state["Resource"].endswith(".waitForTaskToken"):
                    state["TimeoutSeconds"] = self.approval_seconds
                for branch in state.get("Branches", []):
                    shorten(branch["States"])

        shorten(asl["States"])
        return asl

    def environment(self, properties: dict[str, Any]) -> dict[str, str]:
        variables = properties.get("Environment", {}).get("Variables", {})
        return {k: self.resolve(v) for k, v in variables.items()}

    def worker_environment(self) -> dict[str, str]:
        """The task definition's environment and secrets, as ECS would give them to the container.

        The source's coordinates are the test's database (a deploy with ``sourceHost``), without
        TLS (the test cluster has none), and the secret's username/password are the cluster's."""
        task = self.resources[self._one("AWS::ECS::TaskDefinition")]
        container = task["Properties"]["ContainerDefinitions"][0]
        env = {e["Name"]: self.resolve(e["Value"]) for e in container.get("Environment", [])}
        for secret in container.get("Secrets", []):
            env[secret["Name"]] = {"MIGSAFE_SOURCE_USERNAME": self.source.user or "postgres",
                                   "MIGSAFE_SOURCE_PASSWORD": "e2e-not-checked"}[secret["Name"]]
        env.update({"MIGSAFE_SOURCE_HOST": self.source.host or "127.0.0.1", "MIGSAFE_SOURCE_PORT": str(self.source.port),
                    "MIGSAFE_SOURCE_DBNAME": self.source.dbname, "MIGSAFE_SOURCE_SSLMODE": "disable",
                    "MIGSAFE_RUNTIME_DIR": str(self.runtime_dir)})
        return env

    # --- moto resources ------------------------------------------------------------------------
    def _create_aws_resources(self) -> None:
        self.s3.create_bucket(Bucket=self.bucket)
        sns = boto3.client("sns", region_name=REGION)
        topic = sns.create_topic(Name=self.topic_arn.rsplit(":", 1)[-1])["TopicArn"]
        assert topic == self.topic_arn
        self.queue_url = self.sqs.create_queue(QueueName="migsafe-e2e-results")["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        # production's own groups: the scratch must be restored with them
        self.rds.create_db_parameter_group(DBParameterGroupName=SOURCE_PARAMETER_GROUP, DBParameterGroupFamily="postgres13",
                                           Description="migsafe e2e: production's settings")
        self.rds.create_option_group(OptionGroupName=SOURCE_OPTION_GROUP, EngineName="postgres", MajorEngineVersion="13",
                                     OptionGroupDescription="migsafe e2e: production's options")
        self.rds.create_db_instance(DBInstanceIdentifier=SOURCE_INSTANCE, Engine="postgres", EngineVersion="13.7",
                                    DBInstanceClass="db.t4g.medium", MasterUsername="app",
                                    MasterUserPassword="e2e-not-checked", AllocatedStorage=20,
                                    DBParameterGroupName=SOURCE_PARAMETER_GROUP, OptionGroupName=SOURCE_OPTION_GROUP)
        self.rds.create_db_snapshot(DBInstanceIdentifier=SOURCE_INSTANCE,
                                    DBSnapshotIdentifier=f"{SOURCE_INSTANCE}-nightly")
        self._create_network()
        self._create_aurora_source()
        iam = boto3.client("iam", region_name=REGION)
        self.role_arn = iam.create_role(RoleName="migsafe-e2e-sfn", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "states.amazonaws.com"}}]}),
        )["Role"]["Arn"]

    def _create_network(self) -> None:
        """The VPC, subnets, security groups and DB subnet group the definitions name, in moto."""
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        subnets = []
        for i, logical_id in enumerate(sorted(self._of_type("AWS::EC2::Subnet"))):
            subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24",
                                       AvailabilityZone=f"{REGION}{'ab'[i % 2]}")["Subnet"]["SubnetId"]
            self.names[logical_id] = subnet
            subnets.append(subnet)
        for logical_id in self._of_type("AWS::EC2::SecurityGroup"):
            self.names[f"{logical_id}.GroupId"] = ec2.create_security_group(
                GroupName=logical_id, Description="migsafe e2e", VpcId=vpc)["GroupId"]
        for logical_id in self._of_type("AWS::RDS::DBSubnetGroup"):
            self.names[logical_id] = name = f"migsafe-e2e-{logical_id.lower()}"
            self.rds.create_db_subnet_group(DBSubnetGroupName=name, DBSubnetGroupDescription="migsafe e2e",
                                            SubnetIds=subnets)

    def _create_aurora_source(self) -> None:
        """Production as an Aurora PostgreSQL cluster with one writer, its own cluster parameter group,
        subnet group and security group (the clone must copy them), and a nightly cluster snapshot.
        Its endpoint is the test's database, like the instance's."""
        ec2 = boto3.client("ec2", region_name=REGION)
        subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:2]
        vpc = ec2.describe_subnets(SubnetIds=subnets[:1])["Subnets"][0]["VpcId"]
        self.source_cluster_security_group = ec2.create_security_group(
            GroupName="app-aurora", Description="production: admits the migsafe worker", VpcId=vpc)["GroupId"]
        self.rds.create_db_subnet_group(DBSubnetGroupName=SOURCE_CLUSTER_SUBNETS, DBSubnetGroupDescription="production",
                                        SubnetIds=subnets)
        self.rds.create_db_cluster_parameter_group(DBClusterParameterGroupName=SOURCE_CLUSTER_PARAMETER_GROUP,
                                                   DBParameterGroupFamily="aurora-postgresql11",
                                                   Description="migsafe e2e: production's cluster settings")
        self.rds.create_db_cluster(DBClusterIdentifier=SOURCE_CLUSTER, Engine="aurora-postgresql",
                                   EngineVersion=SOURCE_CLUSTER_VERSION, MasterUsername="app",
                                   MasterUserPassword="e2e-not-checked", DBSubnetGroupName=SOURCE_CLUSTER_SUBNETS,
                                   VpcSecurityGroupIds=[self.source_cluster_security_group],
                                   DBClusterParameterGroupName=SOURCE_CLUSTER_PARAMETER_GROUP,
                                   Port=int(self.source.port or 5432))
        self.rds.create_db_instance(DBInstanceIdentifier=f"{SOURCE_CLUSTER}-writer", DBClusterIdentifier=SOURCE_CLUSTER,
                                    Engine="aurora-postgresql", DBInstanceClass="db.r6g.large")
        self.instances[f"{SOURCE_CLUSTER}-writer"] = self.source
        self.rds.create_db_cluster_snapshot(DBClusterIdentifier=SOURCE_CLUSTER,
                                            DBClusterSnapshotIdentifier=f"{SOURCE_CLUSTER}-nightly")

    def create_state_machine(self, fragment: str, name: str | None = None) -> str:
        return str(self.sfn.create_state_machine(
            name=name or f"migsafe-{fragment.lower()}", definition=json.dumps(self.definition(fragment)),
            roleArn=self.role_arn, type="STANDARD")["stateMachineArn"])

    # --- faults --------------------------------------------------------------------------------
    def fail_next(self, seam: str, name: str, error: Exception, times: int = 1) -> None:
        """Make the next ``times`` calls of ``name`` (a handler, worker action or RDS operation) raise."""
        self._faults[(seam, name)].extend([error] * times)

    def _fault(self, seam: str, name: str) -> Exception | None:
        with self._lock:
            pending = self._faults.get((seam, name))
            return pending.pop(0) if pending else None

    def _record(self, seam: str, name: str, ok: bool, detail: Any = None) -> None:
        with self._lock:
            self.calls.append(Call(seam, name, ok, detail))

    def called(self, seam: str, name: str) -> list[Call]:
        return [c for c in self.calls if (c.seam, c.name) == (seam, name)]

    # --- the seams -----------------------------------------------------------------------------
    def _install_seams(self) -> None:
        harness = self
        mp = self.monkeypatch
        moto_extract = json_path.extract_json

        def extract_json(path: str, data: Any) -> Any:
            if DEFINITE_PATH.match(path):
                matches = json_path.parse(path).find(data)
                if len(matches) == 1:
                    return matches[0].value
            return moto_extract(path, data)

        for module in JSON_PATH_USERS:
            mp.setattr(module, "extract_json", extract_json)
        mp.setattr(lambda_eval_utils, "_invoke_lambda_function",
                   lambda parameters, region, state_credentials: harness.invoke_lambda(parameters))

        ecs_cls = state_task_service_ecs.StateTaskServiceEcs

        def run_task(task: Any, env: Any, resource_runtime_part: Any, normalised_parameters: dict[str, Any],
                     state_credentials: Any) -> None:
            env.stack.append(harness.ecs_run_task(normalised_parameters))

        def sync_resolver(task: Any, env: Any, resource_runtime_part: Any, normalised_parameters: dict[str, Any],
                          state_credentials: Any) -> Callable[[], Any]:
            submitted = env.stack.pop()
            return lambda: harness.ecs_wait(task, env, submitted, normalised_parameters)

        mp.setattr(ecs_cls, "_eval_service_task", run_task)
        mp.setattr(ecs_cls, "_build_sync_resolver", sync_resolver)

        sdk_cls = state_task_service_aws_sdk.StateTaskServiceAwsSdk
        original_eval = sdk_cls._eval_service_task
        original_error = sdk_cls._from_error

        def sdk_eval(task: Any, env: Any, resource_runtime_part: Any, normalised_parameters: dict[str, Any],
                     state_credentials: Any) -> None:
            if task.resource.api_name != "rds":
                original_eval(task, env, resource_runtime_part, normalised_parameters, state_credentials)
                return
            client = boto_client_for(region=resource_runtime_part.region, service="rds")
            action = task.resource.api_action
            operation = client.meta.service_model.operation_model(action[:1].upper() + action[1:])
            params = copy.deepcopy(normalised_parameters)
            task._to_boto_request(params, operation.input_shape)
            response = harness.rds_call(client, xform_name(operation.name), params)
            response.pop("ResponseMetadata", None)
            task._from_boto_response(response, operation.output_shape)
            env.stack.append(response)

        def sdk_error(task: Any, env: Any, ex: Exception) -> FailureEvent:
            if task.resource.api_name in SERVICE_PREFIX and isinstance(ex, ClientError):
                error = aws_error_name(task.resource.api_name, ex.response["Error"]["Code"])
                return FailureEvent(env=env, error_name=CustomErrorName(error), event_type=HistoryEventType.TaskFailed,
                                    event_details=task_failed(
                                        error=error, cause=ex.response["Error"].get("Message", ""),
                                        resource=task._get_sfn_resource(),
                                        resourceType=task._get_sfn_resource_type()))
            return original_error(task, env, ex)

        mp.setattr(sdk_cls, "_eval_service_task", sdk_eval)
        mp.setattr(sdk_cls, "_from_error", sdk_error)

        # the worker's own ModifyDBInstance (boto3 -> moto): a new master password reaches the
        # PostgreSQL behind the scratch, as RDS applies it
        from moto.rds.models import RDSBackend

        moto_modify = RDSBackend.modify_db_instance

        def modify_db_instance(backend: Any, db_instance_identifier: str, db_kwargs: dict[str, Any]) -> Any:
            password = db_kwargs.get("master_user_password")
            scratch = harness.scratches.get(db_instance_identifier)
            if password and scratch is not None:
                harness.set_password(scratch, password)
                harness.passwords[db_instance_identifier] = password
            harness._record("rds", "modify_db_instance", True, {"instance": db_instance_identifier,
                                                                "password_set": bool(password)})
            return moto_modify(backend, db_instance_identifier, db_kwargs)

        mp.setattr(RDSBackend, "modify_db_instance", modify_db_instance)

        # the same for an Aurora scratch, whose master password is the cluster's (ModifyDBCluster)
        moto_modify_cluster = RDSBackend.modify_db_cluster

        def modify_db_cluster(backend: Any, kwargs: dict[str, Any]) -> Any:
            cluster = kwargs["db_cluster_identifier"]
            password = kwargs.get("master_user_password")
            for instance, owner in list(harness.cluster_of.items()):
                scratch = harness.scratches.get(instance)
                if password and owner == cluster and scratch is not None:
                    harness.set_password(scratch, password)
                    harness.passwords[instance] = password
            harness._record("rds", "modify_db_cluster", True, {"cluster": cluster, "password_set": bool(password)})
            return moto_modify_cluster(backend, kwargs)

        mp.setattr(RDSBackend, "modify_db_cluster", modify_db_cluster)

        # every caller (state machine, Lambda, worker) sees the PostgreSQL behind an instance
        from moto.rds.models import DBInstance

        moto_endpoint = DBInstance.endpoint

        def endpoint(instance: Any) -> dict[str, Any]:
            dsn = harness._behind(instance.db_instance_identifier)
            if dsn is None:
                return dict(moto_endpoint.fget(instance))  # type: ignore[attr-defined]
            return {"Address": dsn.host, "Port": int(dsn.port)}

        mp.setattr(DBInstance, "endpoint", property(endpoint))

    # lambda
    def invoke_lambda(self, parameters: dict[str, Any]) -> dict[str, Any]:
        arn = str(parameters["FunctionName"])
        logical_id = arn.rsplit(":", 1)[-1]
        props = self.resources[logical_id]["Properties"]
        module_name, _, attr = str(props["Handler"]).rpartition(".")
        event = json.loads(parameters["Payload"])
        with self._function_environment(self.environment(props)):
            fault = self._fault("lambda", props["Handler"])
            try:
                if fault is not None:
                    raise fault
                handler = getattr(importlib.import_module(module_name), attr)
                payload = handler(event, FakeContext(logical_id, arn))
            except Exception as exc:  # what the Lambda runtime reports for an unhandled exception
                self._record("lambda", props["Handler"], False, type(exc).__name__)
                error = {"errorMessage": str(exc), "errorType": type(exc).__name__,
                         "stackTrace": traceback.format_tb(exc.__traceback__)}
                return {"StatusCode": 200, "FunctionError": "Unhandled", "ExecutedVersion": "$LATEST",
                        "Payload": error}
        self._record("lambda", props["Handler"], True, payload)
        return {"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": payload}

    @contextlib.contextmanager
    def _function_environment(self, variables: dict[str, str]) -> Iterator[None]:
        """The function's environment for the duration of the call (Lambdas run one at a time here:
        no state machine runs two Lambda steps in parallel)."""
        import os

        with self._lock:
            saved = {k: os.environ.get(k) for k in variables}
            os.environ.update(variables)
        try:
            yield
        finally:
            with self._lock:
                for k, v in saved.items():
                    if v is None:
                        # removed at close(), not now: a worker thread (the backup runs beside the
                        # Lambdas of Prepare's other branch) may be iterating os.environ (botocore
                        # reads its proxies from it) and a key vanishing midway is a KeyError there
                        self._unset_at_close.add(k)
                    else:
                        os.environ[k] = v

    # ecs
    def ecs_run_task(self, parameters: dict[str, Any]) -> dict[str, Any]:
        task_arn = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{uuid.uuid4().hex}"
        return {"Tasks": [{"TaskArn": task_arn, "ClusterArn": parameters["Cluster"], "LastStatus": "PROVISIONING"}],
                "Failures": []}

    def ecs_wait(self, task: Any, env: Any, submitted: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
        """Run the container to completion; the stopped task, or ``States.TaskFailed`` on a non-zero exit."""
        overrides = parameters["Overrides"]["ContainerOverrides"]
        assert len(overrides) == 1, overrides
        command = list(overrides[0]["Command"])
        assert command[: len(WORKER_COMMAND)] == WORKER_COMMAND, command
        argv = command[len(WORKER_COMMAND):]
        environ = {**self.worker_environment(), **{e["Name"]: _env_value(e["Value"]) for e in overrides[0].get(
            "Environment", [])}}
        action = argv[0] if argv else ""
        fault = self._fault("ecs", action)
        if fault is not None:
            exit_code = 3
        else:
            try:
                exit_code = worker.main(argv, environ=environ)
            except SystemExit as exc:  # argparse refused the command line
                exit_code = int(exc.code or 0)
        self._record("ecs", action, exit_code == 0, {"exit_code": exit_code, "environment": environ})
        described = {**submitted["Tasks"][0], "LastStatus": "STOPPED", "DesiredStatus": "STOPPED",
                     "StopCode": "EssentialContainerExited", "StoppedReason": "Essential container in task exited",
                     "StartedBy": parameters.get("StartedBy"), "Overrides": parameters["Overrides"],
                     "Containers": [{"Name": overrides[0]["Name"], "LastStatus": "STOPPED", "ExitCode": exit_code}]}
        if exit_code != 0:
            raise FailureEventException(FailureEvent(
                env=env, error_name=StatesErrorName(typ=StatesErrorNameType.StatesTaskFailed),
                event_type=HistoryEventType.TaskFailed,
                event_details=task_failed(error="States.TaskFailed", cause=json.dumps(described),
                                          resource=task._get_sfn_resource(),
                                          resourceType=task._get_sfn_resource_type())))
        return described

    # rds
    def rds_call(self, client: Any, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        fault = self._fault("rds", operation)
        if fault is not None:
            self._record("rds", operation, False, str(fault))
            raise fault
        ident = str(params.get("DBInstanceIdentifier") or params.get("DBClusterIdentifier"))
        with self._lock:
            self.requests.append((operation, copy.deepcopy(params)))
        try:
            response: dict[str, Any] = getattr(client, operation)(**params)
        except ClientError as exc:  # RDS's own answer (moto's, or a raw one at the botocore boundary)
            self._record("rds", operation, False, exc.response.get("Error", {}).get("Code"))
            raise
        in_cluster = operation == "create_db_instance" and bool(params.get("DBClusterIdentifier"))
        if in_cluster:
            # an instance in an Aurora scratch cluster: the cluster's data is the source's (a clone or
            # the cluster snapshot), its master password the source's, not one this run knows
            self.cluster_of[ident] = str(params["DBClusterIdentifier"])
        if operation == "restore_db_instance_from_db_snapshot" or in_cluster:
            # the snapshot's content is the test's source database, its master password the one of
            # snapshot time (not the source secret's current one): only a new password logs in
            with self._restoring:
                if self._closed:
                    raise RuntimeError("the harness is closed")
                self._in_flight += 1
            try:
                scratch = create_scratch("local", self.source, runtime_dir=self.runtime_dir)
                with self._restoring:
                    self.scratches[ident] = scratch
            finally:
                with self._restoring:
                    self._in_flight -= 1
                    self._restoring.notify_all()
            group = params.get("DBParameterGroupName")
            if group and self._logs_statements(client, str(group)):  # RDS applies the group at creation
                assert scratch.cluster is not None
                enable_csvlog(scratch.cluster)
            self.require_password(scratch, SNAPSHOT_PASSWORD)
            fresh = str(params.get("DBSnapshotIdentifier", "")).startswith("migsafe-scratch-")
            if self.snapshot_revision is not None and not fresh:  # an older snapshot than the last migration
                with self._admin(scratch, scratch.dsn.dbname) as conn:
                    conn.execute("update alembic_version set version_num = %s", (self.snapshot_revision,))
        elif operation == "describe_db_instances":
            for db in response.get("DBInstances", []):
                dsn = self._behind(db["DBInstanceIdentifier"])
                if dsn is not None:
                    db["Endpoint"] = {**db.get("Endpoint", {}), "Address": dsn.host, "Port": int(dsn.port)}
                if self.stuck_instance_status and db["DBInstanceIdentifier"] in self.scratches:
                    db["DBInstanceStatus"] = self.stuck_instance_status  # an instance that never comes up
        elif operation == "delete_db_instance":
            scratch = self.scratches.pop(ident, None)
            if scratch is not None:
                scratch.destroy()
        self._record("rds", operation, True, ident)
        return response

    @staticmethod
    def _logs_statements(client: Any, group: str) -> bool:
        found = {p["ParameterName"]: p.get("ParameterValue")
                 for p in client.describe_db_parameters(DBParameterGroupName=group).get("Parameters", [])}
        return all(found.get(k) == v for k, v in SCRATCH_LOGGING.items())

    def _log_dir_of(self, ident: str) -> Path | None:
        scratch = self.scratches.get(ident)
        return log_dir(scratch.cluster) if scratch is not None and scratch.cluster is not None else None

    def parameter_groups(self) -> list[str]:
        return sorted(g["DBParameterGroupName"] for g in self.rds.describe_db_parameter_groups()["DBParameterGroups"])

    def _admin(self, scratch: Scratch, dbname: str = "postgres") -> Any:
        import psycopg

        assert scratch.cluster is not None
        return psycopg.connect(host=str(scratch.cluster.socket_dir), port=scratch.cluster.port, dbname=dbname,
                               user="postgres", autocommit=True)

    def require_password(self, scratch: Scratch, password: str) -> None:
        """TCP logins need a password (scram) on this cluster; the local socket stays open to the harness."""
        from psycopg import sql

        assert scratch.cluster is not None
        hba = scratch.cluster.data_dir / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        with self._admin(scratch) as conn:
            conn.execute("set password_encryption = 'scram-sha-256'")
            conn.execute(sql.SQL("alter role {} password {}").format(
                sql.Identifier(scratch.dsn.user or "postgres"), sql.Literal(password)))
            conn.execute("select pg_reload_conf()")

    def set_password(self, scratch: Scratch, password: str) -> None:
        from psycopg import sql

        with self._admin(scratch) as conn:
            conn.execute(sql.SQL("alter role {} password {}").format(
                sql.Identifier(scratch.dsn.user or "postgres"), sql.Literal(password)))

    def _behind(self, ident: str) -> Dsn | None:
        if ident in self.scratches:
            return self.scratches[ident].dsn
        return self.instances.get(ident)

    # --- executions ----------------------------------------------------------------------------
    def start(self, machine_arn: str, payload: dict[str, Any], name: str | None = None) -> str:
        return str(self.sfn.start_execution(stateMachineArn=machine_arn, name=name or f"e2e-{uuid.uuid4().hex[:12]}",
                                            input=json.dumps(payload))["executionArn"])

    def wait(self, execution_arn: str, deadline: float = 300) -> dict[str, Any]:
        """Poll until the execution finishes (``deadline`` only guards against a hung test)."""
        end = time.monotonic() + deadline
        while True:
            described = self.sfn.describe_execution(executionArn=execution_arn)
            if described["status"] in FINISHED:
                return dict(described)
            assert time.monotonic() < end, f"execution still {described['status']} after {deadline} s"
            time.sleep(0.2)

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
        while True:
            page = self.sfn.get_execution_history(**kwargs)
            events += [dict(e) for e in page["events"]]
            if not page.get("nextToken"):
                return events
            kwargs["nextToken"] = page["nextToken"]

    def entered(self, execution_arn: str) -> list[str]:
        return [e["stateEnteredEventDetails"]["name"] for e in self.history(execution_arn)
                if e["type"].endswith("StateEntered")]

    def failure(self, execution_arn: str) -> tuple[str, str]:
        """``(last state entered, error)`` of a failed execution."""
        history = self.history(execution_arn)
        failed = [e for e in history if e["type"] == "ExecutionFailed"]
        assert failed, self.explain(execution_arn)
        return self.entered(execution_arn)[-1], str(failed[-1]["executionFailedEventDetails"].get("error"))

    def explain(self, execution_arn: str, verbose: bool = False) -> str:
        """A readable account of an execution (for assertion messages): states and failures."""
        lines = []
        for e in self.history(execution_arn):
            if e["type"].endswith("StateEntered"):
                lines.append(f"> {e['stateEnteredEventDetails']['name']}")
            if "taskSucceededEventDetails" in e and verbose:
                lines.append(f"  = {e['taskSucceededEventDetails'].get('output', '')[:800]}")
            for key in ("taskFailedEventDetails", "lambdaFunctionFailedEventDetails", "executionFailedEventDetails"):
                if key in e:
                    lines.append(f"  ! {e[key].get('error')}: {str(e[key].get('cause'))[:500]}")
        return "\n".join(lines[:200])

    def messages(self) -> list[dict[str, Any]]:
        """Every SNS message delivered to the subscribed queue so far (drained)."""
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            batch = got.get("Messages", [])
            if not batch:
                return out
            for m in batch:
                out.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def rds_instances(self) -> list[str]:
        return sorted(d["DBInstanceIdentifier"] for d in self.rds.describe_db_instances()["DBInstances"])

    def rds_clusters(self) -> list[str]:
        return sorted(c["DBClusterIdentifier"] for c in self.rds.describe_db_clusters()["DBClusters"])

    def close(self) -> None:
        self._exit.close()
        with self._restoring:
            self._closed = True
            self._restoring.wait_for(lambda: self._in_flight == 0, timeout=300)
        for scratch in [*self.scratches.values(), *self.extra_clusters]:
            scratch.destroy()
        self.scratches.clear()
        import os

        for key in self._unset_at_close:
            os.environ.pop(key, None)
