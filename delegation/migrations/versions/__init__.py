"""Revisions of the delegation schema, oldest first."""
