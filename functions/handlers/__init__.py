"""Lambda entry points: each a few lines over :mod:`handlers.steps` and the migsafe package."""
