"""Alembic migration environment of the gateway's own tables (run through
`gateway.db.migrate_gateway`)."""
