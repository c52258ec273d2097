"""The results topic (KMS-encrypted, TLS only) and, when context names a Slack workspace and
channel, an AWS Chatbot channel subscribed to it.

Publishing to a topic encrypted with a customer-managed key needs ``kms:GenerateDataKey*`` and
``kms:Decrypt`` on that key besides ``sns:Publish``; ``Topic.grant_publish`` and the Step Functions
``SnsPublish`` task grant only the latter (aws-cdk issues 18387, 32303), and SNS then refuses the
message with KMSAccessDenied. :meth:`Notifications.grant_publish` grants both: use it for every
principal that publishes.
"""

from __future__ import annotations

from aws_cdk import Aws, RemovalPolicy, Stack
from aws_cdk import aws_chatbot as chatbot
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct

CHATBOT_NAME_MAX = 128


def chatbot_configuration_name(stack_name: str) -> str:
    """``migsafe-results-<stack>``: Chatbot configuration names are unique per account."""
    name = f"migsafe-results-{stack_name}"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:CHATBOT_NAME_MAX]


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
        # AWS Chatbot reads the messages of the encrypted topic it subscribes to. Only on behalf of
        # this account (aws:SourceAccount): the service principal alone would let any account's
        # Chatbot configuration use the key (the confused-deputy problem).
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid="ChatbotReadsResultsTopic",
            actions=["kms:Decrypt", "kms:GenerateDataKey*"],
            principals=[iam.ServicePrincipal("chatbot.amazonaws.com")],
            resources=["*"],
            conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
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
                # unique per account: two stacks (staging, prod) must not collide
                slack_channel_configuration_name=chatbot_configuration_name(Stack.of(self).stack_name),
                slack_workspace_id=slack_workspace_id,
                slack_channel_id=slack_channel_id,
                notification_topics=[self.topic],
                logging_level=chatbot.LoggingLevel.ERROR,
                guardrail_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("ReadOnlyAccess")],
                user_role_required=False,
            )

    def grant_publish(self, grantee: iam.IGrantable) -> None:
        """``sns:Publish`` on the topic and the KMS actions SNS needs to encrypt the message."""
        self.topic.grant_publish(grantee)
        self.key.grant(grantee, "kms:GenerateDataKey*", "kms:Decrypt")
