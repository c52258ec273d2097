"""A small task orchestrator's database layer, as projects ship it: alembic configured in code."""
