"""Alembic migration environment of the delegation schema (run through `delegation.db.migrate`)."""
