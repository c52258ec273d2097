"""migsafe: make PostgreSQL schema migrations safe to ship."""

__version__ = "0.1.0"
