"""The results topic (KMS-encrypted, TLS only) and, when context names a Slack workspace and
channel, an AWS Chatbot channel subscribed to it."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_chatbot as chatbot
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct


class Notifications(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        slack_workspace_id: str | None = None,
        slack_channel_id: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = kms.Key(
            self, "Key",
            description="migsafe results topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # AWS Chatbot and CloudWatch need the key to read messages from an encrypted topic.
        self.key.add_to_resource_policy(iam.PolicyStatement(
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            principals=[iam.ServicePrincipal("chatbot.amazonaws.com")],
            resources=["*"],
        ))
        self.topic = sns.Topic(
            self, "Results",
            display_name="migsafe results",
            master_key=self.key,
            enforce_ssl=True,
        )
        self.slack: chatbot.SlackChannelConfiguration | None = None
        if slack_workspace_id and slack_channel_id:
            self.slack = chatbot.SlackChannelConfiguration(
                self, "Slack",
                slack_channel_configuration_name="migsafe-results",
                slack_workspace_id=slack_workspace_id,
                slack_channel_id=slack_channel_id,
                notification_topics=[self.topic],
                logging_level=chatbot.LoggingLevel.ERROR,
                guardrail_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("ReadOnlyAccess")],
                user_role_required=False,
            )
