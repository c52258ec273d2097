"""Where the worker runs and where scratch instances are restored.

Given ``vpcId`` (+ ``subnetIds``, optional ``workerSecurityGroupId``, ``dbSubnetGroupName``,
``scratchSecurityGroupId``) everything is imported, without lookups, so synthesis needs no AWS
credentials. Without it a small demo VPC is created: public subnets for the worker (public IP, no
NAT gateway to pay for), isolated subnets for scratch instances, VPC flow logs on.
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_rds as rds
from constructs import Construct

POSTGRES_PORT = 5432  # the default; the scratch listens on the source's port (``db_port``)


class Network(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc_id: str | None = None,
        subnet_ids: list[str] | None = None,
        availability_zones: list[str] | None = None,
        worker_security_group_id: str | None = None,
        db_subnet_group_name: str | None = None,
        scratch_security_group_id: str | None = None,
        assign_public_ip: bool = False,
        db_port: int = POSTGRES_PORT,
    ) -> None:
        super().__init__(scope, construct_id)
        self.demo = vpc_id is None
        # the scratch is restored on the source's port, and the security-group rule follows it
        self.db_port = db_port
        if vpc_id is None:
            self.vpc: ec2.IVpc = ec2.Vpc(
                self, "Vpc",
                max_azs=2,
                nat_gateways=0,
                subnet_configuration=[
                    ec2.SubnetConfiguration(name="worker", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                    ec2.SubnetConfiguration(name="db", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24),
                ],
                gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)},
                flow_logs={"all": ec2.FlowLogOptions(traffic_type=ec2.FlowLogTrafficType.ALL)},
            )
            self.worker_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
            self.assign_public_ip = True  # pulls the image and reaches AWS APIs without a NAT gateway
            db_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        else:
            azs = availability_zones or Stack.of(self).availability_zones
            self.vpc = ec2.Vpc.from_vpc_attributes(self, "Vpc", vpc_id=vpc_id, availability_zones=azs)
            subnets = [ec2.Subnet.from_subnet_id(self, f"Subnet{i}", s) for i, s in enumerate(subnet_ids or [])]
            self.worker_subnets = ec2.SubnetSelection(subnets=subnets)
            self.assign_public_ip = assign_public_ip
            db_subnets = self.worker_subnets

        if worker_security_group_id:
            self.worker_security_group = ec2.SecurityGroup.from_security_group_id(
                self, "WorkerSg", worker_security_group_id, allow_all_outbound=True)
        else:
            self.worker_security_group = ec2.SecurityGroup(
                self, "WorkerSg", vpc=self.vpc, description="migsafe worker tasks", allow_all_outbound=True)

        if scratch_security_group_id:
            self.scratch_security_group_id = scratch_security_group_id
        else:
            scratch_sg = ec2.SecurityGroup(
                self, "ScratchSg", vpc=self.vpc, description="migsafe scratch instances", allow_all_outbound=False)
            scratch_sg.add_ingress_rule(self.worker_security_group, ec2.Port.tcp(db_port),
                                        "PostgreSQL from the migsafe worker")
            self.scratch_security_group_id = scratch_sg.security_group_id

        if db_subnet_group_name:
            self.db_subnet_group_name = db_subnet_group_name
        else:
            group = rds.SubnetGroup(self, "ScratchSubnets", vpc=self.vpc, vpc_subnets=db_subnets,
                                    description="migsafe scratch instances")
            self.db_subnet_group_name = group.subnet_group_name
