"""CDK constructs for migsafe on AWS: one construct per module, composed by :mod:`infra.stack`."""
