"""Revisions of the gateway's tables, oldest first."""
